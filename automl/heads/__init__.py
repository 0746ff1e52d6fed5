"""Shallow classifier heads over embedding vectors, looked up by name.

Each head is a scikit-learn classifier whose module also holds its defaults and its Optuna search
space (``search_space(trial)``, ``defaults_for_trial()``). Importing this package imports scikit-learn
only; the ``ffnn`` head imports Keras when it is fitted.
"""

from __future__ import annotations

from automl.heads._base import Head
from automl.heads.ffnn import FFNNHead
from automl.heads.logreg_elasticnet import LogRegElasticNetHead
from automl.heads.svc_rbf import SvcRbfHead
from automl.registry import Registry

HEADS: Registry[type[Head]] = Registry("head")

for _head in (FFNNHead, SvcRbfHead, LogRegElasticNetHead):
    HEADS.register(_head.name)(_head)


def get_head(name: str) -> type[Head]:
    """The head class registered as ``name`` (``_`` accepted for ``-``); unknown names list the valid ones."""
    return HEADS.get(name)


__all__ = ["HEADS", "FFNNHead", "Head", "LogRegElasticNetHead", "SvcRbfHead", "get_head"]
