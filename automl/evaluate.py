"""Scores: the search's CV metric and the held-out test report. Sees arrays only.

scikit-learn is imported inside the functions: recipes import ``METRICS`` from here and must stay light.
"""

from __future__ import annotations

import warnings

import numpy as np

from automl.errors import ConfigError

METRICS = ("macro-f1", "accuracy", "balanced-accuracy", "roc-auc")


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Binary: of the second class's probability; multi-class: one-vs-rest, macro-averaged.
    NaN when a class is absent from ``y_true`` (the score is undefined, not zero)."""
    from sklearn import metrics as skm

    n_classes = proba.shape[1]
    if len(np.unique(y_true)) < n_classes:
        return float("nan")
    if n_classes == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    return float(skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=np.arange(n_classes)))


def score(metric: str, y_true: np.ndarray, proba: np.ndarray) -> float:
    """The search objective (higher is better); ``proba`` columns are class indices 0..K-1."""
    from sklearn import metrics as skm

    pred = proba.argmax(axis=1)
    if metric == "accuracy":
        return float(skm.accuracy_score(y_true, pred))
    if metric == "balanced-accuracy":
        with warnings.catch_warnings():  # a fold may lack a predicted class; the score stays defined
            warnings.simplefilter("ignore", UserWarning)
            return float(skm.balanced_accuracy_score(y_true, pred))
    if metric == "macro-f1":
        return float(skm.f1_score(y_true, pred, average="macro", labels=np.arange(proba.shape[1]),
                                  zero_division=0))
    if metric == "roc-auc":
        return auroc(y_true, proba)
    raise ConfigError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}.")


def full_proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with one column per class index 0..K-1, also when training lacked a class."""
    proba = model.predict_proba(X)
    if proba.shape[1] == n_classes:
        return proba
    full = np.zeros((len(X), n_classes))
    full[:, np.asarray(model.classes_, dtype=int)] = proba
    return full


def evaluation_report(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Everything the run records about its one evaluation on the test split."""
    from sklearn import metrics as skm

    labels = np.arange(len(classes))
    pred = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0)
    clipped = np.clip(proba, 1e-15, 1.0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, pred)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "auroc": auroc(y_true, proba),
        "log_loss": float(skm.log_loss(y_true, clipped / clipped.sum(1, keepdims=True), labels=labels)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, pred, labels=labels).tolist(),
    }


HEADLINE = (("accuracy", "accuracy"), ("precision (macro)", "precision_macro"), ("recall (macro)", "recall_macro"),
            ("F1 (macro)", "f1_macro"), ("AUROC", "auroc"), ("log loss", "log_loss"))
