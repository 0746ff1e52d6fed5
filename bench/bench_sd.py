"""Stable Diffusion augmenter speed: img2img images/s (ours vs a plain diffusers pipeline) and
DreamBooth / LoRA training steps/s with peak GPU memory, with and without the memory savers.

Models have random weights (speed does not depend on weight values):

- default (GPU): full-size SD 1.5 built from ``../shared/models/sd15-config`` and saved once to a
  temp folder; img2img at 512 px, 24 steps, strength 0.1 (the defaults), batch 1 / 4 / 8: ours
  (``sd-img2img``: fp16 on a GPU, the model's own scheduler, no safety checker) against ``StableDiffusionImg2ImgPipeline.from_pretrained(folder)`` with default settings
  (float32, as a user gets it without arguments). Training: 512 px, batch 1, prior preservation
  (2 images per step), the DreamBooth full fine-tune (memory savers off / on) and LoRA rank 4.
- ``--tiny`` (CPU): the tiny test model (tests/sd_fixture.py) at 32 px, so regressions show in CI-sized runs.

    .venv/bin/python bench/bench_sd.py --tiny
    .venv/bin/python bench/bench_sd.py                 # on a CUDA machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from _common import command_line, machine_lines, median  # noqa: E402

import automl  # noqa: E402,F401 - sets OMP_WAIT_POLICY before torch starts its threads

CONFIG = ROOT.parent / "shared" / "models" / "sd15-config"


def build_full_sd(folder: Path) -> Path:
    """SD 1.5's architecture with random weights, saved as a diffusers folder."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIG / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIG / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIG / "text_encoder"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, unet=unet,
                                   tokenizer=CLIPTokenizer.from_pretrained(CONFIG / "tokenizer"),
                                   scheduler=PNDMScheduler.from_pretrained(CONFIG / "scheduler"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


class Source:
    """A stand-in training image (what the framework hands img2img)."""

    def __init__(self, seed: int):
        self.seed = seed

    def load(self, size: int) -> np.ndarray:
        return np.random.default_rng(self.seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def img2img_ours(folder: Path, px: int, steps: int, batch: int, n: int) -> float:
    from automl.augment.sd_img2img import SDImg2Img

    aug = SDImg2Img(model=str(folder), resolution=px, steps=steps, batch_size=batch)
    aug.fit(None, ["x"], [0], Path(tempfile.mkdtemp()), 0, progress=False)
    aug.generate(0, list(range(batch)), [Source(i) for i in range(batch)], 0)  # warm-up
    sync()
    t0 = time.perf_counter()
    aug.generate(0, list(range(n)), [Source(i) for i in range(n)], 0)
    sync()
    rate = n / (time.perf_counter() - t0)
    aug.close()
    return rate


def img2img_plain(folder: Path, px: int, steps: int, batch: int, n: int, device: str) -> float:
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    images = [Image.fromarray(Source(i).load(px)) for i in range(n)]

    def call(chunk):
        pipe(prompt=["an image of a x"] * len(chunk), image=chunk, strength=0.1, num_inference_steps=steps)

    call(images[:batch])
    sync()
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        call(images[start:start + batch])
    sync()
    rate = n / (time.perf_counter() - t0)
    del pipe
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rate


def training(folder: Path, px: int, steps: int, lora: bool, savers: str) -> tuple[float, float | None]:
    """(steps/s after a warm-up, peak GPU memory in GiB or None on CPU)."""
    import torch

    from automl.augment.sd_common import pick_device, release
    from automl.augment.sd_dreambooth import SDDreamBooth, SDLoRA
    from automl.augment.sd_train import load_components, train

    cls = SDLoRA if lora else SDDreamBooth
    aug = cls(model=str(folder), resolution=px)
    parts = load_components(folder)
    aug.prepare(parts)
    device = pick_device("auto")
    instance = [(Source(i).load(px), "image of a sks x") for i in range(4)]
    prior = [(Source(100 + i).load(px), "image of a x") for i in range(4)]
    kwargs = dict(prior=prior, prior_weight=1.0, lr=aug.params["learning_rate"], device=device, precision="auto",
                  memory_savers=savers, seed=0, resolution=px, desc="bench", progress=False)
    train(parts, instance, steps=2, **kwargs)  # warm-up (and the optimizer's first allocations)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    train(parts, instance, steps=steps, **kwargs)
    sync()
    rate = steps / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del parts
    release()
    return rate, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test model on the CPU")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--images", type=int, default=16, help="images per img2img measurement")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.tiny and device == "cpu":
        sys.exit("full-size SD 1.5 needs a CUDA GPU here; use --tiny on the CPU")
    px, steps = (32, 24) if args.tiny else (512, 24)
    batches = [int(b) for b in args.batches.split(",")]
    folder = Path(tempfile.mkdtemp()) / "sd"
    if args.tiny:
        from sd_fixture import build_tiny_sd

        build_tiny_sd(folder)
    else:
        build_full_sd(folder)
    import diffusers

    results = {"command": command_line(), "machine": machine_lines(with_tf=False), "device": device,
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average": os.getloadavg(),
               "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}",
               "model": "tiny (tests/sd_fixture.py)" if args.tiny else "SD 1.5 architecture, random weights",
               "resolution": px, "steps": steps, "img2img": [], "training": []}
    for batch in batches:
        ours, plain = [], []
        for _ in range(args.repeats):  # interleaved, so a change in machine load hits both alike
            ours.append(img2img_ours(folder, px, steps, batch, args.images))
            plain.append(img2img_plain(folder, px, steps, batch, args.images, device))
        results["img2img"].append({"batch": batch, "ours_img_s": round(median(ours), 3),
                                   "plain_img_s": round(median(plain), 3),
                                   "speedup": round(median(ours) / median(plain), 2),
                                   "ours_range": [round(min(ours), 3), round(max(ours), 3)],
                                   "plain_range": [round(min(plain), 3), round(max(plain), 3)]})
        print(results["img2img"][-1], flush=True)
    for name, lora, savers in (("dreambooth", False, "off"), ("dreambooth", False, "on"), ("lora", True, "on")):
        rates, peaks = zip(*[training(folder, px, args.train_steps, lora, savers) for _ in range(args.repeats)])
        row = {"fine-tune": name, "memory_savers": savers, "steps_s": round(median(rates), 3),
               "steps_s_range": [round(min(rates), 3), round(max(rates), 3)],
               "peak_gib": None if peaks[0] is None else round(max(peaks), 2)}
        results["training"].append(row)
        print(row, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
