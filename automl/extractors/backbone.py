"""Frozen ImageNet CNNs from ``keras.applications`` as extractors: one ``Backbone`` per file in
``backbones/``, registered there in ``EXTRACTORS`` (adding a backbone is adding its file).

Each is the model without its classifier (``include_top=False``), global-average-pooled, fed through
the model's own ``preprocess_input``. Keras (and with it TensorFlow) is imported only when a model is
built; the cache key is worked out without it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

from automl.errors import ConfigError, WeightsUnavailableError
from automl.extractors.key import ExtractorKey
from automl.extractors.precision import POLICY, backend_sees_gpu, keras_backend, keras_home, resolve_precision
from automl.extractors.spec import DEFAULT_IMAGE_SIZE, Extractor, ExtractorSpec, first_line, import_keras
from automl.extractors.weights import Weights
from automl.params import Interval, param_error
from automl.registry import Registry

WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone(ExtractorSpec):
    """A keras.applications model as an extractor: how to build it and what it outputs."""

    name: str
    constructor: str  # attribute of keras.applications
    module: str  # keras.applications sub-module holding its preprocess_input
    dim: int
    min_size: int
    weights_file: str  # the include_top=False file Keras downloads into $KERAS_HOME/models
    weights_url_dir: str

    def check_image_size(self, image_size: int) -> None:
        if not Interval(int, self.min_size).accepts(image_size):
            raise param_error(self.name, "image_size", f"an integer >= {self.min_size} (the Keras minimum for this "
                              "model)", image_size, f"Pass --image-size {self.min_size} or more.")

    def key(self, *, weights: Weights, image_size: int = DEFAULT_IMAGE_SIZE, precision: str = "auto",
            seed: int = 0, backend: str | None = None, gpu: bool | None = None) -> ExtractorKey:
        self.check_image_size(image_size)
        backend = backend or keras_backend()
        return ExtractorKey(self.name, weights.key(self.weights_file, seed), int(image_size),
                            resolve_precision(precision, backend, gpu), backend)

    def build(self, *, weights: Weights, image_size: int = DEFAULT_IMAGE_SIZE, precision: str = "auto",
              seed: int = 0) -> Extractor:
        keras = import_keras()
        backend = keras.config.backend()
        key = self.key(weights=weights, image_size=image_size, precision=precision, seed=seed, backend=backend,
                       gpu=backend_sees_gpu(backend))
        module = getattr(keras.applications, self.module)
        with dtype_policy(keras, POLICY[key.precision]):
            model = self.keras_model(keras, weights, key.image_size, seed)
        model.trainable = False
        return Extractor(key, self.dim, model, module.preprocess_input)

    def refitted_key(self, saved: ExtractorKey, weights: Weights, seed: int) -> ExtractorKey:
        if weights.missing:
            raise WeightsUnavailableError(
                f"the model was fitted on embeddings from {saved.extractor} with weights file {weights.path}, which "
                "no longer exists; restore the file (its content hash must match) to predict with this run.")
        now = self.key(weights=weights, image_size=saved.image_size, precision=saved.precision, seed=seed)
        if now != saved:
            diffs = ", ".join(f"{k}: fitted with {getattr(saved, k)!r}, now {getattr(now, k)!r}"
                              for k in saved.to_dict() if getattr(saved, k) != getattr(now, k))
            raise ConfigError(
                f"cannot rebuild the extractor this model was fitted on ({diffs}). Predicting with another "
                "extractor would give meaningless scores: restore the original weights file, Keras version or "
                "KERAS_BACKEND, or fit a new run."
            )
        return now

    def keras_model(self, keras, weights: Weights, size: int, seed: int):
        """The backbone without its classifier, average-pooled, with ``weights`` (also what
        ``automl pretrain`` starts from)."""
        constructor = getattr(keras.applications, self.constructor)
        keras.utils.set_random_seed(int(seed))
        if weights.kind == "imagenet":
            return self._with_imagenet_weights(lambda: constructor(
                include_top=False, weights="imagenet", input_shape=(size, size, 3), pooling="avg"))
        model = constructor(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
        if weights.path is not None:
            self._load_weights_file(model, weights)
        return model

    def _with_imagenet_weights(self, build: Callable):
        cache = keras_home() / "models"
        try:
            return build()
        except Exception as exc:  # Keras raises a bare Exception for a failed download
            if (cache / self.weights_file).is_file() and "URL fetch failure" not in str(exc):
                raise
            url = f"{WEIGHTS_URL}{self.weights_url_dir}/{self.weights_file}"
            raise WeightsUnavailableError(
                f"cannot load ImageNet weights for {self.name}: Keras looks for {self.weights_file} "
                f"in its cache folder {cache} (set KERAS_HOME to move it) and could not download it from "
                f"{url} ({first_line(exc)}). Offline: copy that file into {cache}, or pass "
                f"--weights PATH to a local copy of it, or --weights none for random (seeded) weights, "
                "which only test the plumbing."
            ) from exc

    def _load_weights_file(self, model, weights: Weights) -> None:
        try:
            model.load_weights(str(weights.path))
        except Exception as exc:  # h5py / Keras raise many types for a mismatched file
            raise WeightsUnavailableError(
                f"cannot load weights file {weights.path} into {self.name} without its top "
                f"(include_top=False, as {self.weights_file}): {first_line(exc)}. Pass a weights file "
                "saved from the same architecture without its classifier."
            ) from exc


EXTRACTORS: Registry[Backbone] = Registry("extractor", package="automl.extractors.backbones")


@contextlib.contextmanager
def dtype_policy(keras, policy: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
