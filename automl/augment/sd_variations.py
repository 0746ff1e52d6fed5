"""``sd-variations``: Stable Diffusion image variations of each training image of the chosen classes
(the DALL-E 2 variation setting).

Each output is conditioned on one source image alone (``uses_sources``), with no prompt: an
image-variation model (diffusers' ``StableDiffusionImageVariationPipeline``) replaces SD's text
encoder with a CLIP image encoder, and its projected embedding of the source is what the UNet's
cross-attention reads. The output is a new image with the source's content and style, not a
re-noised copy of its pixels as in ``sd-img2img``; it still travels in its source's CV group.
Nothing is trained, so ``fit_params`` is empty.

The source goes to the image encoder as the model was trained on it: squashed to ``resolution``,
then resized to the encoder's input (224 px for the default model) bicubically *without*
antialiasing and normalised with the model's CLIP mean and std; the default model's card warns that
resizing as the pipeline's own feature extractor does (with antialiasing) changes the results
markedly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from automl.augment.base import register
from automl.augment.sd_common import (COMMON, COMMON_CONSTRAINTS, REQUIRES, SDAugmenter, check_common, generate_images,
                                      inference_dtype, load_pipeline, model_class, release, resolve_model, warn_cpu)
from automl.errors import ConfigError

# Lambda's SD image-variations model (v2 weights on the Hub's main branch), fine-tuned from SD 1.4
# to take a CLIP ViT-L/14 image embedding instead of text.
VARIATION_MODEL = "lambdalabs/sd-image-variations-diffusers"
PIPELINE = "StableDiffusionImageVariationPipeline"


@register
class SDVariations(SDAugmenter):
    name = "sd-variations"
    summary = "Stable Diffusion image variations: a new image from each training image alone (no prompt)"
    # No prompt, so no negative prompt; guidance 3 is the default model's card's setting.
    defaults = {**{k: v for k, v in COMMON.items() if k != "negative_prompt"},
                "model": VARIATION_MODEL, "guidance_scale": 3.0}
    constraints = COMMON_CONSTRAINTS
    fit_params = ()
    uses_sources = True
    requires = REQUIRES

    def check(self) -> None:
        check_common(self.name, self.params, VARIATION_MODEL)

    def preflight(self) -> None:
        check_variation_model(resolve_model(self.params["model"], VARIATION_MODEL), self.params["model"])

    def fit(self, train, classes, chosen, work_dir, seed, progress=True) -> None:
        self.start_fit(classes)
        check_variation_model(self.folder_, self.params["model"])
        self.pipe_ = None

    def _pipe(self):
        if self.pipe_ is None:
            warn_cpu(self.device_, self.name)
            self.pipe_ = load_pipeline(self.folder_, "variation", self.device_,
                                       inference_dtype(self.device_, self.params["precision"]))
        return self.pipe_

    def generate(self, label: int, indices: Sequence[int], sources: Sequence, seed: int) -> list[np.ndarray]:
        p = self.params
        pipe = self._pipe()
        conditions = [encoder_input(pipe, src.load(p["resolution"])) for src in sources]
        return generate_images(self, pipe, None, label, indices, seed, images=conditions, height=p["resolution"],
                               width=p["resolution"])

    def close(self) -> None:
        self.pipe_ = None
        release()


def check_variation_model(folder: Path, model: str) -> None:
    """Refuse a base model that is not an image-variation model (a text-to-image SD folder has no
    image encoder), naming what it is and the fix."""
    found = model_class(folder)
    if found != PIPELINE:
        raise ConfigError(
            f"augmenter 'sd-variations' needs an image-variation model (a diffusers {PIPELINE} folder: "
            f"image_encoder/, feature_extractor/, unet/, vae/, scheduler/); model {model!r} ({folder}) is "
            f"{'a ' + found if found else 'a folder whose model_index.json names no pipeline class'}. Fix: "
            f"params: {{model: {VARIATION_MODEL}}} (the default), or a local folder of such a model; for a "
            "text-to-image model use sd-img2img.")


def encoder_input(pipe, image: np.ndarray):
    """The image encoder's input for one uint8 RGB image: resized to the encoder's size bicubically
    without antialiasing (as the model was trained), scaled to 0..1 and normalised with the feature
    extractor's mean and std; a float32 (3, S, S) tensor on the CPU (the pipeline moves it)."""
    import torch
    import torch.nn.functional as F

    size = pipe.image_encoder.config.image_size
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False)[0]
    mean = torch.tensor(pipe.feature_extractor.image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pipe.feature_extractor.image_std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std
