"""Optional heavy imports that fail late, with the install command. Imports nothing of the project
but ``errors``.

TensorFlow, torch and diffusers are imported only by the code that uses them, so ``import automl``
and ``automl --help`` stay fast.
"""

from __future__ import annotations

import importlib
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
