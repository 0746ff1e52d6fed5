"""Optional heavy imports that fail late, with the install command. Imports nothing of the project
but ``errors``.

TensorFlow, torch and diffusers are imported only by the code that uses them, so ``import automl``
and ``automl --help`` stay fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from automl.errors import MissingDependencyError

# Which extra of pyproject.toml brings each optional top-level package.
_EXTRA = {
    "tensorflow": "core",
    "keras": "core",
    "torch": "diffusion",
    "torchvision": "diffusion",
    "diffusers": "diffusion",
    "transformers": "diffusion",
    "accelerate": "diffusion",
    "peft": "diffusion",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an error that says what needs it and how to install it."""
    if module.split(".")[0] in ("tensorflow", "keras"):
        before_tensorflow()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA.get(top)
        hint = "pip install automl" if extra in (None, "core") else f'pip install "automl[{extra}]"'
        raise MissingDependencyError(
            f"{purpose} needs the Python package {top!r}, which could not be imported ({exc}). "
            f"Install it with: {hint}"
        ) from exc


def before_tensorflow() -> None:
    """Load triton, if installed, before TensorFlow is first imported.

    triton (torch's kernel compiler, which CUDA builds of torch install and torchvision, diffusers
    and torch._dynamo load) crashes the process with a segmentation fault when its native library
    loads after TensorFlow's; loaded first, both work (checked with TF 2.21, torch 2.13). automl
    imports TensorFlow for the extractors and torch only later, when an augmenter runs, so every
    TensorFlow import in automl goes through here. Costs about 0.1 s, once.
    """
    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    try:
        if importlib.util.find_spec("triton") is not None:
            importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - a broken triton is torch's problem to report, not the extractors'
        pass
