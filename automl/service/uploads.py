"""Datasets a client sends: a zip of image folders, a MedMNIST-style .npz, a set of images with their
classes, or a folder of the server registered by its path. Plain functions over file objects and paths;
the HTTP layer (``automl.service.app``) calls them.

Everything uploaded is untrusted:

- Sizes and counts are bounded (``Limits``): a zip's from its headers before anything is written, and
  again while each entry streams, so a header that lies writes no more than the limit. Every limit
  raises ``TooLargeError`` (the service answers 413). Nothing is read into memory whole.
- A zip entry must be a regular file (or folder) at a safe relative path: no absolute path, drive
  letter, backslash, ``..``, control character, link or device file, no path twice. Files must carry a
  suffix the loader reads (``automl.images.IMAGE_SUFFIXES``); the junk the folder loader skips (hidden
  files, ``__MACOSX/``, ``Thumbs.db``) is dropped; archives inside are refused, never unpacked.
- The data is staged in a temporary folder of ``store/datasets/`` and renamed into place only once
  ``load_dataset`` and ``dataset_summary`` accept it (pixel bombs are refused there, from the header);
  on any error the temporary is removed.

A dataset is content-addressed: its id is the SHA-256 of a canonical form of its content (for a zip or
an image set, the sorted relative paths and each file's SHA-256, so zipping the same tree again gives
the same id), and the same content sent twice is stored once. Layout: docs/store.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from automl._files import json_text, remove_stale_temporaries, temporary_sibling, write_json
from automl.data import _SKIPPED_NAMES, SPLIT_FOLDERS, SPLITS, bad_files_error, load_dataset
from automl.errors import DataError, StoreError, TooLargeError
from automl.images import IMAGE_SUFFIXES
from automl.report import dataset_summary
from automl.store import Store

Source = Union[BinaryIO, str, os.PathLike]

RECORD = "dataset.json"
KINDS = ("zip", "npz", "images", "folder")
_DATA = {"zip": "data", "images": "data", "npz": "data.npz"}  # what a stored dataset's folder holds
_ID = re.compile(r"sha256-[0-9a-f]{32}")
_DRIVE = re.compile(r"[A-Za-z]:")
_CHUNK = 1 << 20
_ARCHIVE_SUFFIXES = (".zip", ".npz", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst")
_SPLIT_NAMES = {name for names in SPLIT_FOLDERS.values() for name in names}
# zipfile holds one object per central-directory record: a directory larger than max_files records of
# this size (46 bytes + name + extra field + comment) is refused from the end record, before it is read.
_DIRECTORY_BYTES_PER_ENTRY = 1024
_END = struct.Struct("<4s4H2LH")  # end of central directory: signature, disks, entries, size, offset, comment
_END64 = struct.Struct("<4sQ2H2L4Q")  # the zip64 end record, just before its 20-byte locator


@dataclass(frozen=True)
class Limits:
    """What one upload may hold; exceeding any limit raises ``TooLargeError``. Pixel bombs are refused
    when the dataset is loaded (``automl.images.MAX_PIXELS``)."""

    max_upload_bytes: int = 2 * 1024**3  # the uploaded file (zip / npz) or the sum of an image set
    max_files: int = 100_000  # entries in a zip / images in a set
    max_file_bytes: int = 64 * 1024**2  # one image (its uncompressed size in a zip)
    max_unpacked_bytes: int = 8 * 1024**3  # a zip's total uncompressed size
    max_ratio: float = 200.0  # a zip entry above this uncompressed/compressed size is a bomb


@dataclass
class DatasetEntry:
    """A dataset of the store: ``path`` is what ``load_dataset`` is given."""

    id: str  # "sha256-<32 hex>" of the dataset's canonical content
    kind: str  # one of KINDS
    path: Path  # store/datasets/<id>/data or data.npz; a registered folder itself
    name: str  # the client's file name or the folder's name (display only)
    created: str  # ISO-8601 UTC
    summary: dict  # automl.report.dataset_summary of the loaded dataset

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "path": str(self.path), "name": self.name,
                "created": self.created, "summary": self.summary}


class DatasetNotFoundError(DataError):
    """No dataset of that id in the store, or the id is malformed (the service answers 404)."""


# --- the four ways in -----------------------------------------------------------------------------


def ingest_zip(src: Source, store: Store, *, name: str = "upload.zip", limits: Limits = Limits()) -> DatasetEntry:
    """Unpack a zip of class folders (or of train/ and test/ folders) into the store; returns its entry,
    the existing one when the same tree is stored already. DataError (TooLargeError for a limit) names
    the entry and the fix."""
    name = _display_name(name, "upload.zip")
    with _staging(store) as tmp:
        with _seekable(src, tmp, name, limits) as f:
            tree = _unpack_zip(f, tmp / _DATA["zip"], name, limits)
        return _store_upload(store, tmp, "zip", name, _content_id("tree", tree))


def ingest_npz(src: Source, store: Store, *, name: str = "upload.npz", limits: Limits = Limits()) -> DatasetEntry:
    """Store a MedMNIST-style .npz (train_images/train_labels, optionally val_* and test_*)."""
    name = _display_name(name, "upload.npz")
    with _staging(store) as tmp:
        target = tmp / _DATA["npz"]
        with _opened(src) as f, open(target, "xb") as out:
            _, digest = copy_limited(f, out, limits.max_upload_bytes, lambda: _upload_too_large(name, limits))
        _check_npz(target, name, limits)
        return _store_upload(store, tmp, "npz", name, _content_id("npz", [(target.name, digest)]))


def ingest_images(files: Iterable[tuple[str, str, BinaryIO]], store: Store, *,
                  split: Optional[Sequence[str]] = None, limits: Limits = Limits()) -> DatasetEntry:
    """Store images sent one by one: ``(file name, class name, file object)`` each, written as
    ``<class>/<file name>``; with ``split`` (one of "train", "val", "test" per image, in the same
    order) as ``<split>/<class>/<file name>``, else the fit holds out its own test split."""
    with _staging(store) as tmp:
        splits = None if split is None else iter(split)
        tree: list[tuple[str, str]] = []
        seen: set[str] = set()
        total = count = 0
        for filename, class_name, f in files:
            count += 1
            if count > limits.max_files:
                raise _too_many("the image set", f"has more than {limits.max_files} images", limits)
            what = f"image {filename!r}"
            parts = [_image_split(next(splits, None), what)] if splits is not None else []
            parts += [_class_folder(class_name, what, with_split=splits is not None), _component(filename, what)]
            if not _wanted(parts, what, "send image files only"):
                continue
            rel = "/".join(parts)
            if rel in seen:
                raise DataError(f"{what} of class {class_name!r} is sent twice (two files of one name in one "
                                "class); rename one of them.")
            seen.add(rel)
            limit, which = min((limits.max_file_bytes, _per_image(limits)),
                               (limits.max_upload_bytes - total,
                                f"the limit of {_size(limits.max_upload_bytes)} for the whole image set "
                                f"(max_upload_bytes), {_size(total)} coming before it"))
            target = tmp.joinpath(_DATA["images"], *parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as out:
                n, digest = copy_limited(f, out, limit, lambda: _too_large(what, "is too large", which))
            total += n
            tree.append((rel, digest))
        if splits is not None and next(splits, None) is not None:
            raise DataError(f"more splits than images ({count} images): give one split per image, in the order "
                            "of the images.")
        if not tree:
            raise DataError(f"the image set holds no images ({', '.join(IMAGE_SUFFIXES)}, any case); send at least "
                            "one image per class.")
        return _store_upload(store, tmp, "images", f"{len(tree)} images", _content_id("tree", tree), label="images")


def register_folder(path: str | os.PathLike, store: Store, *, allowed_roots: Sequence[Path]) -> DatasetEntry:
    """Record a dataset folder of the server (nothing is copied: the entry's path is the folder). Refused
    unless the folder, symbolic links resolved, lies inside one of ``allowed_roots``, and so does every
    link inside it the loader would follow."""
    given = Path(path)
    roots = [Path(r).resolve() for r in allowed_roots]
    if not roots:
        raise DataError(f"folder {given}: this server allows no folders to be registered; start it with an "
                        "allowed root (--allow-root DIR), or upload the dataset instead.")
    folder = Path(os.path.abspath(given)).resolve()
    if not inside(folder, roots):
        resolved = "" if folder == Path(os.path.abspath(given)) else f" (it resolves to {folder})"
        raise DataError(f"folder {given}{resolved} is outside the folders this server allows "
                        f"({', '.join(map(str, roots))}); move the dataset there, or upload it.")
    if not folder.is_dir():
        raise DataError(f"folder {given} does not exist or is not a folder; give the path of a dataset folder "
                        "on the server.")
    _check_links(folder, roots, given)
    dataset = _load(folder)
    dataset_id = _content_id(f"folder:{folder}",
                             [(str(Path(it.path).relative_to(folder)), it.fingerprint) for it in dataset.items])
    existing = _read_entry(store, dataset_id)
    if existing is not None:
        return existing
    with _staging(store) as tmp:
        entry = DatasetEntry(dataset_id, "folder", folder, _display_name(folder.name, "folder"), _now(),
                             dataset_summary(dataset))
        return _commit(store, tmp, entry)


def get_dataset(store: Store, dataset_id: str) -> DatasetEntry:
    """The stored dataset of this id; DatasetNotFoundError (a DataError) for an unknown or malformed id."""
    if not isinstance(dataset_id, str) or not _ID.fullmatch(dataset_id):
        raise DatasetNotFoundError(f"{dataset_id!r} is not a dataset id: an id is 'sha256-' and 32 lower-case "
                                   "hex digits, as the upload answered it.")
    entry = _read_entry(store, dataset_id)
    if entry is None:
        raise DatasetNotFoundError(f"no dataset {dataset_id} in the store {store.root}: upload it (or register "
                                   "its folder) first; the list of datasets names every id.")
    return entry


def list_datasets(store: Store) -> list[DatasetEntry]:
    """Every dataset of the store, oldest first; a record that cannot be read is skipped with a warning
    naming it."""
    folder = store.datasets_dir
    entries = []
    for d in sorted(folder.iterdir()) if folder.is_dir() else ():
        if not _ID.fullmatch(d.name):
            continue  # temporaries of ingests in progress
        try:
            entry = _read_entry(store, d.name)
        except StoreError as exc:
            warnings.warn(str(exc), stacklevel=2)
            continue
        if entry is not None:
            entries.append(entry)
    return sorted(entries, key=lambda e: (e.created, e.id))


# --- the store -------------------------------------------------------------------------------------


@contextmanager
def _staging(store: Store) -> Iterator[Path]:
    """A fresh temporary folder of ``store/datasets/`` (``.tmp-<pid>-…``), removed when the block ends:
    by then a successful ingest has renamed it into place. Temporaries of killed writers go first."""
    store.ensure()
    store.datasets_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(store.datasets_dir)
    tmp = temporary_sibling(store.datasets_dir / "upload")
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _store_upload(store: Store, tmp: Path, kind: str, name: str, dataset_id: str, *,
                  label: str | None = None) -> DatasetEntry:
    """The stored dataset of this id if there is one; else load and summarise what ``tmp`` holds and
    rename it into place. The loader's errors name the data ``label`` (default: ``name``), not the
    temporary folder."""
    existing = _read_entry(store, dataset_id)
    if existing is not None:
        return existing
    staged, final = tmp / _DATA[kind], store.datasets_dir / dataset_id
    try:
        dataset = _load(staged)
    except DataError as exc:
        raise type(exc)(str(exc).replace(str(staged), label or name)) from exc
    summary = _moved(dataset_summary(dataset), str(tmp), str(final))
    return _commit(store, tmp, DatasetEntry(dataset_id, kind, final / _DATA[kind], name, _now(), summary))


def _load(path: Path):
    """``load_dataset``, with undecodable files (damaged, empty, pixel bombs) refused in the service's
    words: a stored dataset holds only images every job can read."""
    dataset = load_dataset(path, skip_bad=True)
    if dataset.bad_files:
        raise bad_files_error(dataset.bad_files, "Remove or replace them and send the dataset again.")
    return dataset


def _commit(store: Store, tmp: Path, entry: DatasetEntry) -> DatasetEntry:
    """Write the record last, then rename the folder into place. A folder already there is another
    ingest of the same content that finished first: it is kept and returned, ours dropped."""
    write_json(tmp / RECORD, entry.to_dict())
    final = store.datasets_dir / entry.id
    try:
        os.rename(tmp, final)  # refuses a non-empty target: never merges into it
    except OSError as exc:
        existing = _read_entry(store, entry.id)
        if existing is None:
            raise StoreError(f"cannot move the dataset into {final} ({exc}); if that folder holds no {RECORD}, "
                             "delete it and send the dataset again.") from exc
        return existing
    return entry


def _read_entry(store: Store, dataset_id: str) -> DatasetEntry | None:
    folder = store.datasets_dir / dataset_id
    record = folder / RECORD
    if not record.is_file():
        return None
    try:
        d = json.loads(record.read_text(encoding="utf-8"))
        kind = d["kind"]
        if d["id"] != dataset_id or kind not in KINDS:
            raise ValueError(f"it names dataset {d['id']!r} of kind {kind!r}")
        # A stored dataset's path follows the store (which may have moved); a folder's is the folder.
        path = Path(d["path"]) if kind == "folder" else folder / _DATA[kind]
        return DatasetEntry(dataset_id, kind, path, str(d["name"]), str(d["created"]), dict(d["summary"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{record} cannot be read as a dataset record ({exc}); delete the folder {folder} and "
                         "send the dataset again.") from exc


def _content_id(kind: str, files: Iterable[tuple[str, str]]) -> str:
    """``sha256-<32 hex>`` of a canonical form: the kind's tag and the sorted (relative path, file digest)
    pairs, so neither the order of a zip's entries nor its compression changes the id."""
    text = json_text([kind, sorted(files)], indent=None)
    return "sha256-" + hashlib.sha256(text.encode("ascii")).hexdigest()[:32]


def _moved(value, old: str, new: str):
    """``value`` (JSON) with every string that starts with ``old`` starting with ``new`` instead."""
    if isinstance(value, str):
        return new + value[len(old):] if value.startswith(old) else value
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- streams ---------------------------------------------------------------------------------------


def _opened(src: Source):
    return open(src, "rb") if isinstance(src, (str, os.PathLike)) else nullcontext(src)


@contextmanager
def _seekable(src: Source, tmp: Path, name: str, limits: Limits) -> Iterator[BinaryIO]:
    """The upload as a seekable file of at most ``max_upload_bytes``: a path or a seekable file object as
    it is, any other stream copied into a temporary file of ``tmp`` first."""
    with _opened(src) as f:
        if f.seekable():
            start = f.tell()
            size = f.seek(0, os.SEEK_END) - start
            f.seek(start)
            if size > limits.max_upload_bytes:
                raise _upload_too_large(name, limits, size)
            yield f
            return
        with tempfile.TemporaryFile(dir=tmp) as spool:
            copy_limited(f, spool, limits.max_upload_bytes, lambda: _upload_too_large(name, limits))
            spool.seek(0)
            yield spool


def copy_limited(src: BinaryIO, dst: BinaryIO, limit: int,
                 too_large: Callable[[], TooLargeError]) -> tuple[int, str]:
    """Copy in chunks, at most ``limit`` bytes: a source longer than that raises ``too_large()`` as soon
    as the byte past the limit is read. Returns the bytes copied and their SHA-256."""
    digest, n = hashlib.sha256(), 0
    while chunk := src.read(min(_CHUNK, limit - n + 1)):
        n += len(chunk)
        if n > limit:
            raise too_large()
        digest.update(chunk)
        dst.write(chunk)
    return n, digest.hexdigest()


# --- zips ------------------------------------------------------------------------------------------


def _unpack_zip(f: BinaryIO, dest: Path, name: str, limits: Limits) -> list[tuple[str, str]]:
    """Check every entry, then unpack the images into ``dest``; returns (relative path, SHA-256) per file."""
    _check_directory(f, name, limits)
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{name} is not a readable zip file ({exc}); send a .zip of class folders, or of train/ "
                        "and test/ folders.") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise _too_many(name, f"holds {len(infos)} entries", limits)
        members = _zip_members(infos, name, limits)
        if not members:
            raise DataError(f"{name} holds no images ({', '.join(IMAGE_SUFFIXES)}, any case); zip a folder of class "
                            "folders, or of train/ and test/ folders of class folders.")
        tree, total = [], 0
        for info, rel in members:
            what = f"{name}: entry {info.orig_filename!r}"
            limit, which = _entry_limit(info, total, limits)
            target = dest.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            # zipfile cuts the data at the declared size (and checks the CRC there): to read past a lying
            # one up to the limit, declare more than the limit plus what one read may decompress ahead.
            reading = copy.copy(info)
            reading.file_size = limit + 1 + _CHUNK
            try:
                with zf.open(reading) as member, open(target, "xb") as out:
                    n, digest = copy_limited(member, out, limit, lambda: _too_large(
                        what, f"unpacks to more than its header's {_size(info.file_size)}", which))
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                raise DataError(f"{what} cannot be unpacked ({exc}); zip the folder again.") from exc
            if n != info.file_size:
                raise DataError(f"{what} holds {n} bytes but its header says {info.file_size}: the zip is damaged "
                                "or crafted; zip the folder again.")
            total += n
            tree.append((rel, digest))
    return tree


