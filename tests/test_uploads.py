"""Dataset uploads (automl.service.uploads): each kind round-trips into the store, the same content is
stored once under one id, and every hostile or oversized upload is refused with the entry named and
nothing left behind in store/datasets/."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import struct
import threading
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl.data import load_dataset
from automl.errors import DataError, TooLargeError
from automl.service import uploads
from automl.service.uploads import (DatasetNotFoundError, Limits, get_dataset, ingest_images, ingest_npz, ingest_zip,
                                    list_datasets, register_folder)
from automl.store import Store

ID = re.compile(r"sha256-[0-9a-f]{32}")


def png(seed: int, size=(12, 10)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def tree(counts: dict[str, int], seed=0) -> dict[str, bytes]:
    """{relative path: PNG bytes}, ``counts`` keyed by class folder (or split/class)."""
    return {f"{folder}/img_{i}.png": png(seed * 1000 + ci * 100 + i)
            for ci, (folder, n) in enumerate(counts.items()) for i in range(n)}


def zipped(files: dict, compression=zipfile.ZIP_STORED) -> bytes:
    """A zip of ``files`` ({name or ZipInfo: bytes}), in the given order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def entry_info(name: str, kind: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (kind | 0o777) << 16
    return info


def stored(store: Store) -> list[str]:
    return sorted(p.name for p in store.datasets_dir.iterdir()) if store.datasets_dir.is_dir() else []


def leftovers(store: Store) -> list[str]:
    return [name for name in stored(store) if not ID.fullmatch(name)]


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


CLASSES = {"cat": 3, "dog": 2}


# --- round trips ---------------------------------------------------------------------------------


def test_a_zip_of_class_folders_round_trips(store):
    entry = ingest_zip(io.BytesIO(zipped(tree(CLASSES))), store, name="pets.zip")
    assert ID.fullmatch(entry.id) and entry.kind == "zip" and entry.name == "pets.zip"
    assert entry.path == store.datasets_dir / entry.id / "data"
    assert entry.summary["classes"] == ["cat", "dog"] and entry.summary["counts"] == {"train": {"cat": 3, "dog": 2}}
    assert entry.summary["dataset"] == str(entry.path)
    text = json.dumps(entry.to_dict())
    assert ".tmp-" not in text and json.loads(text)["id"] == entry.id
    assert load_dataset(entry.path).counts() == entry.summary["counts"]
    again = get_dataset(Store(store.root), entry.id)
    assert again.to_dict() == entry.to_dict()
    assert [e.id for e in list_datasets(store)] == [entry.id]
    assert (store.datasets_dir / entry.id / "dataset.json").is_file() and leftovers(store) == []


def test_a_zip_of_train_and_test_folders_round_trips(store):
    files = {**tree({"train/a": 3, "train/b": 3}, seed=1), **tree({"test/a": 1, "test/b": 2}, seed=2)}
    entry = ingest_zip(io.BytesIO(zipped(files, zipfile.ZIP_DEFLATED)), store)
    assert entry.summary["layout"] == "split-folders" and entry.summary["classes"] == ["a", "b"]
    assert entry.summary["counts"] == {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 2}}


def test_a_zip_may_come_as_a_path_or_a_stream_that_cannot_seek(store, tmp_path):
    data = zipped(tree(CLASSES))
    (tmp_path / "d.zip").write_bytes(data)

    class Stream(io.RawIOBase):  # what a socket gives: read only
        def __init__(self, data):
            self.inner = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self.inner.readinto(b)

    by_path = ingest_zip(tmp_path / "d.zip", store)
    by_stream = ingest_zip(Stream(data), store)
    assert by_path.id == by_stream.id and leftovers(store) == []
    with pytest.raises(TooLargeError, match="big.zip.*max_upload_bytes"):
        ingest_zip(Stream(data), store, name="big.zip", limits=Limits(max_upload_bytes=len(data) - 1))
    assert leftovers(store) == []


