"""An augmentation plan's ``filter:``: near-copies dropped (and every image's nearest real image in its
provenance record), the selective filter chosen per fold from real training rows only, and its
random control at the same counts, compared end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fakes  # noqa: F401 - registers the test augmenters
from automl.augment import Augmenter
from automl.augment.filters import Selective
from automl.augment.generate import augment
from automl.augment.plan import AugmentSpec
from automl.data import load_dataset
from automl.search import SyntheticRows, cv_splits
from conftest import class_folders

# --- the selective filter on a planted case -------------------------------------------------------


def planted():
    """Two classes of real rows around (-2, 0) and (2, 0); six synthetic rows meant as class 1: three
    deep in class 1 (x = 2.2, 2.6, 3.0), two in class 0, one on the border."""
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal((-2, 0), 0.5, (20, 2)), rng.normal((2, 0), 0.5, (20, 2))])
    synthetic = np.array([[2.2, 0], [-2, 0], [3.0, 0], [0, 0], [-2.5, 0], [2.6, 0]])
    y = np.array([0] * 20 + [1] * 20 + [1] * 6)
    return np.concatenate([real, synthetic]), y, np.arange(40), np.arange(40, 46)


def test_selective_keeps_the_most_confident_of_their_class_up_to_the_plan():
    features, y, real, synthetic = planted()
    keep = Selective(0.8, False, features, y, planned=(0, 2), seed=0)
    assert keep(real, synthetic, None).tolist() == [42, 45]  # x = 3.0 and 2.6: the two most confident
    assert Selective(0.8, False, features, y, (0, 5), 0)(real, synthetic, None).tolist() == [40, 42, 45]
    confidence = keep.confidence(real, synthetic)
    assert confidence[[1, 4]].tolist() == [-1, -1]  # they look like class 0: never kept, whatever t
    assert confidence[3] < 0.8  # the border one: not confident either way


def test_the_random_control_keeps_as_many_drawn_at_random_and_seeded():
    features, y, real, synthetic = planted()
    control = Selective(0.8, True, features, y, planned=(0, 5), seed=0)
    draws = [tuple(control(real, synthetic, fold)) for fold in (None, 0, 1, 2, 3)]
    assert all(len(d) == 3 and set(d) <= set(synthetic) for d in draws)  # as many as the filter keeps
    assert draws == [tuple(control(real, synthetic, fold)) for fold in (None, 0, 1, 2, 3)]  # seeded
    assert len(set(draws)) > 1  # not the filter's choice every time


def test_each_fold_chooses_from_its_own_real_training_rows_only():
    """What makes the filter CV-safe: the classifier of fold k learns from fold k's real training
    rows, never from its validation rows, and chooses among the synthetic rows that fold may train on."""
    features, y, real, synthetic = planted()
    calls = []

    def spy(real_rows, candidates, fold):
        calls.append((fold, np.asarray(real_rows), list(candidates)))
        return Selective(0.5, False, features, y, (0, 6), 0)(real_rows, candidates, fold)

    groups = np.arange(46)
    sources = tuple((int(s),) for s in (20, 21, 22, 23, 24, 25))  # each made from a real class-1 image
    rows = SyntheticRows(tuple(synthetic.tolist()), sources, select=spy)
    folds = cv_splits(y, 4, seed=0, groups=groups, synthetic=rows)
    assert [fold for fold, *_ in calls] == [0, 1, 2, 3]
    for (tr, va), (_, real_rows, candidates) in zip(folds, calls):
        assert set(real_rows.tolist()) == set(tr[tr < 40].tolist())  # the fold's real training rows...
        assert not set(real_rows.tolist()) & set(va.tolist())  # ...never its validation rows
        assert all(not set(s) & set(va.tolist()) for s in (sources[r - 40] for r in candidates))
        kept = set(tr[tr >= 40].tolist())
        assert kept <= set(candidates) and 1 not in kept and 4 not in kept


# --- near-copies: provenance and drop_copies ------------------------------------------------------


class Copier(Augmenter):
    """Even images: an exact copy of a real training image of the class; odd ones: noise."""

    name = "test-copier"

    def fit(self, train, classes, chosen, work_dir, seed, progress=True):
        self.train = {c: sorted(train[c], key=lambda it: it.path) for c in chosen}

    def generate(self, label, indices, sources, seed):
        members = self.train[label]
        return [members[k // 2 % len(members)].load(None) if k % 2 == 0 else
                np.random.default_rng([seed, label, k]).integers(0, 256, (16, 20, 3), dtype=np.uint8) for k in indices]


def test_near_copies_are_in_each_provenance_record_and_dropped_on_request(tmp_path):
    dataset = load_dataset(class_folders(tmp_path / "data", {"a": 6, "b": 4}))
    train = [it for it in dataset.items if it.split != "test"]
    store = tmp_path / "store"

    def run(**filter_):
        spec = AugmentSpec(type="test-shift", ratio=1.0, classes="all", **({"filter": filter_} if filter_ else {}))
        return augment(train, dataset.classes, spec, generated_dir=store / "generated",
                       generators_dir=store / "generators", seed=0, progress=False, augmenter=Copier())

    plain = run()
    assert [it.label for it in plain.items] == [0] * 6 + [1] * 4  # the plan's count, copies included
    for it in plain.items:
        record = json.loads(Path(it.path).with_suffix(".json").read_text())
        near, k = record["nearest_real"], record["index"]
        assert near["near_copy"] == (k % 2 == 0), record
        if k % 2 == 0:  # its nearest real image is the one it copies
            copied = sorted((t for t in train if t.label == it.label), key=lambda t: t.path)[k // 2]
            assert near["path"] == copied.path and near["fingerprint"] == copied.fingerprint
            assert near["similarity"] == pytest.approx(1.0)

    dropped = run(drop_copies=True, pool=2)  # twice the plan made, copies dropped, the plan's count kept
    filtered = dropped.record["filter"]
    assert filtered["made_per_class"] == {"a": 12, "b": 8} and filtered["near_copies_dropped"] == {"a": 6, "b": 4}
    assert dropped.record["synthetic_per_class"] == {"a": 6, "b": 4}
    assert dropped.record["generated"] == 10 and dropped.record["reused"] == 10  # the plain run's images reused
    for it in dropped.items:
        assert json.loads(Path(it.path).with_suffix(".json").read_text())["index"] % 2 == 1  # noise only
    assert {it.fingerprint for it in plain.items if int(Path(it.path).stem) % 2} <= {it.fingerprint for it in
                                                                                     dropped.items}


# --- random vs selective at the same ratio, end to end ---------------------------------------------

FAST = dict(extractors=["inception-v3"], weights="none", image_size=75, precision="float32", trials=3, cv=2,
            heads=["logreg-elasticnet"], repeats=1)


def test_compare_random_vs_selective_at_the_same_ratio(tmp_path):
    from automl.api import compare

    root = class_folders(tmp_path / "data", {"big": 16, "small": 8}, size=(32, 32))
    plan = {"type": "test-blobs", "ratio": 1.0, "filter": {"selective": 0.5, "pool": 3}}
    result = compare(root, store=tmp_path / "store", augment=[plan, {**plan, "filter": {**plan["filter"],
                                                                                        "control": True}}], **FAST)
    records = [json.loads(p.read_text()) for p in (tmp_path / "store" / "runs").glob("*/run.json")]
    runs = {r["augment"]["variant"]: r for r in records if r["augment"]}
    selective = runs["test-blobs x1 minority selective>=0.5 of pool x3"]
    control = runs["test-blobs x1 minority random like selective>=0.5 of pool x3"]
    assert "selective>=0.5" in result.text and "random like" in result.text
    for run in (selective, control):
        f = run["augment"]["filter"]
        assert f["made_per_class"] == {"small": 18} and f["planned_per_class"] == {"small": 6}
        assert f["kept_per_class"] == selective["augment"]["filter"]["kept_per_class"]  # the same ratio
        kept = f["kept_per_class"]["small"]
        assert run["augment"]["synthetic_per_class"] == {"small": kept} and kept <= 6
        assert run["train_images"]["synthetic"] == kept and run["train_images"]["fitted_on"] == (
            run["train_images"]["real"] + kept)
        quality = json.loads((tmp_path / "store" / "runs" / run["id"] / "quality.json").read_text())
        assert quality["copies"]["per_class"]["small"]["synthetic"] == kept  # measured on what trained
        assert [len(ks) for ks in f["kept"].values()] == [kept]
        html = (tmp_path / "store" / "runs" / run["id"] / "report.html").read_text()
        assert f"trained on small {kept}" in html and "made small 18" in html
    assert control["augment"]["generated"] == 0  # the pool is shared: made once
    assert selective["study"]["name"] != control["study"]["name"]


def test_the_filter_from_flags_and_its_errors(tmp_path, capsys):
    from cli import _augment_flags
    from conftest import run_cli

    assert _augment_flags(None, "test-shift", None, None, None, None, None, ["drop_copies", "selective=0.8"]) == [
        {"type": "test-shift", "filter": {"drop_copies": True, "selective": 0.8}, "params": {}}]
    root = class_folders(tmp_path / "data", {"a": 6, "b": 4})
    for flags, message in ((["--filter", "control"], "control applies to the selective filter"),
                           (["--filter", "drop_copies=false"], "a filter that keeps every image"),
                           (["--filter", "selective=1.5"], "less than 1"),
                           (["--filter", "colour=red"], "colour")):
        code, _, err = run_cli(capsys, "fit", root, "--augment", "test-shift", *flags, "--store", tmp_path / "s")
        assert code == 2 and message in err, err
    assert not (tmp_path / "s").exists()
