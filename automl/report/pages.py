"""One self-contained HTML page per run and per comparison: ``report.html``.

Self-contained means it opens from disk in any browser, offline: the style sheet is inline, every image
is a PNG ``data:`` URI, there is no script and no URL that leaves the file (links to other reports
are relative paths inside the store). ``fit`` and ``compare`` write it at the end, after the run or
comparison is saved; ``automl report`` writes it again, or elsewhere with ``--out``.

The page's tables use the same records, metric table and cells as the terminal's views
(``automl.report.text``); its plots come from ``automl.report.figures``.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import quote

import numpy as np

from automl import __version__
from automl._imports import require
from automl.errors import StoreError
from automl.evaluate import COMPARED, HEADLINE, metric_by_key, metric_by_name
from automl.report.text import _diff_cell, _median_cell, dataset_summary, filter_summary

REPORT = "report.html"
EXAMPLES_PER_CLASS = 4  # training images shown per class (fewer with many classes: EXAMPLES in all)
EXAMPLES = 24
MISTAKES = 8  # most confident wrong test images shown
SYNTHETIC_PER_CLASS = 4  # synthetic images (with their sources) shown per augmented class
THUMB = 72  # thumbnail side in pixels
MAX_CLASSES_SHOWN = 20  # classes with example images; the counts table lists every class


class Html(str):
    """Markup that is already escaped (a table cell passes it through as it is)."""


def esc(value) -> Html:
    """Text for HTML: escaped; a file name's byte that is not UTF-8 (a surrogate escape) shows as \\xNN."""
    text = "" if value is None else str(value)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return Html(html.escape(text))


# --- writing --------------------------------------------------------------------------------------


def write_run_report(folder: Path, *, out: Path | None = None, dataset=None, study=None) -> Path:
    """Render the run in ``folder`` and write the page (default ``folder/report.html``, atomically).
    ``dataset``/``study``: what ``fit`` already holds, reused instead of read again."""
    from automl._files import atomic_write_text

    require("matplotlib", "the HTML report")
    folder = Path(folder)
    out = Path(out) if out is not None else folder / REPORT
    atomic_write_text(out, run_page(folder, out_dir=out.parent, dataset=dataset, study=study))
    return out


def write_comparison_report(folder: Path, *, out: Path | None = None) -> Path:
    """Render the comparison in ``folder`` and write the page (default ``folder/report.html``)."""
    from automl._files import atomic_write_text

    require("matplotlib", "the HTML report")
    folder = Path(folder)
    out = Path(out) if out is not None else folder / REPORT
    atomic_write_text(out, comparison_page(folder, out_dir=out.parent))
    return out


def write_report(ref: str, store=None, out: Path | None = None) -> tuple[str, Path]:
    """``automl report``: the run or comparison ``ref`` (an id, a unique id prefix, or its folder in
    the store) rendered to ``out``; returns ("run" or "comparison", the page's path)."""
    kind, folder = find_report_folder(ref, store)
    if out is not None and Path(out).is_dir():
        raise StoreError(f"--out {out} is a folder; give the page's file name, e.g. --out {Path(out) / 'report.html'}.")
    try:
        if kind == "run":
            return kind, write_run_report(folder, out=out)
        return kind, write_comparison_report(folder, out=out)
    except OSError as exc:
        raise StoreError(f"cannot write the {kind} report to {exc.filename or out or folder}: "
                         f"{exc.strerror or exc}. Pass --out with a writable file.") from exc


def find_report_folder(ref: str, store=None) -> tuple[str, Path]:
    """("run" or "comparison", its folder) for ``ref``; ``StoreError`` naming what the store holds."""
    from automl.runs import find_run
    from automl.store import Store

    store = Store(store)
    path = Path(ref)
    if (path / "comparison.json").is_file():
        if path.parent.resolve() != store.comparisons_dir.resolve():
            raise StoreError(f"comparison folder {ref} is outside the store's comparisons folder "
                             f"{store.comparisons_dir}; give its id with its own store: "
                             f"`automl report --store {path.parent.parent} {path.name}`.")
        return "comparison", store.comparisons_dir / path.name
    runs = _ids(store.runs_dir, "run.json")
    comparisons = _ids(store.comparisons_dir, "comparison.json")
    if "/" in ref or (path / "run.json").is_file() or any(r.startswith(ref) for r in runs):
        return "run", find_run(store.runs_dir, ref)  # its errors name the run folder's problem
    matches = [c for c in comparisons if c.startswith(ref)]
    if len(matches) == 1:
        return "comparison", store.comparisons_dir / matches[0]
    if len(matches) > 1:
        raise StoreError(f"id prefix {ref!r} matches {len(matches)} comparisons ({', '.join(matches)}); give more of it.")
    raise StoreError(f"no run or comparison {ref!r} in the store {store.root} (latest runs: "
                     f"{', '.join(runs[-3:]) or 'none'}; latest comparisons: {', '.join(comparisons[-3:]) or 'none'}). "
                     "`automl runs` lists the runs; pass --store if they live in another store.")


