"""The terminal's views: plain-text tables, aligned, no colours, safe to paste into an issue.

One function per view; each takes the library's typed records and results (a ``RunRecord``, an
``automl.api.Run``, an ``EmbedResult``, a comparison's record) and returns text, so the CLI only echoes
it; the HTML pages (``automl.report.pages``) reuse its summaries and cells. Metric names, keys and
labels come from the one table in ``automl.evaluate``.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from automl.evaluate import COMPARED, HEADLINE, metric_by_key, metric_by_name

# The runs list's test columns: (header, metric name).
RUNS_METRICS = (("test acc", "accuracy"), ("test F1", "macro-f1"), ("test AUROC", "roc-auc"))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, align: str | None = None) -> str:
    """``align``: one of 'l'/'r' per column; numbers default to right, text to left."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    if align is None:
        align = "".join("r" if rows and all(isinstance(r[i], (int, float)) for r in rows) else "l"
                        for i in range(len(headers)))

    def line(values):
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w)
                         for v, w, a in zip(values, widths, align)).rstrip()

    return "\n".join([line([str(h) for h in headers]), line(["-" * w for w in widths])] + [line(r) for r in cells])


# --- datasets (inspect, and the warnings of every command that loads one) ------------------------


def dataset_summary(ds) -> dict:
    """What ``automl inspect`` reports about a loaded dataset, as one JSON-ready dict."""
    widths = [it.width for it in ds.items]
    heights = [it.height for it in ds.items]
    areas = sorted(ds.items, key=lambda it: it.width * it.height)
    return {
        "dataset": ds.root,
        "layout": ds.layout,
        "classes": ds.classes,
        "counts": ds.counts(),
        "test_split": "given" if "test" in ds.splits else "none: fit holds out a stratified, seeded 20 %",
        "sizes": {
            "smallest": f"{areas[0].width}x{areas[0].height}",
            "median": f"{int(statistics.median(widths))}x{int(statistics.median(heights))}",
            "largest": f"{areas[-1].width}x{areas[-1].height}",
        },
        "modes": dict(Counter(it.mode for it in ds.items).most_common()),
        "duplicate_groups": [[it.path for it in g] for g in ds.duplicates()],
        "train_test_duplicates": [[a.path, b.path] for a, b in ds.leaks()],
        "conflicting_labels": [[f"{it.path} ({ds.classes[it.label]})" for it in g] for g in ds.conflicts()],
        "nonfinite_pixels": list(ds.nonfinite),
        "bad_files": [{"path": b.path, "reason": b.reason} for b in ds.bad_files],
        "ignored_files": ds.ignored_files,
    }


def dataset_text(s: dict) -> str:
    """``dataset_summary`` as text."""
    classes = s["classes"]
    rows = [[split] + [counts[c] for c in classes] + [sum(counts.values())] for split, counts in s["counts"].items()]
    out = [
        f"dataset  {s['dataset']}  ({s['layout']})",
        f"classes  {len(classes)}",
        f"test     {s['test_split']}",
        "",
        table(["split"] + classes + ["total"], rows),
        "",
        f"sizes    smallest {s['sizes']['smallest']}, median {s['sizes']['median']}, largest {s['sizes']['largest']}",
        "modes    " + ", ".join(f"{m} {n}" for m, n in s["modes"].items()),
    ]
    groups = s["duplicate_groups"]
    out.append(f"duplicates  {len(groups)} group(s) of identical images"
               + (f" ({sum(len(g) for g in groups)} images)" if groups else ""))
    for g in groups[:10]:
        out.append("  " + " == ".join(g))
    if len(groups) > 10:
        out.append(f"  ... {len(groups) - 10} more (see --json)")
    for title, key in (("train/test duplicates (the test split is not held out)", "train_test_duplicates"),
                       ("identical images under different classes", "conflicting_labels")):
        if s[key]:
            out.append(f"{title}: {len(s[key])}")
            out.extend("  " + " == ".join(p) for p in s[key])
    if s["nonfinite_pixels"]:
        out.append(f"images with NaN or infinite pixels: {len(s['nonfinite_pixels'])}")
        out.extend(f"  {p}" for p in s["nonfinite_pixels"][:10])
    if s["bad_files"]:
        out.append(f"bad files (skipped): {len(s['bad_files'])}")
        out.extend(f"  {b['path']}: {b['reason']}" for b in s["bad_files"])
    if s["ignored_files"]:
        out.append(f"ignored (not images): {len(s['ignored_files'])}")
        out.extend(f"  {p}" for p in s["ignored_files"][:10])
    return "\n".join(out)


