"""Fine-tuning Stable Diffusion on a handful of images, shared by DreamBooth (full and LoRA) and
textual inversion: prior-preservation class images, the denoising training loop, and saving the
result atomically into the augmenter's work_dir.

Precision: every trained parameter stays float32; on a GPU the frozen weights are cast to
fp16/bf16 and the forward pass runs under autocast (the DreamBooth recipe's mixed precision). On the
CPU everything is float32.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from automl import progress as events
from automl import seeds
from automl._files import atomic_folder, atomic_write, write_json
from automl.augment.sd_common import (estimate, image_seed, inference_dtype, is_sdxl, load_pipeline, quiet_loading,
                                      release, run_pipeline, training_precision, warn_cpu)

DONE = "complete.json"  # written last into the temp folder; a folder without it is never used


def short_hash(*parts) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=5).hexdigest()


def auto_steps(p: dict, n_images: int) -> int:
    """``train_steps``, or when 0 the recipe's rule: ``steps_per_image`` per image, at most ``max_train_steps``."""
    return p["train_steps"] or max(1, min(p["steps_per_image"] * n_images, p["max_train_steps"]))


# ---------------------------------------------------------------- saving


def is_done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def save_atomic(final: Path, write: Callable[[Path], None], meta: dict) -> None:
    """Write into a temp folder beside ``final``, mark it complete, then rename it into place: a killed
    save leaves only a temp folder, which the next save removes. A complete ``final`` (another process
    finished the same fit first) is kept; an incomplete one is replaced."""
    with atomic_folder(final, replace=lambda existing: not is_done(existing)) as tmp:
        write(tmp)
        write_json(tmp / DONE, meta, indent=1, sort_keys=True, default=str)


# ---------------------------------------------------------------- prior-preservation class images


def class_images(folder: Path, out: Path, prompt: str, n: int, *, label: int, seed: int, device: str, p: dict,
                 steps: int, progress: bool) -> list[np.ndarray]:
    """``n`` images of ``prompt`` from the base model, each a PNG in ``out`` (made once, reused)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    missing = [k for k in range(n) if not (out / f"{k:05d}.png").is_file()]
    if missing:
        warn_cpu(device, "prior-preservation class images")
        pipe = _ddim(load_pipeline(folder, "text2img", device, inference_dtype(device, p["precision"])))
        bar = events.bar(total=len(missing), desc=f"class images {prompt!r}", unit="img", disable=not progress,
                         dynamic_ncols=True)
        first = [True]

        def timer(per_image: float, remaining: int) -> None:
            if first[0]:
                first[0] = False
                estimate(device, "class images", per_image, len(missing) - 1, "image")

        try:
            for k in missing:
                image, = run_pipeline(pipe, [prompt], [image_seed(seed, label, k, "prior")], batch_size=1,
                                      num_inference_steps=steps, guidance_scale=7.5, height=p["resolution"],
                                      width=p["resolution"], timer=timer)
                atomic_write(out / f"{k:05d}.png", lambda f: Image.fromarray(image).save(f, format="PNG"))
                bar.update(1)
        finally:
            bar.close()
            del pipe
            release()
    return [np.asarray(Image.open(out / f"{k:05d}.png").convert("RGB").resize((p["resolution"],) * 2))
            for k in range(n)]


def _ddim(pipe):
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def generation_pipeline(folder: Path, device: str, precision: str, **overrides):
    """The base text-to-image pipeline with DDIM (the study's sampler), components replaced by ``overrides``."""
    return _ddim(load_pipeline(folder, "text2img", device, inference_dtype(device, precision), **overrides))


# ---------------------------------------------------------------- components and the loop


def load_components(folder: Path) -> dict:
    """Every model of the base in float32 on the CPU, plus the training noise scheduler."""
    import diffusers
    import transformers

    index = json.loads((folder / "model_index.json").read_text())
    parts = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None or name in (
                "safety_checker", "feature_extractor", "image_encoder", "scheduler"):
            continue
        library = diffusers if spec[0] == "diffusers" else transformers
        cls = getattr(library, spec[1])
        with quiet_loading():
            parts[name] = cls.from_pretrained(folder, subfolder=name)
    parts["noise_scheduler"] = diffusers.DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    for name in ("vae", "unet", "text_encoder", "text_encoder_2"):
        if name in parts:
            parts[name].requires_grad_(False)
    parts["xl"] = is_sdxl(folder)
    return parts


def encode_prompts(parts: dict, prompts: Sequence[str], device: str, resolution: int):
    """(encoder hidden states, extra UNet conditioning or None) for SD 1.x/2.x and SDXL."""
    import torch

    def ids(tokenizer):
        return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)

    if not parts["xl"]:
        return parts["text_encoder"](ids(parts["tokenizer"]))[0], None
    # SDXL: both encoders' penultimate hidden states side by side; the pooled projection of the second
    # and the size/crop ids condition the UNet.
    out1 = parts["text_encoder"](ids(parts["tokenizer"]), output_hidden_states=True)
    out2 = parts["text_encoder_2"](ids(parts["tokenizer_2"]), output_hidden_states=True)
    hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * len(prompts),
                            device=device, dtype=hidden.dtype)
    return hidden, {"text_embeds": out2[0], "time_ids": time_ids}