def _zip_members(infos: list[zipfile.ZipInfo], name: str, limits: Limits) -> list[tuple[zipfile.ZipInfo, str]]:
    """The entries to unpack, with their relative paths, once every entry passed every check from its
    header: safe path and type, not encrypted, an image, no path twice, sizes within the limits."""
    members, files, folders, total = [], set(), set(), 0
    for info in infos:
        entry = info.orig_filename  # zipfile's ``filename`` is cut at a NUL byte
        what = f"{name}: entry {entry!r}"
        parts = _zip_path(entry, what)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise DataError(f"{what} is a symbolic link; uploads hold files, not links: zip the files themselves "
                            "(without --symlinks).")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DataError(f"{what} is not a regular file (a device, pipe or socket); remove it and zip again.")
        if info.flag_bits & 0x1:
            raise DataError(f"{what} is encrypted; zip the folder without a password.")
        if entry.endswith("/") or not _wanted(parts, what, "remove it and zip again"):
            continue
        rel = "/".join(parts)
        prefixes = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if rel in files or rel in folders or prefixes & files:
            raise DataError(f"{what} is in the zip twice (as a file, or a file and a folder of one name); zip "
                            "the folder again so that each path is stored once.")
        files.add(rel)
        folders |= prefixes
        limit, which = _entry_limit(info, total, limits)
        if info.file_size > limit:
            raise _too_large(what, f"unpacks to {_size(info.file_size)}", which)
        total += info.file_size
        members.append((info, rel))
    return members


