"""``automl compare``: does augmentation help? The baseline and every variant over N seeds, one table.

Each repeat is one seed: it seeds the search (sampler, heads, folds), every augmenter, and the test
split when the data has none. Within a repeat the baseline and the variants share the split, the
folds' real images, the budget and the seed (``pipeline.fit_variants``), so the comparison is
paired: for every metric, the difference variant - baseline per seed, its mean with a 95 %
bootstrap interval, and a two-sided Wilcoxon signed-rank p-value. The verdict reads the recipe's
metric on the test split: "helps" or "hurts" when the interval excludes 0 and p < 0.05, else "no
significant difference". Wilcoxon's exact p cannot go below 2 / 2^N, so with N < 6 repeats no
difference can be significant; the table says so instead of pretending.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from automl import progress as events
from automl._files import write_json
from automl.evaluate import COMPARED, metric_by_key, metric_by_name
from automl.seeds import rng as stream_rng

ALPHA = 0.05
BOOTSTRAP = 10_000


@dataclass
class Comparison:
    id: str
    folder: Path | None
    record: dict  # what comparison.json holds
    text: str  # the printed tables
    report: Path | None = None  # report.html, or None when it failed to render (``notes`` says why)
    notes: list[str] = field(default_factory=list)  # warnings worth showing the user


def variant_labels(recipe) -> list[str]:
    """"original" and each variant's name, as the comparison's table shows them; ``ConfigError`` for a
    recipe with no variant or two variants of one name."""
    from automl.errors import ConfigError

    variants = list(recipe.augment or [])
    if not variants:
        raise ConfigError("compare needs at least one augmentation variant: pass --augment NAME[,NAME...] or "
                          "give the recipe an `augment:` entry.")
    labels = ["original"] + [v.describe() for v in variants]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two variants have the same name ({', '.join(labels[1:])}); give them distinct "
                          "`label:` values in the recipe.")
    return labels


def compare(recipe, *, progress: bool = True) -> Comparison:
    """Fit the baseline and each of ``recipe.augment``'s variants for ``recipe.repeats`` seeds; save and
    return the comparison."""
    from automl.pipeline import fit_variants
    from automl.report import comparison_text
    from automl.runs import new_run_id, write_run
    from automl.store import Store

    variants = list(recipe.augment or [])
    labels = variant_labels(recipe)
    seeds = [recipe.seed + r for r in range(recipe.repeats)]
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    t0 = time.perf_counter()
    with events.stage("compare"):
        bar = events.bar(seeds, desc="compare", unit="repeat", disable=not progress, dynamic_ncols=True)
        for seed in bar:
            bar.set_postfix_str(f"seed {seed}", info={"seed": seed})
            results = fit_variants(recipe.model_copy(update={"seed": seed}), variants, progress=progress)
            for label, result in zip(labels, results):
                runs[label].append({"run": result.run_id, "test": result.record.test,
                                    "best": result.record.best.pipeline})
        bar.close()
    record = summarize(runs, labels, metric_by_name(recipe.metric).key, seed=recipe.seed)
    record.update({"data": recipe.data, "metric": recipe.metric, "repeats": recipe.repeats, "seeds": seeds,
                   "seconds": round(time.perf_counter() - t0, 1),
                   "recipe": recipe.model_dump(mode="json")})
    text = comparison_text(record)
    store = Store(recipe.store)
    store.ensure()
    cid = new_run_id()
    folder = write_run(store.comparisons_dir, cid, {
        "comparison.json": lambda p: write_json(p, record),
        "table.txt": lambda p: p.write_text(text + "\n"),
    })
    record["id"] = cid
    report, notes = _report(folder)
    return Comparison(cid, folder, record, text, report, notes)


def _report(folder: Path) -> tuple[Path | None, list[str]]:
    """The comparison's HTML report, written once the comparison is saved: a report that fails to
    render costs the page, never the comparison."""
    from automl.report.pages import write_comparison_report

    try:
        return write_comparison_report(folder), []
    except Exception as exc:  # the comparison is saved whatever went wrong here; the note names it
        return None, [f"comparison {folder.name} is saved, but its HTML report failed ({type(exc).__name__}: {exc}); "
                      f"`automl report {folder.name}` renders it again."]


def summarize(runs: dict[str, list[dict]], labels: list[str], verdict_key: str, *, seed: int = 0) -> dict:
    """Per variant and metric: median and a 95 % bootstrap interval of the median; per variant vs the
    baseline: paired differences, their mean's bootstrap interval, Wilcoxon p, and the verdict."""
    keys = [metric_by_name(name).key for name in COMPARED]
    if verdict_key not in keys:
        keys.append(verdict_key)
    rng = stream_rng(seed, "bootstrap")
    base = runs[labels[0]]
    table = {}
    for label in labels:
        rows = runs[label]
        metrics = {}
        for key in keys:
            values = np.array([_num(r["test"][key]) for r in rows])
            metrics[key] = {"values": [None if math.isnan(v) else v for v in values.tolist()],
                            "median": _nanmedian(values), "interval": bootstrap_interval(values, np.median, rng)}
        entry = {"metrics": metrics, "runs": [r["run"] for r in rows], "best": [r["best"] for r in rows]}
        if label != labels[0]:
            entry["paired"] = {}
            for key in keys:
                diff = np.array([_num(r["test"][key]) - _num(b["test"][key]) for r, b in zip(rows, base)])
                entry["paired"][key] = paired_test(diff, rng)
            entry["verdict"] = verdict(entry["paired"][verdict_key],
                                       higher_is_better=metric_by_key(verdict_key).higher_is_better)
        table[label] = entry
    return {"variants": labels, "verdict_metric": verdict_key, "table": table,
            "min_p": min_wilcoxon_p(len(base))}


def bootstrap_interval(values: np.ndarray, stat, rng, level: float = 0.95) -> list[float | None]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return [None, None]
    if len(values) == 1:
        return [float(values[0])] * 2
    draws = rng.choice(values, size=(BOOTSTRAP, len(values)), replace=True)
    stats = stat(draws, axis=1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def paired_test(diff: np.ndarray, rng) -> dict:
    """Mean paired difference, its 95 % bootstrap interval and the two-sided Wilcoxon signed-rank p."""
    diff = diff[~np.isnan(diff)]
    out = {"n": int(len(diff)), "mean": float(diff.mean()) if len(diff) else None,
           "interval": bootstrap_interval(diff, np.mean, rng), "p": None}
    if len(diff) == 0:
        return out
    if np.allclose(diff, 0):
        out["p"] = 1.0  # identical scores in every repeat: no evidence of any difference
        return out
    from scipy.stats import wilcoxon

    out["p"] = float(wilcoxon(diff, zero_method="zsplit", alternative="two-sided").pvalue)
    return out


def verdict(paired: dict, alpha: float = ALPHA, *, higher_is_better: bool = True) -> str:
    """Of the paired differences variant - baseline of one metric."""
    lo, hi = paired["interval"]
    p = paired["p"]
    if p is None or lo is None:
        return "undefined (metric missing)"
    if p < alpha and (lo > 0 or hi < 0):
        return "helps" if (lo > 0) == higher_is_better else "hurts"
    if min_wilcoxon_p(paired["n"]) >= alpha:
        return f"no significant difference ({paired['n']} repeats cannot reach p < {alpha:g}; use >= 6)"
    return "no significant difference"


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p-value with n non-zero pairs."""
    return 1.0 if n == 0 else min(1.0, 2.0 / 2 ** n)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _nanmedian(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if len(values) else None