def test_the_shared_npz_round_trips(store, shared):
    source = shared / "data" / "breastmnist.npz"
    with open(source, "rb") as f:
        entry = ingest_npz(f, store, name="breastmnist.npz")
    expected = load_dataset(source)
    assert entry.kind == "npz" and entry.path == store.datasets_dir / entry.id / "data.npz"
    assert entry.summary["layout"] == "npz" and entry.summary["classes"] == expected.classes
    assert entry.summary["counts"] == expected.counts()
    assert entry.summary["dataset"] == str(entry.path)
    assert ingest_npz(source, store).id == entry.id and stored(store) == [entry.id]


def test_an_image_set_round_trips_and_names_the_same_tree_as_a_zip(store):
    files = tree(CLASSES, seed=3)
    sent = [(path.split("/")[1], path.split("/")[0], io.BytesIO(data)) for path, data in files.items()]
    entry = ingest_images(sent, store)
    assert entry.kind == "images" and entry.name == "5 images"
    assert entry.summary["classes"] == ["cat", "dog"] and entry.summary["counts"] == {"train": {"cat": 3, "dog": 2}}
    # the same tree as a zip is the same dataset: stored once
    assert ingest_zip(io.BytesIO(zipped(files)), store).id == entry.id and stored(store) == [entry.id]


def test_an_image_set_may_give_each_images_split(store):
    files = tree({"a": 4, "b": 4}, seed=4)

    def sent():
        return [(path.split("/")[1], path.split("/")[0], io.BytesIO(data)) for path, data in files.items()]

    entry = ingest_images(sent(), store, split=["train", "train", "train", "test"] * 2)
    assert entry.summary["counts"] == {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}}
    assert ingest_images(sent(), store).id != entry.id  # another tree, another id
    with pytest.raises(DataError, match="image 'img_0.png': split 'dev' is not one of train, val, test"):
        ingest_images(sent(), store, split=["dev"])
    with pytest.raises(DataError, match="image 'img_1.png': split None"):
        ingest_images(sent(), store, split=["train"])
    with pytest.raises(DataError, match="more splits than images"):
        ingest_images(sent()[:1], store, split=["train", "test"])
    assert leftovers(store) == []


def test_a_folder_under_an_allowed_root_registers_without_a_copy(store, tmp_path):
    root = tmp_path / "allowed"
    for path, data in tree(CLASSES, seed=5).items():
        (root / "pets" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "pets" / path).write_bytes(data)
    entry = register_folder(root / "pets", store, allowed_roots=[root])
    assert entry.kind == "folder" and entry.path == (root / "pets").resolve() and entry.name == "pets"
    assert entry.summary["counts"] == {"train": {"cat": 3, "dog": 2}}
    assert sorted(p.name for p in (store.datasets_dir / entry.id).iterdir()) == ["dataset.json"]
    assert register_folder(str(root / "pets"), store, allowed_roots=[root]).id == entry.id
    assert get_dataset(store, entry.id).path == entry.path


# --- content addressing ----------------------------------------------------------------------------


def test_the_same_content_twice_is_stored_once(store):
    data = zipped(tree(CLASSES))
    first = ingest_zip(io.BytesIO(data), store, name="first.zip")
    second = ingest_zip(io.BytesIO(data), store, name="second.zip")
    assert second.id == first.id and second.name == "first.zip" and second.created == first.created
    assert stored(store) == [first.id]


def test_the_same_tree_zipped_again_has_the_same_id(store):
    files = tree(CLASSES)
    again = {"cat/": b"", "dog/": b"", "__MACOSX/cat/._img_0.png": b"junk", "cat/.DS_Store": b"junk",
             "Thumbs.db": b"junk", **dict(reversed(list(files.items())))}
    first = ingest_zip(io.BytesIO(zipped(files)), store)
    second = ingest_zip(io.BytesIO(zipped(again, zipfile.ZIP_DEFLATED)), store)
    assert second.id == first.id and stored(store) == [first.id]
    changed = dict(files, **{"cat/img_0.png": png(999)})
    assert ingest_zip(io.BytesIO(zipped(changed)), store).id != first.id


