"""The ``folder`` augmenter (automl/augment/folder.py): images made elsewhere, their sources from a CSV or
the nearest real image, and every refusal; plus the pipeline's check that no synthetic image copies a
test image. Tiny images; one CLI fit with random-weight features."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from automl.augment import build_augmenter
from automl.augment.generate import augment, preflight
from automl.augment.plan import AugmentSpec
from automl.data import load_dataset
from automl.errors import ConfigError, DataError
from automl.store import Store
from conftest import run_cli, write_image

SIDE = 24


def dataset_folder(root: Path, *, test_suffix: str = ".png") -> Path:
    """train/ (big 6, small 3) and test/ (2 + 2); every file name unique, so a bare name is a source."""
    for split, counts in (("train", {"big": 6, "small": 3}), ("test", {"big": 2, "small": 2})):
        for ci, (name, n) in enumerate(counts.items()):
            for i in range(n):
                suffix = test_suffix if split == "test" else ".png"
                write_image(root / split / name / f"{split}_{name}_{i}{suffix}", size=(SIDE, SIDE),
                            seed=(split == "test") * 1000 + ci * 100 + i)
    return root


def synthetic_folder(root: Path, counts: dict[str, int], seed: int = 7000) -> Path:
    for ci, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / name / f"syn_{i}.png", size=(SIDE, SIDE), seed=seed + 100 * ci + i)
    return root


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def train_of(data):
    return [it for it in data.items if it.split != "test"]


def run(data, store: Path, *, skip_bad: bool = False, ratio=1.0, **params):
    augmenter = build_augmenter("folder", params)
    augmenter.skip_bad = skip_bad
    spec = AugmentSpec(type="folder", ratio=ratio, params=params)
    return augment(train_of(data), data.classes, spec, generated_dir=store / "generated",
                   generators_dir=store / "generators", seed=0, progress=False, augmenter=augmenter)


def record_of(item) -> dict:
    return json.loads(Path(item.path).with_suffix(".json").read_text())


@pytest.fixture
def data(tmp_path):
    return load_dataset(dataset_folder(tmp_path / "data"))


# --- sources -------------------------------------------------------------------------------------


def test_nearest_real_image_becomes_the_source(data, tmp_path):
    train = {Path(it.path).name: it for it in train_of(data)}
    folder = tmp_path / "syn"
    rng = np.random.default_rng(0)
    near = lambda name: train[name].load(None).astype(float) + rng.normal(0, 3, (SIDE, SIDE, 3))  # noqa: E731
    save_png(folder / "small" / "a.png", near("train_small_1.png"))
    save_png(folder / "small" / "b.png", near("train_small_0.png")[:, ::-1])  # a mirrored near-copy
    save_png(folder / "small" / "c.png", near("train_big_4.png"))  # from another class (a translation)
    syn = run(data, tmp_path / "store", path=str(folder))
    expected = ["train_small_1.png", "train_small_0.png", "train_big_4.png"]  # image k: sorted by path
    assert [Path(record_of(it)["origin"]).name for it in syn.items] == ["a.png", "b.png", "c.png"]
    for it, sources, name in zip(syn.items, syn.sources, expected):
        assert sources == (train[name].fingerprint,)
        record = record_of(it)
        assert record["source_by"] == "nearest-pixels" and record["similarity"] > 0.95
        assert record["sources"] == [{"path": train[name].path, "fingerprint": train[name].fingerprint}]
        assert record["augmenter"] == "folder" and record["class"] == "small"


def test_a_scan_the_dataset_holds_twice_is_a_source_twice(tmp_path):
    root = dataset_folder(tmp_path / "data")
    twin = np.asarray(Image.open(root / "train" / "big" / "train_big_0.png")).astype(float) + 2
    save_png(root / "train" / "big" / "train_big_twin.png", twin)  # the same scan, 2 grey levels lighter
    data = load_dataset(root)
    train = {Path(it.path).name: it for it in train_of(data)}
    folder = tmp_path / "syn"
    save_png(folder / "small" / "a.png", train["train_big_0.png"].load(None))
    synthetic_folder(folder, {"small": 2}, seed=9000)
    syn = run(data, tmp_path / "store", path=str(folder))
    assert set(syn.sources[0]) == {train["train_big_0.png"].fingerprint, train["train_big_twin.png"].fingerprint}


def test_csv_sources_by_path_or_name_several_or_none(data, tmp_path):
    folder = synthetic_folder(tmp_path / "syn", {"small": 3})
    (folder / "sources.csv").write_text("file,source,model\n"
                                        "small/syn_0.png,train/small/train_small_2.png,cyclegan\n"
                                        "small\\syn_1.png,train_small_0.png; big/train_big_5.png,cyclegan\n"
                                        "./small/syn_2.png,,cyclegan\n")
    syn = run(data, tmp_path / "store", path=str(folder))
    fp = {Path(it.path).name: it.fingerprint for it in train_of(data)}
    assert syn.sources == [(fp["train_small_2.png"],), (fp["train_small_0.png"], fp["train_big_5.png"]), ()]
    assert {record_of(it)["source_by"] for it in syn.items} == {"csv"}


@pytest.mark.parametrize("rows, message", [
    ("small/syn_0.png,train_small_9.png\n", "row 2: source 'train_small_9.png' is none of the 9 training images"),
    ("small/syn_0.png,train_small_0.png\nsmall/syn_1.png,test_small_0.png\n",
     "row 3: source 'test_small_0.png' is none of the 9 training images"),
    ("small/syn_0.png,\nsmall/syn_0.png,\n", "row 3: 'small/syn_0.png' is listed again (first on row 2)"),
    ("small/syn_9.png,\n", "row 2: file 'small/syn_9.png' is not a file in"),
    ("small/syn_0.png,\n", "has no row for 2 image(s): small/syn_1.png, small/syn_2.png"),
])
def test_csv_mistakes_are_refused_with_their_row(data, tmp_path, rows, message):
    folder = synthetic_folder(tmp_path / "syn", {"small": 3})
    (folder / "sources.csv").write_text("file,source\n" + rows)
    with pytest.raises(DataError) as exc:
        run(data, tmp_path / "store", path=str(folder))
    assert message in str(exc.value)


def test_a_csv_that_would_be_ignored_is_refused(data, tmp_path):
    folder = synthetic_folder(tmp_path / "syn", {"small": 3})
    (folder / "map.csv").write_text("file,source\n")
    with pytest.raises(ConfigError, match="holds map.csv but no sources.csv"):
        build_augmenter("folder", {"path": str(folder)}).preflight()
    with pytest.raises(DataError, match="has no row for 3 image"):
        run(data, tmp_path / "store", path=str(folder), sources=str(folder / "map.csv"))


# --- refusals --------------------------------------------------------------------------------------


def test_an_unknown_class_folder_is_refused_then_left_out_with_skip_bad(data, tmp_path):
    folder = synthetic_folder(tmp_path / "syn", {"small": 3, "zebra": 1})
    with pytest.raises(DataError, match=r"(?s)zebra: a class folder, but the dataset has no class 'zebra'.*--skip-bad"):
        run(data, tmp_path / "store", path=str(folder))
    syn = run(data, tmp_path / "store", path=str(folder), skip_bad=True)
    assert len(syn.items) == 3


def test_an_unreadable_file_is_refused_then_left_out_with_skip_bad(data, tmp_path):
    folder = synthetic_folder(tmp_path / "syn", {"small": 4})
    (folder / "small" / "syn_1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"(?s)syn_1.png: .*\nFix them or move them out, or pass --skip-bad"):
        run(data, tmp_path / "store", path=str(folder))
    syn = run(data, tmp_path / "store", path=str(folder), skip_bad=True)
    assert [Path(record_of(it)["origin"]).name for it in syn.items] == ["syn_0.png", "syn_2.png", "syn_3.png"]


def test_too_few_images_for_the_ratio_is_refused(data, tmp_path):
    folder = synthetic_folder(tmp_path / "syn", {"small": 4})
    with pytest.raises(ConfigError) as exc:
        run(data, tmp_path / "store", path=str(folder), ratio=2.0)
    message = str(exc.value)
    assert "at least 6 synthetic images of class 'small'" in message and "holds 4 usable ones" in message
    assert "lower the ratio to at most 1.33" in message and "none is used twice" in message
    # The fit's preflight says so before the baseline's search, from the plan's counts.
    spec = AugmentSpec(type="folder", ratio=2.0, params={"path": str(folder)})
    with pytest.raises(ConfigError, match="asks for 6 synthetic images of class 'small'.*at most 1.33"):
        preflight(train_of(data), data.classes, spec, generated_dir=tmp_path / "store" / "generated")


def test_a_missing_or_empty_folder_is_refused_by_preflight(tmp_path):
    with pytest.raises(ConfigError, match="The 'path' parameter of augmenter 'folder'.*Pass -p path=DIR"):
        build_augmenter("folder", {}).preflight()
    with pytest.raises(DataError, match="does not exist"):
        build_augmenter("folder", {"path": str(tmp_path / "nowhere")}).preflight()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        build_augmenter("folder", {"path": str(tmp_path / "empty")}).preflight()


def test_a_copy_of_a_test_image_is_refused_then_left_out_with_skip_bad(tmp_path):
    from automl.pipeline import _augment_stage

    data = load_dataset(dataset_folder(tmp_path / "data", test_suffix=".jpg"))
    test_jpeg = next(it for it in data.items if it.split == "test" and it.label == data.classes.index("small"))
    folder = synthetic_folder(tmp_path / "syn", {"small": 3})
    copy = save_png(folder / "small" / "syn_1.png", test_jpeg.load(None))  # a PNG re-encode of a test JPEG
    spec = AugmentSpec(type="folder", params={"path": str(folder)})
    store = Store(tmp_path / "store")
    with pytest.raises(DataError) as exc:
        _augment_stage(SimpleNamespace(seed=0, skip_bad=False), data, store, spec, False)
    assert f"{copy.resolve()} = test image {test_jpeg.path}" in str(exc.value)
    assert "1 synthetic image(s) are copies of test images" in str(exc.value) and "--skip-bad" in str(exc.value)
    train, syn = _augment_stage(SimpleNamespace(seed=0, skip_bad=True), data, store, spec, False)
    assert len(syn.items) == 2 and len(syn.sources) == 2 and train == syn.real + syn.items
    assert syn.record["test_copies_left_out"] == [str(copy.resolve())]
    assert syn.record["synthetic_per_class"] == {"small": 2}
    # The recipe's skip_bad reaches the augmenter too: a folder of no class is refused, or left out.
    synthetic_folder(folder, {"zebra": 1})
    spec = AugmentSpec(type="folder", params={"path": str(folder)})
    with pytest.raises(DataError, match="no class 'zebra'"):
        _augment_stage(SimpleNamespace(seed=0, skip_bad=False), data, store, spec, False)
    assert len(_augment_stage(SimpleNamespace(seed=0, skip_bad=True), data, store, spec, False)[1].items) == 2


# --- cache -----------------------------------------------------------------------------------------


def test_the_cache_key_changes_when_a_file_is_replaced(data, tmp_path):
    folder = synthetic_folder(tmp_path / "syn", {"small": 3})
    first = run(data, tmp_path / "store", path=str(folder))
    again = run(data, tmp_path / "store", path=str(folder))
    assert again.record["reused"] == 3 and again.record["folder"] == first.record["folder"]
    stat = os.stat(folder / "small" / "syn_2.png")
    replacement = write_image(tmp_path / "other.png", size=(SIDE, SIDE), seed=12345)
    (folder / "small" / "syn_2.png").write_bytes(replacement.read_bytes())
    os.utime(folder / "small" / "syn_2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even the same mtime
    after = run(data, tmp_path / "store", path=str(folder))
    assert after.record["folder"] != first.record["folder"] and after.record["generated"] == 3
    assert np.array_equal(after.items[2].load(None), np.asarray(Image.open(replacement).convert("RGB")))
    assert after.record["params"]["contents"] != first.record["params"]["contents"]


# --- end to end ------------------------------------------------------------------------------------

FAST = ("--trials", "2", "--cv", "2", "--heads", "logreg-elasticnet", "--no-progress")


def tiny_extractor(path: Path) -> Path:
    """A seeded two-layer Keras model as a file extractor: features in milliseconds, not a backbone's seconds."""
    from automl.extractors import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    keras.Model(inputs, x).save(path)
    return path


