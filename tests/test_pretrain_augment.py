"""automl pretrain --augment: the record names the synthetic set, synthetic-only trains on synthetic
images alone, no synthetic image made from a pretraining-validation image trains, a re-run reuses the
images, a bad plan is refused before any training, and "real, then synthetic" continues the first
stage's extractor.

What is tested is which images reach the training loop, not the backbone: a tiny Keras net stands in
for InceptionV3 (``Backbone.keras_model`` patched; tests/test_pretrain.py trains the real one), and the
numpy ``test-shift`` augmenter of tests/fakes.py makes the images. ``_batches`` and ``_evaluate`` are
wrapped to list every image the training and the validation saw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import fakes
from conftest import class_folders, run_cli

TRAIN = ("--weights", "none", "--image-size", "75", "--no-progress", "--epochs", "1")
SHIFT = ("--augment", "test-shift", "--classes", "all", "--ratio", "1")


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    from automl.extractors.backbone import Backbone

    monkeypatch.setattr(Backbone, "keras_model", fakes.tiny_keras_model)
    fakes.Shift.seen.clear()


@pytest.fixture
def seen(monkeypatch):
    """Every image each epoch trained on ("train", one list per epoch) and validated on ("val")."""
    import automl.pretrain as pt

    got = {"train": [], "val": []}
    batches, evaluate = pt._batches, pt._evaluate

    def counted_batches(items, batch, size):
        got["train"].append(list(items))
        yield from batches(items, batch, size)

    def counted_evaluate(model, items, batch, size):
        got["val"].append(list(items))
        return evaluate(model, items, batch, size)

    monkeypatch.setattr(pt, "_batches", counted_batches)
    monkeypatch.setattr(pt, "_evaluate", counted_evaluate)
    return got


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    class_folders(root / "train", {"a": 12, "b": 12}, size=(40, 40), seed=1)
    class_folders(root / "test", {"a": 2, "b": 2}, size=(40, 40), seed=2)
    return root


def _store_files(store):
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


def _sources(item) -> list[dict]:
    return json.loads(Path(item.path).with_suffix(".json").read_text())["sources"]


def test_the_record_names_the_synthetic_set_and_a_rerun_reuses_it(data, tmp_path, capsys, seen):
    store = tmp_path / "store"
    args = ("pretrain", data, *TRAIN, *SHIFT, "--val-fraction", "0.25", "--batch-size", "6", "--store", store,
            "--name", "mixed")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    record = json.loads((store / "extractors" / "mixed.json").read_text())
    syn = record["synthetic"]
    folder = Path(syn["folder"])
    assert folder.parent == store / "generated" and folder.name == syn["key"] and folder.is_dir()
    assert syn["augmenter"] == "test-shift" and syn["params"] == {"noise": 8.0} and syn["mix"] == "real+synthetic"
    assert syn["plan"] == {"type": "test-shift", "ratio": 1.0, "classes": "all", "mix": "real+synthetic",
                           "real_fraction": 1.0, "params": {}}  # as given; params: with defaults
    assert syn["synthetic_per_class"] == {"a": 9, "b": 9}  # 12 per class, 3 held out for validation
    assert syn["generated"] == 18 and syn["reused"] == 0 and sum(syn["left_out"].values()) == 0
    assert record["counts"] == {"train": 36, "val": 6, "real": 18, "synthetic": 18}
    assert f"synthetic set: test-shift x1 all (real+synthetic), 18 images (a 9, b 9) with 18 real; {syn['key']}" in out

    trained, = seen["train"]
    val = {it.path for it in seen["val"][0]}
    assert len(trained) == 36 and sum(it.split == "synthetic" for it in trained) == 18
    assert all(it.split == "train" for it in seen["val"][0]) and len(val) == 6
    # The augmenter was handed the training part only, so no synthetic image comes from a validation image.
    sources = [s for it in trained if it.split == "synthetic" for s in _sources(it)]
    assert len(sources) == 18 and not val & {s["path"] for s in sources}
    assert not {it.fingerprint for it in seen["val"][0]} & set(fakes.Shift.seen)

    handed = list(fakes.Shift.seen)
    code, out, err = run_cli(capsys, *args, "--overwrite")
    assert code == 0, err
    again = json.loads((store / "extractors" / "mixed.json").read_text())["synthetic"]
    assert again["generated"] == 0 and again["reused"] == 18 and again["key"] == syn["key"]
    assert fakes.Shift.seen == handed  # nothing was generated again
    assert "(0 made, 18 reused)" in out


def test_synthetic_only_trains_on_synthetic_images_only(data, tmp_path, capsys, seen):
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "pretrain", data, *TRAIN, *SHIFT, "--mix", "synthetic-only", "--val-fraction",
                             "0.25", "--batch-size", "6", "--store", store, "--name", "synthetic")
    assert code == 0, err
    trained, = seen["train"]
    assert len(trained) == 18 and {it.split for it in trained} == {"synthetic"}
    assert len({it.path for it in trained}) == 18
    assert {it.split for it in seen["val"][0]} == {"train"}  # validation stays real
    record = json.loads((store / "extractors" / "synthetic.json").read_text())
    assert record["counts"] == {"train": 18, "val": 6, "real": 0, "synthetic": 18}
    assert record["synthetic"]["mix"] == "synthetic-only" and record["synthetic"]["trained"]["real"] == 0
    assert "18 train (0 real + 18 synthetic) / 6 val images" in out


def test_no_synthetic_image_made_from_a_validation_image_trains(tmp_path, capsys, seen):
    # The data's val/ split holds a byte copy of a training image: synthetic images made from that
    # training image are made from a validation image too, and must not train.
    data = tmp_path / "data"
    class_folders(data / "train", {"a": 8, "b": 8}, size=(40, 40), seed=1)
    class_folders(data / "val", {"a": 2, "b": 2}, size=(40, 40), seed=3)
    shutil.copy(data / "train" / "a" / "img_003.png", data / "val" / "a" / "planted.png")
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "pretrain", data, *TRAIN, *SHIFT, "--batch-size", "31", "--store", store,
                             "--name", "clean")
    assert code == 0, err
    val = seen["val"][0]
    assert {it.split for it in val} == {"val"} and len(val) == 5
    val_fps = {it.fingerprint for it in val}
    trained = [it for it in seen["train"][0] if it.split == "synthetic"]
    assert len(trained) == 15  # 16 made, 1 from the planted image left out
    assert all(s["path"].startswith(str(data / "train")) and s["fingerprint"] not in val_fps
               for it in trained for s in _sources(it))
    record = json.loads((store / "extractors" / "clean.json").read_text())
    assert record["synthetic"]["left_out"]["made_from_validation_image"] == 1
    assert record["synthetic"]["synthetic_per_class"] == {"a": 7, "b": 8}
    assert "left out 1 synthetic image(s) that could leak validation images: 1 made from an image also" in out


@pytest.mark.parametrize("args, message", [
    (("--ratio", "-1"), "automl pretrain --augment: ratio: ratio must be a number > 0"),
    (("--mix", "both"), "mix: expected one of real+synthetic, synthetic-only; found 'both'"),
    (("--real-fraction", "0"), "real_fraction: expected a number > 0 and <= 1; found 0.0"),
    (("--classes", "a,zebra"), "augment classes: unknown class 'zebra'; the dataset's classes are a, b"),
    (("-p", "noise=-1"), "params: The 'noise' parameter of augmenter 'test-shift' must be a float in the range"),
    (("--filter", "selective=0.8"), "automl pretrain --augment: filter.selective: the selective filter"),
    (("--filter", "pool=0"), "filter.pool: Input should be greater than or equal to 1; found 0"),
    (("--mix", "synthetic-only", "--classes", "a"), "class(es) b would get none"),
])
def test_a_bad_plan_is_refused_before_any_training(data, tmp_path, capsys, monkeypatch, args, message):
    import automl.pretrain as pt

    built = []
    monkeypatch.setattr(pt, "_build", lambda *a, **k: built.append(1))
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "pretrain", data, *TRAIN, "--augment", "test-shift", *args, "--store", store)
    assert code == 2 and message in err, err
    assert not built and _store_files(store) == [] and fakes.Shift.seen == []


@pytest.mark.parametrize("args, message", [
    (("--augment", "nope"), "unknown augmenter 'nope'; valid names: conventional"),
    (("--augment", "test-shift,test-blobs"), "pretrain takes one augmenter; got 2"),
    (("--ratio", "2"), "need --augment NAME"),
])
def test_bad_augment_flags_are_refused(data, tmp_path, capsys, args, message):
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "pretrain", data, *TRAIN, *args, "--store", store)
    assert code == 2 and message in err, err
    assert _store_files(store) == []


def test_real_then_synthetic_continues_the_real_extractor(data, tmp_path, capsys, monkeypatch):
    import automl.pretrain as pt
    from automl.extractors import import_keras

    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "pretrain", data, *TRAIN, "--store", store, "--name", "real")
    assert code == 0, err
    first = json.loads((store / "extractors" / "real.json").read_text())
    assert first["synthetic"] is None and first["started_from"] is None

    start_weights = []
    train = pt._train

    def checked_train(keras, models, *rest):
        start_weights.append([w.copy() for w in models.extractor.get_weights()])
        return train(keras, models, *rest)

    monkeypatch.setattr(pt, "_train", checked_train)
    code, _, err = run_cli(capsys, "pretrain", data, *TRAIN, *SHIFT, "--seed", "1", "--weights", "real",
                           "--store", store, "--name", "then-synthetic")
    assert code == 2 and "another validation split" in err and "seed 0" in err, err
    assert not start_weights

    code, out, err = run_cli(capsys, "pretrain", data, *TRAIN, *SHIFT, "--mix", "synthetic-only", "--weights",
                             "real", "--store", store, "--name", "then-synthetic")
    assert code == 0, err
    saved = import_keras().models.load_model(store / "extractors" / "real.keras")
    assert all(np.array_equal(a, b) for a, b in zip(start_weights[0], saved.get_weights()))
    record = json.loads((store / "extractors" / "then-synthetic.json").read_text())
    digest = first["model"]["content_hash"]
    assert record["settings"]["weights"] == f"pretrained:{digest}" and record["settings"]["batch_norm"] == "frozen"
    assert record["settings"]["weights_given"]["name"] == "real"
    assert record["started_from"]["name"] == "real" and record["started_from"]["synthetic"] is None
    assert record["synthetic"]["mix"] == "synthetic-only"
    assert record["validation_fingerprint"] == first["validation_fingerprint"]
    assert "started from: real (pretrained on" in out and "real images only" in out

    code, _, err = run_cli(capsys, "pretrain", data, *TRAIN, "--weights", "nowhere", "--store", store)
    assert code == 3 and "nor a pretrained extractor" in err and "real, then-synthetic" in err
