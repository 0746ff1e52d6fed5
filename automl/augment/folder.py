"""``folder``: synthetic images made elsewhere (a CycleGAN set, say), brought in from class folders.

    automl fit DATA --augment folder -p path=DIR [-p sources=MAP.csv]

``DIR`` holds one folder per class, named as the dataset's classes (``DIR/<class>/**/<image>``, the
suffixes a dataset folder takes). Nothing is learned, and the plan works as for every augmenter:
``ratio``, ``classes`` and ``mix`` decide how many images of which class. Image k of class c is the
k-th file of ``DIR/<c>`` in the order of its path relative to that folder, so the same folder gives
the same images whatever order the file system lists them in, and a larger ratio only adds images.
No image is repeated: a plan that asks for more images of a class than its folder holds is refused,
naming the class, both counts and the ratio that fits, by the fit's preflight before the baseline
(``check_plan``; a file found unreadable later can still fall short, said when that image is asked for).

Sources, the training image(s) each image was made from (the search keeps an image off the training
side of every fold whose validation side holds one of them; ``automl.search.cv_splits``):

- With a CSV (``sources``; by default ``DIR/sources.csv`` when it exists): columns ``file`` (the
  image's path relative to DIR) and ``source`` (a training image's path relative to the dataset root,
  or any trailing part of its path down to its bare file name, as long as that names one training
  image; several separated by ``;``; an empty cell: made from none). Every image of the classes a fit
  draws from needs a row; a source that names no training image (a typo, a test image, or one that
  ``real_fraction`` left out) or several is refused with its row. Sources may be of any class (a
  CycleGAN translates one class's images into another's).
- Without one: the image's nearest real training image, of any class, by pixels (``automl.quality``'s
  normalised correlation of the grayscale images at 32 px, the larger of the image's and its mirror
  image's), plus every other training image at least ``PIXEL_COPY`` (0.95) close, quality's
  near-copy threshold, so a copy of a scan the dataset holds twice is kept away from both. Each
  record says which (``source_by``) and the correlation.

Refused with the list, or with ``--skip-bad`` left out and listed: a class folder that is not one of
the dataset's classes, images directly in DIR (no class), and files that do not decode. Every file
of the classes a fit draws from is decoded once (at 32 px) when it starts, so a bad one is found
before any image is made. Test copies are the pipeline's check on every augmenter's output
(``automl.augment.generate.refuse_test_copies``): the augmenter sees the training split only.

Cache: the parameters carry ``contents``, a digest of every image under DIR (relative path and
bytes) and of the CSV, so a replaced, added or removed file gives a new cache key, never a stale
copy; one process hashes an unchanged folder once (same paths, sizes, mtimes, ctimes and inodes).
"""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from automl import progress as events
from automl.augment.base import Augmenter, register
from automl.data import BadFile, Item, _image_files, _visible_subdirs
from automl.errors import ConfigError, DataError
from automl.images import IMAGE_SUFFIXES, DecodeError, decode
from automl.params import param_error

CSV_NAME = "sources.csv"
_DIGESTS: dict[tuple, str] = {}  # (folder, CSV, listing) -> contents digest: an unchanged folder is read once


@dataclass(frozen=True)
class _File:
    """An image file of DIR, decoded like a dataset's (``automl.images.decode``)."""

    path: Path

    def load(self, size: int | None = None) -> np.ndarray:
        try:
            with open(self.path, "rb") as f:
                return decode(f, size)
        except DecodeError as exc:
            raise DataError(f"cannot decode image {self.path}: {exc}. Remove or replace the file.") from exc
        except OSError as exc:
            raise DataError(f"cannot read image {self.path}: {exc.strerror or exc}") from exc


