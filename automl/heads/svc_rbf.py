"""``svc-rbf``: an RBF-kernel support vector classifier with Platt-calibrated probabilities.

scikit-learn 1.9 deprecates ``SVC(probability=True)``; the replacement it names is
``CalibratedClassifierCV``, used here with ``method="sigmoid"`` (Platt scaling) and
``ensemble=False``: the sigmoid is fitted on out-of-fold decision values of ``cv`` folds and the
predicting SVC is one fitted on all the data — the scheme of ``probability=True`` (libsvm's internal
5-fold Platt scaling), with scikit-learn's folds. ``ensemble=True`` would predict with ``cv`` SVCs
each trained on a fraction of the data: ``cv`` times slower to predict (already ~0.5 ms a row at
2000 training rows) and each SVC weaker on the few hundred images a head typically sees.

The search's folds call ``fit_scores``: the same calibrated model (same folds, each SVC's "scale"
gamma computed on its own rows), but every kernel value is read from one matrix of squared distances
computed with BLAS and handed to libsvm precomputed. libsvm's own kernel loop, in training and above
all in predicting the calibration folds, was the cost of every fold (at 8,192 x 1024 ``fit`` took 21 s,
the Gram path 4). Its probabilities (``decision_scores``) equal the saved model's but for rounding.
The Gram path holds about ``GRAM_BYTES_PER_CELL`` bytes per cell of the fold's n x n matrix while it
fits; fits side by side in one process share ``gram_budget()`` (half the memory available when first
asked), waiting for one another, and a fold too large for the whole budget is fitted by ``fit``.
Scoring the folds from the bare SVC's decision values instead (threshold 0, no calibration) misjudged
settings on imbalanced data: up to 0.32 macro-F1 below the calibrated model's and 0.04 above it
(docs/benchmarks.md).

A ConvergenceWarning from ``max_iter`` is the user's to see; nothing here silences it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration
from sklearn.frozen import FrozenEstimator
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC

from automl.heads._base import SEED, Head, register
from automl.params import Interval, Options

_C_RANGE = (1e-1, 1e3)
# "scale" is 1/n_features on standardised data: 5e-4 to 6.5e-4 for 1536-2048-dim embeddings. Above
# ~4x that, a 2048-dim synthetic set's kernel matrix is already the identity (chance-level accuracy).
_GAMMA_RANGE = (1e-5, 2e-3)
# fit_scores's peak memory per cell of the fold's n x n matrix: the float64 distances, the calibration
# folds' kernel blocks and libsvm's copy of the support vectors' rows. Measured: a fit at 16,000 rows
# peaked at 4.3 GB, the whole process included (17 bytes a cell); 24 leaves a margin.
GRAM_BYTES_PER_CELL = 24
GRAM_MEMORY_SHARE = 0.5  # of the memory available when first asked: the Gram fits' budget in one process
GRAM_BLOCK_ROWS = 2048  # rows of the kernel computed per BLAS call


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
        for name in ("scored_", "svc_", "train_"):  # a previous fit_scores's model must not answer decision_scores
            self.__dict__.pop(name, None)
        svc = self._svc()
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        self.calibrated_ = CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False).fit(X, y)
        # libsvm's iterations per one-vs-one problem of the predicting SVC; max_iter shows it was cut short.
        self.n_iter_ = int(np.max(self.calibrated_.calibrated_classifiers_[0].estimator.n_iter_))
        return self

    def fit_scores(self, X, y):
        need = GRAM_BYTES_PER_CELL * len(X) ** 2
        if need > gram_budget():
            return self.fit(X, y)
        X, y = self._prepare_fit(X, y)
        self.__dict__.pop("calibrated_", None)  # a previous fit's model must not answer predict_proba
        X = np.asarray(X, dtype=np.float64)
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        with _reserved(need):
            distances = squared_distances(X, X)
            # CalibratedClassifierCV(ensemble=False)'s steps, with its folds: the sigmoids are fitted on
            # the out-of-fold decision values of one SVC per fold ("scale" computed on its own rows) ...
            decisions = np.empty((len(X), 1 if len(self.classes_) == 2 else len(self.classes_)))
            for train, held in folds.split(X, y):
                gamma = _gamma_value(self.gamma, X[train])
                svc = self._precomputed().fit(np.exp(-gamma * distances[np.ix_(train, train)]), y[train])
                decisions[held] = svc.decision_function(np.exp(-gamma * distances[np.ix_(held, train)])).reshape(
                    len(held), -1)
            # ... and the predicting SVC is fitted on all the rows.
            self.gamma_ = _gamma_value(self.gamma, X)
            np.exp(np.multiply(distances, -self.gamma_, out=distances), out=distances)
            self.svc_ = self._precomputed().fit(distances, y)
            del distances
        self.train_ = X
        self.scored_ = CalibratedClassifierCV(FrozenEstimator(_Decisions(np.arange(len(self.classes_))).fit(X, y)),
                                              method="sigmoid", cv=folds, ensemble=False).fit(decisions, y)
        self.n_iter_ = int(np.max(self.svc_.n_iter_))
        return self

    def _precomputed(self) -> SVC:
        return SVC(kernel="precomputed", C=self.C, tol=self.tol, max_iter=self.max_iter)

    def decision_scores(self, X) -> np.ndarray:
        if "calibrated_" in self.__dict__:
            return self.predict_proba(X)
        X = np.asarray(self._prepare_predict(X), dtype=np.float64)
        kernel = np.exp(-self.gamma_ * squared_distances(X, self.train_))
        return self.scored_.predict_proba(self.svc_.decision_function(kernel).reshape(len(X), -1))

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


class _Decisions(ClassifierMixin, BaseEstimator):
    """A "classifier" whose decision values are its input: lets ``CalibratedClassifierCV`` fit its
    sigmoids on decision values computed elsewhere (``FrozenEstimator``: it is never refitted)."""

    def __init__(self, classes=None):
        self.classes = classes

    def fit(self, X, y):
        self.classes_ = np.asarray(self.classes)
        return self

    def decision_function(self, X):
        return X[:, 0] if len(self.classes_) == 2 else X

    def predict(self, X):
        raise NotImplementedError("only its decision values are read")


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


def squared_distances(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared euclidean distances of A's rows to B's, ``GRAM_BLOCK_ROWS`` rows of A per BLAS call.
    Besides bounding the temporaries, this keeps ``A @ A.T`` off OpenBLAS's multithreaded dsyrk,
    numpy's choice for that product, which segfaulted here (OpenBLAS 0.3.31 as numpy 2.4 bundles it, 2
    threads, 16,000 x 1024 float64; 1 thread, or 14,000 rows, ran)."""
    out = np.empty((len(A), len(B)))
    for start in range(0, len(A), GRAM_BLOCK_ROWS):
        out[start:start + GRAM_BLOCK_ROWS] = euclidean_distances(A[start:start + GRAM_BLOCK_ROWS], B, squared=True)
    return out


def available_memory() -> int:
    """Bytes of memory this process may still take: the kernel's MemAvailable, or less where a cgroup
    (a container's limit) says so."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                available = min(available, int(limit) - int(f.read()))
    return max(available, 0)


@functools.cache
def gram_budget() -> int:
    """Bytes the Gram fits of one process may hold at once: ``GRAM_MEMORY_SHARE`` of the memory
    available when first asked (fixed from then on, so a search's folds all take the same path)."""
    return int(GRAM_MEMORY_SHARE * available_memory())


_budget_use = threading.Condition()
_budget_held = 0


@contextlib.contextmanager
def _reserved(nbytes: int):
    """Hold ``nbytes`` of ``gram_budget()`` (at most all of it), waiting while other threads hold too much."""
    global _budget_held
    with _budget_use:
        _budget_use.wait_for(lambda: _budget_held + nbytes <= gram_budget())
        _budget_held += nbytes
    try:
        yield
    finally:
        with _budget_use:
            _budget_held -= nbytes
            _budget_use.notify_all()
