from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from automl.data import load_dataset, split_test
from automl.errors import DataError
from automl.images import decode
from conftest import class_folders, write_image

# --- layouts -----------------------------------------------------------------------------------


def test_class_folders(folder_dataset):
    ds = load_dataset(folder_dataset)
    assert ds.layout == "class-folders"
    assert ds.classes == ["cat", "dog"]
    assert ds.counts() == {"train": {"cat": 6, "dog": 5}}
    assert all(len(it.fingerprint) == 32 for it in ds.items)
    # Deterministic order: split, class, relative path.
    assert [it.path for it in ds.items] == sorted(it.path for it in ds.items)
    assert [it.path for it in load_dataset(folder_dataset).items] == [it.path for it in ds.items]


@pytest.mark.parametrize("names", [("train", "test", "val"), ("Training", "Testing", "Validation")])
def test_split_folders(tmp_path, names):
    train, test, val = names
    class_folders(tmp_path / train, {"a": 4, "b": 3}, seed=1)
    class_folders(tmp_path / test, {"a": 2, "b": 2}, seed=2)
    class_folders(tmp_path / val, {"a": 1, "b": 1}, seed=3)
    ds = load_dataset(tmp_path)
    assert ds.layout == "split-folders"
    assert ds.counts() == {"train": {"a": 4, "b": 3}, "val": {"a": 1, "b": 1}, "test": {"a": 2, "b": 2}}
    assert ds.splits == ["train", "val", "test"]


def test_class_folders_may_nest_and_ignore_other_files(tmp_path):
    class_folders(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "a" / "patient7" / "scan.png", seed=99)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    ds = load_dataset(tmp_path)
    assert ds.counts()["train"]["a"] == 3
    assert ds.ignored_files == [str(tmp_path / "a" / "notes.txt")]


# --- npz -----------------------------------------------------------------------------------------


def _npz(path, compressed=True, **arrays):
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _medmnist_like(n_train=12, n_test=6, shape=(8, 8), seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        train_images=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        train_labels=(np.arange(n_train) % 2).reshape(-1, 1).astype(np.uint8),
        val_images=rng.integers(0, 256, (4, *shape), dtype=np.uint8),
        val_labels=np.array([[0], [1], [0], [1]], np.uint8),
        test_images=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        test_labels=(np.arange(n_test) % 2).reshape(-1, 1).astype(np.uint8),
    )


@pytest.mark.parametrize("compressed", [True, False])
def test_npz(tmp_path, compressed):
    arrays = _medmnist_like()
    ds = load_dataset(_npz(tmp_path / "d.npz", compressed, **arrays))
    assert ds.layout == "npz"
    assert ds.classes == ["0", "1"]
    assert ds.counts() == {"train": {"0": 6, "1": 6}, "val": {"0": 2, "1": 2}, "test": {"0": 3, "1": 3}}
    item = ds.split("test")[4]
    assert item.path.endswith("d.npz:test[4]")
    pixels = item.load()
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[:, :, 1], arrays["test_images"][4])
    assert item.load(32).shape == (32, 32, 3)


def test_npz_uncompressed_is_memory_mapped(tmp_path):
    ds = load_dataset(_npz(tmp_path / "d.npz", False, **_medmnist_like()))
    assert isinstance(ds.items[0]._array.get(), np.memmap)


def test_npz_rgb_and_label_values(tmp_path):
    rng = np.random.default_rng(0)
    ds = load_dataset(_npz(tmp_path / "d.npz", train_images=rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8),
                           train_labels=np.array([3, 7, 3, 7, 9, 9])))
    assert ds.classes == ["3", "7", "9"]
    assert [it.label for it in ds.items] == [0, 1, 0, 1, 2, 2]
    assert ds.splits == ["train"]


