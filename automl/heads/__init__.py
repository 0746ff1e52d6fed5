"""Shallow classifier heads over embedding vectors, looked up by name.

Each head is one module of this package: a scikit-learn classifier that registers itself
(``@register``) and holds its defaults and its Optuna search space (``search_space(trial)``,
``defaults_for_trial()``). ``HEADS`` imports every module of the package at its first lookup
(``automl.registry.discover``), so adding a head is adding its file. Importing this package imports
scikit-learn only; the ``ffnn`` head imports Keras when it is fitted.
"""

from __future__ import annotations

from automl.heads._base import HEADS, Head, register
from automl.heads.ffnn import FFNNHead
from automl.heads.logreg_elasticnet import LogRegElasticNetHead
from automl.heads.svc_rbf import SvcRbfHead


def get_head(name: str) -> type[Head]:
    """The head class registered as ``name`` (``_`` accepted for ``-``); unknown names list the valid ones."""
    return HEADS.get(name)


__all__ = ["HEADS", "FFNNHead", "Head", "LogRegElasticNetHead", "SvcRbfHead", "get_head", "register"]
