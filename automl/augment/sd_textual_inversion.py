"""``sd-textual-inversion``: learn one new word per chosen class (Gal et al. 2022), then generate
"an image of a <class>" with it.

Only the new token's embedding trains (every other row of the text encoder's embedding table is
restored after each step); the UNet, VAE and the rest of the text encoder stay the base model's. The
embedding starts from the class noun's (the mean of its tokens), or from ``initializer``. Each
class's learned vector is a small safetensors file in work_dir. SD 1.x/2.x bases (SDXL's two text
encoders are not handled). With ``sampler: cluster`` a vector is learned per kept cluster of a class
(``class-<label>-cluster-<id>-<digest>-<hash>/``) and image k of the class uses its cluster's
(``automl.augment.clusters``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from automl import seeds
from automl.augment.base import register
from automl.augment.clusters import write_summary
from automl.augment.sd_common import (COMMON, COMMON_CONSTRAINTS, REQUIRES, TRAINING_CONSTRAINTS, SDAugmenter,
                                      check_common, check_training, check_template, class_noun, fill, generate_images,
                                      image_seed, is_sdxl, release, sample_groups, warn_cpu)
from automl.augment.sd_train import (auto_steps, generation_pipeline, is_done, load_components, save_atomic,
                                     short_hash, train as train_model)
from automl.errors import ConfigError

TRAINING_PROMPTS = ["an image of a {token}", "a photo of a {token}", "a close-up image of a {token}",
                    "a cropped image of a {token}"]


@register
class SDTextualInversion(SDAugmenter):
    name = "sd-textual-inversion"
    summary = "Stable Diffusion textual inversion: a new token embedding learned per class, then generate"
    defaults = {
        **COMMON,
        "placeholder": "<{class}>",  # the new token; {class} is the class noun with spaces as dashes
        "initializer": "",  # word(s) the embedding starts from; empty: the class noun
        "prompt": "an image of a {token}",
        "training_prompts": TRAINING_PROMPTS,
        "learning_rate": 5e-4,
        "train_steps": 0,  # 0: steps_per_image x images, at most max_train_steps
        "steps_per_image": 100,
        "max_train_steps": 3000,
        "train_batch_size": 1,
        "sampler": "all",  # all, random:N, cluster[:k=4,...] (a vector per cluster)
        "memory_savers": "auto",
    }
    constraints = {**COMMON_CONSTRAINTS, **TRAINING_CONSTRAINTS}
    fit_params = ("model", "precision", "resolution", "placeholder", "initializer", "training_prompts",
                  "learning_rate", "train_steps", "steps_per_image", "max_train_steps", "train_batch_size", "sampler",
                  "memory_savers")
    requires = REQUIRES

    def check(self) -> None:
        p = self.params
        check_common(self.name, p)
        check_template(self.name, "placeholder", p["placeholder"], ["class"])
        if p["placeholder"].format(**{"class": "x"}).strip() in ("", "x"):
            raise ConfigError(f"The 'placeholder' parameter of augmenter {self.name!r} must make a new word, such as "
                              f"<{{class}}>. Got {p['placeholder']!r} instead.")
        check_template(self.name, "prompt", p["prompt"], ["token", "class"])
        if not p["training_prompts"]:
            raise ConfigError(f"The 'training_prompts' parameter of augmenter {self.name!r} is empty; give at least "
                              f"one template with {{token}}, e.g. {TRAINING_PROMPTS[0]!r}.")
        for template in p["training_prompts"]:
            if not isinstance(template, str) or "{token}" not in template:
                raise ConfigError(f"Every entry of 'training_prompts' of augmenter {self.name!r} must be a string "
                                  f"containing {{token}}. Got {template!r}.")
            check_template(self.name, "training_prompts", template, ["token", "class"])
        check_training(self.name, p)

    def token(self, label: int) -> str:
        return self.params["placeholder"].format(**{"class": class_noun(self.classes_[label]).replace(" ", "-")})

    def fit(self, train, classes, chosen, work_dir, seed, progress=True) -> None:
        p = self.params
        self.start_fit(classes)
        if is_sdxl(self.folder_):
            raise ConfigError(f"augmenter {self.name!r} supports SD 1.x/2.x bases; {p['model']!r} is SDXL (two text "
                              "encoders). Fix: use sd-lora or sd-dreambooth with it, or an SD 1.x/2.x base.")
        tokens = [self.token(c) for c in chosen]
        if len(set(tokens)) != len(tokens):
            raise ConfigError(f"augmenter {self.name!r}: placeholder {p['placeholder']!r} makes the same token for "
                              f"two classes ({tokens}); use {{class}} in it.")
        self.embeds_: dict = {}  # class -> its vector's folder; (class, cluster id) -> a cluster's
        self.loaded_: dict[str, Path] = {}  # token -> the folder whose vector the pipeline holds
        self.pipe_ = None
        self.samplings_ = {}
        for c in chosen:
            init = p["initializer"] or class_noun(classes[c])
            self.samplings_[c] = sample_groups(p["sampler"], train[c], label=c, work_dir=Path(work_dir), seed=seed,
                                               class_name=classes[c], progress=progress)
            for part in self.samplings_[c].groups:
                folder = Path(work_dir) / f"class-{c}-{part.tag + '-' if part.tag else ''}" \
                                          f"{short_hash(self.token(c), init, classes[c])}"
                if not is_done(folder):
                    self._learn(folder, c, part.items, init, seed, progress)
                self.embeds_[c if part.cluster is None else (c, part.cluster)] = folder
        write_summary(Path(work_dir), classes, self.samplings_)

    def _learn(self, folder: Path, label: int, items, init: str, seed: int, progress: bool) -> None:
        """Learn the class's token on ``items`` (the training Items its sampler chose) into ``folder``."""
        import torch
        from safetensors.torch import save_file

        p = self.params
        token = self.token(label)
        noun = class_noun(self.classes_[label])
        parts = load_components(self.folder_)
        tokenizer, encoder = parts["tokenizer"], parts["text_encoder"]
        if tokenizer.add_tokens(token) != 1:
            raise ConfigError(f"augmenter {self.name!r}: placeholder token {token!r} is already a word of the "
                              "tokenizer; choose a placeholder that is not, such as <{class}>.")
        token_id = tokenizer.convert_tokens_to_ids(token)
        init_ids = tokenizer(init, add_special_tokens=False).input_ids
        if not init_ids:
            raise ConfigError(f"augmenter {self.name!r}: initializer {init!r} has no tokens; give a word.")
        encoder.resize_token_embeddings(len(tokenizer))
        table = encoder.get_input_embeddings().weight
        with torch.no_grad():
            table[token_id] = table[init_ids].mean(0)
        original = table.detach().clone()
        table.requires_grad_(True)
        keep = torch.ones(len(tokenizer), dtype=torch.bool)
        keep[token_id] = False

        def restore() -> None:
            weight = encoder.get_input_embeddings().weight
            weight[keep] = original[keep].to(weight.device, weight.dtype)

        rng = seeds.rng(seed, "augment", label, "prompts")
        images = [it.load(p["resolution"]) for it in items]
        # Each image gets a fixed template drawn once, so the data do not depend on the step count.
        instance = [(im, fill(p["training_prompts"][rng.integers(len(p["training_prompts"]))], token=token,
                              **{"class": noun})) for im in images]
        warn_cpu(self.device_, f"{self.name} training")
        info = train_model(parts, instance, prior=None, prior_weight=0.0, steps=auto_steps(p, len(instance)),
                           lr=p["learning_rate"], device=self.device_, precision=p["precision"],
                           memory_savers=p["memory_savers"], seed=image_seed(seed, label, 0, "train"),
                           resolution=p["resolution"], desc=f"{self.name} {self.classes_[label]}", progress=progress,
                           batch_size=p["train_batch_size"], after_step=restore)
        vector = encoder.get_input_embeddings().weight[token_id].detach().float().cpu().clone()
        save_atomic(folder, lambda tmp: save_file({token: vector}, str(tmp / "learned_embeds.safetensors")),
                    {"token": token, "initializer": init, "class": self.classes_[label], "training": info,
                     "augmenter": self.name, "params": self.fit_signature()})
        del parts, encoder, table, original
        release()

    def _pipe_with(self, label: int, folder: Path):
        """The generation pipeline with the class's token holding the vector learned in ``folder``."""
        import torch
        from safetensors.torch import load_file

        if self.pipe_ is None:
            warn_cpu(self.device_, f"{self.name} generation")
            self.pipe_ = generation_pipeline(self.folder_, self.device_, self.params["precision"])
            self.loaded_ = {}
        pipe, token = self.pipe_, self.token(label)
        if token not in pipe.tokenizer.get_vocab():
            pipe.tokenizer.add_tokens(token)
            pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
        if self.loaded_.get(token) != folder:  # a class's clusters share its token, each with its own vector
            vector = load_file(str(folder / "learned_embeds.safetensors"))[token]
            weight = pipe.text_encoder.get_input_embeddings().weight
            with torch.no_grad():
                weight[pipe.tokenizer.convert_tokens_to_ids(token)] = vector.to(weight.device, weight.dtype)
            self.loaded_[token] = folder
        return pipe

    def generate(self, label: int, indices: Sequence[int], sources: Sequence, seed: int) -> list[np.ndarray]:
        p = self.params
        prompt = fill(p["prompt"], token=self.token(label), **{"class": class_noun(self.classes_[label])})

        def make(unit, chosen: list[int]) -> list[np.ndarray]:  # image k's vector: its cluster's or the class's
            return generate_images(self, self._pipe_with(label, self.embeds_[unit]), prompt, label, chosen, seed,
                                   height=p["resolution"], width=p["resolution"])

        return self.samplings_[label].gather(indices, make)

    def provenance(self, label: int, indices: Sequence[int]) -> list[dict] | None:
        return self.samplings_[label].provenance(indices)  # the cluster of each image under sampler: cluster

    def close(self) -> None:
        self.pipe_ = None
        release()
