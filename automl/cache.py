"""The embedding cache: one folder per extractor key, rows keyed by image fingerprint.

Embeddings are appended as shard files, each written atomically (``automl._files``),
so a reader never sees half a shard, a killed embed keeps every shard it finished (and resumes from
there), and two processes filling the same folder at once at worst both write a row (identical,
harmless) — never a corrupt file. The folder is handed in; the cache knows nothing of runs or stores.

A cache is rebuildable, so a shard that cannot be read (a half-finished copy of a store, a disk
error, a hand edit) costs a recomputation, never the run: every read goes through ``read_shard``,
which checks the whole format, and a shard it refuses is moved into ``.damaged/`` (never read again,
not lost) with a warning naming it, and its rows are computed again by the embed that needs them.
Many small shards are merged into one now and then (``compact``) so lookups stay fast.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from automl._files import atomic_write, atomic_write_text, remove_stale_temporaries
from automl.errors import StoreError

FINGERPRINT_DTYPE = "S32"  # 128-bit blake2b digests as hex
SHARD_GLOB = "shard-*.npz"
MEMBERS = ("fingerprints.npy", "embeddings.npy")  # what np.savez writes for the two arrays
DAMAGED = ".damaged"  # where unreadable shards go: out of every reader's way, kept for inspection
# Compaction: once a folder holds more than COMPACT_AT small shards (under half of COMPACT_BYTES), they
# are merged in groups of about COMPACT_BYTES. A merged shard is no longer small and is left alone from then
# on, so each row is rewritten only a few times however large the cache grows, and no shard grows past
# 1.5 x COMPACT_BYTES.
COMPACT_AT = 32
COMPACT_BYTES = 16 << 20


class DamagedShard(Exception):
    """A shard file that is not what ``EmbeddingCache.add`` writes; ``reason`` says how."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


@dataclass
class ShardRows:
    """What ``read_shard`` returns: every fingerprint, the embedding dimension, the selected rows."""

    path: Path
    fingerprints: np.ndarray  # (n,) S32
    dim: int
    rows: list[int]  # the indices selected
    embeddings: np.ndarray | None  # (len(rows), dim) float32, None when no row was selected


