"""Synthetic training images: the augmenter registry, the plan, and the cached generation.

``--augment NAME`` looks the augmenter up in ``AUGMENTERS``. Each augmenter module registers its
classes (``@register``); the registry imports every module of this package at its first lookup
(``automl.registry.discover``), so adding an augmenter is adding its file. Every module here must
therefore be cheap to import: torch, diffusers and the like are imported inside the functions that
use them.
"""

from __future__ import annotations

from automl.augment.base import AUGMENTERS, Augmenter, build_augmenter, register

__all__ = ["AUGMENTERS", "Augmenter", "build_augmenter", "register"]
