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

The file's identity in the embedding cache and the model bundle is its content hash (with the
options): a changed file is never confused with the old one.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl.errors import ConfigError, DataError

PREFIX = "file:"
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


OPTIONS = ("scale", "mean", "std", "bgr")


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


def is_file_extractor(name: str) -> bool:
    return str(name).startswith(PREFIX)


def split_file_name(name: str) -> tuple[str, Preprocessing]:
    """``file:PATH?options`` -> (PATH as written, its checked options). Raises ConfigError."""
    rest = str(name)[len(PREFIX):]
    if "?" not in rest or Path(rest).expanduser().exists():
        return rest, Preprocessing()
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
    return path, preprocessing(options, where=f"extractor {name!r}")


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


def _number(value: Any, key: str, where: str, positive: bool = False) -> float:
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (positive and number <= 0):
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


def file_name(path: str | os.PathLike, options: Preprocessing = Preprocessing()) -> str:
    """The canonical extractor name of a model file with its overrides."""
    return f"{PREFIX}{path}" + (f"?{options.query()}" if options else "")


def spec_to_name(spec: dict) -> str:
    """A recipe's ``{file: PATH, scale: ..., ...}`` as the canonical ``file:PATH?...`` name."""
    where = f"extractor {spec!r}"
    path = spec.get("file")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}: file: expected the path of a model file; found {path!r}. Fix: write e.g. "
                          "{file: models/mine.tflite, scale: 0.00392}.")
    return file_name(path, preprocessing({k: v for k, v in spec.items() if k != "file"}, where))


def file_path(name: str) -> Path:
    """The model path of a ``file:PATH`` name (options stripped), checked to exist."""
    path = Path(split_file_name(name)[0]).expanduser()
    if not path.exists():
        raise ConfigError(f"extractor {name!r}: model file not found: {path}. Pass file:PATH with the path of a "
                          ".keras, .h5, .tflite file or a SavedModel folder.")
    return path.resolve()


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


def content_digest(path: Path) -> str:
    """Hash of a file, or of every file of a SavedModel folder (names and bytes)."""
    from automl.extract import file_digest

    if path.is_file():
        return file_digest(path)
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + file_digest(f).encode())
    return h.hexdigest()


class FileModel:
    """The model behind a file extractor: ``size`` (input side), ``dim`` and ``predict(uint8 batch)``."""

    size: int
    dim: int

    def predict(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


def load_file_model(path: Path, options: Preprocessing = Preprocessing()) -> FileModel:
    kind = model_kind(path)
    if kind == "tflite":
        return _TFLiteModel(path, options)
    if kind == "savedmodel":
        return _SavedModel(path, options)
    return _KerasFileModel(path, options)


def _input_side(path: Path, shape) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) != 4:
        raise DataError(f"{path}: the model's input has shape {shape}; an image extractor takes (batch, height, "
                        "width, channels).")
    h, w, c = shape[1], shape[2], shape[3]
    if h is None or w is None or h != w or c not in (1, 3):
        raise DataError(f"{path}: the model's input has shape {shape}; automl feeds square images with 1 or 3 "
                        "channels of a fixed size (e.g. (None, 224, 224, 3)).")
    return int(h), int(c)


def _pool(path: Path, out: np.ndarray) -> np.ndarray:
    _check_output_rank(path, out.shape)
    return out.mean(axis=(1, 2)) if out.ndim == 4 else out


def _check_output_rank(path: Path, shape) -> None:
    if len(shape) not in (2, 4):
        raise DataError(f"{path}: the model's output has shape {tuple(shape)}; an extractor must output a vector "
                        "(batch, features) or a feature map (batch, height, width, channels).")


