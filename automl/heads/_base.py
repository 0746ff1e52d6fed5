"""What every head shares: parameter checks with scikit-learn's error template, input validation,
the scaler, and ``predict`` as the argmax of ``predict_proba``.

A head subclasses ``Head`` once (no deeper tree) and adds its own ``fit``, ``predict_proba``,
``search_space`` and ``defaults_for_trial``.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from automl.errors import ConfigError

_INF = float("inf")


@dataclass(frozen=True)
class Interval:
    """Numbers of one kind (``int`` or ``float``) between two bounds; ``closed`` says which bounds count."""

    kind: type
    low: float = -_INF
    high: float = _INF
    closed: str = "both"  # "both", "left", "right" or "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, Integral if self.kind is int else Real):
            return False
        if np.isnan(value):
            return False
        above = value >= self.low if self.closed in ("both", "left") else value > self.low
        below = value <= self.high if self.closed in ("both", "right") else value < self.high
        return bool(above and below)

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"

        def show(bound):
            return str(bound) if abs(bound) == _INF else str(int(bound)) if self.kind is int else f"{bound:g}"

        kind = "an int" if self.kind is int else "a float"
        return f"{kind} in the range {left}{show(self.low)}, {show(self.high)}{right}"


@dataclass(frozen=True)
class Options:
    """One of a few strings."""

    values: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def describe(self) -> str:
        return "a str among {" + ", ".join(repr(v) for v in sorted(self.values)) + "}"


@dataclass(frozen=True)
class Layers:
    """Hidden-layer widths: a tuple or list of ints >= 1 (empty: no hidden layer)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (tuple, list)) and all(Interval(int, 1).accepts(v) for v in value)

    def describe(self) -> str:
        return "a tuple or list of ints >= 1"


SEED = [Interval(int, 0, 2**32 - 1), None]  # NumPy's and Keras's seeds are 32-bit unsigned


class Head(ClassifierMixin, BaseEstimator):
    """Base of the heads: a scikit-learn classifier over standardised embedding vectors.

    Subclasses set ``name`` (the registry key) and ``_constraints`` (parameter -> list of accepted
    ``Interval``/``Options``/``Layers``, ``None`` meaning None is accepted), and implement ``fit``,
    ``predict_proba``, ``search_space`` and ``defaults_for_trial``.
    """

    name: ClassVar[str]
    _constraints: ClassVar[dict[str, list]]

    @staticmethod
    def search_space(trial) -> dict:
        """Sample this head's parameters from an ``optuna.trial.Trial``.

        Returns keyword arguments for ``set_params``. Optuna parameter names carry the head's name as
        a prefix (``"svc-rbf.C"``) because one study samples every head, each conditionally on the
        head being chosen. The distributions contain the defaults, so enqueuing
        ``defaults_for_trial()`` makes this return exactly the ``__init__`` defaults.
        """
        raise NotImplementedError

    @classmethod
    def defaults_for_trial(cls) -> dict:
        """The ``__init__`` defaults as Optuna parameters (prefixed names), for ``study.enqueue_trial``."""
        raise NotImplementedError

    def _check_params(self) -> None:
        """Raise ConfigError, naming parameter, constraint and value, for the first invalid parameter."""
        for param, constraints in self._constraints.items():
            value = getattr(self, param)
            if any(value is None if c is None else c.accepts(value) for c in constraints):
                continue
            expected = " or ".join("None" if c is None else c.describe() for c in constraints)
            raise ConfigError(f"The {param!r} parameter of {type(self).__name__} (head {self.name!r}) "
                              f"must be {expected}. Got {value!r} instead.")

    def _prepare_fit(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """Validate params and data; set ``classes_``, ``n_features_in_``, ``scaler_``.

        Returns the standardised X and y as indices into ``classes_``.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in y; "
                             f"got 1 class ({classes.tolist()[0]!r}).")
        self.classes_ = classes
        self.scaler_ = StandardScaler().fit(X)
        return self.scaler_.transform(X), y_index

    def _prepare_predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.scaler_.transform(X)

    def predict(self, X) -> np.ndarray:
        # Argmax of the (calibrated) probabilities, so predict and predict_proba never disagree.
        proba = self.predict_proba(X)  # first: it raises NotFittedError on an unfitted head
        return self.classes_[np.argmax(proba, axis=1)]
