"""The recipe model: one ``automl fit`` run, every flag a key, validated by pydantic.

Every ``automl fit`` flag is a recipe key (``--image-size`` is ``image_size``), so a run can be
written down, shared and repeated; flags given beside ``--recipe`` override the file
(``Recipe.with_overrides``).

Rules worth knowing:

- Unknown keys are errors that list the valid keys (the model has ``extra="forbid"``); values are
  not coerced across types (``cv: "5"`` is an error, not 5).
- Relative paths (``data``, ``weights`` when a file, ``store``) are resolved against the recipe
  file's folder, so a recipe means the same thing from any working directory.
- Component names are canonical kebab-case (``Inception_V3`` is stored as ``inception-v3``).
- A field says everything about itself: its constraints, its example (``examples``, else the
  default) and, where its type says too little, ``json_schema_extra={"expects": ...}``; error
  messages (``explain.py``) and the JSON Schema read them from there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from automl.augment.plan import AugmentSpec
from automl.errors import ConfigError
from automl.evaluate import METRICS
from automl.extractors import DEFAULT_IMAGE_SIZE, MIN_IMAGE_SIZE, PRECISIONS, Weights, resolve
from automl.recipe.explain import RecipeError, explain, unknown_key_line
from automl.recipe.fields import (CommaList, ExtractorName, HeadName, augment_shorthand, no_duplicates,
                                  resolve_path)
from automl.recipe.fields import unknown as _unknown
from automl.registry import canonical
from automl.storage import dialect_of

# The published study's three backbones, in its order (also the order runs report them in).
DEFAULT_EXTRACTORS = ("inception-resnet-v2", "xception", "inception-v3")
DEFAULT_HEADS = ("ffnn", "svc-rbf", "logreg-elasticnet")


def _canonical_metric(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    key = canonical(value)
    if key not in METRICS:
        raise _unknown("metric", value, list(METRICS))
    return key


def _canonical_precision(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    key = value.strip().lower()
    if key not in PRECISIONS:
        raise _unknown("precision", value, list(PRECISIONS))
    return key


class Recipe(BaseModel):
    """One ``automl fit`` run. Field names are the recipe keys; the CLI flags are the same with ``-``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True,
                              title="automl recipe")

    name: Optional[str] = Field(None, min_length=1, examples=["chongqing-irv2-ffnn"],
                                description="A label for the run (shown in reports).")
    data: str = Field(..., min_length=1, examples=["data/chongqing"], json_schema_extra={"expects": (
        "a dataset path (a folder of class folders, a folder with train/ and test/, or a .npz file)")}, description=(
        "Dataset: a folder of class folders, a folder with train/ and test/ (optionally val/), or a "
        "MedMNIST-style .npz. Relative paths are resolved against the recipe file's folder."))
    extractors: Annotated[list[ExtractorName], CommaList, no_duplicates("extractor")] = Field(
        default=list(DEFAULT_EXTRACTORS), min_length=1, examples=[["xception"]],
        description="Frozen CNN feature extractors to search over (a list, or one comma-separated string).")
    weights: str = Field("imagenet", min_length=1, json_schema_extra={
        "expects": "imagenet, none, or the path of a weights file"}, description=(
        "imagenet (the Keras download and cache), none (random, seeded: offline tests and demos), or "
        "the path of a weights file (relative to the recipe file's folder)."))
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=MIN_IMAGE_SIZE, description=(
        "Input side in pixels; each extractor has its own Keras minimum (75; 71 for xception)."))
    precision: Annotated[Literal[PRECISIONS], BeforeValidator(_canonical_precision)] = Field("auto", description=(
        "auto (the fastest the hardware runs well), float32, bfloat16 or float16."))
    batch_size: Optional[int] = Field(None, ge=1, description="Images per model call (null: from the image size).")
    heads: Annotated[list[HeadName], CommaList, no_duplicates("head")] = Field(
        default=list(DEFAULT_HEADS), min_length=1, examples=[["ffnn"]],
        description="Classifier heads to search over (a list, or one comma-separated string).")
    metric: Annotated[Literal[METRICS], BeforeValidator(_canonical_metric)] = Field(
        METRICS[0], description="What the search maximises on the cross-validation folds.")
    trials: Optional[int] = Field(30, ge=1, description="Optuna trials (null: until the timeout).")
    timeout: Optional[float] = Field(None, gt=0, examples=[3600],
                                     description="Search time budget in seconds (null: no limit).")
    cv: int = Field(5, ge=2, description="Cross-validation folds on the train split.")
    seed: int = Field(0, ge=0, description="Seed for the split, the folds, the search and random weights.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description=(
        "Share of images held out as the test split, only when the dataset has no test split."))
    skip_bad: bool = Field(False, description="Leave out undecodable images (and list them) instead of failing.")
    store: Optional[str] = Field(None, min_length=1, examples=["store"], json_schema_extra={
        "expects": "a folder path"}, description=(
        "Store folder (null: $AUTOML_STORE or ./store). Relative paths follow the recipe file's folder."))
    storage: Optional[str] = Field(None, min_length=1, examples=["sqlite:///store/optuna.db"], json_schema_extra={
        "expects": "an Optuna storage URL (sqlite:///..., postgresql://...)"}, description=(
        "Optuna storage URL, e.g. sqlite:///path/optuna.db or postgresql://... (null: SQLite in the store)."))
    workers: int = Field(1, ge=1, le=256, description=(
        "Search processes on this machine, sharing one study (fold threads split between them). The same "
        "command on other machines, with the same store and a server storage (postgresql://...), joins the "
        "same study: trials is its budget across all of them, and one process writes the run."))
    augment: Annotated[Optional[list[AugmentSpec]], BeforeValidator(augment_shorthand)] = Field(
        None, examples=[{"type": "conventional", "ratio": 1.0}], json_schema_extra={
            "expects": "an augmenter name, a mapping of its plan, or a list of those"}, description=(
            "Synthetic training images: an augmenter name, or a mapping {type, ratio, classes, mix, real_fraction, "
            "params, label}; a list of them for `automl compare`. fit trains the augmented model and the "
            "original-data baseline with the same budget and seed and shows them side by side."))
    repeats: int = Field(5, ge=1, description=(
        "automl compare: seeds per variant (the search seed, and the split when the data has none); "
        ">= 6 lets the paired Wilcoxon test reach p < 0.05."))

    # The recipe file this came from, so override errors can name it; not a recipe key.
    _source: Optional[str] = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _extractor_store(cls, data: Any, info: ValidationInfo) -> Any:
        # Pretrained extractor names resolve against the store, a field validated after the extractors.
        if isinstance(data, dict) and isinstance(info.context, dict):
            store = data.get("store")
            info.context["extractor_store"] = (resolve_path(store, info.context.get("base_dir"))
                                               if isinstance(store, str) and store else None)
        return data

    @field_validator("data", "store")
    @classmethod
    def _resolve_path(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if value is None:
            return None
        return resolve_path(value, (info.context or {}).get("base_dir"))

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str, info: ValidationInfo) -> str:
        # A keyword in its one spelling, else a path (checked when the weights are loaded, not here).
        return Weights.keyword(value) or resolve_path(value, (info.context or {}).get("base_dir"))

    @field_validator("image_size")
    @classmethod
    def _image_size_fits_extractors(cls, value: int, info: ValidationInfo) -> int:
        # Checked here too (not only when a model is built) so `automl validate` catches it up front.
        for name in info.data.get("extractors") or ():
            minimum = getattr(resolve(name), "min_size", 0)  # a model file has its own input size
            if value < minimum:
                raise PydanticCustomError(
                    "image_too_small", "{extractor} needs images of at least {minimum} pixels",
                    {"extractor": name, "minimum": minimum})
        return value

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and "://" not in value:
            raise PydanticCustomError("storage_url", "not a database URL", {})
        if value is not None:
            try:  # the scheme here, so `automl validate` catches it; drivers and files before the fit's work
                dialect_of(value)
            except ConfigError as exc:
                raise PydanticCustomError("bad_storage", "{problem}", {"problem": str(exc)}) from None
        return value

    @model_validator(mode="after")
    def _has_budget(self) -> "Recipe":
        if self.trials is None and self.timeout is None:
            raise PydanticCustomError("no_budget", "trials and timeout are both null", {})
        return self

    def __eq__(self, other: object) -> bool:
        # Two recipes that describe the same run are equal, wherever they were read from.
        if not isinstance(other, Recipe):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # the lists make a recipe unhashable anyway; say so plainly

    # --- building recipes --------------------------------------------------------------------

    @classmethod
    def from_flags(cls, **flags: Any) -> "Recipe":
        """A recipe from CLI flags alone (None means "not given"); relative paths follow the cwd."""
        return _apply_flags({}, flags, source="command-line flags")

    def with_overrides(self, **flags: Any) -> "Recipe":
        """A copy where every non-None flag replaces the recipe's value, validated again.

        Relative paths among the flags follow the working directory (they were typed there); the
        recipe's other values are kept as they are. Raises ``RecipeError`` naming the flag.
        """
        source = "command-line flags" if self._source is None else f"{self._source} with command-line flags"
        # Only the fields the recipe set: the others stay unset (defaults), as a fit tells them apart.
        recipe = _apply_flags(self.model_dump(exclude_unset=True), flags, source=source)
        recipe._source = self._source
        return recipe


def _apply_flags(base: dict, flags: dict, source: str) -> Recipe:
    unknown = sorted(k for k in flags if k not in Recipe.model_fields)
    if unknown:
        raise RecipeError([unknown_key_line(k, Recipe.model_fields, flag=True) for k in unknown], source=source)
    given = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in flags.items() if v is not None}
    for key in ("data", "store", "weights"):
        value = given.get(key)
        if isinstance(value, str) and not (key == "weights" and Weights.keyword(value)):
            given[key] = resolve_path(value, Path.cwd())
    try:
        # Relative model paths among the flags follow the working directory (base_dir None).
        return Recipe.model_validate({**base, **given}, context={})
    except ValidationError as exc:
        raise RecipeError(explain_errors(exc, flags=True), source=source) from None


def explain_errors(exc: ValidationError, *, lines: dict[tuple, int] | None = None,
                   flags: bool = False) -> list[str]:
    """A recipe's validation errors, one line per problem (``explain.explain`` over the recipe's fields).

    ``lines`` maps a location (``("heads", 1)``) to its line in the YAML file; ``flags`` words the
    fix as a command-line flag instead of a recipe key.
    """
    return explain(exc, Recipe.model_fields, lines=lines, flags=flags)
