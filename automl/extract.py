"""Frozen ImageNet CNNs from ``keras.applications`` as feature extractors.

Each extractor is the backbone without its classifier (``include_top=False``), global-average-pooled,
fed through the model's own ``preprocess_input``. Keras (and with it TensorFlow) is imported only
when a model is built; everything needed to name an extractor's embeddings in the cache
(``extractor_key``) is worked out without it, so a fully cached embed never loads TensorFlow.

Precision: ``auto`` picks the fastest the hardware runs well — ``bfloat16`` (Keras
``mixed_bfloat16``) on CPUs with AMX or AVX-512 BF16 instructions, ``float16`` on an NVIDIA GPU,
``float32`` elsewhere and on backends other than TensorFlow. Weights stay float32 either way; see
docs/benchmarks.md for the speed and the downstream-accuracy comparison behind that default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from automl._imports import require
from automl.errors import ConfigError, WeightsUnavailableError
from automl.file_extractors import (content_digest, file_name, file_path, is_file_extractor, load_file_model,
                                    model_kind, split_file_name)
from automl.images import DECODE_VERSION
from automl.registry import Registry

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
DEFAULT_IMAGE_SIZE = 299
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """A keras.applications model as an extractor: how to build it and what it outputs."""

    name: str
    constructor: str  # attribute of keras.applications
    module: str  # keras.applications sub-module holding its preprocess_input
    dim: int
    min_size: int
    weights_file: str  # the include_top=False file Keras downloads into $KERAS_HOME/models
    weights_url_dir: str


EXTRACTORS: Registry[Backbone] = Registry("extractor")

for _b in (
    Backbone("inception-resnet-v2", "InceptionResNetV2", "inception_resnet_v2", 1536, 75,
             "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "inception_resnet_v2"),
    Backbone("xception", "Xception", "xception", 2048, 71,
             "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "xception"),
    Backbone("inception-v3", "InceptionV3", "inception_v3", 2048, 75,
             "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "inception_v3"),
):
    EXTRACTORS.register(_b.name)(_b)


@dataclass(frozen=True)
class ExtractorKey:
    """Everything that determines an embedding besides the image: the embedding cache's key."""

    extractor: str
    weights: str  # "imagenet:<file>", "random:seed=<s>:keras=<version>" or "file:<content hash>"
    image_size: int
    precision: str  # resolved, never "auto"
    backend: str
    decode_version: int = DECODE_VERSION

    def slug(self) -> str:
        """A folder name: readable, and unique through a hash of the whole key."""
        digest = hashlib.blake2b(json.dumps(asdict(self), sort_keys=True).encode(), digest_size=6)
        kind = self.weights.split(":", 1)[0]
        size = f"{self.image_size}px" if self.image_size else "native"
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.extractor)[:80]  # file names with options run long
        return f"{name}-{size}-{self.precision}-{kind}-{digest.hexdigest()}"

    def to_dict(self) -> dict:
        return asdict(self)


# --- naming an extractor without building it ---------------------------------------------------


