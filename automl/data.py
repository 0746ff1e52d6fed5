"""Datasets: class folders, train/test folders, or a MedMNIST-style ``.npz``; each image fingerprinted.

Loading reads every file once (to fingerprint it and read its header) but decodes no pixels; the
extractors decode lazily, batch by batch (``Item.load``), so a dataset larger than memory embeds
with bounded memory. Items are ordered (split, class, relative path) so that the same folder always
gives the same order, and with it the same seeded split.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from automl.errors import ConfigError, DataError
from automl.images import IMAGE_SUFFIXES, DecodeError, ImageInfo, decode, decode_array, probe

SPLITS = ("train", "val", "test")
# Folder spellings of each split, compared case-insensitively.
SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
NPZ_KEYS = {split: (f"{split}_images", f"{split}_labels") for split in SPLITS}
_SKIPPED_NAMES = {"__macosx", "thumbs.db", "desktop.ini"}


def fingerprint_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint_array(pixels: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{pixels.dtype.str}{pixels.shape}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


class _NpzArray:
    """One array of an .npz, opened on first use: memory-mapped when the member is stored
    uncompressed (``np.savez``), else read whole (``np.savez_compressed`` leaves no other way)."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    def get(self) -> np.ndarray:
        with self._lock:
            if self._array is None:
                self._array = _open_npz_member(self.path, self.key)
            return self._array


def _open_npz_member(path: Path, key: str) -> np.ndarray:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(member)
                header_len = member.tell()
            # The member's data starts after the zip local header (30 bytes + name + extra).
            with open(path, "rb") as raw:
                raw.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(raw.read(4), "<u2")
            offset = info.header_offset + 30 + int(name_len) + int(extra_len) + header_len
            return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                             order="F" if fortran else "C")
    with np.load(path, allow_pickle=False) as npz:
        return npz[key]


@dataclass(frozen=True)
class Item:
    """One labelled image: where it comes from, its class index, its content fingerprint."""

    path: str  # a file path, or "<file.npz>:<split>[<index>]"
    label: int
    split: str
    fingerprint: str
    width: int
    height: int
    mode: str
    _array: _NpzArray | None = field(default=None, repr=False, compare=False)
    _index: int = field(default=-1, repr=False, compare=False)

    def load(self, size: int | None = None) -> np.ndarray:
        """Decode to a ``(size, size, 3)`` uint8 RGB array. Raises DataError naming the file."""
        try:
            if self._array is not None:
                return decode_array(np.asarray(self._array.get()[self._index]), size)
            with open(self.path, "rb") as f:  # Pillow reads what it needs: the bytes are not held whole
                return decode(f, size)
        except DecodeError as exc:
            raise DataError(
                f"cannot decode image {self.path}: {exc}. Remove or replace the file, or pass "
                "--skip-bad to leave such files out (they are listed)."
            ) from exc
        except OSError as exc:
            raise DataError(f"cannot read image {self.path}: {exc}") from exc


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


@dataclass
class Dataset:
    root: str
    layout: str  # "class-folders", "split-folders" or "npz"
    classes: list[str]
    items: list[Item]
    bad_files: list[BadFile] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    split_note: str = "given"  # how the test split came to be
    nonfinite: list[str] = field(default_factory=list)  # npz images holding NaN or infinite pixels

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    @property
    def splits(self) -> list[str]:
        present = {it.split for it in self.items}
        return [s for s in SPLITS if s in present]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split per class, every class listed (zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for split in self.splits:
            c = Counter(it.label for it in self.items if it.split == split)
            out[split] = {name: c.get(i, 0) for i, name in enumerate(self.classes)}
        return out

    def duplicates(self) -> list[list[Item]]:
        """Groups of two or more items with identical content, in dataset order."""
        groups: dict[str, list[Item]] = defaultdict(list)
        for it in self.items:
            groups[it.fingerprint].append(it)
        return [g for g in groups.values() if len(g) > 1]

    def leaks(self) -> list[tuple[Item, Item]]:
        """(train-or-val item, test item) pairs with identical content: the test split is not held out."""
        pairs = []
        for group in self.duplicates():
            tests = [it for it in group if it.split == "test"]
            others = [it for it in group if it.split != "test"]
            pairs.extend((a, b) for b in tests for a in others)
        return pairs

    def conflicts(self) -> list[list[Item]]:
        """Identical images filed under different classes."""
        return [g for g in self.duplicates() if len({it.label for it in g}) > 1]

    def split_record(self) -> dict:
        """What a run saves so that its split can be checked and reproduced."""
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": self.classes,
            "split": self.split_note,
            "items": [
                {"path": it.path, "split": it.split, "label": it.label, "fingerprint": it.fingerprint}
                for it in self.items
            ],
        }


