"""The augmentation plan: which classes get synthetic images, how many, and how they mix with the real ones.

``AugmentSpec`` is what a recipe's ``augment:`` entry (or ``--augment NAME --ratio R --classes ...``)
holds; ``plan_counts`` and ``reduce_real`` are its arithmetic, kept apart from any generator so
they can be tested exhaustively.

- ``classes``: ``minority`` (default: every class smaller than the largest), ``all``, or a list of
  class names.
- ``ratio``: a number R > 0 adds round(R x the class's size) images to each chosen class (1.0, the
  default, doubles it as the study did); ``balance`` adds up to the largest class's size; ``full``
  adds up to the class's size before ``real_fraction`` reduced it (the "30 % real + synthetic up to
  full size" setting).
- ``mix``: ``real+synthetic`` (default) trains on both; ``synthetic-only`` trains on synthetic
  images alone (every class then needs some) while validation folds and the test split stay real.
- ``real_fraction``: keep a stratified, seeded share of the real training images (default 1.0).
- ``filter``: which of the synthetic images train (near-copies dropped, the selective filter, its
  random control; ``automl.augment.filters``).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from automl import seeds
from automl.augment.filters import FilterSpec
from automl.errors import ConfigError
from automl.registry import canonical

MIXES = ("real+synthetic", "synthetic-only")
RATIO_WORDS = ("balance", "full")
CLASS_WORDS = ("minority", "all")


class AugmentSpec(BaseModel):
    """One augmentation variant: an augmenter and its plan."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    type: str = Field(..., min_length=1, description="Augmenter name (conventional, dcgan, sd-img2img, ...).")
    ratio: Union[float, Literal["balance", "full"]] = Field(1.0, description=(
        "Synthetic images per real image of each chosen class (1.0 doubles it), or balance / full."))
    classes: Union[Literal["minority", "all"], list[str]] = Field("minority", description=(
        "minority (every class smaller than the largest), all, or a list of class names."))
    mix: Literal["real+synthetic", "synthetic-only"] = Field("real+synthetic", description=(
        "Train on real and synthetic images, or on synthetic images only."))
    real_fraction: float = Field(1.0, gt=0, le=1, description=(
        "Stratified share of the real training images kept (0.3: the '30 % real' setting)."))
    params: dict[str, Any] = Field(default_factory=dict, description="The augmenter's own parameters.")
    filter: Optional[FilterSpec] = Field(None, description=(
        "Which synthetic images train: {drop_copies, selective, control, pool, extractor} (automl.augment.filters)."))
    label: Optional[str] = Field(None, min_length=1, description="Name shown in tables (default: from the rest).")

    @model_validator(mode="before")
    @classmethod
    def _relative_paths(cls, data: Any, info: ValidationInfo) -> Any:
        """In a recipe file, an augmenter's path parameters (``path_params``) follow the file's folder,
        as ``data`` does; from flags or a request they stay as given."""
        base = (info.context or {}).get("base_dir")
        if base is None or not isinstance(data, dict) or not isinstance(data.get("params"), dict):
            return data
        from automl.augment import AUGMENTERS

        key = canonical(str(data.get("type", "")))
        if key not in AUGMENTERS:
            return data  # the type's own check names it
        params = dict(data["params"])
        for name in AUGMENTERS.get(key).path_params:
            value = params.get(name)
            if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
                params[name] = os.path.normpath(os.path.join(os.path.abspath(base), value))
        return {**data, "params": params}

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        from automl.augment import AUGMENTERS

        key = canonical(value)
        if key not in AUGMENTERS:
            raise ValueError(f"unknown augmenter {value!r}; valid names: {', '.join(AUGMENTERS.names())}")
        return key

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not (isinstance(value, float) and value > 0 or value in RATIO_WORDS):
            raise ValueError(f"ratio must be a number > 0 (1.0 doubles each chosen class), balance or full; "
                             f"got {value!r}")
        return value

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in CLASS_WORDS:
            value = [part.strip() for part in value.split(",") if part.strip()]  # "a,b" as on the CLI
        if isinstance(value, (list, tuple)):
            if not value or not all(isinstance(v, str) for v in value):
                raise ValueError(f"classes must be minority, all, or a non-empty list of class names; got {value!r}")
            return list(value)
        if value not in CLASS_WORDS:
            raise ValueError(f"classes must be minority, all, or a list of class names; got {value!r}")
        return value

    @model_validator(mode="after")
    def _params(self) -> "AugmentSpec":
        self.validate_params()
        return self

    def validate_params(self) -> None:
        """Build the augmenter once to check its parameters (no packages needed)."""
        from automl.augment import AUGMENTERS

        AUGMENTERS.get(self.type)(**self.params)

    def describe(self) -> str:
        if self.label:
            return self.label
        ratio = f"x{self.ratio:g}" if isinstance(self.ratio, float) else self.ratio
        classes = self.classes if isinstance(self.classes, str) else "+".join(self.classes)
        parts = [self.type, ratio, classes]
        if self.mix != "real+synthetic":
            parts.append(self.mix)
        if self.real_fraction < 1:
            parts.append(f"real {self.real_fraction:.0%}")
        if self.filter is not None:
            parts.append(self.filter.describe())
        return " ".join(parts)