@register
class Folder(Augmenter):
    name = "folder"
    summary = ("synthetic images made elsewhere, from class folders (path=DIR); sources from a CSV or the nearest "
               "real image")
    path_params = ("path", "sources")
    defaults: dict[str, Any] = {
        "path": "",  # DIR: one folder of images per class (required)
        "sources": "",  # a CSV of file,source rows; "": DIR/sources.csv when there, else the nearest real image
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        root = Path(self.params["path"]) if self.params["path"] else None
        if root is not None and root.is_dir():  # a missing folder is preflight's and fit's to refuse
            csv_path = self._csv_path(root, check=False)
            self.params = {**self.params, "contents": contents_digest(root, csv_path)}

    # --- where things are ------------------------------------------------------------------------------

    def _root(self) -> Path:
        path = self.params["path"]
        if not path:
            raise param_error(f"augmenter {self.name!r}", "path", "the folder of the synthetic images' class folders",
                              path, "Pass -p path=DIR (params: {path: DIR} in a recipe).")
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"augmenter {self.name!r}: the folder {root} (parameter 'path') "
                            f"{'is a file' if root.exists() else 'does not exist'}; it should hold one folder of "
                            "images per class. Fix the path.")
        return root

    def _csv_path(self, root: Path, check: bool = True) -> Path | None:
        given = self.params["sources"]
        if given:
            path = Path(given)
            if check and not path.is_file():
                raise DataError(f"augmenter {self.name!r}: the sources CSV {path} (parameter 'sources') does not "
                                "exist. Fix the path, or leave 'sources' out to use the nearest real image.")
            return path
        if (root / CSV_NAME).is_file():
            return root / CSV_NAME
        others = sorted(p.name for p in root.glob("*") if p.suffix.lower() == ".csv" and p.is_file())
        if check and others:
            raise ConfigError(f"augmenter {self.name!r}: {root} holds {', '.join(others)} but no {CSV_NAME}, and "
                              "'sources' is not set, so it would be ignored. Fix: pass -p sources="
                              f"{root / others[0]}, rename it {CSV_NAME}, or move it out of the folder.")
        return None

    def preflight(self) -> None:
        root = self._root()
        if not _visible_subdirs(root):
            raise DataError(f"augmenter {self.name!r}: {root} has no class folders; put each class's synthetic "
                            f"images in a folder named after the class, e.g. {root / '<class>'}/.")
        self._csv_path(root)

    def check_plan(self, counts, sizes) -> None:
        """More images asked of a class than its folder holds: refused before the baseline (a file
        that turns out unreadable can still fall short at generation, where ``_files`` says so)."""
        root = self._root()
        for name, n in counts.items():
            held = len(_image_files(root / name)[0]) if (root / name).is_dir() else 0
            if 0 < held < n:
                raise ConfigError(_too_few(self.name, name, n, held, sizes.get(name, 0), root))

    # --- fit: list, check, and read the sources --------------------------------------------------------

    def fit(self, train, classes, chosen, work_dir, seed, progress=True) -> None:
        self.preflight()
        root = self._root()
        dirs = {d.name: d for d in _visible_subdirs(root)}
        absent = [classes[c] for c in chosen if classes[c] not in dirs]
        if absent:
            raise DataError(f"augmenter {self.name!r}: the plan makes images of class(es) {', '.join(absent)}, but "
                            f"{root} has no folder for them (it has {', '.join(sorted(dirs))}). Fix: add "
                            f"{root / absent[0]}/ with images, or choose other classes (--classes).")
        bad = [BadFile(str(d), f"a class folder, but the dataset has no class {name!r} (its classes: "
                               f"{', '.join(classes)})") for name, d in sorted(dirs.items()) if name not in classes]
        bad += [BadFile(str(p), "directly in the folder, so of no class: move it into its class's folder")
                for p in sorted(root.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        listing = {c: sorted(_image_files(dirs[classes[c]])[0],
                             key=lambda p, d=dirs[classes[c]]: p.relative_to(d).as_posix()) for c in chosen}
        files = [p for c in chosen for p in listing[c]]
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(files)))) as pool:
            reasons = list(pool.map(_unreadable, files))
        broken = {p for p, reason in zip(files, reasons) if reason}
        bad += [BadFile(str(p), reason) for p, reason in zip(files, reasons) if reason]
        if bad:
            shown = "\n".join(f"  {b.path}: {b.reason}" for b in bad[:10])
            more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
            if not self.skip_bad:
                raise DataError(f"augmenter {self.name!r}: {len(bad)} unusable file(s) or folder(s) in {root}:\n"
                                f"{shown}{more}\nFix them or move them out, or pass --skip-bad to leave them out "
                                "(they are listed).")
            events.note(f"augmenter {self.name!r}: left out {len(bad)} unusable file(s) or folder(s) of {root} "
                        f"(--skip-bad):\n{shown}{more}", echo=progress, left_out=[b.path for b in bad])
        self.root_ = root
        self.classes_ = list(classes)
        self.files_ = {c: [p for p in listing[c] if p not in broken] for c in chosen}
        self.n_real_ = {c: len(train.get(c, ())) for c in chosen}
        # Listing-order independent, so ties in the nearest-image search break the same way every time.
        self.train_ = sorted((it for items in train.values() for it in items), key=lambda it: (it.fingerprint, it.path))
        self.train_pixels_ = None
        csv_path = self._csv_path(root)
        self.csv_ = None if csv_path is None else self._read_csv(csv_path, root, self.files_)

    def _read_csv(self, path: Path, root: Path, files: dict[int, list[Path]]) -> dict[Path, list[Item]]:
        """Each listed image of the chosen classes -> its source items, from the CSV's rows."""
        index = _SourceIndex(self.train_)
        wanted = {p.relative_to(root).as_posix(): p for ps in files.values() for p in ps}
        where = f"augmenter {self.name!r}: the sources CSV {path}"
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = [(h or "").strip().lower() for h in reader.fieldnames or []]
                if "file" not in header or "source" not in header:
                    raise DataError(f"{where} has columns {', '.join(header) or '(none)'}; it needs 'file' (the "
                                    "image's path relative to the folder) and 'source' (its training image(s), "
                                    "';'-separated). Fix the header row.")
                reader.fieldnames = header
                out: dict[Path, list[Item]] = {}
                lines: dict[str, int] = {}
                for row in reader:
                    line = reader.line_num
                    name = _relative(row.get("file") or "")
                    if name in lines:
                        raise DataError(f"{where}, row {line}: {name!r} is listed again (first on row {lines[name]}). "
                                        "Fix: one row per image.")
                    lines[name] = line
                    if not name or name == ".." or name.startswith("../") or not (root / name).is_file():
                        raise DataError(f"{where}, row {line}: file {row.get('file')!r} is not a file in {root}. "
                                        "Fix: the image's path relative to that folder, e.g. <class>/<name>.png.")
                    if name not in wanted:
                        continue  # a class this fit does not draw from, or an image left out
                    out[wanted[name]] = [index.find(text, f"{where}, row {line}")
                                         for text in (row.get("source") or "").split(";") if text.strip()]
        except UnicodeDecodeError as exc:
            raise DataError(f"{where} is not UTF-8 text ({exc}). Save it as UTF-8.") from None
        except csv.Error as exc:
            raise DataError(f"{where} is not a readable CSV ({exc}).") from None
        missing = sorted(name for name, p in wanted.items() if p not in out)
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise DataError(f"{where} has no row for {len(missing)} image(s): {shown}. Fix: add a row per image "
                            "(an empty source says it was made from no training image), or leave the CSV out to "
                            "use each image's nearest real image.")
        return out

    # --- generate ----------------------------------------------------------------------------------------

    def _files(self, label: int, indices: Sequence[int]) -> list[Path]:
        files = getattr(self, "files_", {}).get(label)
        if files is None:
            raise RuntimeError(f"augmenter {self.name!r}: class {label} was not among the classes fitted")
        beyond = [k for k in indices if k >= len(files)]
        if beyond:
            name = self.classes_[label]
            raise ConfigError(_too_few(self.name, name, max(beyond) + 1, len(files), self.n_real_[label], self.root_,
                                       "at least "))
        return [files[k] for k in indices]

    def generate(self, label: int, indices: Sequence[int], sources: Sequence, seed: int) -> list[np.ndarray]:
        return [_File(path).load() for path in self._files(label, indices)]

    def provenance(self, label: int, indices: Sequence[int]) -> list[dict]:
        files = self._files(label, indices)
        if self.csv_ is not None:
            return [{"sources": self.csv_[p], "origin": str(p.resolve()), "source_by": "csv"} for p in files]
        from automl.quality import PIXEL_COPY, pixel_similarity, pixel_vectors

        if self.train_pixels_ is None:
            self.train_pixels_ = pixel_vectors(self.train_)
        similarity = pixel_similarity(pixel_vectors([_File(p) for p in files]), self.train_pixels_)
        out = []
        for path, row in zip(files, similarity):
            best = int(row.argmax())
            near = sorted((j for j in np.flatnonzero(row >= PIXEL_COPY) if j != best), key=lambda j: (-row[j], j))
            chosen = {}
            for j in [best, *near]:  # a twin under another name is one group: named once
                chosen.setdefault(self.train_[j].fingerprint, self.train_[j])
            out.append({"sources": list(chosen.values()), "origin": str(path.resolve()),
                        "source_by": "nearest-pixels", "similarity": round(float(row[best]), 6)})
        return out

    def close(self) -> None:
        self.train_pixels_ = None


