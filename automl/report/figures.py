"""The plots of the HTML reports, drawn by matplotlib (its Agg renderer, on figures that never touch
pyplot's global state, so a notebook's backend is left alone) and scikit-learn's display classes, and
returned as PNG ``data:`` URIs. One figure renders at a time: its style is matplotlib's global rcParams.

matplotlib is imported inside the functions: ``import automl`` and ``automl --help`` never load it.
Cheap by design, since every fit renders a report: small figures at 100 dpi, fixed margins instead
of a constrained layout or a tight bounding box (each measures every label in an extra pass), a
handful of figures per page.

Colours: the Okabe-Ito palette (distinguishable with every common colour-vision deficiency), with
line styles and markers on top where colour alone would carry a meaning; viridis for matrices.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

DPI = 100
# Okabe & Ito (2008), yellow last: it is faint on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", ":", "-.")
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "figure.dpi": DPI, "savefig.dpi": DPI}
UNIT_TICKS = (0, 0.25, 0.5, 0.75, 1)  # a [0, 1] axis: five labels (each tick costs a text to lay out)
STATE_COLOURS = {"complete": PALETTE[0], "pruned": PALETTE[1], "fail": PALETTE[3], "running": PALETTE[5],
                 "waiting": PALETTE[6]}


@dataclass(frozen=True)
class Image:
    """A PNG as a ``data:`` URI, its size in pixels, and its alternative text."""

    uri: str
    width: int
    height: int
    alt: str


def png_image(data: bytes, alt: str) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:
        width, height = im.size
    return Image("data:image/png;base64," + base64.b64encode(data).decode("ascii"), width, height, alt)


def thumbnail(pixels: np.ndarray, alt: str) -> Image:
    """A (H, W, 3) uint8 array as a PNG image."""
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return png_image(buffer.getvalue(), alt)


def style(i: int) -> dict:
    """Colour and line style of series ``i``: the palette's seven strong colours, then dashed, dotted..."""
    return {"color": PALETTE[i % 7], "linestyle": LINESTYLES[(i // 7) % len(LINESTYLES)]}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # a figure of its own: pyplot's state and backend stay untouched

    return Figure(figsize=(width, height), dpi=DPI)


def _margins(fig, *, left: float = 0.75, right: float = 0.2, bottom: float = 0.6, top: float = 0.4,
             gap: float = 0.8, columns: int = 1) -> None:
    """Fixed margins in inches (a constrained layout measures every label first: about half the cost
    of a figure). ``gap``: the space between ``columns`` side-by-side axes."""
    width, height = fig.get_size_inches()
    usable = width - left - right
    axis = (usable - (columns - 1) * gap) / columns
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap / axis if columns > 1 else 0.2)


def _label_inches(labels: Sequence[str], fontsize: float = 8) -> float:
    """About how wide the longest of ``labels`` is, in inches."""
    return max((len(str(label)) for label in labels), default=1) * fontsize * 0.6 / 72


def _render(fig, alt: str) -> Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})  # Agg, for a .png
    return png_image(buffer.getvalue(), alt)


_RC_LOCK = threading.Lock()  # rc_context sets matplotlib's global rcParams: one figure at a time (service threads)


def _styled(draw):
    """Run ``draw`` (which builds and renders a figure) under the report's rc style."""

    def wrapper(*args, **kwargs):
        import matplotlib

        with _RC_LOCK, matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    wrapper.__doc__, wrapper.__name__ = draw.__doc__, draw.__name__
    return wrapper


# --- the search ------------------------------------------------------------------------------------


