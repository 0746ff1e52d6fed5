"""``logreg-elasticnet``: logistic regression with an elastic-net penalty, fitted by saga.

scikit-learn 1.8 deprecated ``penalty=`` (removed in 1.10): the penalty now follows from
``l1_ratio`` alone (0: L2, 1: L1, in between: elastic net), so ``penalty`` is left unset and no
FutureWarning is raised. ``LogisticRegression`` lost its own ``multi_class`` parameter too; one-vs-rest
is ``OneVsRestClassifier`` around it, multinomial is its only multi-class behaviour.

``max_iter=100`` and ``tol=1e-3``: on standardised 1-2k-dimensional embeddings saga rarely meets
``tol=1e-4`` within 300 epochs, yet its predictions stop changing long before (measured on 4,000 x
1024: identical validation F1 at 300 epochs / 1e-4 and at 100 / 1e-3, in a third to a tenth of the
time; ``bench/bench_search_scale.py`` compares whole searches). A fit cut short by ``max_iter`` still
warns, as before.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import LabelBinarizer

from automl.heads._base import SEED, Head, register
from automl.params import Interval, Options

_C_RANGE = (1e-2, 1e2)


@register
class LogRegElasticNetHead(Head):
    """Elastic-net logistic regression on standardised features.

    ``C`` is the inverse regularisation strength and ``l1_ratio`` the L1 share of the penalty, as in
    ``LogisticRegression``; ``multi_class`` is "multinomial" (one softmax) or "ovr" (one binary
    model per class, probabilities normalised). ``random_state`` seeds saga's sample order.
    """

    name = "logreg-elasticnet"
    _constraints: ClassVar[dict] = {
        "C": [Interval(float, 0, closed="neither")],
        "l1_ratio": [Interval(float, 0, 1)],
        "max_iter": [Interval(int, 1)],
        "tol": [Interval(float, 0, closed="neither")],
        "multi_class": [Options(("multinomial", "ovr"))],
        "random_state": SEED,
    }
    state_types = Head.state_types + (LogisticRegression, OneVsRestClassifier, LabelBinarizer)  # ovr: a binarizer

    def __init__(self, C=10.0, l1_ratio=0.5, max_iter=100, tol=1e-3, multi_class="multinomial",
                 random_state=0):
        self.C = C
        self.l1_ratio = l1_ratio
        self.max_iter = max_iter
        self.tol = tol
        self.multi_class = multi_class
        self.random_state = random_state

    def fit(self, X, y):
        X, y = self._prepare_fit(X, y)
        model = LogisticRegression(C=self.C, l1_ratio=self.l1_ratio, solver="saga", max_iter=self.max_iter,
                                   tol=self.tol, random_state=self.random_state)
        self.model_ = (model if self.multi_class == "multinomial" else OneVsRestClassifier(model)).fit(X, y)
        fitted = self.model_.estimators_ if self.multi_class == "ovr" else [self.model_]
        self.n_iter_ = int(max(np.max(m.n_iter_) for m in fitted))  # saga epochs, of the slowest model
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._prepare_predict(X)
        return self.model_.predict_proba(X)

    @staticmethod
    def search_space(trial) -> dict:
        return {
            "C": trial.suggest_float("logreg-elasticnet.C", *_C_RANGE, log=True),
            "l1_ratio": trial.suggest_float("logreg-elasticnet.l1_ratio", 0.0, 1.0),
        }

    @classmethod
    def defaults_for_trial(cls) -> dict:
        return {"logreg-elasticnet.C": 10.0, "logreg-elasticnet.l1_ratio": 0.5}