def load_dataset(path: str | os.PathLike, *, skip_bad: bool = False, workers: int = 8) -> Dataset:
    """Read a dataset's layout, labels and fingerprints (no pixel decoding).

    Raises DataError naming the path and the fix for every malformed input.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(
            f"dataset not found: {root}. Pass a folder with one sub-folder per class, a folder with "
            "train/ and test/ sub-folders, or a MedMNIST-style .npz file."
        )
    if root.is_file():
        if root.suffix.lower() != ".npz":
            raise DataError(
                f"{root} is a file but not an .npz; a dataset is a folder of class folders, a folder "
                "with train/ and test/, or a MedMNIST-style .npz."
            )
        return _load_npz(root)
    subdirs = _visible_subdirs(root)
    split_dirs = _split_dirs(root, subdirs)
    if split_dirs:
        if "train" not in split_dirs:
            found = ", ".join(p.name + "/" for p in split_dirs.values())
            raise DataError(
                f"{root} has {found} but no train/ (or Training/) folder; add the training images "
                "there, or point at a folder of class folders."
            )
        unknown = [d.name for d in subdirs if d not in split_dirs.values()]
        if unknown:
            raise DataError(
                f"{root} mixes split folders ({', '.join(p.name for p in split_dirs.values())}) with "
                f"other folders ({', '.join(unknown)}); move class folders inside train/ and test/."
            )
        return _load_folders(root, split_dirs, "split-folders", skip_bad, workers)
    return _load_folders(root, {"train": root}, "class-folders", skip_bad, workers)


def split_test(dataset: Dataset, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Hold out a stratified, seeded test split when the data came without one.

    The same items in the same order with the same seed always give the same split. Data with a
    test split is returned unchanged.
    """
    if "test" in dataset.splits:
        return dataset
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1); got {test_fraction}.")
    train = [i for i, it in enumerate(dataset.items) if it.split == "train"]
    labels = [dataset.items[i].label for i in train]
    # The seed as given, not a derived stream (see automl.seeds): the test split stays where earlier
    # versions held it out, so runs before and after stay comparable on the same test images.
    held = stratified_holdout(labels, test_fraction, seed)
    if held is None:
        counts = Counter(labels)
        raise DataError(
            f"{dataset.root}: cannot hold out a stratified {test_fraction:.0%} test split: every class "
            f"needs at least 2 images and each side at least one per class (class sizes: "
            f"{ {dataset.classes[c]: n for c, n in sorted(counts.items())} }). Add images, or provide "
            "train/ and test/ folders."
        )
    test = {train[p] for p in held}
    items = [replace(it, split="test") if i in test else it for i, it in enumerate(dataset.items)]
    note = f"stratified {test_fraction:g} of train held out as test (seed {seed})"
    return replace(dataset, items=items, split_note=note)


def stratified_holdout(labels: list[int], fraction: float, seed: int) -> set[int] | None:
    """Positions of a stratified, seeded ``fraction`` of ``labels`` (the same labels and seed always
    give the same positions); None when that cannot be done: a class with fewer than 2 images, or a
    side with fewer images than there are classes. The caller words the error."""
    from sklearn.model_selection import train_test_split

    counts = Counter(labels)
    n_held = int(np.ceil(fraction * len(labels)))
    if min(counts.values()) < 2 or n_held < len(counts) or len(labels) - n_held < len(counts):
        return None
    _, held = train_test_split(list(range(len(labels))), test_size=fraction, stratify=labels, random_state=seed)
    return set(held)


# --- folders -----------------------------------------------------------------------------------


def _visible_subdirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in _SKIPPED_NAMES
    )


