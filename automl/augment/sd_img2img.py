"""``sd-img2img``: Stable Diffusion image-to-image over each training image of the chosen classes.

Each output starts from one source image (``uses_sources``), noised by ``strength`` (the share of
the diffusion run redone: 0.1 keeps the source's layout, 0.2 already invents detail; the study used
0.05-0.20) and denoised under the class prompt. Nothing is trained, so ``fit_params`` is empty.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from automl.augment.base import register
from automl.augment.sd_common import (COMMON, COMMON_CONSTRAINTS, REQUIRES, SDAugmenter, check_common, check_template,
                                      class_noun, generate_images, inference_dtype, load_pipeline, release, warn_cpu)
from automl.errors import ConfigError
from automl.params import Interval


@register
class SDImg2Img(SDAugmenter):
    name = "sd-img2img"
    summary = "Stable Diffusion img2img: each training image re-noised (strength) and denoised under its class prompt"
    defaults = {**COMMON, "strength": 0.1, "prompt": "an image of a {class}"}
    constraints = {**COMMON_CONSTRAINTS, "strength": [Interval(float, 0, 1, closed="right")]}
    fit_params = ()
    uses_sources = True
    requires = REQUIRES

    def check(self) -> None:
        p = self.params
        check_common(self.name, p)
        if int(p["steps"] * p["strength"]) < 1:
            raise ConfigError(f"augmenter {self.name!r}: strength {p['strength']} x steps {p['steps']} runs no "
                              f"denoising step (int(steps x strength) must be >= 1). Fix: raise steps to at least "
                              f"{int(np.ceil(1 / p['strength']))} or raise strength.")
        check_template(self.name, "prompt", p["prompt"], ["class"])

    def fit(self, train, classes, chosen, work_dir, seed, progress=True) -> None:
        self.start_fit(classes)
        self.pipe_ = None

    def _pipe(self):
        if self.pipe_ is None:
            warn_cpu(self.device_, self.name)
            self.pipe_ = load_pipeline(self.folder_, "img2img", self.device_,
                                       inference_dtype(self.device_, self.params["precision"]))
        return self.pipe_

    def generate(self, label: int, indices: Sequence[int], sources: Sequence, seed: int) -> list[np.ndarray]:
        p = self.params
        pipe = self._pipe()
        prompt = p["prompt"].format(**{"class": class_noun(self.classes_[label])})
        images = [src.load(p["resolution"]) for src in sources]
        return generate_images(self, pipe, prompt, label, indices, seed, images=images, strength=p["strength"])

    def close(self) -> None:
        self.pipe_ = None
        release()
