"""Precision: the number format an extractor computes in, and the machine facts ``auto`` rests on.

``auto`` picks the fastest the hardware runs well: ``bfloat16`` (Keras ``mixed_bfloat16``) on CPUs
with AMX or AVX-512 BF16 instructions, ``float16`` on an NVIDIA GPU, ``float32`` elsewhere and on
backends other than TensorFlow. Weights stay float32 either way; see docs/benchmarks.md for the speed
and the downstream-accuracy comparison behind that default. Nothing here imports Keras or TensorFlow
unless asked whether the backend sees a GPU.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from automl.errors import ConfigError
from automl.params import PRECISIONS  # one vocabulary for extractors and the Stable Diffusion augmenters

POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}  # Keras dtype policies


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


def backend_sees_gpu(backend: str) -> bool:
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


def describe_machine() -> str:
    """One line for logs and benchmark records."""
    return f"{platform.machine()} {os.cpu_count()} cpu, bf16={'yes' if cpu_has_bf16() else 'no'}"
