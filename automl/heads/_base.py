"""What every head shares: the registry, parameter checks with the house error template
(``automl.params``), input validation, the scaler, and ``predict`` as the argmax of ``predict_proba``.

A head is one file of this package: a class that subclasses ``Head`` once (no deeper tree), adds its
own ``fit``, ``predict_proba``, ``search_space`` and ``defaults_for_trial``, lists in ``state_types``
the classes its fitted attributes hold (a model bundle rebuilds those and nothing else, see
``automl.heads._state``), and registers itself with ``@register``; ``automl.heads`` finds the file,
no list to extend.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from automl.params import Interval, check_params
from automl.registry import Registry

SEED = [Interval(int, 0, 2**32 - 1), None]  # NumPy's and Keras's seeds are 32-bit unsigned


class Head(ClassifierMixin, BaseEstimator):
    """Base of the heads: a scikit-learn classifier over standardised embedding vectors.

    Subclasses set ``name`` (the registry key) and ``_constraints`` (parameter -> list of accepted
    ``automl.params`` constraints, ``None`` meaning None is accepted), and implement ``fit``,
    ``predict_proba``, ``search_space`` and ``defaults_for_trial``.
    """

    name: ClassVar[str]
    _constraints: ClassVar[dict[str, list]]
    # Every class a fitted head's attributes hold, however deep: a model bundle saves and rebuilds
    # instances of these (and of the head) only; a subclass adds its own to these.
    state_types: ClassVar[tuple[type, ...]] = (StandardScaler,)
    # How the search fits several folds of this head at once: "threads" where its fit releases the
    # GIL, runs on one core and touches no process-wide state; "processes" where it does touch such
    # state (Keras's global seed and dtype policy: the ffnn head), in worker processes; "serial": one
    # fold after another, in the search's own process.
    parallel_fits: ClassVar[str] = "threads"

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
        check_params(f"{type(self).__name__} (head {self.name!r})", self.get_params(deep=False), self._constraints)

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

    def fit_scores(self, X, y):
        """Fit for ``decision_scores``, as the search's folds do: the labels and orders of the model
        ``fit`` makes, reached the cheapest way the head knows (``svc-rbf``: its calibrated SVC on one
        Gram matrix); by default ``fit`` itself. The refit always calls ``fit``."""
        return self.fit(X, y)

    def decision_scores(self, X) -> np.ndarray:
        """Per-class scores, one column per class of ``classes_``, after ``fit`` or ``fit_scores``:
        the argmax is the class ``fit``'s model predicts and each column orders the rows as that
        class's probability does (label and rank metrics read them). By default ``predict_proba``."""
        return self.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        # Argmax of the (calibrated) probabilities, so predict and predict_proba never disagree.
        proba = self.predict_proba(X)  # first: it raises NotFittedError on an unfitted head
        return self.classes_[np.argmax(proba, axis=1)]


HEADS: Registry[type[Head]] = Registry("head", package="automl.heads")
register = HEADS.register_class  # ``@register`` above a head class: its ``name`` is its key
