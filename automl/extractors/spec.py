"""What every extractor is: a spec (``resolve`` makes one from a name) and the built model it makes.

A spec knows its canonical ``name``, its cache ``key`` (worked out without Keras or TensorFlow, so a
fully cached embed never loads them), and how to ``build`` the model. The settings a Keras backbone
takes (weights, image size, precision, seed) are passed to both; a model file ignores them, having
its own weights, input size and precision.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from automl._imports import require
from automl.extractors.key import ExtractorKey
from automl.extractors.weights import Weights

DEFAULT_IMAGE_SIZE = 299  # the backbones' native input side


class ExtractorSpec:
    """A resolved extractor name (``automl.extractors.resolve``); frozen in every subclass."""

    name: str  # canonical: a registered backbone name, or file:/absolute/path[?options]

    def key(self, *, weights: Weights, image_size: int = DEFAULT_IMAGE_SIZE, precision: str = "auto",
            seed: int = 0, backend: str | None = None, gpu: bool | None = None) -> ExtractorKey:
        """The cache identity of what ``build`` makes with these settings; checks them, loads no framework."""
        raise NotImplementedError

    def build(self, *, weights: Weights, image_size: int = DEFAULT_IMAGE_SIZE, precision: str = "auto",
              seed: int = 0) -> "Extractor":
        """The frozen model. Raises ``WeightsUnavailableError`` for weights it cannot load; never substitutes others."""
        raise NotImplementedError

    def refitted_key(self, saved: ExtractorKey, weights: Weights, seed: int) -> ExtractorKey:
        """The key this spec has now for a model fitted on ``saved``; raises if that is not ``saved``
        (a head fitted on other embeddings would give meaningless scores)."""
        raise NotImplementedError


class Extractor:
    """A built, frozen extractor: ``extractor(batch)`` maps uint8 images to float32 embeddings.

    ``calls`` counts model invocations, so callers (and tests) can tell cached work from new work.
    """

    def __init__(self, key: ExtractorKey, dim: int, model, preprocess: Callable[[np.ndarray], np.ndarray],
                 image_size: int | None = None):
        self.key = key
        self.dim = dim
        self.model = model
        self._preprocess = preprocess
        self.image_size = image_size or key.image_size  # a model file's own input size
        self.calls = 0

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (n, s, s, 3) -> the model's float input; thread-safe, run in the decode workers."""
        return self._preprocess(images.astype(np.float32))

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed float inputs (n, s, s, 3) -> float32 (n, dim)."""
        self.calls += 1
        out = self.model.predict_on_batch(inputs)
        return np.asarray(out, dtype=np.float32).reshape(len(inputs), self.dim)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.predict(self.preprocess(images))


def import_keras():
    """Import Keras with TensorFlow's start-up chatter turned down (a user's own setting wins)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("keras", "embedding images with keras.applications extractors")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
