"""The augmentation framework: the plan's arithmetic, cached generation with provenance, and the
leakage rules (training split only; synthetic images never in validation folds nor opposite their source)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fakes
from automl.augment.generate import augment
from automl.augment.plan import AugmentSpec, plan_counts, reduce_real
from automl.data import load_dataset, split_test
from automl.errors import ConfigError, DataError
from automl.search import SyntheticRows, cv_splits
from conftest import class_folders, run_cli

CLASSES = ["a", "b", "c"]


def spec(**kw) -> AugmentSpec:
    return AugmentSpec(type=kw.pop("type", "test-shift"), **kw)


# --- the plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, expected", [
    ({}, {1: 5, 2: 2}),                                    # minority, ratio 1: doubles each smaller class
    ({"classes": "all"}, {0: 10, 1: 5, 2: 2}),
    ({"classes": ["c"], "ratio": 3.0}, {2: 6}),
    ({"ratio": 0.5}, {1: 2, 2: 1}),                        # round(2.5) = 2 (banker's), round(1.0) = 1
    ({"ratio": "balance"}, {1: 5, 2: 8}),
    ({"ratio": "balance", "classes": "all"}, {0: 0, 1: 5, 2: 8}),
    ({"ratio": 2.0, "classes": "all", "mix": "synthetic-only"}, {0: 20, 1: 10, 2: 4}),
])
def test_plan_counts_in_every_mode(kw, expected):
    assert plan_counts(spec(**kw), [10, 5, 2], CLASSES) == expected


def test_plan_full_restores_the_sizes_before_real_fraction():
    s = spec(ratio="full", classes="all", real_fraction=0.3)
    assert plan_counts(s, [3, 2, 1], CLASSES, original_sizes=[10, 5, 2]) == {0: 7, 1: 3, 2: 1}


@pytest.mark.parametrize("kw, sizes, message", [
    ({"classes": ["a", "zebra"]}, [10, 5, 2], "unknown class 'zebra'; the dataset's classes are a, b, c"),
    ({"classes": ["a", "a"]}, [10, 5, 2], "listed more than once"),
    ({}, [4, 4, 4], "none is smaller than the largest"),
    ({"mix": "synthetic-only"}, [10, 5, 2], "class(es) a would get none"),
    ({"ratio": "balance", "classes": "all", "mix": "synthetic-only"}, [10, 5, 2], "would get none"),
    ({"ratio": 0.01}, [10, 5, 2], "adds no image"),
])
def test_bad_plans_say_what_and_how_to_fix(kw, sizes, message):
    with pytest.raises(ConfigError, match="Fix|Use classes") as exc:
        plan_counts(spec(**kw), sizes, CLASSES)
    assert message in str(exc.value)


@pytest.mark.parametrize("kw, message", [
    ({"ratio": 0.0}, "ratio must be a number > 0"),
    ({"ratio": -1}, "ratio must be a number > 0"),
    ({"ratio": "lots"}, "balance or full; got 'lots'"),
    ({"real_fraction": 0.0}, "greater than 0"),
    ({"real_fraction": 1.5}, "less than or equal to 1"),
    ({"classes": []}, "non-empty list"),
    ({"type": "no-such-thing"}, "unknown augmenter 'no-such-thing'; valid names:"),
    ({"params": {"nosie": 1.0}}, "no parameter 'nosie'; valid parameters: noise"),
    ({"params": {"noise": -1.0}},
     "The 'noise' parameter of augmenter 'test-shift' must be a float in the range [0, inf)"),
    ({"params": {"noise": "loud"}}, "must be float like its default"),
    ({"mix": "both"}, "'real+synthetic' or 'synthetic-only'"),
])
def test_bad_specs_are_refused_with_the_field(kw, message):
    with pytest.raises(ValueError) as exc:
        spec(**kw)
    assert message in str(exc.value)


def test_recipe_explains_augment_problems_with_line_numbers(tmp_path):
    from automl.recipe import RecipeError, parse_recipe

    with pytest.raises(RecipeError) as exc:
        parse_recipe("data: x\naugment:\n  type: test-shift\n  ratio: -2\n")
    assert "line 2: augment[0].ratio: ratio must be a number > 0" in str(exc.value)
    recipe = parse_recipe("data: x\naugment: [test-shift, {type: test-blobs, ratio: balance}]\n")
    assert [v.type for v in recipe.augment] == ["test-shift", "test-blobs"]
    assert recipe.augment[1].ratio == "balance" and recipe.augment[0].ratio == 1.0


def test_reduce_real_is_stratified_seeded_and_keeps_every_class():
    labels = [0] * 10 + [1] * 5 + [2] * 1
    kept = reduce_real(labels, 0.3, seed=1)
    assert np.bincount(np.array(labels)[kept]).tolist() == [3, 2, 1]
    assert kept == reduce_real(labels, 0.3, seed=1) and kept == sorted(kept)
    assert kept != reduce_real(labels, 0.3, seed=2)
    assert reduce_real(labels, 1.0, seed=0) == list(range(16))


# --- generation, cache, provenance ---------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    root = class_folders(tmp_path / "data", {"big": 8, "small": 4}, size=(24, 20))
    return load_dataset(root)


def run_plan(dataset, store, s, seed=0):
    train = [it for it in dataset.items if it.split != "test"]
    return augment(train, dataset.classes, s, generated_dir=store / "generated", generators_dir=store / "generators",
                   seed=seed, progress=False)


def test_generates_the_plan_with_provenance_and_reuses_it(small, tmp_path):
    store = tmp_path / "store"
    first = run_plan(small, store, spec(ratio=1.5))
    assert [it.label for it in first.items] == [1] * 6  # the minority class, 4 x 1.5
    assert first.record["generated"] == 6 and first.record["reused"] == 0
    small_sources = {it.fingerprint: it for it in small.items if it.label == 1}
    for it, sources in zip(first.items, first.sources):
        record = json.loads((tmp_path / it.path).with_suffix(".json").read_text())
        assert record["class"] == "small" and record["augmenter"] == "test-shift" and record["seed"] == 0
        assert record["params"] == {"noise": 8.0} and record["fingerprint"] == it.fingerprint
        assert len(sources) == 1 and sources[0] in small_sources
        assert record["sources"][0]["path"] == small_sources[sources[0]].path
        source_pixels = small_sources[sources[0]].load(None)
        assert it.load(None).shape == source_pixels.shape
        assert np.abs(it.load(None).astype(int) - source_pixels).mean() > 5  # not a copy
    # Every source is used before any is used twice.
    assert len(set(first.sources[:4])) == 4

    again = run_plan(small, store, spec(ratio=1.5))
    assert again.record["generated"] == 0 and again.record["reused"] == 6
    assert [it.fingerprint for it in again.items] == [it.fingerprint for it in first.items]

    more = run_plan(small, store, spec(ratio=3.0))  # a larger ratio only adds images
    assert more.record["generated"] == 6 and more.record["reused"] == 6
    assert [it.fingerprint for it in more.items[:6]] == [it.fingerprint for it in first.items]

    other_seed = run_plan(small, store, spec(ratio=1.5), seed=1)
    assert other_seed.record["generated"] == 6
    assert {it.fingerprint for it in other_seed.items}.isdisjoint(it.fingerprint for it in first.items)


def test_images_do_not_depend_on_batching(small, tmp_path, monkeypatch):
    import automl.augment.generate as generate

    whole = run_plan(small, tmp_path / "s1", spec(ratio=2.0))
    monkeypatch.setattr(generate, "CHUNK", 3)
    chunked = run_plan(small, tmp_path / "s2", spec(ratio=2.0))
    assert [it.fingerprint for it in whole.items] == [it.fingerprint for it in chunked.items]


def test_an_interrupted_generation_keeps_finished_images(small, tmp_path, monkeypatch):
    store = tmp_path / "store"
    calls = {"n": 0}
    original = fakes.Shift.generate

    def dies_on_second_chunk(self, label, indices, sources, seed):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, label, indices, sources, seed)

    monkeypatch.setattr(fakes.Shift, "generate", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_plan(small, store, spec(ratio=3.0))  # 12 images: chunks of 8 and 4
    monkeypatch.setattr(fakes.Shift, "generate", original)
    resumed = run_plan(small, store, spec(ratio=3.0))
    assert resumed.record["reused"] == 8 and resumed.record["generated"] == 4
    assert not list(store.rglob(".tmp-*"))


def test_fitted_generators_are_cached_by_fit_params_only(small, tmp_path):
    store = tmp_path / "store"
    fakes.Blobs.fits.clear()
    first = run_plan(small, store, spec(type="test-blobs", classes="all"))
    assert [f["class"] for f in fakes.Blobs.fits] == [0, 1]
    assert len(first.items) == 12 and first.sources == [()] * 12
    # A generation-only parameter changes the images, not the fit: the means are reused.
    second = run_plan(small, store, spec(type="test-blobs", classes="all", params={"spread": 5.0}))
    assert len(fakes.Blobs.fits) == 2 and second.record["generated"] == 12
    assert second.record["generator_folder"] == first.record["generator_folder"]
    third = run_plan(small, store, spec(type="test-blobs", classes="all", params={"size": 8}))
    assert len(fakes.Blobs.fits) == 4 and third.record["generator_folder"] != first.record["generator_folder"]


def test_the_augmenter_never_sees_a_test_image(tmp_path):
    root = class_folders(tmp_path / "data", {"big": 12, "small": 6})
    dataset = split_test(load_dataset(root), test_fraction=0.25, seed=0)
    test_fps = {it.fingerprint for it in dataset.split("test")}
    fakes.Blobs.fits.clear()
    run_plan(dataset, tmp_path / "store", spec(type="test-blobs", classes="all"))
    seen = {fp for f in fakes.Blobs.fits for fp in f["fingerprints"]}
    assert seen and seen.isdisjoint(test_fps) and all(f["splits"] == ["train"] for f in fakes.Blobs.fits)
    with pytest.raises(DataError, match="training split only"):
        augment(dataset.items, dataset.classes, spec(), generated_dir=tmp_path / "g", generators_dir=tmp_path / "m")


def test_real_fraction_reduces_what_the_augmenter_and_the_search_see(small, tmp_path):
    fakes.Blobs.fits.clear()
    result = run_plan(small, tmp_path / "store", spec(type="test-blobs", classes="all", ratio="full",
                                                      real_fraction=0.5))
    assert [it.label for it in result.real].count(0) == 4 and [it.label for it in result.real].count(1) == 2
    assert result.record["synthetic_per_class"] == {"big": 4, "small": 2}
    assert sorted(len(f["fingerprints"]) for f in fakes.Blobs.fits) == [2, 4]


# --- leakage-safe folds ----------------------------------------------------------------------------


def test_folds_keep_synthetic_images_out_of_validation_and_with_their_source():
    rng = np.random.default_rng(0)
    n_real = 40
    y_real = np.array([0] * 25 + [1] * 15)
    groups_real = np.arange(n_real)
    groups_real[[3, 4]] = 3  # two identical images share a group
    sources = [(int(g),) for g in rng.choice(groups_real, 30)] + [()] * 5  # the last 5: no source (a GAN's)
    y = np.concatenate([y_real, [y_real[s[0]] if s else 1 for s in sources]])
    groups = np.concatenate([groups_real, np.arange(100, 135)])
    rows = SyntheticRows(tuple(range(n_real, n_real + 35)), tuple(sources))
    folds = cv_splits(y, 5, seed=0, groups=groups, synthetic=rows)
    assert len(folds) == 5
    seen_val = np.concatenate([va for _, va in folds])
    assert sorted(seen_val.tolist()) == list(range(n_real))  # every real image validated exactly once
    for tr, va in folds:
        assert va.max() < n_real  # validation: real images only
        held_out = set(groups[va].tolist())
        for row in tr[tr >= n_real]:
            assert held_out.isdisjoint(sources[row - n_real])  # never opposite its source
        left_out = [row for row in range(n_real, n_real + 35) if row not in set(tr)]
        assert all(set(sources[row - n_real]) & held_out for row in left_out)  # only those are left out
        assert set(range(n_real + 30, n_real + 35)) <= set(tr.tolist())  # source-less ones always train
        assert not ({3, 4} & set(va.tolist())) or {3, 4} <= set(va.tolist())  # duplicates stay together

    only = cv_splits(y, 5, seed=0, groups=groups, synthetic=SyntheticRows(rows.rows, rows.sources, train_real=False))
    for (tr, va), (tr_mixed, va_mixed) in zip(only, folds):
        assert tr.min() >= n_real and np.array_equal(va, va_mixed)  # synthetic-only: no real image trains


def test_cv_needs_enough_real_images_per_class():
    y = np.array([0] * 10 + [1] * 2 + [1] * 20)
    rows = SyntheticRows(tuple(range(12, 32)), ((),) * 20)
    with pytest.raises(DataError, match="at least 3 real training images per class; the smallest class has 2"):
        cv_splits(y, 3, seed=0, groups=np.arange(32), synthetic=rows)


# --- fit --augment end to end ----------------------------------------------------------------------

FAST = ("-e", "inception-v3", "--weights", "none", "--image-size", "75", "--precision", "float32", "--trials", "3",
        "--cv", "2", "--heads", "logreg-elasticnet,svc-rbf", "--no-progress")


def test_fit_augment_shows_baseline_and_augmented_side_by_side(tmp_path, capsys, monkeypatch):
    import automl.search

    searches = []
    real_cv_splits = automl.search.cv_splits

    def spy(y, cv, seed, groups=None, *, synthetic=None):
        folds = real_cv_splits(y, cv, seed, groups, synthetic=synthetic)
        searches.append((y, groups, synthetic, folds))
        return folds

    monkeypatch.setattr(automl.search, "cv_splits", spy)
    root = class_folders(tmp_path / "data", {"big": 16, "small": 8}, size=(32, 32))
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "fit", root, "--augment", "test-shift", "--ratio", "2", "--store", store,
                             "--augment-param", "noise=4", *FAST)
    assert code == 0, err
    (_, _, none, _), (y, groups, synthetic, folds) = searches
    assert none is None
    # What the pipeline hands the search: each synthetic row with its one real source, of its own class.
    real_rows = [r for r in range(len(y)) if r not in set(synthetic.rows)]
    assert len(synthetic.rows) == 2 * int((y[real_rows] == 1).sum())
    for row, sources in zip(synthetic.rows, synthetic.sources):
        source_row, = [r for r in real_rows if groups[r] in sources]
        assert y[source_row] == y[row] == 1
    for tr, va in folds:
        assert set(va.tolist()) <= set(real_rows)
        assert all(set(synthetic.sources[synthetic.rows.index(r)]).isdisjoint(groups[va]) for r in tr
                   if r in synthetic.rows)
    assert "metric" in out and "original" in out and "augmented" in out and "difference" in out
    runs = sorted((store / "runs").iterdir())
    assert len(runs) == 2
    records = [json.loads((r / "run.json").read_text()) for r in runs]
    base, aug = records if records[0]["augment"] is None else records[::-1]
    assert aug["baseline_run"] == base["id"] and base["augment"] is None
    small_train, big_train = base["counts"]["train"]["small"], base["counts"]["train"]["big"]
    assert aug["augment"]["synthetic_per_class"] == {"small": 2 * small_train}
    assert aug["augment"]["params"] == {"noise": 4.0}
    real = small_train + big_train
    assert aug["train_images"] == {"real": real, "synthetic": 2 * small_train, "fitted_on": real + 2 * small_train}
    assert base["train_images"] == {"real": real, "synthetic": 0, "fitted_on": real}
    # Same split and test images for both; the test split came before any generation.
    assert base["test"]["n"] == aug["test"]["n"] == 24 - real
    assert base["counts"] == aug["counts"]
    aug_dir = next(r for r in runs if r.name == aug["id"])
    assert (aug_dir / "samples.png").is_file()
    assert "augment:" in (aug_dir / "recipe.yaml").read_text()
    # Again: nothing is generated, and both studies are resumed, not started anew.
    before = {r.name for r in runs}
    code, out, err = run_cli(capsys, "fit", root, "--augment", "test-shift", "--ratio", "2", "--store", store,
                             "--augment-param", "noise=4", *FAST)
    assert code == 0, err
    assert f"0 generated now, {2 * small_train} reused" in out
    again = [json.loads((r / "run.json").read_text()) for r in (store / "runs").iterdir() if r.name not in before]
    assert sorted(r["study"]["name"] for r in again) == sorted([base["study"]["name"], aug["study"]["name"]])
    assert [r["trials"] for r in again] == [(aug if r["augment"] else base)["trials"] for r in again]


def test_fit_refuses_several_variants_and_loose_plan_flags(tmp_path, capsys):
    root = class_folders(tmp_path / "data", {"big": 6, "small": 4})
    code, _, err = run_cli(capsys, "fit", root, "--augment", "test-shift,test-blobs", *FAST)
    assert code == 2 and "fit takes one augmentation variant" in err and "automl compare" in err
    code, _, err = run_cli(capsys, "fit", root, "--ratio", "2", *FAST)
    assert code == 2 and "need --augment NAME" in err
    code, _, err = run_cli(capsys, "fit", root, "--augment", "test-shift", "--classes", "small,cow", *FAST,
                           "--store", tmp_path / "store")
    assert code == 2 and "unknown class 'cow'" in err
    assert not (tmp_path / "store" / "runs").exists()


def test_torch_after_the_keras_extractors_in_one_process():
    """An augmented fit embeds with Keras (TensorFlow) first and runs torch augmenters after: that order
    used to end in a segmentation fault when torchvision loaded triton after TensorFlow."""
    import subprocess
    import sys

    code = ("from automl.extractors import build_extractor; import numpy as np; "
            "e = build_extractor('inception-v3', weights='none', image_size=75, precision='float32'); "
            "e(np.zeros((1, 75, 75, 3), np.uint8)); "
            "import torchvision.ops; from automl.augment import build_augmenter; print('both loaded')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "both loaded" in proc.stdout, proc.stderr[-2000:]
