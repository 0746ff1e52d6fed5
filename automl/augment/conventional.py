"""``conventional``: classic label-preserving transforms of one training image per output.

Each output is its source image (``sources[i]``) through, in order: a random horizontal and
vertical flip, a random rotation, a random resized crop, and the AutoAugment ImageNet policy
(torchvision.transforms.v2). Nothing is learned, so ``fit`` does nothing.

Every transform draws from torch's global generator, so each image runs inside
``torch.random.fork_rng`` seeded from (seed, label, index): image k is the same whatever the
batching, and the caller's random state is left as it was.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from automl.augment.base import Augmenter, image_seed, register
from automl.errors import ConfigError
from automl.params import Interval, Options


@register
class Conventional(Augmenter):
    name = "conventional"
    summary = "flips, rotation, random resized crop and AutoAugment (ImageNet policy) of a training image"
    uses_sources = True
    requires = ("torch", "torchvision")
    defaults: dict[str, Any] = {
        "hflip": True,  # random horizontal flip, p = 0.5
        "vflip": False,  # random vertical flip, p = 0.5 (off: many scans have a meaningful up)
        "rotation": 15.0,  # degrees: a uniform angle in [-rotation, rotation]; 0 turns it off
        "crop_scale": 0.8,  # smallest share of the area a random resized crop keeps; 1.0 turns it off
        "autoaugment": True,  # the AutoAugment ImageNet policy
        "size": 0,  # output side in px (square); 0 keeps each source's own size
    }
    constraints = {
        "rotation": [Interval(float, 0.0, 180.0)],
        "crop_scale": [Interval(float, 0.0, 1.0, closed="right")],
        "size": [Options((0,)), Interval(int, 8, 4096)],
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._transforms: dict[tuple[int, int], Any] = {}  # per input (height, width)

    def check(self) -> None:
        p = self.params
        if not (p["hflip"] or p["vflip"] or p["rotation"] > 0 or p["crop_scale"] < 1 or p["autoaugment"]):
            raise ConfigError(f"augmenter {self.name!r}: every transform is off (hflip, vflip, autoaugment false, "
                              "rotation 0, crop_scale 1.0), so each output would copy its source. Turn at least "
                              "one on.")

    def _transform(self, height: int, width: int):
        """The transform pipeline for one input size (the crop's output size depends on it)."""
        if (height, width) in self._transforms:
            return self._transforms[height, width]
        from torchvision.transforms import v2

        p = self.params
        steps = []
        if p["hflip"]:
            steps.append(v2.RandomHorizontalFlip(0.5))
        if p["vflip"]:
            steps.append(v2.RandomVerticalFlip(0.5))
        if p["rotation"] > 0:
            steps.append(v2.RandomRotation(p["rotation"], interpolation=v2.InterpolationMode.BILINEAR))
        if p["crop_scale"] < 1:
            steps.append(v2.RandomResizedCrop((height, width), scale=(p["crop_scale"], 1.0), antialias=True))
        if p["autoaugment"]:
            steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
        transform = self._transforms[height, width] = v2.Compose(steps)
        return transform

    def generate(self, label: int, indices: Sequence[int], sources: Sequence, seed: int) -> list[np.ndarray]:
        import torch
        from torchvision import tv_tensors

        size = self.params["size"] or None
        out = []
        for index, source in zip(indices, sources):
            if source is None:
                raise RuntimeError(f"augmenter {self.name!r} makes each image from a training image; got none "
                                   f"for image {index} of class {label}")
            pixels = source.load(size)
            image = tv_tensors.Image(torch.from_numpy(np.array(pixels)).permute(2, 0, 1))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(image_seed(seed, label, index, "conventional"))
                result = self._transform(*pixels.shape[:2])(image)
            out.append(np.ascontiguousarray(result.permute(1, 2, 0).numpy(), dtype=np.uint8))
        return out

    def close(self) -> None:
        self._transforms.clear()