@_styled
def search_figure(trials: Sequence, metric_label: str, higher_is_better: bool) -> Image | None:
    """Optimisation history (complete trials' CV scores, reference setups marked, best so far) and
    the time each trial took, coloured by its outcome."""
    from optuna.trial import TrialState

    if not trials:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9.6, 3.2)
    history, times = fig.subplots(1, 2)
    _margins(fig, left=0.7, gap=0.8, columns=2)
    for ax in (history, times):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    searched = [t for t in done if not t.user_attrs.get("reference")]
    refs = [t for t in done if t.user_attrs.get("reference")]
    if searched:
        history.scatter([t.number for t in searched], [t.value for t in searched], s=18, color=PALETTE[0],
                        label="searched trial", zorder=3)
    if refs:
        history.scatter([t.number for t in refs], [t.value for t in refs], s=42, marker="D", color=PALETTE[1],
                        edgecolor="black", linewidth=0.6, label="reference setup", zorder=4)
    if done:
        ordered = sorted(done, key=lambda t: t.number)
        values = np.array([t.value for t in ordered])
        best = np.maximum.accumulate(values) if higher_is_better else np.minimum.accumulate(values)
        history.step([t.number for t in ordered], best, where="post", color=PALETTE[3], linewidth=1.5,
                     label="best so far")
        history.legend(loc="lower right" if higher_is_better else "upper right")
    history.set(title="Optimisation history", xlabel="trial number", ylabel=f"CV {metric_label}")

    numbers, seconds, colours = [], [], []
    for t in trials:
        if t.datetime_start is None or t.datetime_complete is None:
            continue
        numbers.append(t.number)
        seconds.append((t.datetime_complete - t.datetime_start).total_seconds())
        colours.append(STATE_COLOURS.get(_state(t), PALETTE[6]))
    times.bar(numbers, seconds, color=colours, width=0.8)
    from matplotlib.patches import Patch

    shown = sorted({_state(t) for t in trials if t.datetime_complete is not None})
    if shown:
        times.legend(handles=[Patch(color=STATE_COLOURS.get(s, PALETTE[6]), label=s) for s in shown],
                     loc="upper right")
    times.set(title="Time per trial", xlabel="trial number", ylabel="seconds")
    alt = (f"Left: CV {metric_label} of {len(done)} complete trials by trial number, reference setups as diamonds, "
           f"and the best so far. Right: seconds per trial, coloured by outcome ({', '.join(shown) or 'none'}).")
    return _render(fig, alt)


def _state(trial) -> str:
    return trial.state.name.lower()


@_styled
def importance_figure(importances: dict[str, dict[str, float]]) -> Image | None:
    """One horizontal bar chart per group of parameters (fANOVA importances, summing to 1)."""
    if not importances:
        return None
    names = [n for values in importances.values() for n in values]
    label = _label_inches(names) + 0.2
    fig = _figure(9.6 if len(importances) > 1 else 5.5, 1.1 + 0.3 * max(len(v) for v in importances.values()))
    axes = np.atleast_1d(fig.subplots(1, len(importances)))
    _margins(fig, left=label, gap=label + 0.3, bottom=0.55, top=0.35, columns=len(importances))
    for ax, (title, values) in zip(axes, importances.items()):
        names = sorted(values, key=values.get)
        ax.barh(names, [values[n] for n in names], color=PALETTE[0])
        ax.set(title=title, xlabel="importance (fANOVA)", xlim=(0, 1))
        ax.grid(axis="y", visible=False)
    alt = "Parameter importances: " + "; ".join(
        f"{title}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(values.items(), key=lambda kv: -kv[1]))
        for title, values in importances.items())
    return _render(fig, alt)


# --- the test split --------------------------------------------------------------------------------