def dataset_notes(ds, *, bad_files: bool = True) -> list[str]:
    """What fit and embed warn about a loaded dataset (each names its first files; `automl inspect`
    lists them all): test images that also sit in train/val, identical images under different
    classes, npz images with NaN or infinite pixels, files ignored for their suffix, and (unless
    ``bad_files`` is false: the caller lists them itself) the undecodable files left out."""
    notes = [leak] if (leak := leak_note(ds)) else []
    if conflicts := ds.conflicts():
        first = " == ".join(f"{it.path} ({ds.classes[it.label]})" for it in conflicts[0])
        notes.append(f"{len(conflicts)} image(s) are filed under two or more classes (identical content), e.g. "
                     f"{first}; keep each under its one true class (`automl inspect` lists them).")
    if ds.nonfinite:
        notes.append(f"{len(ds.nonfinite)} image(s) hold NaN or infinite pixels, e.g. {_first(ds.nonfinite)}; they "
                     "are read with NaN and -inf as the image's lowest value, +inf as its highest. Check the arrays.")
    if ds.ignored_files:
        from automl.images import IMAGE_SUFFIXES

        notes.append(f"ignored {len(ds.ignored_files)} file(s) whose suffix is not an image format automl reads "
                     f"({' '.join(IMAGE_SUFFIXES)}): {_first(ds.ignored_files)}; convert images among them (e.g. to "
                     "PNG) to use them.")
    if bad_files and ds.bad_files:
        notes.append(f"skipped {len(ds.bad_files)} undecodable file(s): " + _first([b.path for b in ds.bad_files]))
    return notes


def _first(paths: Sequence[str], n: int = 5) -> str:
    return ", ".join(paths[:n]) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def leak_note(ds) -> str | None:
    """Test images that also sit in train/val (identical content), if any."""
    leaks = ds.leaks()
    if not leaks:
        return None
    return (f"{len(leaks)} test image(s) also appear in train/val (identical content), e.g. "
            f"{leaks[0][1].path} == {leaks[0][0].path}; run `automl inspect` for the list.")


def skipped_files_text(bad_files: Iterable) -> str:
    """The undecodable files a command left out (``BadFile``s: path and reason)."""
    bad = {b.path: b.reason for b in bad_files}
    return "\n".join([f"skipped {len(bad)} undecodable file(s):"] + [f"  {p}: {reason}" for p, reason in bad.items()])


# --- embeddings, pretraining, predictions ------------------------------------------------------------


def embed_table(results: Sequence) -> str:
    """``automl embed``: per extractor, its dimension and what the cache saved (``EmbedResult``s)."""
    rows = [(r.key.extractor, r.key.precision, r.embeddings.shape[1] if r.embeddings.size else None,
             r.images, r.cache_hits, r.computed, r.images_per_s, round(r.seconds + r.build_seconds, 1))
            for r in results]
    return table(["extractor", "precision", "dim", "images", "cache hits", "computed", "images/s", "seconds"], rows)


def pretrain_text(result, store: Path | str | None = None) -> str:
    """``automl pretrain``: the epochs, the best one, where the extractor went and how to use it
    (``store``: the store folder the user named, repeated in the hint; None for the default)."""
    rec = result.record
    return "\n".join([
        table(["epoch", "loss", "acc", "val loss", "val acc", "lr"],
              [[r["epoch"], round(r["loss"], 4), round(r["accuracy"], 3), round(r["val_loss"], 4),
                round(r["val_accuracy"], 3), f"{r['learning_rate']:.2e}"] for r in rec["epochs"]]),
        f"best epoch {rec['best_epoch']}" + (" (stopped early)" if rec["stopped_early"] else "")
        + f"; saved {result.model_path} and {result.record_path.name}",
        f"use it: automl fit DATA --extractors {result.name}" + (f" --store {store}" if store else ""),
    ])


def predict_table(rows: Sequence[Mapping]) -> str:
    """``automl predict``: each image's class and its probability of every class."""
    classes = list(rows[0]["probabilities"]) if rows else []
    return table(["image", "class"] + [f"p({c})" for c in classes],
                 [[r["path"], r["class"]] + [round(v, 4) for v in r["probabilities"].values()] for r in rows])


# --- runs --------------------------------------------------------------------------------------------


def fit_text(run) -> str:
    """``automl fit``: the embeddings, the run (``run_text``), and with augmentation the original-data
    run beside it (``side_by_side``); ``run`` is the ``automl.api.Run`` that ``automl.fit`` returns."""
    rows = [(r.key.extractor, r.images, r.cache_hits, r.computed, r.images_per_s) for r in run.embeddings]
    lines = ["embeddings (the last row: the test split, with the chosen extractor only)",
             table(["extractor", "images", "cache hits", "computed", "images/s"], rows), "", run_text(run)]
    if run.baseline is not None:
        lines += ["", side_by_side(run.baseline.record, run.record), "",
                  f"saved runs {run.baseline.id} (original data) and {run.id} (augmented): "
                  "`automl show RUN`, `automl predict RUN IMAGES...`"]
    else:
        lines += ["", f"saved run {run.id}: `automl show {run.id}`, `automl predict {run.id} IMAGES...`"]
    # The HTML report of each run (the pipeline warns instead where one failed to render).
    pages = [r.folder / "report.html" for r in (run.baseline, run) if r is not None]
    lines += [f"report: {page}" for page in pages if page.is_file()]
    return "\n".join(lines)