@pytest.mark.parametrize("arrays, message", [
    (dict(images=np.zeros((2, 4, 4), np.uint8)), "lacks the keys train_images and train_labels"),
    (dict(train_images=np.zeros((3, 4, 4), np.uint8), train_labels=np.array([0, 1])), "3 images but"),
    (dict(train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([0, 1]),
          test_images=np.zeros((2, 4, 4), np.uint8)), "has test_images but not test_labels"),
    (dict(train_images=np.zeros((2, 4, 4, 2), np.uint8), train_labels=np.array([0, 1])), "shape (2, 4, 4, 2)"),
    (dict(train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([[0, 1], [1, 0]])), "multi-label"),
    (dict(train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([1, 1])), "single class"),
    (dict(train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([0.5, 1.0])), "non-integer"),
    (dict(train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([0, 1]),
          test_images=np.zeros((1, 4, 4), np.uint8), test_labels=np.array([5])), "never in it"),
])
def test_bad_npz(tmp_path, arrays, message):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=None) as info:
        load_dataset(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"nope")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(path)


# --- image formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, mode, fmt, kwargs", [
    ("a.jpg", "RGB", "JPEG", {}),
    ("b.JPG", "L", "JPEG", {}),
    ("c.jpeg", "RGB", "JPEG", {}),
    ("d.png", "RGBA", "PNG", {}),
    ("e.png", "P", "PNG", {}),
    ("f.png", "LA", "PNG", {}),
    ("g.bmp", "RGB", "BMP", {}),
    ("h.tif", "RGB", "TIFF", {}),
    ("i.TIFF", "L", "TIFF", {}),
    ("j.png", "I;16", "PNG", {}),
    ("k.tiff", "I;16", "TIFF", {}),
    ("l.png", "1", "PNG", {}),
])
def test_formats_and_modes_decode_to_rgb(tmp_path, name, mode, fmt, kwargs):
    class_folders(tmp_path, {"a": 1, "b": 1})
    write_image(tmp_path / "a" / name, size=(30, 20), mode=mode, fmt=fmt, **kwargs)
    ds = load_dataset(tmp_path)
    item = next(it for it in ds.items if it.path.endswith(name))
    assert (item.width, item.height) == (30, 20)
    native = item.load()
    assert native.shape == (20, 30, 3) and native.dtype == np.uint8
    assert item.load(75).shape == (75, 75, 3)


def test_sixteen_bit_is_stretched_to_full_range(tmp_path):
    values = np.linspace(100, 4000, 64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / "x.png"
    Image.fromarray(values).save(path)
    pixels = decode(path.read_bytes())
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels[:, :, 0].ravel().astype(int)) >= 0)  # order kept


def test_transparency_is_composited_over_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255  # white under full transparency
    rgba[0, 0, 3] = 255  # one opaque white pixel
    path = tmp_path / "x.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = decode(path.read_bytes())
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[1:, :].max() == 0


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "x.jpg"
    im.save(path, exif=exif, quality=95)
    pixels = decode(path.read_bytes())
    assert pixels.shape == (40, 20, 3)  # upright: portrait
    assert pixels[2, 10, 2] > 200 and pixels[-3, 10, 0] > 200  # blue moved to the top


def test_large_jpeg_decodes_at_reduced_scale_to_the_same_picture(tmp_path):
    im = Image.new("RGB", (1200, 900))
    im.paste((200, 30, 30), (0, 0, 600, 900))
    path = tmp_path / "big.jpg"
    im.save(path, quality=95)
    small = decode(path.read_bytes(), 75)
    assert small.shape == (75, 75, 3)
    assert small[30, 10, 0] > 150 and small[30, 65, 0] < 40


# --- bad input -----------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="dataset not found: .*nope.*one sub-folder per class"):
        load_dataset(tmp_path / "nope")


def test_not_a_dataset_file(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="is a file but not an .npz"):
        load_dataset(tmp_path / "x.csv")


def test_no_class_folders(tmp_path):
    write_image(tmp_path / "loose.png")
    with pytest.raises(DataError, match=r"no class folders in .*holds 1 images directly.*sub-folder named"):
        load_dataset(tmp_path)


def test_empty_class(tmp_path):
    class_folders(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"class folder .*c holds no images"):
        load_dataset(tmp_path)


def test_single_class(tmp_path):
    class_folders(tmp_path, {"only": 3})
    with pytest.raises(DataError, match="single class .only.*at least two"):
        load_dataset(tmp_path)


def test_test_without_train(tmp_path):
    class_folders(tmp_path / "test", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="no train/"):
        load_dataset(tmp_path)