def _split_dirs(root: Path, subdirs: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in subdirs:
        for split, names in SPLIT_FOLDERS.items():
            if d.name.lower() in names:
                if split in found:
                    raise DataError(
                        f"{root} has two {split} folders ({found[split].name}/ and {d.name}/); keep one."
                    )
                found[split] = d
    return found


def _load_folders(root: Path, split_dirs: dict[str, Path], layout: str, skip_bad: bool,
                  workers: int) -> Dataset:
    per_split: dict[str, dict[str, list[Path]]] = {}
    ignored: list[str] = []
    for split in SPLITS:
        if split not in split_dirs:
            continue
        folder = split_dirs[split]
        class_dirs = _visible_subdirs(folder)
        if not class_dirs:
            loose = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            where = f"; it holds {len(loose)} images directly" if loose else ""
            raise DataError(
                f"no class folders in {folder}{where}: put each class's images in a sub-folder named "
                f"after the class, e.g. {folder / 'yes'}/ and {folder / 'no'}/."
            )
        per_split[split] = {}
        for class_dir in class_dirs:
            files, other = _image_files(class_dir)
            ignored.extend(str(p) for p in other)
            if not files:
                raise DataError(
                    f"class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}, any case); "
                    "add images or remove the folder."
                )
            per_split[split][class_dir.name] = files

    classes = sorted(per_split["train"])
    for split, by_class in per_split.items():
        extra = sorted(set(by_class) - set(classes))
        if extra:
            raise DataError(
                f"{split_dirs[split]} has class folders {extra} that {split_dirs['train']} lacks; every "
                "class must have training images (check the spelling of the folder names)."
            )
    if len(classes) < 2:
        raise DataError(
            f"{split_dirs['train']} has a single class ({classes[0]}); classification needs at least two "
            "class folders."
        )

    jobs = [(split, classes.index(name), path)
            for split, by_class in per_split.items()
            for name in classes for path in by_class.get(name, [])]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda job: _read_file(job[2]), jobs))

    items, bad = [], []
    for (split, label, path), result in zip(jobs, results):
        if isinstance(result, BadFile):
            bad.append(result)
            continue
        fp, info = result
        items.append(Item(str(path), label, split, fp, info.width, info.height, info.mode))
    if bad and not skip_bad:
        raise bad_files_error(bad)
    dataset = Dataset(str(root), layout, classes, items, bad, sorted(ignored))
    _check_classes_nonempty(dataset, split_dirs)
    return dataset


def _image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    images, other = [], []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") or part.lower() in _SKIPPED_NAMES for part in rel.parts):
            continue
        if p.is_file():
            (images if p.suffix.lower() in IMAGE_SUFFIXES else other).append(p)
    return images, other


def _read_file(path: Path) -> tuple[str, ImageInfo] | BadFile:
    """The file's fingerprint (read in chunks, so a worker holds 1 MiB, not the file) and its
    header (``probe`` decodes no pixels; it refuses an image above ``images.MAX_PIXELS``)."""
    try:
        with path.open("rb") as f:
            h = hashlib.blake2b(digest_size=16)  # as fingerprint_bytes
            while chunk := f.read(1 << 20):
                h.update(chunk)
            if not f.tell():
                return BadFile(str(path), "empty file")
            f.seek(0)
            return h.hexdigest(), probe(f)
    except OSError as exc:
        return BadFile(str(path), f"unreadable ({exc.strerror or exc})")
    except DecodeError as exc:
        return BadFile(str(path), str(exc))


def _check_classes_nonempty(dataset: Dataset, split_dirs: dict[str, Path]) -> None:
    train_counts = dataset.counts()["train"] if dataset.items else {}
    for name in dataset.classes:
        if train_counts.get(name, 0) == 0:
            raise DataError(
                f"class {name!r} has no usable training images in {split_dirs['train'] / name} (all were "
                "bad files); add images or remove the folder."
            )


# --- npz ---------------------------------------------------------------------------------------


