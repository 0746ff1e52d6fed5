"""``svc-rbf``: an RBF-kernel support vector classifier with Platt-calibrated probabilities.

scikit-learn 1.9 deprecates ``SVC(probability=True)``; the replacement it names is
``CalibratedClassifierCV``, used here with ``method="sigmoid"`` (Platt scaling) and
``ensemble=False``: the sigmoid is fitted on out-of-fold decision values of ``cv`` folds and the
predicting SVC is one fitted on all the data — the scheme of ``probability=True`` (libsvm's internal
5-fold Platt scaling), with scikit-learn's folds. ``ensemble=True`` would predict with ``cv`` SVCs
each trained on a fraction of the data: ``cv`` times slower to predict (already ~0.5 ms a row at
2000 training rows) and each SVC weaker on the few hundred images a head typically sees.

The search's folds need no probabilities (its metrics read labels or ranks), so they call
``fit_scores``: the one SVC, no calibration folds, a quarter of ``fit``'s cost, and up to
``GRAM_MAX_ROWS`` training rows on a Gram matrix computed with BLAS; ``decision_scores`` then gives
its one-vs-rest decision values. The refit calls ``fit``, so a saved model's
probabilities are calibrated as always.

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
        self.__dict__.pop("svc_", None)  # a previous fit_scores's model must not answer decision_scores
        svc = self._svc()
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        self.calibrated_ = CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False).fit(X, y)
        # libsvm's iterations per one-vs-one problem of the predicting SVC; max_iter shows it was cut short.
        self.n_iter_ = int(np.max(self.calibrated_.calibrated_classifiers_[0].estimator.n_iter_))
        return self

    def fit_scores(self, X, y):
        X, y = self._prepare_fit(X, y)
        self.__dict__.pop("calibrated_", None)  # nor a previous fit's answer predict_proba
        self.__dict__.pop("train_", None)
        if len(X) <= GRAM_MAX_ROWS:
            # The same RBF SVC on its Gram matrix, computed with BLAS: libsvm's own kernel loop costs
            # max_iter x 2 x n x d scalar operations, the matrix one BLAS product (5-10x faster at a few
            # thousand rows); the kernel values differ from libsvm's in the last bits only.
            self.train_ = np.asarray(X, dtype=np.float64)
            self.gamma_ = _gamma_value(self.gamma, self.train_)
            self.svc_ = SVC(kernel="precomputed", C=self.C, tol=self.tol, max_iter=self.max_iter)
            self.svc_.fit(rbf_kernel(self.train_, self.train_, gamma=self.gamma_), y)
        else:
            self.svc_ = self._svc().fit(X, y)
        self.n_iter_ = int(np.max(self.svc_.n_iter_))
        return self

    def decision_scores(self, X) -> np.ndarray:
        svc = getattr(self, "svc_", None)
        if svc is None:  # fitted by ``fit``: the calibrated model's predicting SVC
            svc = self.calibrated_.calibrated_classifiers_[0].estimator
        X = self._prepare_predict(X)
        if svc.kernel == "precomputed":
            X = rbf_kernel(np.asarray(X, dtype=np.float64), self.train_, gamma=self.gamma_)
        values = svc.decision_function(X)  # "ovr" shape: argmax is SVC.predict
        return np.column_stack([-values, values]) if values.ndim == 1 else values

    def predict_proba(self, X) -> np.ndarray:
        X = self._prepare_predict(X)
        if not hasattr(self, "calibrated_"):
            raise ValueError("this SvcRbfHead was fitted by fit_scores (decision values only, no calibration); "
                             "call fit for probabilities.")
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
