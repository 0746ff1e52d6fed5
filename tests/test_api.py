"""The Python API (automl.fit / compare / load_run, Run) end to end on a small real dataset: the same
stages as the CLI, a typed run record, and predictions that match the run's own test predictions."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import pytest

import automl
import fakes  # noqa: F401 - registers the test augmenters
from automl.demo import make_demo_dataset
from automl.errors import StoreError
from automl.recipe import RecipeError
from automl.runs import RunRecord
from conftest import ROOT

SMALL = dict(extractors="xception", heads="logreg-elasticnet", weights="none", image_size=71, precision="float32",
             trials=3, cv=2)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    make_demo_dataset(folder, per_class=8, size=16, classes=3, seed=0)
    return folder, tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def fitted(digits):
    data, store = digits
    return automl.fit(data, store=str(store), **SMALL)


def test_fit_load_run_predict(digits, fitted):
    data, store = digits
    run = fitted
    assert isinstance(run.record, RunRecord) and run.folder == store / "runs" / run.id
    assert run.record.best.extractor == "xception" and run.record.best.head == "logreg-elasticnet"
    assert run.metrics["n"] == run.record.test["n"] == 6 and "confusion_matrix" in run.metrics
    assert run.leaderboard[0]["rank"] == 1 and run.embeddings and run.baseline is None
    assert run.report == run.folder / "report.html"  # fit wrote the page

    again = automl.load_run(run.id[:-1], store=store)  # a unique id prefix
    assert again.record == run.record
    with open(run.folder / "predictions.csv") as f:
        saved = {row["path"]: row["predicted"] for row in csv.DictReader(f)}
    predicted = again.predict(list(saved))
    assert {p["path"]: p["class"] for p in predicted} == saved  # the saved model predicts what the run scored


def test_a_run_folder_is_taken_from_the_store_or_with_run_dir(digits, fitted, tmp_path):
    _, store = digits
    assert automl.load_run(fitted.folder, store=store).record == fitted.record  # its folder in the store's runs/
    copy = tmp_path / "downloaded"
    shutil.copytree(fitted.folder, copy)
    with pytest.raises(StoreError, match=f"run folder {copy} is outside the store's runs folder.*run_dir=True"):
        automl.load_run(copy, store=store)
    with open(fitted.folder / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    predicted, = automl.load_run(copy, store=store, run_dir=True).predict([row["path"]])
    assert predicted["class"] == row["predicted"]  # the copy's bundle, rebuilt from data, predicts the same


def test_compare_with_a_synthetic_variant(digits):
    data, store = digits
    result = automl.compare(data, store=str(store), augment={"type": "test-shift", "classes": "all"}, repeats=2,
                            **SMALL)
    assert len(result.record["variants"]) == 2 and result.record["variants"][0] == "original"
    assert len(result.record["table"]["original"]["runs"]) == 2 and "verdict" in result.text
    assert (result.folder / "comparison.json").is_file()


def test_keys_are_validated_like_a_recipe(tmp_path):
    with pytest.raises(RecipeError, match="trails: unknown"):
        automl.fit(tmp_path, trails=3)


def test_import_automl_stays_light():
    code = ("import sys, automl; assert callable(automl.fit) and automl.Run; "
            "heavy = [m for m in ('tensorflow', 'torch', 'diffusers', 'keras') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