def _load_npz(path: Path) -> Dataset:
    try:
        with zipfile.ZipFile(path) as zf:
            keys = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc}).") from exc
    if "train_images" not in keys or "train_labels" not in keys:
        raise DataError(
            f"{path} lacks the keys train_images and train_labels (found: {sorted(keys) or 'none'}). "
            "A MedMNIST-style .npz holds train_images/train_labels and optionally val_* and test_*."
        )
    arrays: dict[str, tuple[_NpzArray, np.ndarray]] = {}
    for split, (img_key, lab_key) in NPZ_KEYS.items():
        if (img_key in keys) != (lab_key in keys):
            missing = lab_key if img_key in keys else img_key
            raise DataError(f"{path} has {img_key if img_key in keys else lab_key} but not {missing}.")
        if img_key not in keys:
            continue
        images = _NpzArray(path, img_key)
        arr = images.get()
        labels = _npz_labels(path, lab_key)
        if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[3] not in (1, 3, 4)):
            raise DataError(
                f"{path}: {img_key} has shape {arr.shape}; expected (N, H, W) or (N, H, W, C) with C "
                "1, 3 or 4."
            )
        if len(labels) != len(arr):
            raise DataError(
                f"{path}: {img_key} holds {len(arr)} images but {lab_key} holds {len(labels)} labels; "
                "they must match one to one."
            )
        arrays[split] = (images, labels)

    values = sorted({int(v) for _, labels in arrays.values() for v in labels})
    train_values = set(arrays["train"][1].tolist())
    unseen = [v for v in values if v not in train_values]
    if unseen:
        raise DataError(f"{path}: labels {unseen} occur outside train_labels but never in it.")
    if len(values) < 2:
        raise DataError(f"{path}: train_labels holds a single class ({values}); need at least two.")
    index = {v: i for i, v in enumerate(values)}
    items, nonfinite = [], []
    for split, (images, labels) in arrays.items():
        arr = images.get()
        h, w = arr.shape[1], arr.shape[2]
        mode = _array_mode(arr)
        for i, lab in enumerate(labels.tolist()):
            items.append(Item(f"{path}:{split}[{i}]", index[int(lab)], split, fingerprint_array(arr[i]),
                              w, h, mode, images, i))
        nonfinite += [f"{path}:{split}[{i}]" for i in _nonfinite_rows(arr)]
    return Dataset(str(path), "npz", [str(v) for v in values], items, nonfinite=nonfinite)


def _nonfinite_rows(arr: np.ndarray, block: int = 256) -> list[int]:
    """Indices of the images of a float array that hold NaN or infinite pixels (read in blocks, so a
    memory-mapped array is never copied whole)."""
    if arr.dtype.kind not in "fc":
        return []
    out = []
    for start in range(0, len(arr), block):
        rows = np.asarray(arr[start:start + block]).reshape(min(block, len(arr) - start), -1)
        out.extend((start + np.flatnonzero(~np.isfinite(rows).all(axis=1))).tolist())
    return out


def _npz_labels(path: Path, key: str) -> np.ndarray:
    labels = np.asarray(_open_npz_member(path, key))
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{path}: {key} has shape {labels.shape}; expected one class per image, (N,) or (N, 1) "
            "(multi-label data is not supported)."
        )
    if labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0):
        raise DataError(f"{path}: {key} holds non-integer values; labels must be class numbers.")
    if labels.dtype.kind not in "iuf" and labels.dtype.kind != "b":
        raise DataError(f"{path}: {key} has dtype {labels.dtype}; labels must be integers.")
    return labels.astype(np.int64)


def _array_mode(arr: np.ndarray) -> str:
    channels = 1 if arr.ndim == 3 else arr.shape[3]
    base = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    return base if arr.dtype == np.uint8 else f"{base};{arr.dtype}"


def load_images(paths: list[str | os.PathLike], *, skip_bad: bool = False) -> tuple[list[Item], list[BadFile]]:
    """Unlabelled images to predict: files, and folders searched recursively for images."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found, _ = _image_files(p)
            if not found:
                raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {p}.")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"image not found: {p}.")
    items, bad = [], []
    for path in files:
        result = _read_file(path)
        if isinstance(result, BadFile):
            bad.append(result)
            continue
        fp, info = result
        items.append(Item(str(path), -1, "predict", fp, info.width, info.height, info.mode))
    if bad and not skip_bad:
        raise bad_files_error(bad)
    return items, bad


def bad_files_error(bad: list[BadFile], fix: str = "Remove or replace them, or pass --skip-bad to leave them out "
                                                   "(they are listed).") -> DataError:
    """The error listing undecodable files (the first ten), ending with ``fix``."""
    shown = "\n".join(f"  {b.path}: {b.reason}" for b in bad[:10])
    more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
    return DataError(f"{len(bad)} file(s) are not decodable images:\n{shown}{more}\n{fix}")