def test_cli_fit_with_a_source_csv_keeps_each_image_off_its_sources_validation_folds(tmp_path, capsys,
                                                                                       monkeypatch):
    import automl.pipeline
    import automl.search

    model = tiny_extractor(tmp_path / "tiny.keras")
    root = dataset_folder(tmp_path / "data")
    folder = synthetic_folder(tmp_path / "syn", {"small": 3})
    (folder / "sources.csv").write_text("file,source\nsmall/syn_0.png,train_small_0.png\n"
                                        "small/syn_1.png,train_small_1.png;train_big_2.png\nsmall/syn_2.png,\n")
    embedded, splits = [], []
    real_embed, real_cv_splits = automl.pipeline._embed_stage, automl.search.cv_splits

    def spy_embed(*args, **kwargs):
        embedded.append(real_embed(*args, **kwargs))
        return embedded[-1]

    def spy_cv(y, cv, seed, groups=None, *, synthetic=None):
        splits.append(real_cv_splits(y, cv, seed, groups, synthetic=synthetic))
        return splits[-1]

    monkeypatch.setattr(automl.pipeline, "_embed_stage", spy_embed)
    monkeypatch.setattr(automl.search, "cv_splits", spy_cv)
    code, out, err = run_cli(capsys, "fit", root, "--augment", "folder", "-p", f"path={folder}", "-e", f"file:{model}",
                             "--store", tmp_path / "store", *FAST)
    assert code == 0, err
    data = embedded[-1]
    rows = data.synthetic_rows
    folds = splits[-1]
    group_of = {Path(data.items[i].path).name: g for i, g in zip(data.kept, data.groups)}
    origin = [Path(record_of(data.items[data.kept[r]])["origin"]).name for r in rows.rows]
    assert origin == ["syn_0.png", "syn_1.png", "syn_2.png"]
    assert [set(s) for s in rows.sources] == [{group_of["train_small_0.png"]},
                                              {group_of["train_small_1.png"], group_of["train_big_2.png"]}, set()]
    left_out = 0
    for tr, va in folds:
        held_out = set(data.groups[va].tolist())
        for row, sources in zip(rows.rows, rows.sources):
            if row in set(tr.tolist()):
                assert held_out.isdisjoint(sources), "a fold trains on an image made from its validation side"
            else:
                assert not held_out.isdisjoint(sources)
                left_out += 1
    assert left_out >= 2  # syn_0 and syn_1 each sit out the fold that validates on their source
    record = json.loads(next(p for p in (tmp_path / "store" / "runs").glob("*/run.json")
                             if json.loads(p.read_text())["augment"]).read_text())
    assert record["augment"]["augmenter"] == "folder" and record["augment"]["synthetic_per_class"] == {"small": 3}
    assert record["augment"]["params"]["path"] == str(folder) and record["augment"]["params"]["contents"]


