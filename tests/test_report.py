"""The one table of metrics and the text views built on it (fast: records only, no images)."""

from __future__ import annotations

import numpy as np
import pytest

from automl.comparison import summarize, verdict
from automl.runs import BestPipeline, RunRecord
from automl.evaluate import (COMPARED, HEADLINE, METRIC_TABLE, METRICS, evaluation_report, metric_by_key,
                             metric_by_name, score)
from automl.errors import ConfigError
from automl.report import comparison_text, runs_table, side_by_side
from conftest import run_cli


def test_every_selection_names_a_metric_of_the_table_and_keys_are_unique():
    names = [m.name for m in METRIC_TABLE]
    assert len(set(names)) == len(names) and len({m.key for m in METRIC_TABLE}) == len(names)
    assert set(METRICS + HEADLINE + COMPARED) <= set(names)
    assert all(metric_by_name(n).higher_is_better for n in METRICS)  # the search maximises
    assert not metric_by_name("log-loss").higher_is_better and metric_by_name("log-loss").direction == "minimize"


@pytest.mark.parametrize("m", METRIC_TABLE, ids=lambda m: m.name)
def test_the_test_report_holds_every_metric_under_its_key(m):
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    report = evaluation_report(y, proba, ["a", "b", "c"])
    assert report[m.key] == score(m.name, y, proba) == m(y, proba)


def test_unknown_metric_lists_the_table():
    with pytest.raises(ConfigError, match="macro-f1.*got 'f1'"):
        metric_by_name("f1")
    with pytest.raises(ConfigError, match="f1_macro"):
        metric_by_key("f1")


def test_a_lower_is_better_verdict_reads_a_drop_as_help():
    drop = {"n": 8, "mean": -0.1, "interval": [-0.2, -0.05], "p": 0.01}
    assert verdict(drop) == "hurts" and verdict(drop, higher_is_better=False) == "helps"


def _runs(values: dict[str, list[float]]) -> dict[str, list[dict]]:
    return {label: [{"run": f"{label}-{i}", "best": "x", "test": {m.key: v for m in METRIC_TABLE}}
                    for i, v in enumerate(vs)] for label, vs in values.items()}


def test_comparison_text_columns_and_verdict_label_come_from_the_table():
    record = summarize(_runs({"original": [0.5, 0.6], "better": [0.9, 0.95]}), ["original", "better"],
                       "balanced_accuracy")
    record.update(repeats=2, seeds=[0, 1])
    text = comparison_text(record)
    header = text.splitlines()[1].split()
    assert header == ["variant"] + [metric_by_name(n).short for n in COMPARED]
    assert "verdict on test balanced accuracy" in text and "p (balanced accuracy)" in text


def _record(run_id: str, value: float, augment: dict | None = None) -> RunRecord:
    return RunRecord(id=run_id, created="", data="/data/" + "x" * 60, layout="class-folders", classes=["a", "b"],
                     counts={}, split="given", metric="macro-f1", cv=5, augment=augment, seed=0,
                     best=BestPipeline("xception + ffnn", "xception", "ffnn", {}, value, 0),
                     train_images={"fitted_on": 12}, test={"n": 4, **{m.key: value for m in METRIC_TABLE}, "auroc": None})


def test_side_by_side_and_runs_table():
    aug = {"variant": "conventional x1 minority", "synthetic_per_class": {"b": 3}, "generated": 3, "reused": 0,
           "folder": "g", "mix": "real+synthetic", "real_fraction": 1.0}
    text = side_by_side(_record("r1", 0.5), _record("r2", 0.75, aug))
    rows = {line.split("  ")[0]: line.split() for line in text.splitlines()}
    assert [label for label in rows if label in {metric_by_name(n).label for n in HEADLINE}] == \
        [metric_by_name(n).label for n in HEADLINE]
    assert rows["F1 (macro)"][-1] == "+0.25" and rows["AUROC"][1:] == ["-", "-", "-"]
    table = runs_table([_record("r1", 0.5), _record("r2", 0.75, aug)]).splitlines()
    assert table[0].split("  ")[-1].strip() == "test AUROC" and "...xxx" in table[2]
    assert table[3].split()[-3:] == ["0.75", "0.75", "-"]


def test_search_flags_help_tells_the_real_defaults(capsys):
    from automl.recipe import DEFAULT_EXTRACTORS, DEFAULT_HEADS

    code, out, _ = run_cli(capsys, "fit", "--help")
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    assert f"(default: {', '.join(DEFAULT_HEADS)})" in flat and "(default: all)" not in flat
    assert f"(default: {', '.join(DEFAULT_EXTRACTORS)})" in flat
