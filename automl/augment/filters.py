"""Which synthetic images train a model: an augmentation plan's ``filter:``.

``filter: {drop_copies: true}`` leaves out every synthetic image whose pixels correlate at
``automl.quality.PIXEL_COPY`` or more with a real training image other than its source (the
near-copy test of ``automl quality``, stored in each image's provenance record as ``nearest_real``).

``filter: {selective: t}`` keeps the synthetic images that a classifier of the real training images
assigns to their intended class with probability >= t (the "selective" filter of the studies),
the most confident first, up to the plan's count per class. ``pool: P`` makes P times the plan's
count first, so the filter has images to choose from; the images are the same whatever the filter
(image k of a class is always the same image), so variants that differ only in their filter share
them. ``control: true`` keeps, per class, as many images as the selective filter would, drawn at
random from the same pool: the random selection the studies compared the filter with, at the same
ratio.

Cross-validation safety: the selective classifier of a fold is fitted on that fold's real training
rows only, so it never sees the fold's validation images, and decides which synthetic images join
that fold's training side; the final model's filter is fitted on all real training images. A
validation score therefore never rests on a choice made with its own images. (``drop_copies`` needs
no such care: dropping a synthetic near-copy of a validation image only removes a leak.)

The classifier: standardised features of one extractor (``extractor``, default the recipe's first)
and an L2 logistic regression (C = 1). It is deliberately plain and fixed: the filter's job is to ask
"does this image look like its class to a model of the real images", not to win the search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from automl import seeds


class FilterSpec(BaseModel):
    """An augmentation plan's ``filter:`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    drop_copies: bool = Field(False, description=(
        "Leave out synthetic images that are near-copies (pixel correlation >= 0.95) of a real training image "
        "other than their source."))
    selective: Optional[float] = Field(None, gt=0, lt=1, description=(
        "Keep the synthetic images a classifier of the real training images assigns to their class with "
        "probability >= this, the most confident first, up to the plan's count."))
    control: bool = Field(False, description=(
        "Keep as many images as the selective filter would, drawn at random from the same pool (the random "
        "control at the same ratio)."))
    pool: float = Field(1.0, ge=1, le=20, description=(
        "Make this many times the plan's images per class for the filter to choose from."))
    extractor: Optional[str] = Field(None, min_length=1, description=(
        "The extractor whose features the selective classifier sees (default: the recipe's first)."))

    @model_validator(mode="after")
    def _together(self) -> "FilterSpec":
        if self.selective is None:
            for key in ("control", "extractor"):
                if getattr(self, key) not in (False, None):
                    raise ValueError(f"{key} applies to the selective filter: give selective: T (0 < T < 1) too")
        if self.selective is None and not self.drop_copies:
            raise ValueError("a filter that keeps every image: give drop_copies: true, selective: T (0 < T < 1), "
                             "or both")
        return self

    def describe(self) -> str:
        parts = []
        if self.drop_copies:
            parts.append("no copies")
        if self.selective is not None:
            parts.append(("random like " if self.control else "") + f"selective>={self.selective:g}")
        if self.pool != 1:
            parts.append(f"of pool x{self.pool:g}")
        return " ".join(parts)

    def pool_size(self, planned: int) -> int:
        return int(math.ceil(self.pool * planned - 1e-9))


@dataclass(frozen=True)
class Selective:
    """The selective filter (or its random control) over a search's rows: which synthetic rows train a
    fold, and the final model. Arrays only, so a search process can be handed it."""

    threshold: float
    control: bool
    features: np.ndarray  # the filter extractor's rows, every row of the search
    y: np.ndarray  # the intended class of every row
    planned: tuple[int, ...]  # per class, the most synthetic images kept
    seed: int

    def __call__(self, real_rows: np.ndarray, candidates: Sequence[int], fold: int | None) -> np.ndarray:
        """The rows of ``candidates`` (synthetic) kept when the real rows ``real_rows`` are all the
        classifier may learn from; ``fold``: the fold's index (None: the final model), seeds the control."""
        candidates = np.asarray(candidates, dtype=np.int64)
        if len(candidates) == 0:
            return candidates
        confidence = self.confidence(real_rows, candidates)
        kept = []
        for c in np.unique(self.y[candidates]):
            mine = np.flatnonzero(self.y[candidates] == c)
            passed = mine[confidence[mine] >= self.threshold]
            # The most confident first; a tie keeps the row order, so the choice is deterministic.
            passed = passed[np.argsort(-confidence[passed], kind="stable")][: self.planned[c]]
            if self.control:
                rng = seeds.rng(self.seed, "filter", "control", "refit" if fold is None else fold, int(c))
                passed = rng.choice(mine, size=len(passed), replace=False)
            kept.append(candidates[passed])
        return np.sort(np.concatenate(kept)) if kept else candidates[:0]

    def confidence(self, real_rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Per candidate, the classifier's probability of its intended class, or -1 where the classifier
        picks another class (an image must look most like its own class to pass)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        real_rows = np.asarray(real_rows, dtype=np.int64)
        X, y = self.features[real_rows].astype(np.float64), self.y[real_rows]
        labels = np.unique(y)
        scaler = StandardScaler().fit(X)
        model = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(X), y)
        proba = np.zeros((len(candidates), len(self.planned)))
        proba[:, labels] = model.predict_proba(scaler.transform(self.features[candidates].astype(np.float64)))
        intended = self.y[candidates]
        mine = proba[np.arange(len(candidates)), intended]
        return np.where(proba.argmax(axis=1) == intended, mine, -1.0)