def test_cli_lists_it_and_refuses_a_missing_folder_before_any_work(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "augmenters")
    assert code == 0 and "folder: synthetic images made elsewhere" in out and "path = ''" in out
    root = dataset_folder(tmp_path / "data")
    code, _, err = run_cli(capsys, "fit", root, "--augment", "folder", "-p", f"path={tmp_path / 'nowhere'}",
                           "-e", "inception-v3", "--weights", "none", "--store", tmp_path / "store", *FAST)
    assert code == 2 and "nowhere (parameter 'path') does not exist" in err
    assert not (tmp_path / "store" / "runs").exists() or not any((tmp_path / "store" / "runs").iterdir())


def test_in_a_recipe_file_the_folder_follows_the_recipes_folder(tmp_path, monkeypatch):
    from automl.recipe import parse_recipe

    folder = synthetic_folder(tmp_path / "recipes" / "syn", {"small": 4})
    monkeypatch.chdir(tmp_path)  # elsewhere than the recipe's folder
    text = "data: data\naugment:\n  - {type: folder, params: {path: syn, sources: syn/map.csv}}\n"
    spec, = parse_recipe(text, base_dir=tmp_path / "recipes").augment
    assert spec.params["path"] == str(folder) and spec.params["sources"] == str(folder / "map.csv")
    assert parse_recipe(text).augment[0].params["path"] == "syn"  # flags and requests: as given