@_styled
def confusion_figure(matrix: np.ndarray, classes: Sequence[str]) -> Image:
    """The confusion matrix as counts and row-normalised (a class without test images: n/a)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = np.asarray(matrix, dtype=float)
    k = len(classes)
    side = min(4.2, max(2.4, 1.2 + 0.36 * k))  # one matrix, in inches
    rotation = "vertical" if k > 4 or max(len(c) for c in classes) > 6 else "horizontal"
    label = _label_inches(classes) + 0.55  # tick labels and the axis label
    below = (_label_inches(classes) if rotation == "vertical" else 0.15) + 0.55
    fig = _figure(2 * side + 2 * label + 0.3, side + below + 0.4)
    counts_ax, rows_ax = fig.subplots(1, 2)
    _margins(fig, left=label, right=0.15, bottom=below, top=0.4, gap=label, columns=2)
    support = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, support, out=np.full_like(matrix, np.nan), where=support > 0)
    fontsize = 8 if k <= 8 else 6
    for ax, values, fmt, title in ((counts_ax, matrix.astype(int), "d", "Confusion matrix (counts)"),
                                   (rows_ax, normalised, ".2f", "Row-normalised (recall)")):
        display = ConfusionMatrixDisplay(values, display_labels=list(classes))
        display.plot(ax=ax, cmap="viridis", values_format=fmt, colorbar=False, xticks_rotation=rotation,
                     include_values=k <= 20, text_kw={"fontsize": fontsize})
        ax.set(title=title, xlabel="predicted class", ylabel="true class")
        ax.grid(False)
        if display.text_ is not None:
            cells = values.astype(float)
            for i, j in zip(*np.nonzero(cells == 0)):  # empty cells read as 0, and skip a text to draw each
                display.text_[i, j].set_visible(False)
            for i, j in zip(*np.nonzero(~np.isfinite(cells))):
                display.text_[i, j].set_text("n/a")
                display.text_[i, j].set_color("black")
    alt = (f"Confusion matrix of the test split over {k} classes, as counts and as fractions of each true class; "
           "empty cells are 0.")
    return _render(fig, alt)


@_styled
def curves_figure(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> tuple[Image, list[str]]:
    """ROC and precision-recall curves per class (one-vs-rest) and a reliability curve of the
    predicted class's probability; notes name the classes whose curves are undefined.

    The points come from scikit-learn's curve functions, drawn as the display classes draw them
    (precision-recall as steps); the displays themselves build and drop a legend per class, which
    cost more than the rest of the figure at ten classes."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fig = _figure(9.6, 3.4)
    roc, pr, rel = fig.subplots(1, 3)
    _margins(fig, left=0.6, right=0.15, gap=0.75, columns=3)
    notes, drawn = [], 0
    for i, name in enumerate(classes):
        positive = y == i
        if not positive.any() or positive.all():
            notes.append(f"class {name}: no {'positive' if not positive.any() else 'negative'} test image, so its "
                         "ROC and precision-recall curves are undefined and left out.")
            continue
        fpr, tpr, _ = roc_curve(positive, proba[:, i])
        precision, recall, _ = precision_recall_curve(positive, proba[:, i])
        line = {**style(i), "linewidth": 1.4}
        roc.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(positive, proba[:, i]):.2f})", **line)
        pr.plot(recall, precision, drawstyle="steps-post",
                label=f"{name} (AP {average_precision_score(positive, proba[:, i]):.2f})", **line)
        drawn += 1
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    roc.set(title="ROC per class (one-vs-rest)", xlabel="false positive rate", ylabel="true positive rate")
    pr.set(title="Precision-recall per class", xlabel="recall", ylabel="precision")
    if drawn <= 12:
        roc.legend(loc="lower right", fontsize=7 if drawn > 5 else 8)
        if drawn:
            pr.legend(loc="lower left", fontsize=7 if drawn > 5 else 8)
    else:
        notes.append(f"{drawn} classes: the curves' legends are left out; the per-class table has each class's scores.")

    correct = (proba.argmax(axis=1) == y).astype(int)
    confidence = proba.max(axis=1)
    ece = expected_calibration_error(correct, confidence)
    rel.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1, label="perfectly calibrated")
    if len(y):
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=10, strategy="uniform", pos_label=1)
        rel.plot(mean_confidence, accuracy, marker="o", color=PALETTE[0], label="predicted class")
    rel.set(title=f"Reliability (ECE {ece:.3f})" if ece is not None else "Reliability",
            xlabel="confidence (p of the predicted class)", ylabel="accuracy (fraction right)")
    rel.legend(loc="upper left")
    for ax in (roc, pr, rel):
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xticks=UNIT_TICKS, yticks=UNIT_TICKS)
    alt = (f"ROC and precision-recall curves for {drawn} of {len(classes)} classes, and a reliability curve of the "
           f"predicted class's probability against the fraction predicted right"
           + (f" (expected calibration error {ece:.3f})." if ece is not None else "."))
    return _render(fig, alt), notes


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> float | None:
    """The mean gap between confidence and accuracy over ``bins`` equal-width bins, weighted by their images."""
    if len(correct) == 0:
        return None
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).sum()
            for b in range(bins) if (which == b).any()]
    return float(sum(gaps) / len(correct))


# --- comparisons -----------------------------------------------------------------------------------