def chosen_classes(spec: AugmentSpec, sizes: Sequence[int], classes: Sequence[str]) -> list[int]:
    """Class indices that get synthetic images."""
    if spec.classes == "all":
        return list(range(len(classes)))
    if spec.classes == "minority":
        largest = max(sizes)
        chosen = [c for c, n in enumerate(sizes) if n < largest]
        if not chosen:
            raise ConfigError(f"augment classes 'minority': every class has {largest} training images, so none is "
                              "smaller than the largest. Use classes: all, or name the classes.")
        return chosen
    unknown = [name for name in spec.classes if name not in classes]
    if unknown:
        raise ConfigError(f"augment classes: unknown class {', '.join(map(repr, unknown))}; the dataset's classes "
                          f"are {', '.join(classes)}. Fix: use those names, or minority / all.")
    dupes = sorted({n for n in spec.classes if spec.classes.count(n) > 1})
    if dupes:
        raise ConfigError(f"augment classes: {', '.join(dupes)} listed more than once. Fix: name each class once.")
    return sorted(classes.index(name) for name in spec.classes)


def plan_counts(spec: AugmentSpec, sizes: Sequence[int], classes: Sequence[str],
                original_sizes: Sequence[int] | None = None) -> dict[int, int]:
    """Synthetic images to make per chosen class. ``sizes`` are the real training images per class
    after ``real_fraction``; ``original_sizes`` before it (for ``ratio: full``)."""
    original_sizes = list(original_sizes if original_sizes is not None else sizes)
    chosen = chosen_classes(spec, sizes, classes)
    if spec.ratio == "balance":
        counts = {c: max(sizes) - sizes[c] for c in chosen}
    elif spec.ratio == "full":
        counts = {c: original_sizes[c] - sizes[c] for c in chosen}
    else:
        counts = {c: int(round(spec.ratio * sizes[c])) for c in chosen}
    if spec.mix == "synthetic-only":
        empty = [classes[c] for c in range(len(classes)) if counts.get(c, 0) == 0]
        if empty:
            raise ConfigError(
                f"augment mix 'synthetic-only' trains on synthetic images alone, but class(es) {', '.join(empty)} "
                f"would get none (classes: {spec.classes!r}, ratio: {spec.ratio!r}). Fix: classes: all with a "
                "numeric ratio.")
    if not any(counts.values()):
        raise ConfigError(f"augment plan {spec.describe()!r} adds no image (classes {spec.classes!r}, ratio "
                          f"{spec.ratio!r}, class sizes {dict(zip(classes, sizes))}). Fix: raise the ratio or "
                          "choose other classes.")
    return counts


def reduce_real(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Indices of a stratified, seeded ``fraction`` of the images (every class keeps at least one),
    in their original order."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"real_fraction must be in (0, 1]; got {fraction}.")
    labels = np.asarray(labels)
    if fraction == 1:
        return list(range(len(labels)))
    rng = seeds.rng(seed, "augment", "real")
    keep: list[int] = []
    for c, n in sorted(Counter(labels.tolist()).items()):
        members = np.flatnonzero(labels == c)
        k = max(1, math.ceil(fraction * n))
        keep.extend(rng.choice(members, size=k, replace=False).tolist())
    return sorted(keep)
