"""A user's own frozen extractor from a model file: ``--extractors file:PATH``.

Accepted: a Keras model (``.keras``, ``.h5``, or a TensorFlow SavedModel folder) and a TFLite model
(``.tflite``, float or quantized). The model's output may be a vector or a feature map (global-
average-pooled here). Input size and channels come from the model itself; so does the value range
of a quantized TFLite input (its scale and zero-point map the 0..255 pixels onto the integer range).
Models without that information get:

- float TFLite inputs: pixels scaled to [0, 1];
- Keras models and SavedModels: pixels as floats 0..255 — such a model is expected to carry its own
  preprocessing (as ``keras.applications`` models built with it, and ``automl pretrain``'s output, do).

A recipe (or the name itself) can override that: ``file:PATH?scale=0.0039&mean=0.5&std=0.5&bgr=true``
feeds ``(pixel * scale - mean) / std`` (channels reversed first with ``bgr``), where a missing scale is
1 for Keras models and SavedModels and 1/255 for TFLite, a missing mean 0 and std 1. A quantized
TFLite input then gets that float quantized with its own scale and zero-point. Recipes write the
same as a mapping, ``{file: PATH, scale: 0.0039, mean: [...], std: [...], bgr: false}``; the
name with its ``?options`` is the canonical form, in the cache key and the saved run alike.

A name that is neither built in nor ``file:`` may be a model ``automl pretrain`` saved in the
store (``pretrained.py``); ``resolve`` (``resolution.py``) makes the ``ModelFile`` for all three.

The file's identity in the embedding cache and the model bundle is its content hash (with the
options): a changed file is never confused with the old one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from automl._files import content_digest
from automl.errors import ConfigError, DataError, WeightsUnavailableError
from automl.extractors.key import ExtractorKey
from automl.extractors.precision import keras_backend
from automl.extractors.spec import Extractor, ExtractorSpec
from automl.params import Interval

PREFIX = "file:"
OPTIONS = ("scale", "mean", "std", "bgr")
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing overrides of a file extractor; all None/False: the model kind's default."""

    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bgr: bool = False

    def __bool__(self) -> bool:
        return self != Preprocessing()

    def query(self) -> str:
        """The canonical ``key=value&...`` form (floats written exactly, lists joined with ``:``)."""
        parts = []
        if self.scale is not None:
            parts.append(f"scale={self.scale!r}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None:
                parts.append(f"{key}=" + ":".join(repr(v) for v in values))
        if self.bgr:
            parts.append("bgr=true")
        return "&".join(parts)

    def check_channels(self, path: Path, channels: int) -> None:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) not in (1, channels):
                raise ConfigError(f"{path}: {key} has {len(values)} values but the model takes {channels} "
                                  f"channel(s); give one value or {channels}.")
        if self.bgr and channels != 3:
            raise ConfigError(f"{path}: bgr needs a 3-channel model input; this model takes {channels}. "
                              "Leave bgr out.")

    def apply(self, x: np.ndarray, default_scale: float) -> np.ndarray:
        """float32 pixels 0..255 (n, s, s, c) -> ``(pixel * scale - mean) / std``."""
        if self.bgr:
            x = x[..., ::-1]
        x = x * np.float32(default_scale if self.scale is None else self.scale)
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        return x.astype(np.float32, copy=False)


@dataclass(frozen=True)
class ModelFile(ExtractorSpec):
    """A model file (absolute path, not necessarily there yet) with its preprocessing overrides."""

    path: Path
    options: Preprocessing = Preprocessing()

    @property
    def name(self) -> str:
        return file_name(self.path, self.options)

    def key(self, *, backend: str | None = None, **settings) -> ExtractorKey:
        """Identity: the file's content digest and the overrides; a Keras backbone's settings do not apply."""
        kind = model_kind(self._existing())
        return ExtractorKey(file_name(self.path.name, self.options), f"file:{content_digest(self.path)}", 0, "native",
                            "tflite" if kind == "tflite" else (backend or keras_backend()))

    def build(self, **settings) -> Extractor:
        from automl.extractors.file_models import load_file_model

        model = load_file_model(self._existing(), self.options)
        # Pixels go in as they are (uint8 values as float); the file model applies its own mapping.
        return Extractor(self.key(), model.dim, _OnBatch(model.predict), lambda x: x, image_size=model.size)

    def refitted_key(self, saved: ExtractorKey, weights, seed: int) -> ExtractorKey:
        if not self.path.exists():
            raise WeightsUnavailableError(
                f"the model was fitted on embeddings from the model file {self.path}, which no longer exists; "
                "restore it (its content hash must match) to predict with this run.")
        now = self.key()
        if now != saved:
            raise ConfigError(
                f"the model file {self.path} has changed since this run was fitted (content hash "
                f"{saved.weights.split(':', 1)[1]}, now {now.weights.split(':', 1)[1]}); its embeddings would "
                "not match the head. Restore the original file, or fit a new run with this one.")
        return now

    def _existing(self) -> Path:
        if not self.path.exists():
            raise ConfigError(f"extractor {self.name!r}: model file not found: {self.path}. Pass file:PATH with the "
                              "path of a .keras, .h5, .tflite file or a SavedModel folder.")
        return self.path


