"""Scores: the one table of metrics, the search's CV score and the held-out test report. Sees arrays only.

Every metric is defined once in ``METRIC_TABLE``: its name (the one the CLI and recipes use), its key in
a run's test record, its labels, whether higher is better, and whether it reads class probabilities or
the predicted labels. The recipe, the search, the test report, ``compare`` and every rendering read it.

scikit-learn is imported inside the functions: recipes import ``METRICS`` from here and must stay light.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from automl.errors import ConfigError


@dataclass(frozen=True)
class Metric:
    name: str  # the CLI and recipe name (kebab-case)
    key: str  # its key in a run's test record (metrics.json, run.json "test")
    label: str  # in a test report: "F1 (macro)"
    short: str  # in a column beside others of its kind: "F1"
    compute: Callable[[np.ndarray, np.ndarray, int], float]  # (y_true, proba or labels, n_classes)
    needs_proba: bool = False  # reads class probabilities; else the predicted labels
    higher_is_better: bool = True
    # Reads only how each class's column orders the rows (AUROC): decision values score it exactly as
    # the probabilities of a monotone calibration of them do, so the search needs no calibration for it.
    ranks: bool = False

    def __call__(self, y_true: np.ndarray, proba: np.ndarray) -> float:
        """The metric of ``proba`` (columns: class indices 0..K-1) against ``y_true``."""
        values = proba if self.needs_proba else proba.argmax(axis=1)
        return float(self.compute(y_true, values, proba.shape[1]))

    @property
    def reads_scores(self) -> bool:
        """Whether per-class decision scores do instead of calibrated probabilities: label and rank metrics."""
        return not self.needs_proba or self.ranks

    @property
    def direction(self) -> str:
        """Optuna's word for it: ``maximize`` or ``minimize``."""
        return "maximize" if self.higher_is_better else "minimize"


def _auroc(y_true, proba, n_classes) -> float:
    """Binary: of the second class's column; multi-class: one-vs-rest, macro-averaged — scikit-learn's
    ``multi_class="ovr"``, computed per column so that decision values (which need not sum to 1) score
    too. NaN when a class is absent from ``y_true`` (the score is undefined, not zero)."""
    from sklearn import metrics as skm

    if len(np.unique(y_true)) < n_classes:
        return float("nan")
    if n_classes == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    return float(np.mean([skm.roc_auc_score(y_true == k, proba[:, k]) for k in range(n_classes)]))


def _accuracy(y_true, pred, n_classes) -> float:
    from sklearn import metrics as skm

    return skm.accuracy_score(y_true, pred)


def _balanced_accuracy(y_true, pred, n_classes) -> float:
    from sklearn import metrics as skm

    with warnings.catch_warnings():  # a fold may lack a predicted class; the score stays defined
        warnings.simplefilter("ignore", UserWarning)
        return skm.balanced_accuracy_score(y_true, pred)


def _macro(which: str):
    """Precision, recall or F1 per class index 0..K-1 (0 where undefined), averaged over the classes."""

    def compute(y_true, pred, n_classes) -> float:
        from sklearn import metrics as skm

        scores = skm.precision_recall_fscore_support(y_true, pred, labels=np.arange(n_classes), zero_division=0)
        return scores[("precision", "recall", "f1").index(which)].mean()

    return compute


def _log_loss(y_true, proba, n_classes) -> float:
    from sklearn import metrics as skm

    clipped = np.clip(proba, 1e-15, 1.0)
    return skm.log_loss(y_true, clipped / clipped.sum(1, keepdims=True), labels=np.arange(n_classes))


# In the order a run's test record lists them.
METRIC_TABLE = (
    Metric("accuracy", "accuracy", "accuracy", "accuracy", _accuracy),
    Metric("balanced-accuracy", "balanced_accuracy", "balanced accuracy", "balanced accuracy", _balanced_accuracy),
    Metric("macro-precision", "precision_macro", "precision (macro)", "precision", _macro("precision")),
    Metric("macro-recall", "recall_macro", "recall (macro)", "recall", _macro("recall")),
    Metric("macro-f1", "f1_macro", "F1 (macro)", "F1", _macro("f1")),
    Metric("roc-auc", "auroc", "AUROC", "AUROC", _auroc, needs_proba=True, ranks=True),
    Metric("log-loss", "log_loss", "log loss", "log loss", _log_loss, needs_proba=True, higher_is_better=False),
)
_BY_NAME = {m.name: m for m in METRIC_TABLE}
_BY_KEY = {m.key: m for m in METRIC_TABLE}

# Named selections of the table, by name:
METRICS = ("macro-f1", "accuracy", "balanced-accuracy", "roc-auc")  # what a search may maximise; the default first
HEADLINE = ("accuracy", "macro-precision", "macro-recall", "macro-f1", "roc-auc", "log-loss")  # a test report's
COMPARED = ("accuracy", "macro-precision", "macro-recall", "macro-f1", "roc-auc")  # compare's columns


def metric_by_name(name: str) -> Metric:
    """The table's entry for a CLI/recipe name."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"metric must be one of {', '.join(_BY_NAME)}; got {name!r}.") from None


def metric_by_key(key: str) -> Metric:
    """The table's entry for a test-record key (``f1_macro``)."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise ConfigError(f"a test-record metric key must be one of {', '.join(_BY_KEY)}; got {key!r}.") from None


def score(name: str, y_true: np.ndarray, proba: np.ndarray) -> float:
    """The metric ``name`` of ``proba`` (columns: class indices 0..K-1): the search's CV score."""
    return metric_by_name(name)(y_true, proba)


def full_proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with one column per class index 0..K-1, also when training lacked a class."""
    return _full_columns(model.predict_proba(X), model.classes_, n_classes, fill=0.0)


def full_scores(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``decision_scores`` with one column per class index 0..K-1; a class training lacked scores
    below every other (it is never predicted, and ranks its rows last)."""
    scores = model.decision_scores(X)
    fill = float(np.min(scores)) - 1.0 if scores.size else 0.0
    return _full_columns(scores, model.classes_, n_classes, fill=fill)


def _full_columns(values: np.ndarray, classes, n_classes: int, fill: float) -> np.ndarray:
    if values.shape[1] == n_classes:
        return values
    full = np.full((len(values), n_classes), fill)
    full[:, np.asarray(classes, dtype=int)] = values
    return full


def evaluation_report(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Everything the run records about its one evaluation on the test split: every metric of the
    table, the per-class report and the confusion matrix."""
    from sklearn import metrics as skm

    labels = np.arange(len(classes))
    pred = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        **{m.key: m(y_true, proba) for m in METRIC_TABLE},
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, pred, labels=labels).tolist(),
    }