def _zip_path(entry: str, what: str) -> list[str]:
    """The components of a zip entry's path; DataError unless it is relative and every component safe."""
    fix = "zip the dataset folder again, with paths relative to it"
    if entry.startswith("/") or _DRIVE.match(entry):
        raise DataError(f"{what} is an absolute path; {fix}.")
    if "\\" in entry:
        raise DataError(f"{what} holds a backslash (a Windows path, or a name no folder can hold); {fix}.")
    return [_component(part, what, fix) for part in (entry[:-1] if entry.endswith("/") else entry).split("/")]


def _entry_limit(info: zipfile.ZipInfo, unpacked: int, limits: Limits) -> tuple[int, str]:
    """The most bytes this entry may unpack to, ``unpacked`` bytes having come before it, and which
    limit that is."""
    return min((limits.max_file_bytes, _per_image(limits)),
               (limits.max_unpacked_bytes - unpacked,
                f"the limit of {_size(limits.max_unpacked_bytes)} unpacked in all (max_unpacked_bytes), "
                f"{_size(unpacked)} coming before it"),
               (int(limits.max_ratio * info.compress_size),
                f"{limits.max_ratio:g} times its compressed size of {info.compress_size} bytes (max_ratio): a "
                "decompression bomb"))


def _check_directory(f: BinaryIO, name: str, limits: Limits) -> None:
    """Refuse, from the end record alone, a zip that declares more than max_files entries or whose
    central directory is larger than that many entries need, before zipfile reads it into memory."""
    end = f.seek(0, os.SEEK_END)
    start = max(0, end - _END.size - 0xFFFF)  # the end record, then a comment of up to 64 KiB
    f.seek(start)
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END.size:
        return  # not a zip: zipfile says so
    entries, size = _END.unpack_from(tail, at)[4:6]
    if at >= 20 + _END64.size and tail[at - 20:at - 16] == b"PK\x06\x07":
        record = tail[at - 20 - _END64.size:at - 20]
        if record[:4] == b"PK\x06\x06":
            entries, size = _END64.unpack(record)[7:9]
    if entries > limits.max_files:
        raise _too_many(name, f"declares {entries} entries", limits)
    if size > limits.max_files * _DIRECTORY_BYTES_PER_ENTRY:
        raise _too_many(name, f"has a central directory of {_size(size)}, more than {limits.max_files} entries "
                        f"of up to {_DIRECTORY_BYTES_PER_ENTRY} bytes need", limits)


