"""Extractors made by ``automl pretrain``: ``<store>/extractors/NAME.keras``, used by NAME.

The store is handed in (anything with an ``extractors_dir``, e.g. ``automl.store.Store``); this
package never imports the store.
"""

from __future__ import annotations

import re
from pathlib import Path

from automl.registry import canonical

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")  # a pretrained extractor's name (canonical form)
SUFFIX = ".keras"


def pretrained_path(store, name: str) -> Path | None:
    """``<store>/extractors/NAME.keras`` (absolute) when it exists; None for no store or no such file."""
    name = canonical(name)
    if store is None or not NAME.match(name):
        return None
    path = Path(store.extractors_dir) / f"{name}{SUFFIX}"
    return path.resolve() if path.is_file() else None


def pretrained_names(store) -> list[str]:
    if store is None or not Path(store.extractors_dir).is_dir():
        return []
    return sorted(p.stem for p in Path(store.extractors_dir).glob(f"*{SUFFIX}") if not p.name.startswith("."))
