"""`automl fit` end to end: search, one evaluation, the saved run, predict, resume, and the held-out test."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import automl.search
from automl.cache import EmbeddingCache
from automl.data import load_dataset
from automl.evaluate import METRICS, evaluation_report, score
from automl.runs import ModelBundle
from conftest import ROOT, run_cli

FAST = ("--weights", "none", "--image-size", "75", "--precision", "float32", "--no-progress")


@pytest.fixture(scope="module")
def breast_run(tmp_path_factory, shared):
    """One small fit on BreastMNIST through the CLI, shared by the tests that read its run."""
    store = tmp_path_factory.mktemp("store")
    proc = subprocess.run(
        [sys.executable, "-m", "automl", "fit", str(shared / "data" / "breastmnist.npz"), "-e", "inception-v3",
         "--trials", "8", "--cv", "3", "--store", str(store), "--name", "breast", *FAST],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir, = (store / "runs").iterdir()
    return store, run_dir, proc.stdout, proc.stderr


def test_fit_breastmnist_reports_and_saves_everything(breast_run, shared):
    store, run_dir, out, err = breast_run
    record = json.loads((run_dir / "run.json").read_text())
    assert record["name"] == "breast" and record["id"] == run_dir.name
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "leaderboard.json", "metrics.json", "model.json", "model.npz", "predictions.csv", "recipe.yaml", "report.html",
        "run.json", "split.json"]
    test = record["test"]
    assert test["n"] == 156
    # Above chance: 114 of 156 test images are benign, so a constant guess has accuracy 0.73, AUROC 0.5.
    assert test["auroc"] > 0.65 and test["f1_macro"] > 0.5 and test["accuracy"] > 0.6
    assert record["trials"].get("complete", 0) + record["trials"].get("pruned", 0) == 8
    # The study's setup for inception-v3 is a reference trial, visible in the leaderboard.
    assert any("retinopathy" in r["reference"] for r in record["references"])
    assert "test split (156 images, evaluated once)" in out and f"run {record['id']}" in out
    assert "test image(s) also appear in train/val" in err  # BreastMNIST's one leaked pair
    assert record["versions"]["scikit-learn"] and record["split"] == "given"


def test_runs_and_show_list_the_run(breast_run, capsys):
    store, run_dir, _, _ = breast_run
    code, out, _ = run_cli(capsys, "runs", "--store", store)
    assert code == 0 and run_dir.name in out and "breast" in out
    code, out, _ = run_cli(capsys, "show", run_dir.name[:13], "--store", store)
    assert code == 0 and "evaluated once" in out and "confusion matrix" in out


def test_predict_agrees_with_the_saved_test_predictions(breast_run, capsys, tmp_path, shared):
    store, run_dir, _, _ = breast_run
    with open(run_dir / "predictions.csv") as f:
        saved = {row["path"].rsplit(":", 1)[1]: row for row in csv.DictReader(f)}
    test_images = np.load(shared / "data" / "breastmnist.npz")["test_images"]
    chosen = [0, 7, 42, 100]
    for i in chosen:
        Image.fromarray(test_images[i]).save(tmp_path / f"test_{i}.png")
    code, out, err = run_cli(capsys, "predict", run_dir.name, tmp_path, "--json", "--store", store, "--no-progress")
    assert code == 0, err
    rows = {json.loads(line)["path"].rsplit("_", 1)[1][:-4]: json.loads(line) for line in out.splitlines()}
    for i in chosen:
        mine, theirs = rows[str(i)], saved[f"test[{i}]"]
        assert mine["class"] == theirs["predicted"]
        for c, p in mine["probabilities"].items():
            assert p == pytest.approx(float(theirs[f"p({c})"]), abs=1e-4)


def test_bundle_refuses_an_extractor_it_cannot_rebuild(breast_run, capsys, monkeypatch, tmp_path):
    store, run_dir, _, _ = breast_run
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    code, _, err = run_cli(capsys, "predict", run_dir.name, ROOT / "tests", "--store", store, "--no-progress")
    assert code == 2
    assert "cannot rebuild the extractor" in err and "backend: fitted with 'tensorflow', now 'jax'" in err
    monkeypatch.delenv("KERAS_BACKEND")
    bundle = ModelBundle.load(run_dir)
    bundle.weights = str(tmp_path / "gone.h5")
    moved = tmp_path / "moved"
    moved.mkdir()
    bundle.save(moved)
    with pytest.raises(Exception, match="no longer exists"):
        ModelBundle.load(moved).extractor_key()


def test_the_test_split_never_reaches_the_search(tmp_path, monkeypatch, shared):
    """Instrument the search: no feature row it sees may be a test image's, and the cache must not
    even hold a test image's embedding until the search is over."""
    from automl.pipeline import fit
    from automl.recipe import Recipe

    data = shared / "data" / "brain_tumor_yesno"
    store = tmp_path / "store"
    seen = {}
    real_search = automl.search.run_search

    def watched(features, y, **kwargs):
        seen["features"] = {k: v.copy() for k, v in features.items()}
        caches = [p for p in (store / "embeddings").iterdir()]
        seen["cached"] = set()
        for folder in caches:
            key = json.loads((folder / "key.json").read_text())
            seen["cached"] |= set(EmbeddingCache(folder, key).lookup(all_fps))
        return real_search(features, y, **kwargs)

    recipe = Recipe.from_flags(data=str(data), extractors=["xception"], heads=["svc-rbf", "logreg-elasticnet"],
                               trials=3, cv=3, weights="none", image_size=71, precision="float32",
                               store=str(store), seed=1)
    from automl.data import split_test

    dataset = split_test(load_dataset(data), test_fraction=recipe.test_fraction, seed=recipe.seed)
    all_fps = [it.fingerprint for it in dataset.items]
    test_fps = {it.fingerprint for it in dataset.split("test")}
    train_fps = {it.fingerprint for it in dataset.items if it.split != "test"}
    monkeypatch.setattr(automl.search, "run_search", watched)
    result = fit(recipe, progress=False)

    assert seen["cached"] and not (seen["cached"] & (test_fps - train_fps))
    cache_dir, = (store / "embeddings").iterdir()
    test_rows = EmbeddingCache(cache_dir, {}).lookup(test_fps - train_fps)
    assert len(test_rows) == len(test_fps - train_fps) > 0  # embedded afterwards, for the one evaluation
    X = seen["features"]["xception"]
    for row in test_rows.values():
        assert not np.any(np.all(np.isclose(X, row, rtol=0, atol=0), axis=1))
    assert result.record.test["n"] == len(dataset.split("test"))


