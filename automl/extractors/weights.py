"""The weights choice of a Keras backbone, parsed once: ImageNet, random (seeded), or a weights file.

``Weights.parse`` reads what a user writes (``--weights``, the recipe key, the Python API);
everything after passes the value on. It has three more forms, each made here only:

- ``str(weights)``: how a user writes it (``imagenet``, ``none``, or the file's path);
- ``key(...)``: its part of the embedding cache's key (``imagenet:<file>``, ``random:seed=<s>:keras=<ver>``,
  ``file:<content digest>``), unchanged since the first stores, so they keep their embeddings;
- ``record()``: what a model bundle and a pretraining record keep (``{"kind", "path", "digest"}``);
  ``from_record`` also reads the plain strings older bundles hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from automl._files import file_digest
from automl.errors import ConfigError, WeightsUnavailableError

KINDS = ("imagenet", "random", "file")
# How a user may write each keyword; the first is the one shown back.
_KEYWORDS = {"imagenet": ("imagenet",), "random": ("none", "random")}


@dataclass(frozen=True)
class Weights:
    kind: str  # "imagenet", "random" (from the seed) or "file"
    path: Path | None = None  # the weights file (kind "file"), absolute
    digest: str | None = None  # its content digest when read; None for a file that is gone

    @classmethod
    def keyword(cls, text: str) -> str | None:
        """``imagenet`` or ``none`` (also for ``random``), in any case; None when ``text`` names a file."""
        word = str(text).strip().lower()
        for kind, spellings in _KEYWORDS.items():
            if word in spellings:
                return spellings[0]
        return None

    @classmethod
    def parse(cls, value: "Weights | str | os.PathLike | None") -> "Weights":
        """``imagenet``; ``none``/``random``/None (random, seeded); else the path of an existing weights file."""
        if isinstance(value, Weights):
            return value
        word = None if value is None else cls.keyword(os.fspath(value))
        if value is None or word == "none":
            return cls("random")
        if word == "imagenet":
            return cls("imagenet")
        path = Path(value).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"weights file not found: {path}. Pass --weights imagenet (the Keras download and cache), "
                "--weights none (random, seeded), or the path to an existing weights file."
            )
        return cls("file", path.resolve(), file_digest(path))

    @classmethod
    def from_record(cls, record: Any) -> "Weights":
        """A recorded choice as it stands now: ``record()``'s mapping or an older bundle's string
        (``imagenet``, ``none`` or a path). Never fails for a missing file: its ``digest`` is None."""
        if isinstance(record, dict):
            kind, path = record.get("kind"), record.get("path")
        elif isinstance(record, str):
            word = cls.keyword(record)
            kind, path = ("random" if word == "none" else word or "file"), (None if word else record)
        else:
            kind, path = None, None
        if kind not in KINDS or (kind == "file") != bool(path):
            raise ConfigError(f"a recorded weights choice must be imagenet, none or a weights file; found {record!r}. "
                              "The record was not written by automl; fit the run again.")
        if kind != "file":
            return cls(kind)
        path = Path(path)
        return cls("file", path, file_digest(path) if path.is_file() else None)

    def __str__(self) -> str:
        return str(self.path) if self.kind == "file" else _KEYWORDS.get(self.kind, ("none",))[0]

    @property
    def pretrained(self) -> bool:
        """ImageNet or a file: weights that carry what was learned (random ones do not)."""
        return self.kind != "random"

    @property
    def missing(self) -> bool:
        """A weights file recorded earlier that is no longer there."""
        return self.kind == "file" and self.digest is None

    def key(self, imagenet_file: str, seed: int) -> str:
        """This choice's part of the cache key; ``imagenet_file`` is the file Keras downloads for the backbone."""
        if self.kind == "imagenet":
            return f"imagenet:{imagenet_file}"
        if self.kind == "random":
            return f"random:seed={int(seed)}:keras={metadata.version('keras')}"
        if self.missing:
            raise WeightsUnavailableError(f"weights file not found: {self.path}. Restore it, or pass other --weights.")
        return f"file:{self.digest}"

    def record(self) -> dict:
        return {"kind": self.kind, "path": None if self.path is None else str(self.path), "digest": self.digest}
