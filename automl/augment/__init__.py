"""Synthetic training images: the augmenter registry, the plan, and the cached generation.

``--augment NAME`` looks the augmenter up in ``AUGMENTERS``; each module listed in ``_MODULES``
registers its augmenters when imported (cheaply: torch and diffusers load only when an augmenter
fits or generates).
"""

from __future__ import annotations

import importlib

from automl.augment.base import AUGMENTERS, Augmenter, build_augmenter, register

# One module per augmenter family; importing it registers its names.
_MODULES = ("conventional", "dcgan", "sd_img2img", "sd_dreambooth", "sd_textual_inversion")

for _name in _MODULES:
    importlib.import_module(f"automl.augment.{_name}")

__all__ = ["AUGMENTERS", "Augmenter", "build_augmenter", "register"]