def run_text(run) -> str:
    """Everything about one run (``automl show``): data, split, search, leaderboard, best pipeline and
    its one evaluation on the test split; ``run`` is an ``automl.api.Run`` (its record, metrics and
    leaderboard)."""
    record, test_report = run.record, run.metrics
    metric = record.metric
    trials = ", ".join(f"{n} {state}" for state, n in sorted(record.trials.items()))
    lines = [
        f"run {record.id}" + (f" ({record.name})" if record.name else "") + f"  {run.folder}",
        f"data   {record.data} ({record.layout}); classes {', '.join(record.classes)}",
        f"split  {record.split}; " + ", ".join(f"{s} {sum(c.values())}" for s, c in record.counts.items()),
        f"search {trials}; {record.cv}-fold CV {metric} on the training split; study {record.study['name']}",
        *_augment_lines(record),
        "",
        table(["rank", f"cv {metric}", "pipeline", "reference"],
              [[r["rank"], round(r["cv"], 4), r["pipeline"], r["reference"] or ""] for r in run.leaderboard]),
        "",
        f"best: {record.best.pipeline}",
        f"test split ({test_report['n']} images, evaluated once):",
        table(["metric", "value"], [[m.label, _rounded(test_report[m.key])] for m in map(metric_by_name, HEADLINE)]),
        "",
        table(["class", "precision", "recall", "F1", "support"],
              [[c, round(v["precision"], 4), round(v["recall"], 4), round(v["f1"], 4), v["support"]]
               for c, v in test_report["per_class"].items()]),
        "confusion matrix (rows: true, columns: predicted): " + json.dumps(test_report["confusion_matrix"]),
    ]
    return "\n".join(lines)


def side_by_side(baseline, augmented) -> str:
    """The original-data run and the augmented run (``RunRecord``s) on the same test split, and each difference."""
    aug = augmented.augment
    rows = []
    for m in map(metric_by_name, HEADLINE):
        a, b = baseline.test[m.key], augmented.test[m.key]
        diff = None if a is None or b is None else round(b - a, 4)
        rows.append([m.label, _rounded(a), _rounded(b), diff if diff is None or diff <= 0 else f"+{diff}"])
    lines = [
        f"augmentation {aug['variant']}: {_synthetic_counts(aug)} synthetic ({aug['generated']} generated now, "
        f"{aug['reused']} reused from {aug['folder']}); trained on {augmented.train_images['fitted_on']} images "
        f"({aug['mix']}, real fraction {aug['real_fraction']:g})",
        *[line for line in [filter_summary(aug)] if line],
        f"test split ({augmented.test['n']} images), one seed ({augmented.seed}): for intervals and a "
        "significance test over seeds, run `automl compare` with --repeats",
        table(["metric", "original", "augmented", "difference"], rows),
        f"best pipelines: original {baseline.best.pipeline}; augmented {augmented.best.pipeline}",
    ]
    return "\n".join(lines)


def runs_table(records: Sequence) -> str:
    """``automl runs``: one line per run record (``RunRecord``), in the order given."""
    return table(
        ["run", "name", "data", "augment", "best pipeline", "cv"] + [header for header, _ in RUNS_METRICS],
        [[r.id, r.name or "", _short_path(r.data), (r.augment or {}).get("variant", ""),
          f"{r.best.extractor} + {r.best.head}", round(r.best.cv_score, 4)]
         + [_rounded(r.test[metric_by_name(name).key]) for _, name in RUNS_METRICS] for r in records])


def store_check_text(check) -> str:
    """``automl store check``: one line per problem (its path, what is wrong, the fix or what --repair
    did), the notes, and a summary (a ``StoreCheck``)."""
    lines = []
    for p in check.problems:
        if p.repaired is not None:
            lines.append(f"{p.path}: {p.what}: {p.repaired}")
        elif p.repair_failed is not None:
            lines.append(f"{p.path}: {p.what}: the repair failed ({p.repair_failed}); {p.fix}")
        else:
            lines.append(f"{p.path}: {p.what}. Fix: {p.fix}")
    lines += [f"note: {n}" for n in check.notes]
    looked = ", ".join(f"{n} {kind}" for kind, n in check.checked.items())
    remaining = len(check.remaining)
    repaired = len(check.problems) - remaining
    if not check.problems:
        verdict = "no problems"
    elif not remaining:
        verdict = f"{repaired} problem(s), all repaired"
    else:
        verdict = f"{remaining} problem(s) remain" + (f", {repaired} repaired" if repaired else "")
        if not check.repair and any(p.repair for p in check.remaining):
            verdict += "; `automl store check --repair` fixes what it can"
    lines.append(f"store {check.root}: checked {looked}: {verdict}")
    return "\n".join(lines)


