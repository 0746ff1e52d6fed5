"""``sd-dreambooth`` and ``sd-lora``: fine-tune Stable Diffusion on the chosen classes' training
images (DreamBooth, Ruiz et al. 2023), then generate new images of each class.

- ``mode: single-class`` (default, the study's best): one fine-tune per class, instance prompt
  "image of a sks <class>"; ``multi-class``: one fine-tune over all chosen classes, one rare
  identifier per class.
- Prior preservation (on by default): ``num_class_images`` images of "image of a <class>" from the
  base model are trained on beside the instance images (loss weight ``prior_loss_weight``), so the
  model keeps what the class noun meant. They are saved in work_dir and reused.
- ``sd-lora`` trains rank-``rank`` LoRA adapters (peft) on the UNet's attention (and on the text
  encoder with ``train_text_encoder``) instead of every weight: lr 1e-4, adapters of a few MB saved
  instead of a 3.4 GB UNet. SD 1.x/2.x and SDXL bases (the base's model_index says which).
- Steps follow the DreamBooth recipe: ``steps_per_image`` per instance image, at most
  ``max_train_steps`` (``train_steps`` > 0 fixes them).
- Generation: DDIM, ``steps`` 24, guidance 7.5, prompt = the instance prompt (``prompt`` overrides).

A fine-tune is saved in work_dir (a folder per class, or one per class group) atomically; a second
run, or a generation-only change (guidance, steps, prompt, batch size), loads it instead of training.
With ``sampler: cluster`` (single-class mode) there is one fine-tune per kept cluster of a class,
``class-<label>-cluster-<id>-<digest>-<hash>/``, each on the cluster's images nearest its centroid,
and image k of the class comes from its cluster's (``automl.augment.clusters``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from automl.augment.base import register
from automl.augment.clusters import is_cluster, write_summary
from automl.augment.sd_common import (COMMON, COMMON_CONSTRAINTS, REQUIRES, TRAINING_CONSTRAINTS, SDAugmenter,
                                      check_common, check_training, check_template, class_noun, fill, generate_images,
                                      image_seed, quiet_loading, release, sample_groups, warn_cpu, inference_dtype)
from automl.augment.sd_train import (auto_steps, class_images, generation_pipeline, is_done, load_components,
                                     save_atomic, short_hash, train as train_model)
from automl.errors import ConfigError
from automl.params import Interval, Options, param_error

# Rare tokens with little meaning to CLIP (the DreamBooth paper's "sks" first); one per class in multi-class mode.
IDENTIFIERS = ["sks", "zwx", "qrb", "vjl", "kxp", "ymt", "dfw", "hqz"]
MODES = ("single-class", "multi-class")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

_TRAINING = {
    "mode": "single-class",
    "identifiers": IDENTIFIERS,
    "instance_prompt": "image of a {token} {class}",
    "class_prompt": "image of a {class}",
    "prompt": "",  # generation prompt; empty: the instance prompt
    "prior_preservation": True,
    "num_class_images": 100,
    "prior_loss_weight": 1.0,
    "prior_steps": 24,  # DDIM steps for each class image
    "train_text_encoder": False,
    "learning_rate": 5e-6,
    "train_steps": 0,  # 0: steps_per_image x images, at most max_train_steps
    "steps_per_image": 80,
    "max_train_steps": 1200,
    "train_batch_size": 1,
    "sampler": "all",  # which training images a fine-tune sees: all, random:N, cluster[:k=4,...] (one per cluster)
    "memory_savers": "auto",  # gradient checkpointing, 8-bit Adam, xformers: auto = on with CUDA
}
# Everything that changes the fine-tune; generation-only parameters stay out so changing them reuses it.
_FIT = ("model", "precision", "resolution", *(k for k in _TRAINING if k != "prompt"))


@register
class SDDreamBooth(SDAugmenter):
    name = "sd-dreambooth"
    summary = "Stable Diffusion DreamBooth: fine-tune on each chosen class (or all at once), then generate"
    defaults = {**COMMON, **_TRAINING}
    constraints = {**COMMON_CONSTRAINTS, **TRAINING_CONSTRAINTS, "mode": [Options(MODES)],
                   "num_class_images": [Interval(int, 1, closed="left")],
                   "prior_loss_weight": [Interval(float, 0, closed="left")],
                   "prior_steps": [Interval(int, 1, closed="left")]}
    fit_params = _FIT
    requires = REQUIRES
    lora = False
    kind = "dreambooth"

    def check(self) -> None:
        p = self.params
        check_common(self.name, p)
        if not p["identifiers"] or not all(isinstance(t, str) and t.strip() and " " not in t.strip()
                                           for t in p["identifiers"]):
            raise ConfigError(f"The 'identifiers' parameter of augmenter {self.name!r} must be a non-empty list of "
                              f"single words (rare tokens such as sks). Got {p['identifiers']!r} instead.")
        for key in ("instance_prompt", "prompt"):
            check_template(self.name, key, p[key], ["token", "class"])
        if "{token}" not in p["instance_prompt"]:
            raise ConfigError(f"The 'instance_prompt' parameter of augmenter {self.name!r} must contain {{token}} (the "
                              f"rare identifier the fine-tune binds to the class). Got {p['instance_prompt']!r}.")
        check_template(self.name, "class_prompt", p["class_prompt"], ["class"])
        check_training(self.name, p)
        if p["mode"] == "multi-class" and is_cluster(p["sampler"]):
            raise param_error(f"augmenter {self.name!r}", "sampler", "all or random:N in multi-class mode (one "
                              "fine-tune over every class has no per-class clusters)", p["sampler"],
                              "Fix: mode: single-class for a fine-tune per cluster.")

    # ------------------------------------------------------------ fit

    def fit(self, train, classes, chosen, work_dir, seed, progress=True) -> None:
        p = self.params
        self.start_fit(classes)
        self.work_dir_ = Path(work_dir)
        self.models_: dict = {}  # class -> its fine-tune; (class, cluster id) -> a cluster's
        self.gen_ = None
        multi = p["mode"] == "multi-class"
        if multi and max(chosen, default=0) >= len(p["identifiers"]):
            raise ConfigError(f"augmenter {self.name!r} in multi-class mode needs one identifier per class; "
                              f"{len(p['identifiers'])} given ({', '.join(p['identifiers'])}) for class index "
                              f"{max(chosen)}. Fix: list at least {max(chosen) + 1} rare words in identifiers.")
        prompts = {c: self.instance_prompt(c) for c in chosen}
        self.samplings_ = {c: sample_groups(p["sampler"], train[c], label=c, work_dir=self.work_dir_, seed=seed,
                                            class_name=classes[c], progress=progress) for c in chosen}
        for c in chosen:  # sampler: cluster (single-class only): a fine-tune per kept cluster, models_[c, id]
            for part in self.samplings_[c].groups if self.samplings_[c].clustered else ():
                found = self.work_dir_ / f"class-{c}-{part.tag}-{short_hash(prompts[c], c)}"
                if not is_done(found):
                    self._fine_tune(found, [c], {c: part.items}, prompts, seed, progress, cluster=part.cluster)
                self.models_[c, part.cluster] = found
        chosen = [c for c in chosen if not self.samplings_[c].clustered]
        for group in ([list(chosen)] if multi else [[c] for c in chosen]):
            prefix = "multi" if multi else "class"
            found = self._find(prefix, {c: prompts[c] for c in group})
            if found is None:
                found = self.work_dir_ / f"{prefix}-{'-'.join(map(str, group))}-{short_hash(prompts, group)}"
                self._fine_tune(found, group, {c: self.samplings_[c].groups[0].items for c in group}, prompts, seed,
                                progress)
            for c in group:
                self.models_[c] = found
        write_summary(self.work_dir_, classes, self.samplings_)

    def token(self, label: int) -> str:
        ids = self.params["identifiers"]
        return ids[label] if self.params["mode"] == "multi-class" else ids[0]

    def instance_prompt(self, label: int) -> str:
        return fill(self.params["instance_prompt"], token=self.token(label), **{"class": class_noun(self.classes_[label])})

    def _find(self, prefix: str, prompts: dict[int, str]) -> Path | None:
        """A finished fine-tune that learned every one of ``prompts`` (a resumed multi-class run may
        need only some of the classes the saved model covers)."""
        for folder in sorted(self.work_dir_.glob(f"{prefix}-*")):
            if is_done(folder):
                learned = json.loads((folder / "complete.json").read_text()).get("prompts", {})
                if all(learned.get(str(c)) == text for c, text in prompts.items()):
                    return folder
        return None

    def _fine_tune(self, target: Path, group: list[int], sampled: dict, prompts: dict[int, str], seed: int,
                   progress: bool, cluster: int | None = None) -> None:
        """Fine-tune on ``sampled`` (class -> the training Items its sampler chose) into ``target``."""
        p = self.params
        R = p["resolution"]
        instance, prior = [], []
        for c in group:
            instance += [(it.load(R), prompts[c]) for it in sampled[c]]
            if p["prior_preservation"]:
                text = fill(p["class_prompt"], **{"class": class_noun(self.classes_[c])})
                images = class_images(self.folder_, self.work_dir_ / "prior-images" / short_hash(text, c), text,
                                      p["num_class_images"], label=c, seed=seed, device=self.device_, p=p,
                                      steps=p["prior_steps"], progress=progress)
                prior += [(im, text) for im in images]
        warn_cpu(self.device_, f"{self.name} fine-tuning")
        parts = load_components(self.folder_)
        self.prepare(parts)
        steps = auto_steps(p, len(instance))
        names = "+".join(self.classes_[c] for c in group)
        info = train_model(parts, instance, prior=prior or None, prior_weight=p["prior_loss_weight"], steps=steps,
                     lr=p["learning_rate"], device=self.device_, precision=p["precision"],
                     memory_savers=p["memory_savers"], seed=image_seed(seed, min(group), 0, "train"), resolution=R,
                     desc=f"{self.name} {names}", progress=progress, batch_size=p["train_batch_size"])
        meta = {"prompts": {str(c): prompts[c] for c in group}, "instance_images": len(instance),
                "class_images": len(prior), "training": info, "augmenter": self.name,
                "params": self.fit_signature(), **({} if cluster is None else {"cluster": cluster})}
        save_atomic(target, lambda tmp: self.save(parts, tmp), meta)
        del parts
        release()

    def prepare(self, parts: dict) -> None:
        """Mark what trains: every UNet weight (and the text encoder's with train_text_encoder)."""
        parts["unet"].requires_grad_(True)
        if self.params["train_text_encoder"]:
            for name in TEXT_ENCODERS:
                if name in parts:
                    parts[name].requires_grad_(True)

    def save(self, parts: dict, folder: Path) -> None:
        parts["unet"].save_pretrained(folder / "unet")
        if self.params["train_text_encoder"]:
            for name in TEXT_ENCODERS:
                if name in parts:
                    parts[name].save_pretrained(folder / name)

    # ------------------------------------------------------------ generate

    def pipeline(self, model: Path):
        """The generation pipeline with the fine-tuned weights in ``model``."""
        import diffusers
        import transformers

        dtype = inference_dtype(self.device_, self.params["precision"])
        index = json.loads((self.folder_ / "model_index.json").read_text())
        overrides = {}
        for name in ("unet", "text_encoder", "text_encoder_2"):
            if (model / name).is_dir():
                library = diffusers if index[name][0] == "diffusers" else transformers
                with quiet_loading():
                    overrides[name] = getattr(library, index[name][1]).from_pretrained(model / name, torch_dtype=dtype)
        return generation_pipeline(self.folder_, self.device_, self.params["precision"], **overrides)

    def generate(self, label: int, indices: Sequence[int], sources: Sequence, seed: int) -> list[np.ndarray]:
        p = self.params
        prompt = fill(p["prompt"] or p["instance_prompt"], token=self.token(label),
                      **{"class": class_noun(self.classes_[label])})

        def make(unit, chosen: list[int]) -> list[np.ndarray]:  # image k's fine-tune: its cluster's, or the class's
            model = self.models_[unit]
            if self.gen_ is None or self.gen_[0] != model:
                self.gen_ = None
                release()
                warn_cpu(self.device_, f"{self.name} generation")
                self.gen_ = (model, self.pipeline(model))
            return generate_images(self, self.gen_[1], prompt, label, chosen, seed, height=p["resolution"],
                                   width=p["resolution"])

        loaded = (lambda unit: self.gen_ is not None and self.models_[unit] == self.gen_[0])  # the loaded one first
        return self.samplings_[label].gather(indices, make, first=loaded)

    def provenance(self, label: int, indices: Sequence[int]) -> list[dict] | None:
        return self.samplings_[label].provenance(indices)  # the cluster of each image under sampler: cluster

    def close(self) -> None:
        self.gen_ = None
        release()


@register
class SDLoRA(SDDreamBooth):
    name = "sd-lora"
    summary = "Stable Diffusion DreamBooth with LoRA adapters (SD 1.x/2.x, SDXL): small, fast fine-tunes"
    defaults = {**SDDreamBooth.defaults, "learning_rate": 1e-4, "rank": 4}
    constraints = {**SDDreamBooth.constraints, "rank": [Interval(int, 1, closed="left")]}
    fit_params = (*_FIT, "rank")
    requires = (*REQUIRES, "peft")

    def prepare(self, parts: dict) -> None:
        from peft import inject_adapter_in_model

        parts["unet"].add_adapter(self._config(UNET_TARGETS))
        if self.params["train_text_encoder"]:
            # peft directly, not transformers' add_adapter: that one refuses peft releases older than
            # transformers wants, and the adapters are saved and loaded here anyway.
            for name in TEXT_ENCODERS:
                if name in parts:
                    inject_adapter_in_model(self._config(TEXT_TARGETS), parts[name])
                    for key, param in parts[name].named_parameters():
                        param.requires_grad_("lora_" in key)

    def _config(self, targets):
        from peft import LoraConfig

        rank = self.params["rank"]
        return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets))

    def save(self, parts: dict, folder: Path) -> None:
        """The UNet's adapters in diffusers' LoRA format (pipe.load_lora_weights reads them); each
        text encoder's as ``<name>_lora.safetensors``."""
        import diffusers
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        pipeline = diffusers.StableDiffusionXLPipeline if parts["xl"] else diffusers.StableDiffusionPipeline
        pipeline.save_lora_weights(folder, unet_lora_layers=convert_state_dict_to_diffusers(
            get_peft_model_state_dict(parts["unet"])))
        if self.params["train_text_encoder"]:
            for name in TEXT_ENCODERS:
                if name in parts:
                    state = {k: v.detach().float().cpu().contiguous()
                             for k, v in parts[name].state_dict().items() if "lora_" in k}
                    save_file(state, str(folder / f"{name}_lora.safetensors"))

    def pipeline(self, model: Path):
        from peft import inject_adapter_in_model
        from safetensors.torch import load_file

        pipe = generation_pipeline(self.folder_, self.device_, self.params["precision"])
        pipe.load_lora_weights(model)
        for name in TEXT_ENCODERS:
            path = model / f"{name}_lora.safetensors"
            if path.is_file():
                encoder = getattr(pipe, name)
                inject_adapter_in_model(self._config(TEXT_TARGETS), encoder)
                state = load_file(str(path))
                result = encoder.load_state_dict(state, strict=False)
                missing = [k for k in result.missing_keys if "lora_" in k]
                if missing or result.unexpected_keys:
                    raise RuntimeError(f"{path} does not fit {name}: missing {missing[:3]}, unexpected "
                                       f"{result.unexpected_keys[:3]}")
        return pipe