def test_class_only_in_test(tmp_path):
    class_folders(tmp_path / "train", {"a": 2, "b": 2})
    class_folders(tmp_path / "test", {"a": 1, "c": 1})
    with pytest.raises(DataError, match=r"class folders \['c'\]"):
        load_dataset(tmp_path)


def test_split_folders_mixed_with_class_folders(tmp_path):
    class_folders(tmp_path / "train", {"a": 2, "b": 2})
    class_folders(tmp_path, {"stray": 1})
    with pytest.raises(DataError, match="mixes split folders"):
        load_dataset(tmp_path)


def test_undecodable_file_fails_with_its_path_or_is_skipped(tmp_path):
    class_folders(tmp_path, {"a": 3, "b": 3})
    bad = tmp_path / "b" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    empty = tmp_path / "a" / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(bad) in str(info.value) and str(empty) in str(info.value)
    assert "--skip-bad" in str(info.value)
    ds = load_dataset(tmp_path, skip_bad=True)
    assert sorted(b.path for b in ds.bad_files) == sorted([str(bad), str(empty)])
    assert ds.counts()["train"] == {"a": 3, "b": 3}


def test_truncated_image_fails_at_decode_naming_the_file(tmp_path):
    class_folders(tmp_path, {"a": 2, "b": 2})
    path = write_image(tmp_path / "a" / "cut.jpg", size=(64, 64), fmt="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, half the pixels gone
    item = next(it for it in load_dataset(tmp_path).items if it.path == str(path))
    with pytest.raises(DataError, match=r"cannot decode image .*cut\.jpg.*--skip-bad"):
        item.load(75)


def test_all_bad_class_is_an_empty_class(tmp_path):
    class_folders(tmp_path, {"a": 2})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="class 'b' has no usable training images"):
        load_dataset(tmp_path, skip_bad=True)


# --- split and duplicates ------------------------------------------------------------------------


def test_stratified_split_is_seeded_and_saved(tmp_path):
    class_folders(tmp_path, {"a": 20, "b": 10})
    ds = load_dataset(tmp_path)
    s1, s2, s3 = (split_test(ds, seed=s) for s in (0, 0, 1))
    assert s1.counts()["test"] == {"a": 4, "b": 2}
    assert s1.counts()["train"] == {"a": 16, "b": 8}
    assert [it.split for it in s1.items] == [it.split for it in s2.items]
    assert [it.split for it in s1.items] != [it.split for it in s3.items]
    record = s1.split_record()
    assert record["split"] == "stratified 0.2 of train held out as test (seed 0)"
    assert sum(r["split"] == "test" for r in record["items"]) == 6
    # Data with a given test split is left alone.
    assert split_test(s1, seed=5) is s1


def test_split_needs_two_images_per_class(tmp_path):
    class_folders(tmp_path, {"a": 5, "b": 1})
    with pytest.raises(DataError, match="at least 2 images"):
        split_test(load_dataset(tmp_path))


def test_duplicates_across_train_and_test_are_reported_with_both_paths(tmp_path):
    class_folders(tmp_path / "train", {"a": 3, "b": 3}, seed=1)
    class_folders(tmp_path / "test", {"a": 1, "b": 1}, seed=2)
    copy = tmp_path / "test" / "b" / "copy.png"
    copy.write_bytes((tmp_path / "train" / "a" / "img_001.png").read_bytes())
    ds = load_dataset(tmp_path)
    (train_item, test_item), = ds.leaks()
    assert train_item.path == str(tmp_path / "train" / "a" / "img_001.png")
    assert test_item.path == str(copy)
    assert len(ds.conflicts()) == 1  # filed under a and b


def test_shared_breastmnist_has_its_known_leak(shared):
    ds = load_dataset(shared / "data" / "breastmnist.npz")
    assert ds.counts()["test"] == {"0": 42, "1": 114}
    leaks = [(a.path.split(":")[-1], b.path.split(":")[-1]) for a, b in ds.leaks()]
    assert leaks == [("train[115]", "test[76]")]


def test_zip_member_offsets_survive_a_long_name(tmp_path):
    # The memory map must start after the zip local header, whatever its extra field holds.
    arrays = _medmnist_like()
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, arr)
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.split("train")[3].load()[:, :, 0], arrays["train_images"][3])