@_styled
def forest_figure(record: dict, metrics: Sequence) -> Image | None:
    """Each variant's mean paired difference from the original with its 95 % interval, per metric
    (``metrics``: ``automl.evaluate`` Metrics, the verdict's first), verdicts written beside."""
    labels = record["variants"][1:]
    if not labels:
        return None
    rows = []  # (metric, label, mean, lo, hi, verdict or "")
    for m in metrics:
        for label in labels:
            entry = record["table"][label]
            paired = entry["paired"].get(m.key)
            if paired is None:
                continue
            lo, hi = paired["interval"]
            verdict = entry["verdict"] if m.key == record["verdict_metric"] else ""
            rows.append((m, label, paired["mean"], lo, hi, verdict))
    ticks = [f"{m.short}: {label}" + (f"  [{verdict}]" if verdict else "") for m, label, *_, verdict in rows]
    fig = _figure(9.6, 1.0 + 0.3 * len(rows))
    ax = fig.subplots()
    _margins(fig, left=min(_label_inches(ticks) + 0.2, 5.0), bottom=0.55, top=0.35)
    y = np.arange(len(rows))[::-1]
    for pos, (m, label, mean, lo, hi, verdict) in zip(y, rows):
        i = labels.index(label)
        if mean is None:
            ax.text(0, pos, "n/a", va="center", ha="center", fontsize=8)
            continue
        ax.errorbar(mean, pos, xerr=[[mean - lo], [hi - mean]], fmt="o" if verdict else "s", color=PALETTE[i % 7],
                    markersize=6 if verdict else 4, capsize=3, linewidth=1.6 if verdict else 1)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(y, ticks)
    ax.set(title="Paired difference from the original (mean over seeds, 95 % bootstrap interval)",
           xlabel="variant minus original (test split)")
    ax.grid(axis="y", visible=False)
    alt = "Forest plot of each variant's paired difference from the original: " + "; ".join(
        f"{m.short} {label}: {'n/a' if mean is None else f'{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]'}"
        + (f", verdict {verdict}" if verdict else "") for m, label, mean, lo, hi, verdict in rows)
    return _render(fig, alt)


@_styled
def seeds_figure(record: dict, metric) -> Image:
    """Per seed: each variant's test score (lines join one seed's runs), and its difference from the
    original's, so the spread behind each median is visible."""
    labels = record["variants"]
    seeds = record["seeds"]
    values = {label: record["table"][label]["metrics"][metric.key]["values"] for label in labels}
    fig = _figure(9.6, 3.4)
    scores, diffs = fig.subplots(1, 2)
    _margins(fig, left=0.75, bottom=0.75, gap=0.9, columns=2)
    x = np.arange(len(labels))
    # Each seed a little to the side, in seed order, so equal scores stay visible as separate points.
    shift = (np.arange(len(seeds)) - (len(seeds) - 1) / 2) * min(0.05, 0.4 / max(len(seeds), 1))
    for s, seed in enumerate(seeds):
        ys = [values[label][s] if s < len(values[label]) else None for label in labels]
        ys = [np.nan if v is None else v for v in ys]
        scores.plot(x + shift[s], ys, color="grey", alpha=0.4, linewidth=0.8, zorder=1)
    for i, label in enumerate(labels):
        vs = [np.nan if v is None else v for v in values[label]]
        scores.scatter(i + shift[:len(vs)], vs, color=PALETTE[i % 7], s=22, zorder=3)
        median = record["table"][label]["metrics"][metric.key]["median"]
        if median is not None:
            scores.hlines(median, i - 0.25, i + 0.25, color="black", linewidth=2, zorder=4)
    scores.set_xticks(x, [_wrap(label) for label in labels])
    scores.set_xlim(-0.5, len(labels) - 0.5)
    scores.set(title=f"Test {metric.short} per seed (bar: median)", ylabel=f"test {metric.label}")
    base = values[labels[0]]
    for i, label in enumerate(labels[1:], 1):
        d = [np.nan if a is None or b is None else a - b for a, b in zip(values[label], base)]
        diffs.scatter(i - 1 + shift[:len(d)], d, color=PALETTE[i % 7], s=22, zorder=3)
    diffs.axhline(0, color="black", linewidth=1)
    diffs.set_xticks(np.arange(len(labels) - 1), [_wrap(label) for label in labels[1:]])
    diffs.set_xlim(-0.5, max(len(labels) - 1, 1) - 0.5)
    diffs.set(title=f"{metric.short}: variant minus original, per seed", ylabel=f"difference in {metric.label}")
    if len(labels) == 1:
        diffs.set_visible(False)
    alt = (f"Test {metric.label} of each of {len(seeds)} seeds per variant, joined by seed, and each variant's "
           "per-seed difference from the original.")
    return _render(fig, alt)


def _wrap(label: str, width: int = 18) -> str:
    words, lines = label.split(), [""]
    for w in words:
        if lines[-1] and len(lines[-1]) + 1 + len(w) > width:
            lines.append(w)
        else:
            lines[-1] = f"{lines[-1]} {w}".strip()
    return "\n".join(lines)