def test_killed_fit_resumes_its_study(tmp_path, shared):
    data = shared / "data" / "brain_tumor_yesno"
    store = tmp_path / "store"
    args = [sys.executable, "-m", "automl", "fit", str(data), "-e", "inception-v3", "--heads", "svc-rbf,logreg-elasticnet",
            "--cv", "3", "--store", str(store), *FAST]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(args + ["--trials", "400"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = store / "optuna.db"

    def finished() -> int:
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(db) as con:
                return con.execute("select count(*) from trials where state in ('COMPLETE','PRUNED')").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    deadline = time.time() + 300
    while finished() < 3:
        assert proc.poll() is None, "fit ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = finished()
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())  # no half-written run
    done = subprocess.run(args + ["--trials", str(before + 2)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert finished() == before + 2  # resumed: only two new trials ran
    record = json.loads(next((store / "runs").glob("*/run.json")).read_text())
    assert record["trials"]["complete"] + record["trials"].get("pruned", 0) == before + 2
    assert "running" not in record["trials"]  # the killed process's trial counts as interrupted
    images, hits, computed = re.search(r"^inception-v3\s+(\d+)\s+(\d+)\s+(\d+)", done.stdout, re.M).groups()
    assert images == hits and computed == "0"  # the training embeddings were reused too


@pytest.mark.parametrize("args, message", [
    ((), "give DATA or --recipe"),
    (("DATA", "--metric", "auc"), "metric"),
    (("DATA", "--trials", "0"), "trials"),
    (("DATA", "--cv", "1"), "cv"),
    (("DATA", "--heads", "svm"), "svm"),
])
def test_bad_flags_exit_non_zero(capsys, tmp_path, args, message):
    args = [str(tmp_path) if a == "DATA" else a for a in args]
    code, _, err = run_cli(capsys, "fit", *args, "--store", tmp_path / "store")
    assert code == 2 and message in err
    assert not (tmp_path / "store").exists()


def test_validate_explains_a_bad_recipe(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\ntrails: 5\nheads: [svm]\n")
    code, _, err = run_cli(capsys, "validate", bad)
    assert code == 2 and "2 problem(s)" in err and "trials" in err and "svm" in err
    code, out, _ = run_cli(capsys, "validate", ROOT / "recipes" / "demo.yaml")
    assert code == 0 and "valid" in out


def test_scores_and_report():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    assert score("accuracy", y, proba) == pytest.approx(4 / 6)
    assert set(METRICS) == {"macro-f1", "accuracy", "balanced-accuracy", "roc-auc"}
    assert 0 < score("roc-auc", y, proba) <= 1
    report = evaluation_report(y, proba, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["per_class"]["b"]["recall"] == 1.0
    assert np.isnan(score("roc-auc", np.array([0, 0]), np.array([[0.6, 0.4], [0.3, 0.7]])))