class _OnBatch:
    """Gives a plain predict function the ``predict_on_batch`` a Keras model has."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray]):
        self.predict_on_batch = predict


# --- names: file:PATH?options and {file: PATH, ...} ---------------------------------------------


def is_file_name(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def parse_file_name(name: str, base_dir: str | os.PathLike | None = None) -> ModelFile:
    """``file:PATH?options`` -> its spec; a relative PATH follows ``base_dir`` (else the working directory)."""
    rest = name[len(PREFIX):]
    if not rest.strip():
        raise ConfigError(f"extractor {name!r}: file: needs a model path, e.g. file:models/mine.tflite.")
    if "?" not in rest or _absolute(rest, base_dir).exists():
        return ModelFile(_absolute(rest, base_dir))
    path, query = rest.rsplit("?", 1)
    options: dict[str, Any] = {}
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"extractor {name!r}: option {part!r} is not key=value; expected "
                              f"file:PATH?scale=...&mean=...&std=...&bgr=... ({', '.join(OPTIONS)}).")
        if key in options:
            raise ConfigError(f"extractor {name!r}: option {key!r} given twice; give it once.")
        options[key] = value.split(":") if key in ("mean", "std") else value
    return ModelFile(_absolute(path, base_dir), preprocessing(options, where=f"extractor {name!r}"))


def parse_file_mapping(spec: dict, base_dir: str | os.PathLike | None = None) -> ModelFile:
    """A recipe's ``{file: PATH, scale: ..., mean: ..., std: ..., bgr: ...}``."""
    where = f"extractor {spec!r}"
    path = spec.get("file")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}: file: expected the path of a model file; found {path!r}. Fix: write e.g. "
                          "{file: models/mine.tflite, scale: 0.00392}.")
    return ModelFile(_absolute(path, base_dir), preprocessing({k: v for k, v in spec.items() if k != "file"}, where))


def file_name(path: str | os.PathLike, options: Preprocessing = Preprocessing()) -> str:
    """The canonical extractor name of a model file with its overrides."""
    return f"{PREFIX}{path}" + (f"?{options.query()}" if options else "")


def _absolute(path: str, base_dir: str | os.PathLike | None) -> Path:
    full = Path(path).expanduser()
    if not full.is_absolute():
        full = Path(base_dir if base_dir is not None else Path.cwd()) / full
    return full.resolve()


def preprocessing(options: dict, where: str) -> Preprocessing:
    """Check overrides given as a mapping (a recipe) or parsed from a name (strings)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; valid: file, "
                          f"{', '.join(OPTIONS)}. Fix: rename or remove them.")
    scale = options.get("scale")
    if scale is not None:
        scale = _number(scale, "scale", where, positive=True)
    mean, std = (_numbers(options.get(k), k, where, positive=k == "std") for k in ("mean", "std"))
    bgr = options.get("bgr", False)
    if isinstance(bgr, str) and bgr.lower() in ("true", "false", "1", "0"):
        bgr = bgr.lower() in ("true", "1")
    if not isinstance(bgr, bool):
        raise ConfigError(f"{where}: bgr: expected true or false; found {bgr!r}. Fix: write bgr: true to feed the "
                          "channels as BGR (Caffe-style models), or leave it out.")
    return Preprocessing(scale, mean, std, bgr)


_EXAMPLES = {"scale": "scale: 0.00392 (1/255)", "mean": "mean: [0.485, 0.456, 0.406]",
             "std": "std: [0.229, 0.224, 0.225]"}
_FINITE, _POSITIVE = Interval(float, closed="neither"), Interval(float, 0, closed="neither")


def _number(value: Any, key: str, where: str, positive: bool = False) -> float:
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not (_POSITIVE if positive else _FINITE).accepts(number):
        constraint = "a number > 0" if positive else "a number"
        raise ConfigError(f"{where}: {key}: expected {constraint}; found {value!r}. Fix: e.g. {_EXAMPLES[key]}.")
    return number


def _numbers(value: Any, key: str, where: str, positive: bool) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) not in (1, 3):
        raise ConfigError(f"{where}: {key}: expected one number or a list of 3 (per channel); found {value!r}.")
    return tuple(_number(v, key, where, positive) for v in values)


def model_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
    elif path.suffix.lower() == ".tflite":
        return "tflite"
    elif path.suffix.lower() in _KERAS_SUFFIXES:
        return "keras"
    raise DataError(f"{path} is not a model file automl reads: expected .keras, .h5, .tflite or a SavedModel "
                    "folder (with saved_model.pb).")