def _augment_lines(record) -> list[str]:
    aug = record.augment
    if not aug:
        return []
    lines = [f"augment {aug['variant']} ({aug['mix']}): {_synthetic_counts(aug)} synthetic images in "
             f"{aug['folder']}; baseline run {record.baseline_run}"]
    return lines + [line for line in [filter_summary(aug)] if line]


def _synthetic_counts(aug: dict) -> str:
    return ", ".join(f"{c} +{n}" for c, n in aug["synthetic_per_class"].items())


def filter_summary(aug: dict) -> str | None:
    """A filtered plan's counts in one line (made, near-copies dropped, kept per class), or None."""
    f = aug.get("filter")
    if not f:
        return None

    def per_class(counts: dict) -> str:
        return ", ".join(f"{c} {n}" for c, n in counts.items())

    kept = f.get("kept_per_class") or f["candidates_per_class"]
    dropped = f" near-copies dropped: {per_class(f['near_copies_dropped'])};" if f["spec"]["drop_copies"] else ""
    return f"filter {f['variant']}: made {per_class(f['made_per_class'])};{dropped} trained on {per_class(kept)}"


# --- comparisons -----------------------------------------------------------------------------------


def comparison_text(record: dict) -> str:
    """``automl compare``: per variant, the median of each metric over the seeds with its interval; per
    variant vs the original, the paired differences, the p-value and the verdict (comparison.json)."""
    labels = record["variants"]
    columns = [metric_by_name(name) for name in COMPARED]
    rows = [[label] + [_median_cell(record["table"][label]["metrics"][m.key]) for m in columns] for label in labels]
    lines = [f"test split, {record['repeats']} repeat(s) (seeds {', '.join(map(str, record['seeds']))}): "
             "median [95 % bootstrap interval of the median]", table(["variant"] + [m.short for m in columns], rows),
             ""]
    key = record["verdict_metric"]
    verdict_label = metric_by_key(key).short
    vrows = []
    for label in labels[1:]:
        entry = record["table"][label]
        p = entry["paired"][key]["p"]
        vrows.append([label] + [_diff_cell(entry["paired"][m.key]) for m in columns]
                     + ["n/a" if p is None else f"{p:.3g}", entry["verdict"]])
    vhead = ["variant vs original"] + [f"Δ {m.short}" for m in columns] + [f"p ({verdict_label})", "verdict"]
    lines += ["paired difference vs original over the same seeds: mean [95 % bootstrap interval]; "
              f"Wilcoxon signed-rank, two-sided; verdict on test {verdict_label}", table(vhead, vrows)]
    return "\n".join(lines)


def _median_cell(m: dict) -> str:
    if m["median"] is None:
        return "n/a"
    lo, hi = m["interval"]
    return f"{m['median']:.3f} [{lo:.3f}, {hi:.3f}]"


def _diff_cell(p: dict) -> str:
    if p["mean"] is None:
        return "n/a"
    lo, hi = p["interval"]
    return f"{p['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


# --- recipes and components ------------------------------------------------------------------------


def recipe_text(path: Path, recipe) -> str:
    """``automl validate`` on a valid recipe: what it will search, on what data, with what augmentation."""
    augment = ""
    if recipe.augment:
        augment = f"; augment {', '.join(v.describe() for v in recipe.augment)}"
        if len(recipe.augment) > 1:
            augment += f" (automl compare, {recipe.repeats} repeats)"
    return f"{path}: valid ({', '.join(recipe.extractors)} x {', '.join(recipe.heads)}; data {recipe.data}{augment})"


def recipe_problems_text(path: Path, problems: Sequence[str]) -> str:
    """``automl validate`` on an invalid recipe: every problem, one a line."""
    return "\n".join([f"{path}: {len(problems)} problem(s)"] + [f"  {line}" for line in problems])


def augmenters_text(registry) -> str:
    """``automl augmenters``: each registered augmenter, its summary, its parameters and defaults."""
    lines = []
    for name in registry:
        cls = registry.get(name)
        lines.append(f"{name}: {cls.summary}")
        lines.extend(f"    {key} = {value!r}" for key, value in cls.defaults.items())
    return "\n".join(lines)


# --- cells -------------------------------------------------------------------------------------------


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _short_path(path: str, width: int = 40) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
