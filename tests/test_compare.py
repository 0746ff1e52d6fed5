"""`automl compare`: the statistics on known numbers, and the whole command on real images."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fakes  # noqa: F401  (registers the test augmenters)
from automl.comparison import min_wilcoxon_p, paired_test, summarize, verdict
from conftest import class_folders, run_cli


def runs_with(values: dict[str, list[float]]) -> dict[str, list[dict]]:
    keys = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "auroc")
    return {label: [{"run": f"{label}-{i}", "best": "x", "test": {k: v for k in keys}} for i, v in enumerate(vs)]
            for label, vs in values.items()}


def test_a_consistent_gain_over_enough_seeds_helps_and_a_loss_hurts():
    base = [0.70, 0.72, 0.68, 0.71, 0.69, 0.70, 0.73, 0.70]
    runs = runs_with({"original": base, "better": [b + 0.05 + 0.001 * i for i, b in enumerate(base)],
                      "worse": [b - 0.04 - 0.002 * i for i, b in enumerate(base)],
                      "same": [b + (0.01 if i % 2 else -0.01) for i, b in enumerate(base)]})
    record = summarize(runs, ["original", "better", "worse", "same"], "f1_macro")
    table = record["table"]
    assert table["better"]["verdict"] == "helps" and table["worse"]["verdict"] == "hurts"
    assert table["same"]["verdict"] == "no significant difference"
    paired = table["better"]["paired"]["f1_macro"]
    assert paired["mean"] == pytest.approx(0.0535) and paired["interval"][0] > 0.05 and paired["p"] < 0.01
    assert table["original"]["metrics"]["accuracy"]["median"] == pytest.approx(np.median(base))
    lo, hi = table["original"]["metrics"]["accuracy"]["interval"]
    assert min(base) <= lo <= np.median(base) <= hi <= max(base)


def test_too_few_repeats_are_never_called_significant():
    assert min_wilcoxon_p(5) == pytest.approx(0.0625) and min_wilcoxon_p(6) == pytest.approx(0.03125)
    runs = runs_with({"original": [0.5, 0.6], "better": [0.9, 0.95]})
    record = summarize(runs, ["original", "better"], "f1_macro")
    assert record["table"]["better"]["verdict"].startswith("no significant difference (2 repeats cannot reach")


def test_identical_scores_and_missing_metrics():
    assert paired_test(np.zeros(6), np.random.default_rng(0))["p"] == 1.0
    missing = paired_test(np.array([np.nan, np.nan]), np.random.default_rng(0))
    assert missing["mean"] is None and verdict(missing) == "undefined (metric missing)"


def test_compare_needs_a_variant_and_distinct_names(tmp_path, capsys):
    root = class_folders(tmp_path / "data", {"big": 6, "small": 4})
    code, _, err = run_cli(capsys, "compare", root, "--weights", "none", "--store", tmp_path / "s")
    assert code == 2 and "compare needs at least one augmentation variant" in err
    code, _, err = run_cli(capsys, "compare", root, "--augment", "test-shift,test_shift", "--store", tmp_path / "s")
    assert code == 2 and "two variants have the same name" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_compare_on_breastmnist_prints_and_saves_the_table(shared, tmp_path, capsys):
    store = tmp_path / "store"
    code, out, err = run_cli(
        capsys, "compare", shared / "data" / "breastmnist.npz", "--augment", "conventional,test-shift",
        "--repeats", "2", "-e", "inception-v3", "--weights", "none", "--image-size", "75", "--trials", "3",
        "--cv", "3", "--heads", "logreg-elasticnet", "--store", store, "--no-progress")
    assert code == 0, err
    assert "median [95 % bootstrap interval of the median]" in out
    for variant in ("original", "conventional x1 minority", "test-shift x1 minority"):
        assert variant in out
    assert out.count("no significant difference (2 repeats cannot reach p < 0.05; use >= 6)") == 2
    folder, = (store / "comparisons").iterdir()
    record = json.loads((folder / "comparison.json").read_text())
    assert record["seeds"] == [0, 1] and record["variants"][0] == "original"
    runs = {r.name for r in (store / "runs").iterdir()}
    assert len(runs) == 6
    for label in record["variants"]:
        entry = record["table"][label]
        assert set(entry["runs"]) <= runs and len(entry["runs"]) == 2
        assert all(0 <= v <= 1 for v in entry["metrics"]["auroc"]["values"])
    # Paired differences are exactly the per-seed differences of the saved runs.
    conv = record["table"]["conventional x1 minority"]
    diffs = [a - b for a, b in zip(conv["metrics"]["f1_macro"]["values"],
                                   record["table"]["original"]["metrics"]["f1_macro"]["values"])]
    assert conv["paired"]["f1_macro"]["mean"] == pytest.approx(np.mean(diffs))
    # ratio 1 doubles the minority class (malignant, 0): 147 train + 21 val images join training.
    run = json.loads((store / "runs" / conv["runs"][0] / "run.json").read_text())
    assert run["augment"]["synthetic_per_class"] == {"0": 168} and run["test"]["n"] == 156
    assert (folder / "table.txt").read_text().strip() in out