# --- npz -------------------------------------------------------------------------------------------


def _check_npz(path: Path, name: str, limits: Limits) -> None:
    """Before ``load_dataset`` reads arrays into memory: arrays only, whose headers match their sizes,
    within max_unpacked_bytes in all and max_file_bytes an image."""
    try:
        with open(path, "rb") as f:
            _check_directory(f, name, limits)
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > limits.max_unpacked_bytes:
                raise _too_large(name, f"unpacks to {_size(total)}",
                                 f"the limit of {_size(limits.max_unpacked_bytes)} (max_unpacked_bytes)")
            for info in infos:
                _check_npy(zf, info, f"{name}: array {info.orig_filename!r}", limits)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"{name} is not a readable .npz file ({exc}); send the file numpy.savez or "
                        "numpy.savez_compressed wrote (MedMNIST layout).") from exc


def _check_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, limits: Limits) -> None:
    if not info.orig_filename.endswith(".npy"):
        raise DataError(f"{what} is not a .npy array; a MedMNIST-style .npz holds only arrays (train_images, "
                        "train_labels, ...).")
    with zf.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
        except ValueError as exc:
            raise DataError(f"{what} has no valid .npy header ({exc}); save the arrays with numpy again.") from exc
    if dtype.hasobject:
        raise DataError(f"{what} holds Python objects (dtype {dtype}), which only pickle could load (never done "
                        "here); store images and labels as numbers.")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > info.file_size:
        raise DataError(f"{what} declares {shape} {dtype} ({_size(nbytes)}) but holds {_size(info.file_size)}: "
                        "the file is damaged or crafted; save the arrays with numpy again.")
    per_image = math.prod(shape[1:]) * dtype.itemsize if shape else nbytes
    if per_image > limits.max_file_bytes:
        raise _too_large(what, f"holds images of {_size(per_image)} each ({shape} {dtype})", _per_image(limits))