def read_shard(path: Path, select: Callable[[np.ndarray], Sequence[int]] | None = None) -> ShardRows:
    """Read one shard, checking all of its format: a zip of exactly the two ``.npy`` members, S32
    fingerprints, 2-D float32 embeddings with one row per fingerprint, sizes that match the headers
    (so no header can make us allocate more than the file holds), intact CRCs. ``select`` picks the
    rows whose embeddings are read (all of them without it).

    Raises ``DamagedShard`` for any format problem; ``PermissionError`` and ``FileNotFoundError`` (a
    shard merged away by another process) pass through, since the file itself is not at fault.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(archive.namelist())
            if names != sorted(MEMBERS):
                raise DamagedShard(path, f"holds {names}, expected {sorted(MEMBERS)}")
            fps = _read_member(archive, "fingerprints.npy", lambda shape, dtype: (
                dtype == np.dtype(FINGERPRINT_DTYPE) and len(shape) == 1, f"1-D {FINGERPRINT_DTYPE}"))
            with archive.open("embeddings.npy") as f:
                shape, dtype, fortran, size = _header(f, archive.getinfo("embeddings.npy"))
                if dtype != np.float32 or len(shape) != 2 or shape[0] != len(fps) or shape[1] < 1:
                    raise DamagedShard(path, f"embeddings.npy is {dtype} of shape {shape}; expected float32 of "
                                             f"shape ({len(fps)}, dim): one row per fingerprint")
                rows = list(range(len(fps))) if select is None else list(select(fps))
                vectors = None
                if rows:
                    vectors = _data(f, shape, dtype, fortran, size)[rows]
            return ShardRows(Path(path), fps, int(shape[1]), rows, vectors)
    except (DamagedShard, PermissionError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes zipfile or numpy raise
        raise DamagedShard(path, f"{type(exc).__name__}: {exc}") from exc


def _read_member(archive: zipfile.ZipFile, name: str, expect: Callable) -> np.ndarray:
    with archive.open(name) as f:
        shape, dtype, fortran, size = _header(f, archive.getinfo(name))
        ok, wanted = expect(shape, dtype)
        if not ok:
            raise DamagedShard(Path(archive.filename), f"{name} is {dtype} of shape {shape}; expected {wanted}")
        return _data(f, shape, dtype, fortran, size)


def _header(f, info: zipfile.ZipInfo) -> tuple[tuple, np.dtype, bool, int]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"{info.filename} has .npy format {version}; expected 1.0 or 2.0")
    if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != info.file_size - f.tell():
        raise ValueError(f"{info.filename} header says {shape} {dtype} ({size} bytes) but holds "
                         f"{info.file_size - f.tell()} bytes")
    return shape, dtype, fortran, size


def _data(f, shape, dtype, fortran, size) -> np.ndarray:
    raw = f.read()  # to the end of the member, so zipfile checks its CRC
    if len(raw) != size:
        raise ValueError(f"expected {size} bytes of data, read {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _no_rows(fingerprints: np.ndarray) -> Sequence[int]:
    return ()


class EmbeddingCache:
    def __init__(self, folder: str | os.PathLike, key: dict, on_first_write: Callable[[], None] | None = None,
                 *, compact_at: int = COMPACT_AT):
        self.folder = Path(folder)
        self.key = key
        self._on_first_write = on_first_write
        self.compact_at = compact_at

    # -- reading --------------------------------------------------------------------------------

    def lookup(self, fingerprints: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached embedding of every given fingerprint that has one."""
        wanted = {fp.encode() for fp in fingerprints}
        found: dict[str, np.ndarray] = {}
        for shard in self._read(lambda fps: [i for i, fp in enumerate(fps) if fp in wanted]):
            for fp, row in zip(shard.fingerprints[shard.rows], shard.embeddings if shard.rows else ()):
                found.setdefault(fp.decode(), row)
        return found

    def __len__(self) -> int:
        """Rows in readable shards (a row written by two processes counts twice)."""
        return sum(len(shard.fingerprints) for shard in self._read(_no_rows))

    def damaged(self) -> list[DamagedShard]:
        """Every shard ``read_shard`` refuses or whose dimension disagrees with the other shards',
        each read in full; nothing is moved (``set_aside`` does that)."""
        return self._scan(None)[1]

    def shards(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(SHARD_GLOB))

    def _read(self, select, only: set[Path] | None = None) -> list[ShardRows]:
        """The readable shards (rows chosen by ``select``; with ``only``, just of those shards); damaged
        ones are set aside with a warning."""
        good, bad = self._scan(select, only)
        for problem in bad:
            where = self.set_aside(problem.path)
            moved = f"moved it to {where}" if isinstance(where, Path) else f"could not move it aside ({where})"
            # stacklevel 3: the caller of lookup / __len__
            warnings.warn(f"ignoring unreadable embedding shard {problem.path}: {problem.reason}; {moved}; its "
                          "rows are recomputed", stacklevel=3)
        return good

    def _scan(self, select, only: set[Path] | None = None) -> tuple[list[ShardRows], list[DamagedShard]]:
        read: dict[Path, ShardRows] = {}
        bad: list[DamagedShard] = []
        seen: set[Path] = set()
        vanished = True
        while vanished:
            # Another process may merge shards while we read: a vanished shard's rows are in a new one.
            vanished = False
            for shard in [s for s in self.shards() if s not in seen]:
                seen.add(shard)
                try:
                    read[shard] = read_shard(shard, select if only is None or shard in only else _no_rows)
                except FileNotFoundError:
                    vanished = True
                except PermissionError as exc:
                    warnings.warn(f"ignoring unreadable embedding shard {shard}: {exc}; fix its permissions",
                                  stacklevel=3)
                except DamagedShard as exc:
                    bad.append(exc)
        dims = Counter()
        for shard in read.values():
            dims[shard.dim] += len(shard.fingerprints)
        if len(dims) > 1:
            # One key, one model, one dimension: the dimension most rows have is the model's.
            dim = max(dims.items(), key=lambda kv: (kv[1], -kv[0]))[0]
            for path, shard in list(read.items()):
                if shard.dim != dim:
                    bad.append(DamagedShard(path, f"its embeddings have {shard.dim} dimensions; the other "
                                                  f"shards of this key have {dim}"))
                    del read[path]
        return [read[s] for s in sorted(read)], bad

    def set_aside(self, shard: Path) -> Path | str:
        """Move a shard into ``.damaged/`` beside it; the new path, or why it could not be moved."""
        target = shard.parent / DAMAGED / shard.name
        try:
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                target = target.with_name(f"{shard.stem}-{uuid.uuid4().hex[:8]}{shard.suffix}")
            os.replace(shard, target)
        except FileNotFoundError:
            return "another process moved it already"
        except OSError as exc:
            return str(exc)
        return target

    # -- writing --------------------------------------------------------------------------------

    def add(self, fingerprints: Sequence[str], embeddings: np.ndarray) -> None:
        """Append rows as one new shard, atomically."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(fingerprints):
            raise ValueError(f"expected {len(fingerprints)} embedding rows, got shape {embeddings.shape}")
        if not len(fingerprints):
            return
        self._write_meta()
        self._write_shard(np.array(fingerprints, dtype=FINGERPRINT_DTYPE), embeddings)
        if len(self._small_shards()) > self.compact_at:
            self.compact()

    def compact(self) -> list[Path]:
        """Merge the small shards, in groups of about COMPACT_BYTES (each fingerprint once per group), each
        merged shard written atomically before its originals are removed: a reader in between sees some
        rows twice, never none. Returns the merged shards."""
        groups, group, size = [], [], 0
        for shard, nbytes in self._small_shards():
            group.append(shard)
            size += nbytes
            if size >= COMPACT_BYTES:  # merged, it is no longer small: left alone from now on
                groups.append(group)
                group, size = [], 0
        groups.append(group)
        merged = []
        for group in (g for g in groups if len(g) > 1):
            shards = [s for s in self._read(None, only=set(group)) if s.path in group]
            fps, rows, seen = [], [], set()
            for shard in shards:
                for fp, row in zip(shard.fingerprints, shard.embeddings):
                    if fp not in seen:
                        seen.add(fp)
                        fps.append(fp)
                        rows.append(row)
            if len(shards) > 1:
                merged.append(self._write_shard(np.array(fps, dtype=FINGERPRINT_DTYPE), np.stack(rows)))
                for shard in shards:
                    shard.path.unlink(missing_ok=True)
        return merged

    def _small_shards(self) -> list[tuple[Path, int]]:
        out = []
        for shard in self.shards():
            try:
                size = shard.stat().st_size
            except FileNotFoundError:
                continue
            if size < COMPACT_BYTES // 2:
                out.append((shard, size))
        return out

    def _write_shard(self, fingerprints: np.ndarray, embeddings: np.ndarray) -> Path:
        path = self.folder / f"shard-{uuid.uuid4().hex}.npz"
        atomic_write(path, lambda f: np.savez(f, fingerprints=fingerprints, embeddings=embeddings))
        return path

    def _write_meta(self) -> None:
        meta = self.folder / "key.json"
        if meta.exists():
            try:
                existing = json.loads(meta.read_text())
            except (OSError, ValueError) as exc:
                raise StoreError(f"cannot read the cache key {meta}: {exc}; `automl store check --repair` moves that "
                                 "folder aside (its embeddings are then recomputed).") from exc
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