def _ids(folder: Path, record: str) -> list[str]:
    """The names of the folders in ``folder`` that hold ``record`` (run.json, comparison.json), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / record).is_file())


# --- the run page ---------------------------------------------------------------------------------


def run_page(folder: Path, *, out_dir: Path | None = None, dataset=None, study=None) -> str:
    """The run report as one HTML document."""
    from automl.report.evidence import gather_run

    ev = gather_run(Path(folder), dataset=dataset, study=study)
    out_dir = Path(out_dir or folder)
    record = ev.record
    sections = [
        ("dataset", "Dataset", _dataset_section(ev)),
        ("split", "Split and seed", _split_section(ev)),
        ("search", "Search", _search_section(ev)),
        ("best", "Best pipeline", _best_section(ev)),
        ("test", "Test metrics", _test_section(ev)),
        ("mistakes", "Worst mistakes", _mistakes_section(ev)),
    ]
    explained = _explain_section(ev)  # maps `automl explain` wrote into the run's folder, if any
    if explained:
        sections.append(("explain", "What the model looks at", explained))
    if record.augment:
        sections.append(("augmentation", "Augmentation", _augmentation_section(ev, out_dir)))
    sections.append(("reproduce", "Reproduce", _reproduce_section(ev)))
    title = f"Run {record.id}" + (f" ({record.name})" if record.name else "")
    return _document(title, _run_summary(ev, out_dir), sections)


def _run_summary(ev, out_dir: Path) -> str:
    record = ev.record
    metric = metric_by_name(record.metric)
    value = record.test.get(metric.key)
    rows = [("data", record.data), ("created", record.created), ("classes", ", ".join(record.classes)),
            ("best pipeline", record.best.pipeline),
            (f"CV {metric.label}", _num(record.best.cv_score)),
            (f"test {metric.label}", f"{_num(value)} on {record.test.get('n')} test images (evaluated once)")]
    if record.augment:
        rows.insert(1, ("augmentation", record.augment.get("variant")))
    if record.baseline_run:
        rows.append(("original-data run", Html(_run_link(out_dir, ev.folder.parent, record.baseline_run))))
    return _kv(rows)


def _dataset_section(ev) -> str:
    record = ev.record
    parts = [f"<p>{esc(record.data)} ({esc(record.layout)}), {len(record.classes)} classes.</p>"]
    classes = record.classes
    rows = [[split] + [counts.get(c, 0) for c in classes] + [sum(counts.values())]
            for split, counts in record.counts.items()]
    parts.append(_table(["split"] + classes + ["total"], rows, caption="Images per split and class"))
    if ev.dataset is None:
        parts.append(_note(ev.notes.get("dataset", "the dataset was not read.")))
        return "\n".join(parts)
    if "dataset" in ev.notes:
        parts.append(_note(ev.notes["dataset"]))
    s = dataset_summary(ev.dataset)
    facts = [("image sizes", f"smallest {s['sizes']['smallest']}, median {s['sizes']['median']}, "
                             f"largest {s['sizes']['largest']}"),
             ("modes", ", ".join(f"{m} {n}" for m, n in s["modes"].items())),
             ("identical images", f"{len(s['duplicate_groups'])} group(s)"
              + (f" ({sum(len(g) for g in s['duplicate_groups'])} images)" if s["duplicate_groups"] else "")),
             ("test images also in train/val", len(s["train_test_duplicates"])),
             ("identical images under different classes", len(s["conflicting_labels"])),
             ("skipped (undecodable)", len(s["bad_files"])),
             ("ignored (not images)", len(s["ignored_files"]))]
    if s["nonfinite_pixels"]:
        facts.append(("images with NaN or infinite pixels", len(s["nonfinite_pixels"])))
    parts.append(_kv(facts))
    listed = [("test images also in train/val", [" == ".join(pair) for pair in s["train_test_duplicates"]]),
              ("identical images under different classes", [" == ".join(g) for g in s["conflicting_labels"]]),
              ("skipped files", [f"{b['path']}: {b['reason']}" for b in s["bad_files"]])]
    for title, lines in listed:
        if lines:
            parts.append(_details(f"{title} ({len(lines)})", lines))
    parts.append(_examples(ev))
    return "\n".join(parts)


def _examples(ev) -> str:
    from automl.report.evidence import short_name
    from automl.report.figures import thumbnail

    train = [it for it in ev.dataset.items if it.split != "test"]
    shown = ev.record.classes[:MAX_CLASSES_SHOWN]
    per_class = max(1, min(EXAMPLES_PER_CLASS, EXAMPLES // len(shown)))
    rows = []
    for label, name in enumerate(shown):
        members = [it for it in train if it.label == label]
        picks = [members[int(i)] for i in np.linspace(0, len(members) - 1, min(per_class, len(members)))] \
            if members else []
        cells = []
        for it in picks:
            cells.append(_thumb(lambda it=it: thumbnail(it.load(THUMB), f"training image of class {name}: "
                                                        f"{short_name(it.path)}"), short_name(it.path)))
        rows.append(f"<div class='row'><div class='rowlabel'>{esc(name)}</div>{''.join(cells) or _note('none')}</div>")
    more = len(ev.record.classes) - MAX_CLASSES_SHOWN
    tail = f"<p>{more} more classes not shown.</p>" if more > 0 else ""
    return f"<h3>Example training images</h3><div class='grid'>{''.join(rows)}</div>{tail}"


def _thumb(make, caption: str, extra: str = "", *, kind: str = "thumb") -> str:
    """A thumbnail ``figure`` (``make`` returns its image); an image that cannot be read becomes its
    reason, in place."""
    try:
        image = make()
    except Exception as exc:  # an unreadable image costs its thumbnail, not the page
        return f"<figure class='thumb missing'><figcaption>{esc(caption)}: {esc(exc)}</figcaption></figure>"
    return f"<figure class='{kind}'>{_img(image)}<figcaption>{esc(caption)}{extra}</figcaption></figure>"


def _split_section(ev) -> str:
    record = ev.record
    recipe = _recipe_values(ev.recipe_yaml)
    rows = [("test split", record.split),
            ("seed", f"{record.seed} (drives the split where the data has none, the folds, the search, the heads"
                     + (", the augmenter" if record.augment else "") + ")"),
            ("cross-validation", f"{record.cv}-fold, stratified, on the training split; identical images in one fold"),
            ("test images", record.test.get("n"))]
    if recipe.get("test_fraction") is not None and record.split != "given":
        rows.insert(1, ("test fraction", recipe["test_fraction"]))
    if record.train_images:
        t = record.train_images
        rows.append(("training images", f"{t.get('real')} real + {t.get('synthetic')} synthetic; the final model "
                                        f"was fitted on {t.get('fitted_on')}"))
    return _kv(rows)


def _search_section(ev) -> str:
    from automl.report import figures
    from automl.report.evidence import importances

    record = ev.record
    metric = metric_by_name(record.metric)
    trials = ", ".join(f"{n} {state}" for state, n in sorted(record.trials.items()))
    parts = [_kv([("trials", trials), ("scored by", f"{record.cv}-fold CV {metric.label} on the training split"),
                  ("study", f"{record.study.get('name')} in {record.study.get('storage')}")])]
    rows = []
    for r in ev.leaderboard:
        ref = Html(f"<span class='badge'>reference</span> {esc(r['reference'])}") if r.get("reference") else ""
        folds = r.get("fold_scores") or []
        spread = f"{np.std(folds):.3f}" if len(folds) > 1 else ""
        rows.append([r["rank"], r["trial"], _num(r["cv"], 4), spread, r["pipeline"], ref])
    parts.append(_table(["rank", "trial", f"CV {metric.short}", "sd over folds", "pipeline", "reference setup"], rows,
                        caption="Leaderboard: the best trials, and the study's reference setups wherever they rank",
                        numeric=(0, 1, 2, 3)))
    if ev.trials is None:
        parts.append(_note(ev.notes.get("search", "the study was not read.")))
        return "\n".join(parts)
    image = figures.search_figure(ev.trials, metric.short, metric.higher_is_better)
    if image:
        parts.append(_figure(image, "Left: each complete trial's CV score (diamonds: the reference setups run first) "
                                    "and the best so far. Right: how long each trial took; pruned trials stop early."))
    values, notes = importances(ev.trials, record.metric, record.best.head, record.seed)
    image = figures.importance_figure(values)
    if image:
        parts.append(_figure(image, "Parameter importances (fANOVA over the complete trials): how much of the CV "
                                    "score's variance each choice explains."))
    parts += [_note(n) for n in notes]
    return "\n".join(parts)


def _best_section(ev) -> str:
    best = ev.record.best
    metric = metric_by_name(ev.record.metric)
    key = ev.record.extractor_key or {}
    rows = [("pipeline", best.pipeline), ("extractor", best.extractor), ("head", best.head), ("trial", best.trial),
            (f"CV {metric.label}", _num(best.cv_score, 4))]
    if best.fold_scores:
        rows.append(("per fold", ", ".join(_num(v, 4) for v in best.fold_scores)))
    for name in ("weights", "image_size", "precision"):
        if name in key:
            value = key[name] if key[name] or name != "image_size" else "the model file's own input size"
            rows.append((f"extractor {name.replace('_', ' ')}", value))
    params = _table(["parameter", "value"], [[k, v] for k, v in sorted(best.params.items())],
                    caption="The head's parameters") if best.params else ""
    return _kv(rows) + params


def _test_section(ev) -> str:
    from automl.report import figures
    from automl.report.evidence import BOOTSTRAP_DRAWS, weighted_auroc, bootstrap_intervals

    record, metrics, pred = ev.record, ev.metrics, ev.predictions
    classes = record.classes
    intervals = bootstrap_intervals(pred.y, pred.proba, record.seed)
    missing = [c for c in classes if metrics["per_class"].get(c, {}).get("support", 0) == 0]
    rows = []
    for m in map(metric_by_name, HEADLINE):
        value = metrics.get(m.key)
        interval = intervals.get(m.key)
        shown = _num(value, 4)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            shown = "n/a" + (f" (undefined: no test image of class {', '.join(missing)})"
                             if m.key == "auroc" and missing else "")
        rows.append([m.label + (" (the search's metric)" if m.name == record.metric else ""), shown,
                     "" if interval is None or shown.startswith("n/a") else f"[{interval[0]:.3f}, {interval[1]:.3f}]",
                     "higher" if m.higher_is_better else "lower"])
    parts = [_table(["metric", "value", "95 % interval", "better"], rows, numeric=(1,),
                    caption=f"The one evaluation on the test split ({metrics.get('n')} images); intervals: percentile "
                            f"bootstrap over the test images ({BOOTSTRAP_DRAWS} resamples)")]
    ones = np.ones((1, len(pred.y)))
    class_rows = []
    for i, c in enumerate(classes):
        v = metrics["per_class"].get(c, {"precision": 0, "recall": 0, "f1": 0, "support": 0})
        positive = pred.y == i
        auroc = weighted_auroc(ones, pred.proba[:, i], positive)[0] if len(pred.y) else np.nan
        class_rows.append([c, _num(v["precision"], 3), _num(v["recall"], 3), _num(v["f1"], 3), v["support"],
                           "n/a" if np.isnan(auroc) else _num(auroc, 3)])
    parts.append(_table(["class", "precision", "recall", "F1", "support", "AUROC (one-vs-rest)"], class_rows,
                        numeric=(1, 2, 3, 4, 5), caption="Per class"))
    if missing:
        parts.append(_note(f"no test image of class {', '.join(missing)}: its recall and AUROC are undefined "
                           "(shown as 0 and n/a), and so is the macro AUROC."))
    parts.append(_figure(figures.confusion_figure(np.array(metrics["confusion_matrix"]), classes),
                         "Rows: true class; columns: predicted class; an empty cell is 0. Right: each row divided by "
                         "its class's test images, so the diagonal is each class's recall."))
    if len(pred.y):
        image, notes = figures.curves_figure(pred.y, pred.proba, classes)
        parts.append(_figure(image, "ROC and precision-recall: each class against the rest, from its predicted "
                                    "probability. Reliability: test images binned by the probability of the class "
                                    "predicted; a calibrated model lies on the diagonal."))
        parts += [_note(n) for n in notes]
    return "\n".join(parts)


def _mistakes_section(ev) -> str:
    from automl.report.evidence import short_name
    from automl.report.figures import thumbnail

    pred, classes = ev.predictions, ev.record.classes
    predicted = pred.pred
    wrong = np.flatnonzero(predicted != pred.y)
    if not len(wrong):
        return "<p>No test image was misclassified.</p>"
    confidence = pred.proba[wrong, predicted[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")][:MISTAKES]
    cells = []
    for i in worst:
        path = pred.paths[i]
        caption = (f"true {classes[pred.y[i]]}, predicted {classes[predicted[i]]} "
                   f"(p {pred.proba[i, predicted[i]]:.2f})")
        item = ev.item(path)
        if item is None:
            cells.append(f"<figure class='thumb missing'><figcaption>{esc(short_name(path))}: {esc(caption)} "
                         "(image not available)</figcaption></figure>")
            continue
        cells.append(_thumb(lambda item=item, caption=caption: thumbnail(
            item.load(THUMB * 4 // 3), f"test image {short_name(path)}: {caption}"),
            short_name(path), f"<br>{esc(caption)}"))
    intro = (f"<p>{len(wrong)} of {len(pred.y)} test images were misclassified; the {len(worst)} below were "
             "predicted wrong with the highest probability.</p>")
    return intro + f"<div class='thumbs'>{''.join(cells)}</div>"


def _explain_section(ev) -> str:
    """The maps `automl explain` wrote into the run's ``explain/`` (its manifest says what each shows):
    the images a user explained, and the grid of real vs synthetic training images of each augmented
    class (`--synthetic N`). Empty without any."""
    from automl.report.evidence import explain_maps, short_name
    from automl.report.figures import png_image

    entries, note = explain_maps(ev.folder)
    if not entries and not note:
        return ""
    parts = [f"<p>Where in each image the model found the evidence for a class, written by <code>automl explain</code> "
             f"into {esc(ev.folder.name)}/explain/ (yellow: most evidence). {esc(_EXPLAIN_METHODS)}</p>"]
    if note:
        parts.append(_note(note))

    def cell(entry, kind="thumb map"):
        alt = f"{entry['method']} map of class {entry['explained']} over {short_name(str(entry['image']))}"
        caption = ((f"{entry['kind']} " if entry["kind"] != "image" else "")
                   + f"{short_name(str(entry['image']))}: {entry['method']} of {entry['explained']}"
                   + (" (empty)" if entry.get("empty") else ""))
        extra = f"<br>predicted {esc(entry['predicted'])} (p {float(entry['probability']):.2f})"
        return _thumb(lambda: png_image(_map_png(ev.folder / "explain" / entry["png"]), alt), caption, extra, kind=kind)

    images = [e for e in entries if e["kind"] == "image"]
    if images:
        shown = images[:EXPLAIN_MAPS]
        parts.append(f"<h3>Explained images</h3><div class='thumbs'>{''.join(cell(e) for e in shown)}</div>")
        if len(images) > len(shown):
            parts.append(f"<p>{len(images) - len(shown)} more maps in {esc(ev.folder.name)}/explain/.</p>")
    rows = []
    for name in ev.record.classes:
        real = [cell(e) for e in entries if e["kind"] == "real" and e.get("row") == name]
        synthetic = [cell(e, "thumb map synthetic") for e in entries
                     if e["kind"] == "synthetic" and e.get("row") == name]
        if real or synthetic:
            rows.append(f"<div class='row'><div class='rowlabel'>{esc(name)}</div>{''.join(real + synthetic)}</div>")
    if rows:
        parts.append("<h3>Real and synthetic training images with their maps</h3><p>Per augmented class, real training "
                     "images (the synthetic images' sources, where the augmenter used one) and then synthetic images "
                     "(outlined), each mapped for its own class: does the model look at the same things in both?</p>"
                     f"<div class='grid'>{''.join(rows)}</div>")
    return "\n".join(parts)


EXPLAIN_MAPS = 24  # maps of explained images shown; the folder holds them all
MAP_BYTES = 4 << 20  # a map PNG larger than this is not embedded (automl writes them at most 512 px)
_EXPLAIN_METHODS = ("CAM: the linear head's class weights projected onto the extractor's last feature maps (exact); "
                    "Grad-CAM: those maps weighted by the gradient of the head's class score; integrated gradients: "
                    "the score's change from the average training image, shared out over the locations; occlusion: "
                    "the drop in the class's probability when a grey square covers each place.")


def _map_png(path: Path) -> bytes:
    if path.stat().st_size > MAP_BYTES:
        raise ValueError(f"{path.name} is larger than {MAP_BYTES >> 20} MiB; open it from the folder")
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path.name} is not a PNG file")
    return data


def _augmentation_section(ev, out_dir: Path) -> str:
    from automl.augment.clusters import SUMMARY_COLUMNS, read_summary, summary_rows
    from automl.report.evidence import load_png, short_name, synthetic_samples
    from automl.report.figures import thumbnail

    aug = ev.record.augment
    rows = [(k.replace("_", " "), filter_summary(aug) if k == "filter" else
             json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in aug.items()]
    parts = [_kv(rows)]
    clusters = read_summary(aug.get("generator_folder"))  # sampler: cluster (automl.augment.clusters)
    if clusters:
        parts.append(_table(SUMMARY_COLUMNS, summary_rows(clusters), numeric=(2, 3, 4, 5), caption=(
            "Clusters of each class's training images (sampler: cluster): a generator was fine-tuned on each kept "
            "cluster's images nearest its centroid, and the class's synthetic images split over the kept clusters "
            "by size; each image's record names its cluster")))
    if ev.baseline is not None:
        parts.append(_side_by_side(ev.baseline, ev.record))
        parts.append(f"<p>The original-data run: {_run_link(out_dir, ev.folder.parent, ev.baseline.id)}.</p>")
    elif "baseline" in ev.notes:
        parts.append(_note(ev.notes["baseline"]))
    parts.append(_quality_part(ev))
    samples, note = synthetic_samples(ev.record, SYNTHETIC_PER_CLASS)
    if note:
        parts.append(_note(note))
    grid = []
    for name, recs in samples.items():
        cells = []
        for rec in recs:
            sources = rec.get("sources") or []
            for src in sources[:1]:
                item = ev.item(src["path"])
                if item is not None:
                    cells.append(_thumb(lambda item=item: thumbnail(item.load(THUMB),
                                                                    f"real source image {short_name(src['path'])}"),
                                        f"real: {short_name(src['path'])}"))
                else:
                    cells.append(f"<figure class='thumb missing'><figcaption>real: {esc(short_name(src['path']))} "
                                 "(not available)</figcaption></figure>")
            label = f"synthetic #{rec.get('index')}" + (" (from the class as a whole)" if not sources else "")
            cells.append(_thumb(lambda rec=rec: thumbnail(load_png(rec["file"], THUMB),
                                                          f"synthetic image {rec.get('index')} of class {name}"),
                                label, kind="thumb synthetic"))
        grid.append(f"<div class='row'><div class='rowlabel'>{esc(name)}</div>{''.join(cells)}</div>")
    if grid:
        parts.append("<h3>Real and synthetic images per class</h3><p>Each synthetic image (outlined) follows the real "
                     "image it was made from, where the augmenter used one.</p>"
                     f"<div class='grid'>{''.join(grid)}</div>")
    return "\n".join(parts)


def _quality_part(ev) -> str:
    """``quality.json``: the table in the run's extractor's features (the others' folded away), what the
    numbers mean, and the near-copies with the real images they copy."""
    from automl.quality import COLUMNS, copies_lines, explanation, table_rows
    from automl.report.evidence import load_png, run_quality, short_name
    from automl.report.figures import thumbnail

    record, note = run_quality(ev.folder)
    if record is None:
        return "<h3>Synthetic image quality</h3>" + _note(note)
    extractors = sorted(record["extractors"], key=lambda e: e["name"] != ev.record.best.extractor)
    tables = [_table(COLUMNS, table_rows(e), numeric=range(1, len(COLUMNS)),
                     caption=f"Real training images vs synthetic images, in the features of {e['description']}")
              for e in extractors]
    parts = ["<h3>Synthetic image quality</h3>", tables[0]]
    if len(tables) > 1:
        parts.append("<details><summary>The other extractors of the search (FID from different extractors is not "
                     f"comparable)</summary>{''.join(tables[1:])}</details>")
    parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in explanation(record)) + "</ul>")
    parts.append("<p>" + "<br>".join(esc(line) for line in copies_lines(record)) + "</p>")
    cells = []
    for c in [c for c in record["copies"]["images"] if c.get("near_copy")][:COPIES_SHOWN]:
        real = ev.item(c["pixel"]["nearest"])
        name = short_name(c["path"])
        cells.append(_thumb(lambda c=c, name=name: thumbnail(load_png(c["path"], THUMB), f"synthetic image {name}"),
                            f"synthetic: {name}", kind="thumb synthetic"))
        if real is not None:
            cells.append(_thumb(lambda real=real: thumbnail(real.load(THUMB), f"real image {short_name(real.path)}"),
                                f"real: {short_name(real.path)}", f"<br>r = {c['pixel']['similarity']:.3f}"))
    if cells:
        parts.append("<p>Near-copies (outlined) beside the real image each copies:</p>"
                     f"<div class='thumbs'>{''.join(cells)}</div>")
    return "\n".join(parts)


COPIES_SHOWN = 8  # near-copy pairs shown as thumbnails; quality.json lists every synthetic image


def _side_by_side(baseline, augmented) -> str:
    rows = []
    for m in map(metric_by_name, HEADLINE):
        a, b = baseline.test.get(m.key), augmented.test.get(m.key)
        diff = None if a is None or b is None else b - a
        rows.append([m.label, _num(a, 4), _num(b, 4), "n/a" if diff is None else f"{diff:+.4f}"])
    return _table(["metric", "original data", "augmented", "difference"], rows, numeric=(1, 2, 3),
                  caption=f"The same test split, one seed ({augmented.seed}); automl compare --repeats N gives "
                          "intervals and a significance test over seeds")


def _reproduce_section(ev) -> str:
    import matplotlib

    record = ev.record
    versions = {**record.versions}
    rows = [(k, v if v is not None else "not installed") for k, v in versions.items()]
    command = f"automl run {ev.folder / 'recipe.yaml'}"
    return ("<p>Fit it again (the same data, recipe and seed give the same numbers; cached embeddings are reused):</p>"
            f"<pre>{esc(command)}</pre>"
            + _details("recipe.yaml", [ev.recipe_yaml], pre=True, open_=True)
            + _table(["library", "version"], rows, caption="Library versions of the fit")
            + f"<p class='small'>Page rendered by automl {esc(__version__)} with matplotlib "
              f"{esc(matplotlib.__version__)}.</p>")


def _recipe_values(text: str) -> dict:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return value if isinstance(value, dict) else {}


# --- the comparison page --------------------------------------------------------------------------


def comparison_page(folder: Path, *, out_dir: Path | None = None) -> str:
    """The comparison report as one HTML document."""
    from automl.report import figures

    folder = Path(folder)
    out_dir = Path(out_dir or folder)
    path = folder / "comparison.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read the comparison record {path}: {exc}. Run the comparison again.") from exc
    record.setdefault("id", folder.name)
    labels = record["variants"]
    key = record["verdict_metric"]
    verdict_metric = metric_by_key(key)
    columns = [metric_by_name(name) for name in COMPARED]
    if verdict_metric not in columns:
        columns.append(verdict_metric)
    runs_dir = folder.parent.parent / "runs"

    medians = _table(["variant"] + [m.short for m in columns],
                     [[label] + [_median_cell(record["table"][label]["metrics"][m.key]) for m in columns]
                      for label in labels], numeric=tuple(range(1, len(columns) + 1)),
                     caption=f"Test split, {record['repeats']} seed(s) per variant: median [95 % bootstrap interval "
                             "of the median]")
    prows = []
    for label in labels[1:]:
        entry = record["table"][label]
        p = entry["paired"][key]["p"]
        prows.append([label] + [_diff_cell(entry["paired"][m.key]) for m in columns]
                     + ["n/a" if p is None else f"{p:.3g}", Html(f"<strong>{esc(entry['verdict'])}</strong>")])
    paired = _table(["variant vs original"] + [f"Δ {m.short}" for m in columns]
                    + [f"p ({verdict_metric.short})", "verdict"], prows, numeric=tuple(range(1, len(columns) + 2)),
                    caption="Paired difference from the original over the same seeds: mean [95 % bootstrap "
                            f"interval]; Wilcoxon signed-rank, two-sided; the verdict reads test {verdict_metric.label}")
    ordered = [verdict_metric] + [m for m in columns if m is not verdict_metric]
    forest = figures.forest_figure(record, ordered)
    results = medians + paired
    if record.get("min_p", 0) >= 0.05:
        results += _note(f"with {record['repeats']} repeats no Wilcoxon p-value can be below 0.05 (the smallest is "
                         f"{record['min_p']:.3g}); use --repeats 6 or more for a verdict other than no difference.")
    if forest:
        results += _figure(forest, "Each variant's mean paired difference from the original per metric, with its "
                                   f"95 % bootstrap interval; the verdict (on {verdict_metric.short}) is in brackets. "
                                   "An interval that crosses 0 is no evidence either way.")
    seeds = _figure(figures.seeds_figure(record, verdict_metric),
                    "Each dot is one seed's run; grey lines join the runs of one seed (they share the split, "
                    "folds and budget). Right: each variant's difference from the original on that seed.")
    seed_rows = []
    for s, seed in enumerate(record["seeds"]):
        row = [seed]
        for label in labels:
            entry = record["table"][label]
            value = entry["metrics"][key]["values"][s] if s < len(entry["metrics"][key]["values"]) else None
            run = entry["runs"][s] if s < len(entry["runs"]) else None
            cell = esc(_num(value, 4))
            if run:
                cell = Html(f"{cell}<br>{_run_link(out_dir, runs_dir, run)}")
            row.append(cell)
        seed_rows.append(row)
    seeds += _table(["seed"] + labels, seed_rows, numeric=tuple(range(1, len(labels) + 1)),
                    caption=f"Test {verdict_metric.label} per seed, and each run's report")
    best_rows = [[label, seed, record["table"][label]["best"][s]]
                 for label in labels for s, seed in enumerate(record["seeds"])
                 if s < len(record["table"][label]["best"])]
    runs = _table(["variant", "seed", "best pipeline"], best_rows, caption="The pipeline each run's search chose")
    sections = [("results", "Results", results), ("seeds", "Per seed", seeds), ("runs", "Runs", runs),
                ("reproduce", "Reproduce", _comparison_reproduce(record, folder, runs_dir))]
    summary = _kv([("data", record.get("data")), ("metric of the verdict", f"test {verdict_metric.label}"),
                   ("seeds", ", ".join(map(str, record["seeds"]))), ("time", f"{record.get('seconds')} s")]
                  + [(f"verdict: {label}", Html(f"<strong>{esc(record['table'][label]['verdict'])}</strong>"))
                     for label in labels[1:]])
    return _document(f"Comparison {record['id']}", summary, sections)


def _run_link(out_dir: Path, runs_dir: Path, run: str) -> str:
    page = runs_dir / run / REPORT
    if page.is_file():
        return _link(out_dir, page, f"run {run}")
    return f"run {esc(run)} <span class='small'>(no report: <code>automl report {esc(run)}</code>)</span>"


def _comparison_reproduce(record: dict, folder: Path, runs_dir: Path) -> str:
    import yaml

    recipe = record.get("recipe") or {}
    text = yaml.safe_dump(recipe, sort_keys=False) if recipe else ""
    versions = {}
    first = next((r for label in record["variants"] for r in record["table"][label]["runs"]), None)
    if first:
        try:
            versions = json.loads((runs_dir / first / "run.json").read_text()).get("versions", {})
        except (OSError, ValueError):
            versions = {}
    parts = ["<p>Save the recipe below as <code>compare.yaml</code> and run:</p>",
             "<pre>automl compare --recipe compare.yaml</pre>",
             _details("the comparison's recipe", [text], pre=True, open_=True)]
    if versions:
        parts.append(_table(["library", "version"], [[k, v or "not installed"] for k, v in versions.items()],
                            caption="Library versions of the runs"))
    parts.append(f"<p class='small'>comparison.json in {esc(folder)}; page rendered by automl {esc(__version__)}.</p>")
    return "\n".join(parts)


# --- building blocks ------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:#1a1a1a;background:#fff}
header,main,nav,footer{max-width:1100px;margin:0 auto;padding:0 20px}
header{padding-top:18px}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.3em;margin:1.6em 0 .5em;padding-top:.4em;border-top:2px solid #0072B2}
h3{font-size:1.05em;margin:1.2em 0 .4em}
nav ul{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px}
a{color:#0059b3}
.scroll{overflow-x:auto;max-width:100%;margin:.6em 0}
table{border-collapse:collapse;font-size:.92em}
p.cap{font-weight:600;margin:1em 0 .2em}
th,td{border:1px solid #d0d0d0;padding:3px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{width:16em;font-weight:600;background:#f7f7f7}
.badge{display:inline-block;background:#E69F00;color:#000;border-radius:3px;padding:0 5px;font-size:.85em;
font-weight:600}
.note{background:#fff8e1;border-left:4px solid #E69F00;padding:6px 10px;margin:.6em 0}
figure{margin:1em 0}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.9em;color:#333;margin-top:4px}
.grid .row{display:flex;flex-wrap:wrap;align-items:flex-start;gap:8px;margin:6px 0}
.rowlabel{width:9em;font-weight:600;overflow-wrap:anywhere}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}
figure.thumb{margin:0;width:104px}figure.thumb img{image-rendering:pixelated;width:96px;border:1px solid #ccc}
figure.thumb figcaption{font-size:.75em;overflow-wrap:anywhere}
figure.synthetic img{border:3px solid #0072B2}
figure.missing{width:104px;font-size:.75em;color:#555}
figure.map{width:168px}figure.map img{width:160px;image-rendering:auto}
pre{background:#f6f6f6;padding:8px 10px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85em}
code{overflow-wrap:anywhere}
details summary{cursor:pointer;font-weight:600}
.small{font-size:.85em;color:#444}
footer{color:#555;font-size:.85em;padding:30px 20px}
"""


def _document(title: str, summary: str, sections: Sequence[tuple[str, str, str]]) -> str:
    nav = "".join(f"<li><a href='#{sid}'>{esc(name)}</a></li>" for sid, name, _ in sections)
    body = "\n".join(f"<section id='{sid}'><h2>{esc(name)}</h2>\n{content}\n</section>" for sid, name, content in sections)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
            f"<title>{esc(title)} · automl report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1>{summary}</header>\n<nav aria-label='sections'><ul>{nav}</ul></nav>\n"
            f"<main>\n{body}\n</main>\n<footer>automl {esc(__version__)} · rendered {esc(stamp)} · a self-contained page: "
            "it loads nothing from the network.</footer>\n</body>\n</html>\n")