# --- names -----------------------------------------------------------------------------------------


def _component(part: str, what: str, fix: str = "rename it") -> str:
    """``part`` if it can be one folder or file name written under the store; else DataError."""
    problem = ("is empty" if not part else
               "points to a folder, not into one" if part in (".", "..") else
               "holds a '/' or a backslash" if "/" in part or "\\" in part else
               "holds a control character" if any(ord(c) < 32 or ord(c) == 127 for c in part) else
               "is longer than 255 bytes" if len(part.encode("utf-8", "surrogateescape")) > 255 else None)
    if problem:
        raise DataError(f"{what}: the name {part!r} {problem}; {fix}.")
    return part


def _wanted(parts: list[str], what: str, fix: str) -> bool:
    """True for an image to keep, False for junk the folder loader skips too (hidden files, __MACOSX/,
    Thumbs.db), DataError for any other file."""
    if any(p.startswith(".") or p.lower() in _SKIPPED_NAMES for p in parts):
        return False
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    if suffix in _ARCHIVE_SUFFIXES:
        raise DataError(f"{what} is an archive; archives inside an upload are not unpacked: put its images in the "
                        "class folders instead.")
    raise DataError(f"{what} is not an image (a dataset holds only {', '.join(IMAGE_SUFFIXES)} files, any case); "
                    f"{fix}.")