class _TFLiteModel(FileModel):
    def __init__(self, path: Path, options: Preprocessing):
        interpreter_cls = _tflite_interpreter()
        try:
            self._interp = interpreter_cls(model_path=str(path), num_threads=os.cpu_count() or 1)
        except (ValueError, RuntimeError) as exc:
            raise DataError(f"{path} is not a readable TFLite model: {exc}") from exc
        self.path = path
        inp = self._interp.get_input_details()
        out = self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise DataError(f"{path}: the model has {len(inp)} inputs and {len(out)} outputs; an extractor has one of each.")
        self._in, self._out = inp[0], out[0]
        self.size, self._channels = _input_side(path, self._in["shape"])
        self.dim = int(self._out["shape"][-1])
        self._options = options
        options.check_channels(path, self._channels)
        self._quant = self._in.get("quantization", (0.0, 0))
        if options and np.dtype(self._in["dtype"]).kind in "ui" and not self._quant[0]:
            raise ConfigError(f"{path}: the model's integer input has no quantization scale, so float "
                              "preprocessing overrides cannot be mapped onto it; leave scale/mean/std/bgr out.")
        self._batch = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = _channels(images, self._channels)
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind in "ui" and self._options:
            # Overrides define the float the model was trained on; its own scale and zero-point quantize it.
            info = np.iinfo(dtype)
            real = self._options.apply(x.astype(np.float32), 1 / 255)
            x = np.clip(np.round(real / self._quant[0] + self._quant[1]), info.min, info.max).astype(dtype)
        elif dtype.kind in "ui":
            # A quantized input: its scale and zero-point define the float range the model was trained
            # on; the 0..255 pixels map linearly onto the integer range.
            x = (x.astype(np.int32) + np.iinfo(dtype).min).astype(dtype)
        else:
            x = self._options.apply(x.astype(np.float32), 1 / 255).astype(dtype)
        if self._batch != len(x):
            self._interp.resize_tensor_input(self._in["index"], [len(x), self.size, self.size, self._channels])
            self._interp.allocate_tensors()
            self._batch = len(x)
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        out = self._interp.get_tensor(self._out["index"])
        scale, zero = self._out.get("quantization", (0.0, 0))
        out = (out.astype(np.float32) - zero) * scale if scale else out.astype(np.float32)
        return _pool(self.path, out)


class _KerasFileModel(FileModel):
    def __init__(self, path: Path, options: Preprocessing):
        from automl.extract import import_keras

        keras = import_keras()
        self.path = path
        try:
            self._model = keras.models.load_model(str(path), compile=False)
        except Exception as exc:  # Keras raises many types for a file that is not its model
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path} is not a loadable Keras model: {first}") from exc
        self.size, self._channels = _input_side(path, self._model.input_shape)
        _check_output_rank(path, self._model.output_shape)
        self.dim = int(self._model.output_shape[-1])
        self._options = options
        options.check_channels(path, self._channels)

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = self._options.apply(_channels(images, self._channels).astype(np.float32), 1.0)
        return _pool(self.path, np.asarray(self._model.predict_on_batch(x), dtype=np.float32))


class _SavedModel(FileModel):
    """A TensorFlow SavedModel folder, called through its ``serving_default`` signature (what
    ``model.export()`` and ``tf.saved_model.save`` write); its input spec gives size and channels."""

    def __init__(self, path: Path, options: Preprocessing):
        from automl.extract import import_keras

        import_keras()  # TensorFlow, with its start-up logging turned down
        import tensorflow as tf

        self.path = path
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TensorFlow raises many types for a folder that is not its model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{path} is not a loadable TensorFlow SavedModel: {first}") from exc
        signatures = dict(loaded.signatures)
        if "serving_default" not in signatures:
            raise DataError(f"{path}: the SavedModel has no serving_default signature (it has: "
                            f"{', '.join(signatures) or 'none'}); export it with model.export(PATH) or "
                            "tf.saved_model.save(model, PATH, signatures=...).")
        self._loaded = loaded  # the signature's variables live as long as this object
        self._fn = signatures["serving_default"]
        inputs = self._fn.structured_input_signature[1]
        outputs = self._fn.structured_outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise DataError(f"{path}: the serving_default signature has {len(inputs)} inputs and {len(outputs)} "
                            "outputs; an extractor has one of each.")
        (self._input_name, spec), = inputs.items()
        (self._output_name, out_spec), = outputs.items()
        self.size, self._channels = _input_side(path, spec.shape.as_list())
        _check_output_rank(path, out_spec.shape.as_list())
        self.dim = int(out_spec.shape[-1])
        self._dtype = spec.dtype
        self._options = options
        options.check_channels(path, self._channels)
        if not spec.dtype.is_floating and options:
            raise ConfigError(f"{path}: the model's input is {spec.dtype.name}, so float preprocessing overrides "
                              "do not apply; leave scale/mean/std/bgr out.")

    def predict(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        x = _channels(images, self._channels)
        if self._dtype.is_floating:
            x = self._options.apply(x.astype(np.float32), 1.0)
        out = self._fn(**{self._input_name: tf.constant(x, dtype=self._dtype)})[self._output_name]
        return _pool(self.path, np.asarray(out, dtype=np.float32))


def _channels(images: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return images.mean(axis=3, keepdims=True).round().astype(np.uint8)
    return images


def _tflite_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter  # the successor of tf.lite, when installed

        return Interpreter
    except ImportError:
        from automl.extract import import_keras

        import_keras()  # TensorFlow, with its start-up logging turned down
        import tensorflow as tf

        return _without_move_warning(tf.lite.Interpreter)


def _without_move_warning(cls):
    """tf.lite.Interpreter warns on creation that it moves to ai_edge_litert; it works in TF 2.21."""
    def make(**kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return cls(**kwargs)
    return make