class _SourceIndex:
    """Training items by every trailing part of their absolute path (``b/x.png``, ``x.png``, ...)."""

    def __init__(self, items: Sequence[Item]):
        self.items = len(items)
        self.by_tail: dict[str, list[Item]] = defaultdict(list)
        for it in items:
            parts = Path(os.path.abspath(it.path)).parts[1:]  # the anchor ("/") left off
            for i in range(len(parts)):
                self.by_tail["/".join(parts[i:])].append(it)

    def find(self, text: str, where: str) -> Item:
        found = self.by_tail.get(_relative(text), [])
        if len({it.fingerprint for it in found}) == 1:  # one image (identical twins are one group)
            return found[0]
        if not found:
            raise DataError(f"{where}: source {text.strip()!r} is none of the {self.items} training images the "
                            "augmenter was handed (a test image, one that real_fraction left out, or a typo). Fix: "
                            "a training image's path relative to the dataset folder, or its file name.")
        shown = ", ".join(it.path for it in found[:3]) + (" ..." if len(found) > 3 else "")
        raise DataError(f"{where}: source {text.strip()!r} names {len(found)} training images ({shown}). Fix: give "
                        "more of its path, e.g. relative to the dataset folder.")


def _relative(text: str) -> str:
    """A path as the CSV may write it, in one form: '/'-separated, normalised, no leading './' or '/'."""
    text = text.strip().replace("\\", "/")
    return posixpath.normpath(text).lstrip("/") if text else ""