def _class_folder(class_name: str, what: str, *, with_split: bool) -> str:
    fix = "give a class name that can be a folder name (letters, digits, spaces, '-', '_')"
    folder = _component(class_name, f"{what}: class", fix)
    if folder.startswith(".") or folder.lower() in _SKIPPED_NAMES:
        raise DataError(f"{what}: class {class_name!r} is a name the dataset loader skips; {fix}.")
    if not with_split and folder.lower() in _SPLIT_NAMES:
        raise DataError(f"{what}: class {class_name!r} is the name of a split folder, which the loader would read "
                        "as a split; rename the class, or give each image its split.")
    return folder


def _image_split(split: str | None, what: str) -> str:
    if split not in SPLITS:
        raise DataError(f"{what}: split {split!r} is not one of {', '.join(SPLITS)}; give one split per image, in "
                        "the order of the images.")
    return split


def _display_name(name: str | None, default: str) -> str:
    """The last component of a client's file name, printable characters only, at most 255."""
    base = re.split(r"[/\\]", str(name or ""))[-1]
    base = "".join(c for c in base if c.isprintable())[:255].strip()
    return default if base in ("", ".", "..") else base


def _check_links(folder: Path, roots: list[Path], given: Path) -> None:
    """Every symbolic link under ``folder``, followed as the loader follows them, must stay inside
    ``roots`` (a link to / would also make the loader walk the whole disk)."""
    seen, stack = set(), [folder]
    while stack:
        here = stack.pop()
        if here in seen:
            continue
        seen.add(here)
        with os.scandir(here) as entries:
            for entry in entries:
                if not entry.is_symlink():
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    continue
                try:
                    target = Path(entry.path).resolve(strict=True)
                except (OSError, RuntimeError):
                    continue  # a broken link or a loop: the loader reads nothing through it
                if not inside(target, roots):
                    raise DataError(f"{entry.path} in folder {given} is a link to {target}, outside the folders "
                                    f"this server allows ({', '.join(map(str, roots))}); replace the link with "
                                    "the files themselves.")
                if target.is_dir():
                    stack.append(target)


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (resolved) is one of ``roots`` (resolved) or lies under one."""
    return any(path == root or path.is_relative_to(root) for root in roots)


# --- limits ----------------------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _per_image(limits: Limits) -> str:
    return f"the limit of {_size(limits.max_file_bytes)} an image (max_file_bytes)"


def _per_upload(limits: Limits) -> str:
    return f"the limit of {_size(limits.max_upload_bytes)} an upload (max_upload_bytes)"


def _too_large(what: str, found: str, which: str) -> TooLargeError:
    return TooLargeError(f"{what} {found}, above {which}; shrink or split it, or ask the server's operator to "
                         "raise the limit.")


def _upload_too_large(name: str, limits: Limits, size: int | None = None) -> TooLargeError:
    found = f"is {_size(size)}" if size is not None else "is too large"
    return _too_large(name, found, _per_upload(limits))


def _too_many(what: str, found: str, limits: Limits) -> TooLargeError:
    return _too_large(what, found, f"the limit of {limits.max_files} files an upload (max_files)")
