"""``svc-rbf``: an RBF-kernel support vector classifier with Platt-calibrated probabilities.

scikit-learn 1.9 deprecates ``SVC(probability=True)``; the replacement it names is
``CalibratedClassifierCV``, used here with ``method="sigmoid"`` (Platt scaling) and
``ensemble=False``: the sigmoid is fitted on out-of-fold decision values of ``cv`` folds and the
predicting SVC is one fitted on all the data — the scheme of ``probability=True`` (libsvm's internal
5-fold Platt scaling), with scikit-learn's folds. ``ensemble=True`` would predict with ``cv`` SVCs
each trained on a fraction of the data: ``cv`` times slower to predict (already ~0.5 ms a row at
2000 training rows) and each SVC weaker on the few hundred images a head typically sees.

The search's folds call ``fit_scores``: up to ``GRAM_MAX_ROWS`` training rows the same calibrated
model, fitted on the Gram matrix computed once with BLAS (libsvm's own kernel loop was the cost of
every fold: about 10x faster at 4,000 x 1024), whose probabilities ``decision_scores`` gives. They
are the saved model's but for one thing: the calibration folds' SVCs use the ``gamma`` of all the
rows where ``fit``'s compute "scale" on their own two thirds (probabilities within a few 1e-3,
measured). Above ``GRAM_MAX_ROWS`` ``fit_scores`` is ``fit``. Scoring the folds from the bare SVC's
decision values instead (threshold 0, no calibration) misjudged settings on imbalanced data: up to
0.32 macro-F1 below the calibrated model's and 0.04 above it (docs/benchmarks.md).

A ConvergenceWarning from ``max_iter`` is the user's to see; nothing here silences it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC

from automl.heads._base import SEED, Head, register
from automl.params import Interval, Options

_C_RANGE = (1e-1, 1e3)
# "scale" is 1/n_features on standardised data: 5e-4 to 6.5e-4 for 1536-2048-dim embeddings. Above
# ~4x that, a 2048-dim synthetic set's kernel matrix is already the identity (chance-level accuracy).
_GAMMA_RANGE = (1e-5, 2e-3)
# fit_scores computes the Gram matrix up to this many training rows (its float64 matrix: 512 MiB);
# above, libsvm's own kernel loop, whose memory stays its cache.
GRAM_MAX_ROWS = 8192


@register
class SvcRbfHead(Head):
    """RBF SVC on standardised features; ``predict`` is the argmax of the calibrated ``predict_proba``.

    Parameters are SVC's (``C``, ``gamma`` — "scale", "auto" or a float —, ``tol``, ``max_iter``),
    plus ``cv``, the folds of the Platt calibration, and ``random_state``, which shuffles them.
    """

    name = "svc-rbf"
    _constraints: ClassVar[dict] = {
        "C": [Interval(float, 0, closed="neither")],
        "gamma": [Options(("auto", "scale")), Interval(float, 0, closed="neither")],
        "tol": [Interval(float, 0, closed="neither")],
        "max_iter": [Interval(int, 1)],
        "cv": [Interval(int, 2)],
        "random_state": SEED,
    }
    # CalibratedClassifierCV keeps its folds, its SVC, and per fitted SVC one sigmoid per class.
    state_types = Head.state_types + (CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration,
                                      StratifiedKFold, SVC)

    def __init__(self, C=10.0, gamma="scale", tol=0.01, max_iter=1000, cv=3, random_state=0):
        self.C = C
        self.gamma = gamma
        self.tol = tol
        self.max_iter = max_iter
        self.cv = cv
        self.random_state = random_state

    def _svc(self) -> SVC:
        return SVC(kernel="rbf", C=self.C, gamma=self.gamma, tol=self.tol, max_iter=self.max_iter)

    def fit(self, X, y):
        X, y = self._prepare_fit(X, y)
        for name in ("scored_", "train_"):  # a previous fit_scores's model must not answer decision_scores
            self.__dict__.pop(name, None)
        svc = self._svc()
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        self.calibrated_ = CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False).fit(X, y)
        # libsvm's iterations per one-vs-one problem of the predicting SVC; max_iter shows it was cut short.
        self.n_iter_ = int(np.max(self.calibrated_.calibrated_classifiers_[0].estimator.n_iter_))
        return self

    def fit_scores(self, X, y):
        if len(X) > GRAM_MAX_ROWS:
            return self.fit(X, y)
        X, y = self._prepare_fit(X, y)
        self.__dict__.pop("calibrated_", None)  # a previous fit's model must not answer predict_proba
        # The kernel values differ from libsvm's in the last bits only.
        self.train_ = np.asarray(X, dtype=np.float64)
        self.gamma_ = _gamma_value(self.gamma, self.train_)
        svc = SVC(kernel="precomputed", C=self.C, tol=self.tol, max_iter=self.max_iter)
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        gram = rbf_kernel(self.train_, self.train_, gamma=self.gamma_)
        self.scored_ = CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False).fit(gram, y)
        self.n_iter_ = int(np.max(self.scored_.calibrated_classifiers_[0].estimator.n_iter_))
        return self

    def decision_scores(self, X) -> np.ndarray:
        if "calibrated_" in self.__dict__:
            return self.predict_proba(X)
        X = np.asarray(self._prepare_predict(X), dtype=np.float64)
        return self.scored_.predict_proba(rbf_kernel(X, self.train_, gamma=self.gamma_))

    def predict_proba(self, X) -> np.ndarray:
        X = self._prepare_predict(X)
        if not hasattr(self, "calibrated_"):
            raise ValueError("this SvcRbfHead was fitted by fit_scores (on a Gram matrix, for the search's "
                             "folds); call fit for a model that predicts new rows.")
        return self.calibrated_.predict_proba(X)

    @staticmethod
    def search_space(trial) -> dict:
        return suggest_rbf(trial, "svc-rbf", _C_RANGE)

    @classmethod
    def defaults_for_trial(cls) -> dict:
        return {"svc-rbf.gamma_kind": "scale", "svc-rbf.C": 10.0}


def suggest_rbf(trial, head: str, c_range: tuple[float, float]) -> dict:
    """An RBF SVM's ``C`` and ``gamma`` from ``trial`` (parameters named ``<head>.C`` ...). "scale" is a
    choice of its own, so the default stays reachable (and enqueueable) and the float range need not
    guess the embedding's dimension."""
    if trial.suggest_categorical(f"{head}.gamma_kind", ["scale", "value"]) == "scale":
        gamma = "scale"
    else:
        gamma = trial.suggest_float(f"{head}.gamma", *_GAMMA_RANGE, log=True)
    return {"C": trial.suggest_float(f"{head}.C", *c_range, log=True), "gamma": gamma}


def _gamma_value(gamma, X: np.ndarray) -> float:
    """SVC's gamma as a number: "scale" is ``1 / (n_features * X.var())``, "auto" ``1 / n_features``."""
    if gamma == "scale":
        variance = float(X.var())
        return 1.0 / (X.shape[1] * variance) if variance != 0 else 1.0
    if gamma == "auto":
        return 1.0 / X.shape[1]
    return float(gamma)
