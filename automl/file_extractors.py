"""A user's own frozen extractor from a model file: ``--extractors file:PATH``.

Accepted: a Keras model (``.keras``, ``.h5``, or a TensorFlow SavedModel folder) and a TFLite model
(``.tflite``, float or quantized). The model's output may be a vector or a feature map (global-
average-pooled here). Input size and channels come from the model itself; so does the value range
of a quantized TFLite input (its scale and zero-point map the 0..255 pixels onto the integer range).
Models without that information get:

- float TFLite inputs: pixels scaled to [0, 1];
- Keras models: pixels as floats 0..255 — a Keras model is expected to carry its own preprocessing
  (as ``keras.applications`` models built with it, and ``automl pretrain``'s output, do).

The file's identity in the embedding cache and the model bundle is its content hash: a changed file
is never confused with the old one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from automl.errors import ConfigError, DataError

PREFIX = "file:"
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def is_file_extractor(name: str) -> bool:
    return str(name).startswith(PREFIX)


def file_path(name: str) -> Path:
    """The model path of a ``file:PATH`` name, checked to exist."""
    path = Path(name[len(PREFIX):]).expanduser()
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


def load_file_model(path: Path) -> FileModel:
    kind = model_kind(path)
    return _TFLiteModel(path) if kind == "tflite" else _KerasFileModel(path, kind)


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
    if out.ndim == 4:
        return out.mean(axis=(1, 2))
    if out.ndim == 2:
        return out
    raise DataError(f"{path}: the model's output has shape {out.shape}; an extractor must output a vector "
                    "(batch, features) or a feature map (batch, height, width, channels).")


class _TFLiteModel(FileModel):
    def __init__(self, path: Path):
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
        self._batch = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = _channels(images, self._channels)
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind in "ui":
            # A quantized input: its scale and zero-point define the float range the model was trained
            # on; the 0..255 pixels map linearly onto the integer range.
            x = (x.astype(np.int32) + np.iinfo(dtype).min).astype(dtype)
        else:
            x = (x.astype(np.float32) / 255.0).astype(dtype)
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
    def __init__(self, path: Path, kind: str):
        from automl.extract import import_keras

        keras = import_keras()
        self.path = path
        if kind == "savedmodel":
            # Keras 3 loads SavedModels only as an opaque TFSMLayer, with no input shape to read.
            raise DataError(f"{path}: TensorFlow SavedModel folders are not supported yet; load it in Keras and "
                            "save it as .keras (model.save('extractor.keras')), then pass that file.")
        try:
            self._model = keras.models.load_model(str(path), compile=False)
        except Exception as exc:  # Keras raises many types for a file that is not its model
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path} is not a loadable Keras model: {first}") from exc
        self.size, self._channels = _input_side(path, self._model.input_shape)
        out_shape = self._model.output_shape
        if len(out_shape) not in (2, 4):
            raise DataError(f"{path}: the model's output has shape {out_shape}; an extractor must output a vector "
                            "(batch, features) or a feature map (batch, height, width, channels).")
        self.dim = int(out_shape[-1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = _channels(images, self._channels).astype(np.float32)
        return _pool(self.path, np.asarray(self._model.predict_on_batch(x), dtype=np.float32))


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
