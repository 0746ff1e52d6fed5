"""Loading a model file: TFLite (float or quantized), Keras (.keras, .h5) and TensorFlow SavedModel
folders, each called on a uint8 batch with its preprocessing (see ``files.py``). Imported only when
a ``ModelFile`` is built: TensorFlow (or ai_edge_litert) comes in here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from automl.errors import ConfigError, DataError
from automl.extractors.files import Preprocessing, model_kind
from automl.extractors.spec import import_keras


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