def test_concurrent_ingests_of_the_same_content_keep_one_copy(store, monkeypatch):
    data = zipped(tree(CLASSES))
    results = []
    threads = [threading.Thread(target=lambda: results.append(ingest_zip(io.BytesIO(data), store)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({e.id for e in results}) == 1 and stored(store) == [results[0].id]
    # The race itself: this ingest finds no dataset before staging, and another one lands before its rename.
    first = results[0]
    real, calls = uploads._read_entry, []

    def first_lookup_misses(s, dataset_id):
        calls.append(dataset_id)
        return None if len(calls) == 1 else real(s, dataset_id)

    monkeypatch.setattr(uploads, "_read_entry", first_lookup_misses)
    late = ingest_zip(io.BytesIO(data), store, name="late.zip")
    assert late.to_dict() == first.to_dict() and stored(store) == [first.id]


# --- refusals --------------------------------------------------------------------------------------


def nul_name_zip() -> bytes:
    data = zipped({"cat/a.png": png(1), "cat/xZ.png": png(2), "dog/b.png": png(3)})
    return data.replace(b"cat/xZ.png", b"cat/x\x00.png")  # zipfile cannot write a NUL in a name


def lying_zip(declared: int, actual: bytes) -> bytes:
    """A zip whose entry dog/liar.png says (in both headers) it unpacks to ``declared`` bytes."""
    data = bytearray(zipped({"cat/a.png": png(1), "dog/liar.png": actual}, zipfile.ZIP_DEFLATED))
    name = b"dog/liar.png"
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = 0
        while (at := data.find(sig, at)) >= 0:
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                struct.pack_into("<I", data, at + size_at, declared)
            at += 4
    return bytes(data)


def pixel_bomb_png(width=100_000, height=100_000) -> bytes:
    """A PNG header declaring ``width x height`` pixels, with a token IDAT: a few dozen bytes."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


GOOD = {"cat/a.png": png(1), "dog/b.png": png(2)}
SMALL = Limits(max_files=4, max_file_bytes=4096, max_unpacked_bytes=3 * 4096, max_ratio=50)

with warnings.catch_warnings():  # zipfile warns as it writes a name twice: that is the point
    warnings.simplefilter("ignore")
    DUPLICATE = zipped({**GOOD, zipfile.ZipInfo("cat/a.png"): png(4)})

REFUSED_ZIPS = {
    "zip slip": (zipped({**GOOD, "../x.png": png(3)}), DataError, "entry '../x.png': the name '..' points to a folder"),
    "deep zip slip": (zipped({**GOOD, "cat/../../x.png": png(3)}), DataError, "'cat/../../x.png'"),
    "absolute path": (zipped({**GOOD, "/etc/x.png": png(3)}), DataError, "'/etc/x.png' is an absolute path"),
    "drive letter": (zipped({**GOOD, "C:/x.png": png(3)}), DataError, "'C:/x.png' is an absolute path"),
    "backslash": (zipped({**GOOD, "cat\\..\\x.png": png(3)}), DataError, r"'cat\\\\..\\\\x.png' holds a backslash"),
    "control character": (zipped({**GOOD, "cat/x\x07.png": png(3)}), DataError, "control character"),
    "NUL in a name": (nul_name_zip(), DataError, r"'cat/x\\x00.png'.*control character"),
    "symlink entry": (zipped({**GOOD, entry_info("cat/link.png", stat.S_IFLNK): b"/etc/passwd"}), DataError,
                      "'cat/link.png' is a symbolic link"),
    "device entry": (zipped({**GOOD, entry_info("cat/dev.png", stat.S_IFCHR): b""}), DataError,
                     "'cat/dev.png' is not a regular file"),
    "duplicate path": (DUPLICATE, DataError, "'cat/a.png' is in the zip twice"),
    "file and folder of one name": (zipped({**GOOD, "cat/a.png/b.png": png(4)}), DataError, "'cat/a.png/b.png' is in the zip twice"),
    "too many files": (zipped(tree({"cat": 3, "dog": 2})), TooLargeError, "declares 5 entries.*max_files"),
    "file over max_file_bytes": (zipped({**GOOD, "dog/big.png": os.urandom(5000)}), TooLargeError,
                                 "'dog/big.png' unpacks to 5000 bytes.*max_file_bytes"),
    "lying header over max_file_bytes": (lying_zip(100, os.urandom(5000)), TooLargeError,
                                         "'dog/liar.png' unpacks to more than its header's 100 bytes.*max_file_bytes"),
    "lying header within the limits": (lying_zip(100, os.urandom(1000)), DataError,
                                       "'dog/liar.png' holds 1000 bytes but its header says 100"),
    "total over max_unpacked_bytes": (zipped({f"{c}/{i}.png": os.urandom(4000) for c in "ab" for i in range(2)}),
                                      TooLargeError, "'b/1.png' unpacks to .*max_unpacked_bytes"),
    "high-ratio bomb": (zipped({**GOOD, "dog/bomb.png": bytes(4000)}, zipfile.ZIP_DEFLATED), TooLargeError,
                        "'dog/bomb.png' unpacks to 4000 bytes.*max_ratio.*decompression bomb"),
    "non-image entry": (zipped({**GOOD, "cat/notes.txt": b"hello"}), DataError, "'cat/notes.txt' is not an image"),
    "nested zip": (zipped({**GOOD, "cat/more.zip": zipped(GOOD)}), DataError, "'cat/more.zip' is an archive"),
    "not a zip": (b"PK\x03\x04 this is no zip", DataError, "up.zip is not a readable zip file"),
    "pixel bomb": (zipped({**GOOD, "dog/bomb.png": pixel_bomb_png()}), DataError,
                   "up.zip/dog/bomb.png: 100000x100000 PNG.*above the decode limit"),
    "one class": (zipped({"cat/a.png": png(1), "cat/b.png": png(2)}), DataError, "up.zip has a single class"),
}


@pytest.mark.parametrize("case", list(REFUSED_ZIPS))
def test_a_hostile_or_oversized_zip_is_refused_and_leaves_nothing(store, case):
    data, error, words = REFUSED_ZIPS[case]
    with pytest.raises(error, match=words) as caught:
        ingest_zip(io.BytesIO(data), store, name="up.zip", limits=SMALL)
    assert ".tmp-" not in str(caught.value)
    assert stored(store) == []


def test_an_honest_header_is_refused_before_anything_is_written(store, monkeypatch):
    data = zipped({**GOOD, "dog/big.png": os.urandom(5000)})
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("an entry was read"))
    with pytest.raises(TooLargeError):
        ingest_zip(io.BytesIO(data), store, limits=SMALL)
    assert stored(store) == []


REFUSED_NPZ = {
    "not an npz": (lambda f: f.write(b"not a zip at all"), DataError, "up.npz"),
    "pickled objects": (lambda f: np.savez(f, train_images=np.array([{"a": 1}], dtype=object),
                                           train_labels=np.zeros(1)), DataError, "'train_images.npy' holds Python objects"),
    "no labels": (lambda f: np.savez(f, train_images=np.zeros((4, 8, 8), np.uint8)), DataError, "lacks the keys"),
    "images over max_file_bytes": (lambda f: np.savez(f, train_images=np.zeros((2, 80, 80), np.uint8),
                                                      train_labels=np.arange(2)), TooLargeError, "max_file_bytes"),
    "over max_upload_bytes": (lambda f: f.write(os.urandom(30000)), TooLargeError, "up.npz is too large.*max_upload_bytes"),
}


@pytest.mark.parametrize("case", list(REFUSED_NPZ))
def test_a_bad_npz_is_refused_and_leaves_nothing(store, case):
    write, error, words = REFUSED_NPZ[case]
    buf = io.BytesIO()
    write(buf)
    buf.seek(0)
    with pytest.raises(error, match=words):
        ingest_npz(buf, store, name="up.npz", limits=Limits(max_upload_bytes=20000, max_file_bytes=4096))
    assert stored(store) == []


@pytest.mark.parametrize("filename, class_name, words", [
    ("a.png", "../x", r"class.*'\.\./x'.*'/'"),
    ("a.png", "a/b", r"class.*'a/b'"),
    ("a.png", ".hidden", "class '.hidden' is a name the dataset loader skips"),
    ("a.png", "", r"class.*is empty"),
    ("a.png", "train", "class 'train' is the name of a split folder"),
    ("../a.png", "cat", r"image '\.\./a\.png'"),
    ("a\x00.png", "cat", "control character"),
    ("notes.txt", "cat", "'notes.txt' is not an image"),
    ("a.png", "dog", "sent twice"),
])
def test_an_image_set_with_a_bad_name_is_refused(store, filename, class_name, words):
    sent = [("a.png", "dog", io.BytesIO(png(1))), ("b.png", "cat", io.BytesIO(png(2))),
            (filename, class_name, io.BytesIO(png(3)))]
    with pytest.raises(DataError, match=words):
        ingest_images(sent, store)
    assert stored(store) == []


def test_an_image_set_over_its_limits_is_refused(store):
    sent = [(f"{i}.png", "ab"[i % 2], io.BytesIO(png(i))) for i in range(4)]
    with pytest.raises(TooLargeError, match="has more than 3 images.*max_files"):
        ingest_images(iter(sent), store, limits=Limits(max_files=3))
    for f in sent:
        f[2].seek(0)
    with pytest.raises(TooLargeError, match="image '1.png' is too large.*for the whole image set"):
        ingest_images(sent, store, limits=Limits(max_upload_bytes=len(png(0)) + 10))
    with pytest.raises(TooLargeError, match="image '0.png' is too large.*100 bytes an image"):
        ingest_images([("0.png", "a", io.BytesIO(png(0)))], store, limits=Limits(max_file_bytes=100))
    assert stored(store) == []


def test_a_folder_outside_the_allowed_roots_is_refused(store, tmp_path):
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    for path, data in tree(CLASSES).items():
        for base in (root / "pets", outside):
            (base / path).parent.mkdir(parents=True, exist_ok=True)
            (base / path).write_bytes(data)
    with pytest.raises(DataError, match=f"folder {re.escape(str(outside))} is outside the folders"):
        register_folder(outside, store, allowed_roots=[root])
    with pytest.raises(DataError, match=r"allowed/\.\./outside is outside"):
        register_folder(root / ".." / "outside", store, allowed_roots=[root])
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match=f"{re.escape(str(root / 'escape'))} \\(it resolves to"):
        register_folder(root / "escape", store, allowed_roots=[root])
    (root / "pets" / "cat" / "stolen.png").symlink_to(outside / "cat" / "img_0.png")
    with pytest.raises(DataError, match="cat/stolen.png in folder .* is a link to .*outside"):
        register_folder(root / "pets", store, allowed_roots=[root])
    with pytest.raises(DataError, match="allows no folders"):
        register_folder(root / "pets", store, allowed_roots=[])
    with pytest.raises(DataError, match="does not exist"):
        register_folder(root / "nope", store, allowed_roots=[root])
    assert stored(store) == []


@pytest.mark.parametrize("dataset_id", ["sha256-" + "0" * 32, "sha256-nope", "../../etc/passwd", "sha256-" + "A" * 32,
                                        "sha256-" + "0" * 32 + "/../x", "", None])
def test_an_unknown_or_malformed_dataset_id_is_not_found(store, dataset_id):
    ingest_zip(io.BytesIO(zipped(GOOD)), store)
    with pytest.raises(DatasetNotFoundError) as caught:
        get_dataset(store, dataset_id)
    assert isinstance(caught.value, DataError)
    assert repr(dataset_id) in str(caught.value) or str(dataset_id) in str(caught.value)