def keras_home() -> Path:
    """Where Keras caches downloads: ``$KERAS_HOME``, else ``~/.keras`` (Keras's own rule)."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"]).expanduser()
    home = Path("~").expanduser()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def keras_backend() -> str:
    """The backend Keras will load: ``$KERAS_BACKEND``, else keras.json, else TensorFlow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    try:
        return json.loads((keras_home() / "keras.json").read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def cpu_has_bf16() -> bool:
    """AMX-BF16 or AVX-512 BF16: the CPU runs bfloat16 matrix work natively (Linux only)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def nvidia_gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def resolve_precision(precision: str, backend: str, gpu: bool | None = None) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    if precision != "auto":
        return precision
    if backend != "tensorflow":
        return "float32"
    if nvidia_gpu_visible() if gpu is None else gpu:
        return "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


def parse_weights(weights: str | os.PathLike | None) -> str | Path | None:
    """``imagenet`` -> "imagenet"; ``none`` / None -> None (random, seeded); anything else a file."""
    if weights is None or str(weights).lower() in ("none", "random"):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file not found: {path}. Pass --weights imagenet (the Keras download and cache), "
            "--weights none (random, seeded), or the path to an existing weights file."
        )
    return path


@lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    st = path.stat()
    return _file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


def extractor_key(name: str, *, weights: str | os.PathLike | None = "imagenet",
                  image_size: int = DEFAULT_IMAGE_SIZE, precision: str = "auto", seed: int = 0,
                  backend: str | None = None, gpu: bool | None = None) -> ExtractorKey:
    """The cache identity of an extractor, worked out without importing Keras or TensorFlow.

    ``name`` is a registered extractor or ``file:PATH[?options]`` (a user's model file, whose identity
    is its content hash and its preprocessing overrides; ``weights``, ``image_size`` and ``precision``
    do not apply to it)."""
    if is_file_extractor(name):
        path, options = file_path(name), split_file_name(name)[1]
        kind = model_kind(path)
        return ExtractorKey(file_name(path.name, options), f"file:{content_digest(path)}", 0, "native",
                            "tflite" if kind == "tflite" else (backend or keras_backend()))
    backbone = EXTRACTORS.get(name)
    check_image_size(backbone, image_size)
    backend = backend or keras_backend()
    w = parse_weights(weights)
    if w is None:
        ident = f"random:seed={int(seed)}:keras={metadata.version('keras')}"
    elif w == "imagenet":
        ident = f"imagenet:{backbone.weights_file}"
    else:
        ident = f"file:{file_digest(w)}"
    return ExtractorKey(backbone.name, ident, int(image_size), resolve_precision(precision, backend, gpu),
                        backend)


def canonical_extractor(name: str) -> str:
    """A registered name in canonical form, or ``file:`` with the model's absolute path (and options)."""
    if is_file_extractor(name):
        return file_name(file_path(name), split_file_name(name)[1])
    return EXTRACTORS.get(name).name


def check_image_size(backbone: Backbone, image_size: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < backbone.min_size:
        raise ConfigError(
            f"image size for {backbone.name} must be an integer >= {backbone.min_size} (the Keras "
            f"minimum for this model); got {image_size!r}."
        )


# --- building ----------------------------------------------------------------------------------


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


def build_extractor(name: str, *, weights: str | os.PathLike | None = "imagenet",
                    image_size: int = DEFAULT_IMAGE_SIZE, precision: str = "auto", seed: int = 0) -> Extractor:
    """Build a frozen extractor. ``weights``: "imagenet", "none" (random init from ``seed``) or a path.

    Raises WeightsUnavailableError, naming the file Keras looks for and where, when ImageNet weights
    are neither cached nor downloadable; never falls back to other weights.
    """
    if is_file_extractor(name):
        model = load_file_model(file_path(name), split_file_name(name)[1])
        key = extractor_key(name)
        # Pixels go in as they are (uint8 values as float); the file model applies its own mapping.
        return Extractor(key, model.dim, _OnBatch(model.predict), lambda x: x, image_size=model.size)
    backbone = EXTRACTORS.get(name)
    keras = import_keras()
    backend = keras.config.backend()
    gpu = _backend_sees_gpu(backend)
    key = extractor_key(name, weights=weights, image_size=image_size, precision=precision, seed=seed,
                        backend=backend, gpu=gpu)
    module = getattr(keras.applications, backbone.module)
    with dtype_policy(keras, _POLICY[key.precision]):
        model = keras_backbone(keras, backbone, parse_weights(weights), key.image_size, seed)
    model.trainable = False
    return Extractor(key, backbone.dim, model, module.preprocess_input)


def keras_backbone(keras, backbone: Backbone, weights: str | Path | None, size: int, seed: int):
    """The backbone without its classifier, average-pooled, with ``weights`` as ``parse_weights``
    returns them (also what ``automl pretrain`` starts from)."""
    constructor = getattr(keras.applications, backbone.constructor)
    keras.utils.set_random_seed(int(seed))
    if weights == "imagenet":
        return _with_imagenet_weights(backbone, lambda: constructor(
            include_top=False, weights="imagenet", input_shape=(size, size, 3), pooling="avg"))
    model = constructor(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    if weights is not None:
        _load_weights_file(model, backbone, weights)
    return model


class _OnBatch:
    """Gives a plain predict function the ``predict_on_batch`` a Keras model has."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray]):
        self.predict_on_batch = predict


@contextlib.contextmanager
def dtype_policy(keras, policy: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _backend_sees_gpu(backend: str) -> bool:
    if not nvidia_gpu_visible():
        return False  # asking TensorFlow would only log a cuInit error on a CPU-only machine
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        # TensorFlow otherwise takes nearly all GPU memory at first use, and the torch generators
        # of an augmented fit, which run after the baseline's embeddings, would find none left.
        # Growth must be set before the GPU is initialised; if it already was (by the user's own
        # code), their setting stands.
        for device in gpus:
            try:
                tf.config.experimental.set_memory_growth(device, True)
            except RuntimeError:
                pass
        return bool(gpus)
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    return False


def _with_imagenet_weights(backbone: Backbone, build: Callable):
    cache = keras_home() / "models"
    try:
        return build()
    except Exception as exc:  # Keras raises a bare Exception for a failed download
        if (cache / backbone.weights_file).is_file() and "URL fetch failure" not in str(exc):
            raise
        url = f"{WEIGHTS_URL}{backbone.weights_url_dir}/{backbone.weights_file}"
        raise WeightsUnavailableError(
            f"cannot load ImageNet weights for {backbone.name}: Keras looks for {backbone.weights_file} "
            f"in its cache folder {cache} (set KERAS_HOME to move it) and could not download it from "
            f"{url} ({_first_line(exc)}). Offline: copy that file into {cache}, or pass "
            f"--weights PATH to a local copy of it, or --weights none for random (seeded) weights, "
            "which only test the plumbing."
        ) from exc


def _load_weights_file(model, backbone: Backbone, path: Path) -> None:
    try:
        model.load_weights(str(path))
    except Exception as exc:  # h5py / Keras raise many types for a mismatched file
        raise WeightsUnavailableError(
            f"cannot load weights file {path} into {backbone.name} without its top "
            f"(include_top=False, as {backbone.weights_file}): {_first_line(exc)}. Pass a weights file "
            "saved from the same architecture without its classifier."
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def describe_machine() -> str:
    """One line for logs and benchmark records."""
    return f"{platform.machine()} {os.cpu_count()} cpu, bf16={'yes' if cpu_has_bf16() else 'no'}"