def pixels(images: Sequence[np.ndarray]):
    import torch

    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def train(parts: dict, instance: list[tuple[np.ndarray, str]], *, prior: list[tuple[np.ndarray, str]] | None,
          prior_weight: float, steps: int, lr: float, device: str, precision: str, memory_savers: str,
          seed: int, resolution: int, desc: str, progress: bool, batch_size: int = 1,
          after_step: Callable[[], None] | None = None) -> dict:
    """Train every parameter of ``parts`` that requires grad to denoise ``instance`` images under
    their prompts (plus ``prior`` images, weighted by ``prior_weight``). Returns what was done."""
    import torch
    import torch.nn.functional as F

    autocast_dtype, scaled = training_precision(device, precision)
    savers = memory_savers == "on" or (memory_savers == "auto" and device.startswith("cuda"))
    modules = {k: parts[k] for k in ("vae", "unet", "text_encoder", "text_encoder_2") if k in parts}
    frozen_dtype = autocast_dtype or torch.float32
    for module in modules.values():
        module.to(device) if frozen_dtype == torch.float32 else module.to(device, frozen_dtype)
        for param in module.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    trained = [m for m in modules.values() if any(q.requires_grad for q in m.parameters())]
    params = [q for m in trained for q in m.parameters() if q.requires_grad]
    for name, module in modules.items():
        module.train(module in trained)
    info = {"steps": steps, "learning_rate": lr, "device": device, "autocast": str(autocast_dtype),
            "gradient_checkpointing": False, "optimizer": "AdamW", "attention": "sdpa"}
    if savers:
        if parts["unet"] in trained and any(q.requires_grad for q in parts["unet"].parameters()):
            parts["unet"].enable_gradient_checkpointing()
            info["gradient_checkpointing"] = True
        for name in ("text_encoder", "text_encoder_2"):
            if name in parts and parts[name] in trained:
                module = parts[name]  # transformers 5 renamed it; 4.x knows only the old name
                (getattr(module, "activation_checkpointing_enable", None) or module.gradient_checkpointing_enable)()
        if device.startswith("cuda") and _has("xformers"):
            parts["unet"].enable_xformers_memory_efficient_attention()
            info["attention"] = "xformers"
    optimizer = None
    if savers and device.startswith("cuda") and _has("bitsandbytes"):
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-2)
        info["optimizer"] = "AdamW8bit"
    optimizer = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cuda") if scaled else None

    vae, unet, noise_scheduler = parts["vae"], parts["unet"], parts["noise_scheduler"]
    scaling = vae.config.scaling_factor
    inst_px = pixels([im for im, _ in instance])
    prior_px = pixels([im for im, _ in prior]) if prior else None
    generator = torch.Generator("cpu").manual_seed(seed)
    rng = seeds.rng(seed, "train", "batches")
    bar = events.bar(range(steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    losses: list[float] = []
    t_start = time.perf_counter()
    for step in bar:
        t0 = time.perf_counter()
        pick = rng.integers(0, len(instance), batch_size)
        batch = inst_px[pick]
        prompts = [instance[i][1] for i in pick]
        if prior:
            pick_prior = rng.integers(0, len(prior), batch_size)
            batch = torch.cat([batch, prior_px[pick_prior]])
            prompts += [prior[i][1] for i in pick_prior]
        with torch.no_grad():
            latents = vae.encode(batch.to(device, frozen_dtype)).latent_dist.sample(generator=generator)
            latents = latents.float() * scaling
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device_type="cuda", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            hidden, added = encode_prompts(parts, prompts, device, resolution)
            pred = unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        pred = pred.float()
        if prior:
            pred, pred_prior = pred.chunk(2)
            target, target_prior = target.chunk(2)
            loss = F.mse_loss(pred, target) + prior_weight * F.mse_loss(pred_prior, target_prior)
        else:
            loss = F.mse_loss(pred, target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            with torch.no_grad():
                after_step()
        losses.append(float(loss.detach()))
        bar.set_postfix_str(f"loss={losses[-1]:.4f}", info={"loss": losses[-1]})
        if step == 0:
            estimate(device, desc, time.perf_counter() - t0, steps - 1, "step")
    bar.close()
    for module in modules.values():
        module.eval()
    if savers and parts["unet"].is_gradient_checkpointing:
        parts["unet"].disable_gradient_checkpointing()
    info.update(final_loss=losses[-1] if losses else None, seconds=round(time.perf_counter() - t_start, 2))
    del optimizer
    release()
    return info


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