def _unreadable(path: Path) -> str:
    """Why ``path`` does not decode, or "" when it does (at 32 px: every byte is still read)."""
    try:
        with open(path, "rb") as f:
            decode(f, 32)
        return ""
    except DecodeError as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


def contents_digest(root: Path, csv_path: Path | None = None) -> str:
    """A digest of every image under ``root`` (relative path and bytes) and of ``csv_path``; computed
    once per process while the listing (paths, sizes, mtimes, ctimes, inodes) stays the same: a
    write, even one that puts the old mtime back, changes the ctime."""
    files = [(p.relative_to(root).as_posix(), p) for p in _image_files(root)[0]]
    if csv_path is not None and csv_path.is_file():
        files.append(("<sources>", csv_path))
    listing = []
    for rel, p in files:
        try:
            st = p.stat()
            listing.append((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        except OSError:
            listing.append((rel, -1, -1, -1, -1))
    key = (str(root.resolve()), tuple(listing))
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.blake2b(digest_size=12)
    for rel, p in files:
        h.update(f"{rel}\0".encode("utf-8", "surrogateescape"))
        try:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError:
            h.update(b"\0unreadable")
        h.update(b"\0")
    if len(_DIGESTS) > 64:
        _DIGESTS.clear()
    _DIGESTS[key] = digest = h.hexdigest()
    return digest


def _too_few(augmenter: str, name: str, asked: int, held: int, n_real: int, root: Path, qualifier: str = "") -> str:
    """The refusal of a plan that asks ``asked`` images of class ``name`` of a folder holding ``held``."""
    n_real = max(1, n_real)
    most = int(held * 1000 / n_real) / 1000  # rounded down: round(most x n_real) still fits
    return (f"augmenter {augmenter!r}: the plan asks for {qualifier}{asked} synthetic images of class {name!r}, but "
            f"{root / name} holds {held} usable ones, and none is used twice. Fix: lower the ratio to at most "
            f"{most:g} (class {name!r} has {n_real} real training images; ratio R asks for R x {n_real}; with a "
            "filter, its pool multiplies that), or add images to the folder.")