def _table(headers: Sequence, rows: Iterable[Sequence], *, caption: str = "", numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th scope='col'>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = " class='num'" if i in numeric or isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{v if isinstance(v, Html) else esc(_plain(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    # The caption sits above the table, not in it: a <caption> is as narrow as its table.
    cap = f"<p class='cap'>{esc(caption)}</p>" if caption else ""
    return f"{cap}<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _kv(rows: Sequence[tuple]) -> str:
    body = "".join(f"<tr><th scope='row'>{esc(k)}</th><td>{v if isinstance(v, Html) else esc(_plain(v))}</td></tr>"
                   for k, v in rows)
    return f"<div class='scroll'><table class='kv'><tbody>{body}</tbody></table></div>"


def _plain(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return _num(v)
    return str(v)


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    return f"{float(v):.{digits}f}"


def _note(text: str) -> str:
    return f"<p class='note'>{esc(text)}</p>"


def _details(summary: str, lines: Sequence[str], *, pre: bool = False, open_: bool = False) -> str:
    inner = f"<pre>{esc(chr(10).join(lines))}</pre>" if pre else \
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines[:200]) + "</ul>" \
        + (f"<p>{len(lines) - 200} more.</p>" if len(lines) > 200 else "")
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{inner}</details>"


def _img(image) -> str:
    return f"<img src='{image.uri}' width='{image.width}' height='{image.height}' alt='{esc(image.alt)}'>"


def _figure(image, caption: str) -> str:
    return f"<figure>{_img(image)}<figcaption>{esc(caption)}</figcaption></figure>"


def _link(out_dir: Path, target: Path, text: str) -> str:
    """A relative link from the page's folder to ``target`` (another report in the store)."""
    rel = os.path.relpath(target, out_dir).replace(os.sep, "/")
    return f"<a href='{quote(rel)}'>{esc(text)}</a>"
