"""The embedding cache: one folder per extractor key, rows keyed by image fingerprint.

Embeddings are appended as shard files, each written atomically (``automl._files``),
so a reader never sees half a shard, a killed embed keeps every shard it finished (and resumes from
there), and two processes filling the same folder at once at worst both write a row (identical,
harmless) — never a corrupt file. The folder is handed in; the cache knows nothing of runs or stores.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from automl._files import atomic_write, atomic_write_text, remove_stale_temporaries
from automl.errors import StoreError

FINGERPRINT_DTYPE = "S32"  # 128-bit blake2b digests as hex


class EmbeddingCache:
    def __init__(self, folder: str | os.PathLike, key: dict, on_first_write: Callable[[], None] | None = None):
        self.folder = Path(folder)
        self.key = key
        self._on_first_write = on_first_write

    # -- reading --------------------------------------------------------------------------------

    def lookup(self, fingerprints: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached embedding of every given fingerprint that has one."""
        wanted = {fp.encode() for fp in fingerprints}
        found: dict[str, np.ndarray] = {}
        for shard in self._shards():
            try:
                with np.load(shard, allow_pickle=False) as data:
                    fps = data["fingerprints"]
                    rows = [i for i, fp in enumerate(fps) if fp in wanted and fp.decode() not in found]
                    if rows:
                        vectors = data["embeddings"]
                        for i in rows:
                            found[fps[i].decode()] = vectors[i]
            except (OSError, ValueError, KeyError) as exc:
                # A cache is rebuildable: an unreadable shard costs a recomputation, not the run.
                warnings.warn(f"ignoring unreadable embedding shard {shard}: {exc}", stacklevel=2)
        return found

    def __len__(self) -> int:
        total = 0
        for shard in self._shards():
            with np.load(shard, allow_pickle=False) as data:
                total += len(data["fingerprints"])
        return total

    def _shards(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("shard-*.npz"))

    # -- writing --------------------------------------------------------------------------------

    def add(self, fingerprints: Sequence[str], embeddings: np.ndarray) -> None:
        """Append rows as one new shard, atomically."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(fingerprints):
            raise ValueError(f"expected {len(fingerprints)} embedding rows, got shape {embeddings.shape}")
        if not len(fingerprints):
            return
        self._write_meta()
        name = f"shard-{uuid.uuid4().hex}.npz"
        atomic_write(self.folder / name, lambda f: np.savez(
            f, fingerprints=np.array(fingerprints, dtype=FINGERPRINT_DTYPE), embeddings=embeddings))

    def _write_meta(self) -> None:
        meta = self.folder / "key.json"
        if meta.exists():
            existing = json.loads(meta.read_text())
            if existing != self.key:
                raise StoreError(
                    f"{self.folder} holds embeddings for {existing}, not {self.key}; the folder name "
                    "is derived from the key, so the store was edited by hand — move that folder away."
                )
            remove_stale_temporaries(self.folder)
            return
        if self._on_first_write is not None:
            self._on_first_write()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta, json.dumps(self.key, indent=2, sort_keys=True))
