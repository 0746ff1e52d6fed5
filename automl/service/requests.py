"""A job request from the network, made into what a job stores and runs: a recipe validated by the
same pydantic model as a recipe file, with what the server decides filled in and what a client must
not reach refused.

- ``data`` names a dataset of the store (``POST /datasets`` answered its id), never a server path.
- ``store`` and ``storage`` are the server's: a request that sets them is refused.
- Paths a recipe may hold (``weights`` as a file, a ``file:`` extractor, an augmenter parameter that
  names a local path) must lie under one of the server's allowed roots (``--allow-root``) or the
  store's own ``extractors/``; anything else is refused, so a request cannot make the server read an
  arbitrary file. Files it does read load as data only (the product's rule for every file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from automl.augment.plan import AugmentSpec
from automl.errors import ConfigError
from automl.recipe import DEFAULT_IMAGE_SIZE, Recipe
from automl.recipe.explain import RecipeError
from automl.recipe.model import explain_errors
from automl.store import Store

SERVER_KEYS = ("store", "storage", "workers")  # the server's storage, and its machine's processes
SOURCE = "the request's recipe"


def validate_recipe(store: Store, body: Any, *, kind: str = "fit", allowed_roots: Sequence[Path] = (),
                    storage: str | None = None) -> dict:
    """The job's stored request: ``{"recipe": <the recipe's set keys, JSON>, "dataset": <id>}``, with
    ``data`` the dataset's path and ``store`` / ``storage`` the server's. ``RecipeError`` (HTTP 422)
    naming the key for anything wrong, including what the ``kind`` of job would refuse of this dataset
    in its first seconds (``check_against_dataset``)."""
    from automl.service.uploads import DatasetNotFoundError, get_dataset

    if not isinstance(body, dict):
        raise RecipeError([f"the recipe is {type(body).__name__}; expected a JSON object of recipe keys, at least "
                           '{"data": "<dataset id>"}.'], source=SOURCE)
    refused = [k for k in SERVER_KEYS if k in body]
    if refused:
        raise RecipeError([f"{k}: set by the server (its --store / --storage, its workers' --concurrency); remove "
                           "it from the request." for k in refused], source=SOURCE)
    data = body.get("data")
    if not isinstance(data, str) or not data:
        raise RecipeError(['data: expected the id of a dataset of this server (POST /datasets answers it, '
                           'GET /datasets lists them), e.g. "sha256-3f2a...".'], source=SOURCE)
    try:
        dataset = get_dataset(store, data)
    except DatasetNotFoundError as exc:
        raise RecipeError([f"data: {exc}"], source=SOURCE) from None
    given = {**body, "data": str(dataset.path), "store": str(store.root)}
    if storage:
        given["storage"] = storage
    recipe = _validated(store, given)
    _check_paths(store, recipe, allowed_roots)
    check_against_dataset(kind, recipe, dataset.summary)
    return {"recipe": recipe.model_dump(mode="json", exclude_unset=True), "dataset": dataset.id}


def recipe_for_job(store: Store, request: dict) -> Recipe:
    """The recipe a job runs (its stored request, validated again: the server's registries may have
    changed since, e.g. a pretrained extractor removed)."""
    return _validated(store, request["recipe"])


def _validated(store: Store, data: dict) -> Recipe:
    try:
        recipe = Recipe.model_validate(data, context={"extractor_store": str(store.root)})
    except ValidationError as exc:
        raise RecipeError(explain_errors(exc), source=SOURCE) from None
    recipe._source = SOURCE
    return recipe


def check_against_dataset(kind: str, recipe: Recipe, summary: dict) -> None:
    """Refuse at submission what the job would refuse before its first embedding, from the dataset's
    stored summary (its counts, not its images): the augmentation variants the kind takes, a test split
    that cannot be held out, more folds than the smallest class has training images."""
    from automl.data import stratified_holdout
    from automl.errors import AutomlError
    from automl.search import check_cv

    problems = []
    if kind in ("fit", "compare"):
        from automl.comparison import variant_labels
        from automl.pipeline import fit_variant

        try:
            fit_variant(recipe) if kind == "fit" else variant_labels(recipe)
        except AutomlError as exc:
            problems.append(f"augment: {exc}")
    if kind != "embed":
        classes, counts = summary["classes"], summary["counts"]
        train = [c for split, by_class in counts.items() if split != "test" for c, n in enumerate(
            by_class.get(name, 0) for name in classes) for _ in range(n)]
        if "test" not in counts:
            held = stratified_holdout(train, recipe.test_fraction, recipe.seed)
            if held is None:
                sizes = {name: train.count(c) for c, name in enumerate(classes)}
                problems.append(f"test_fraction: the dataset has no test split, and a stratified "
                                f"{recipe.test_fraction:.0%} of it cannot be held out: every class needs at least 2 "
                                f"images and each side one per class (class sizes: {sizes}). Upload train/ and test/ "
                                "folders, or add images.")
                train = []
            else:
                train = [c for i, c in enumerate(train) if i not in held]
        if train:
            try:
                check_cv(train, recipe.cv, classes)
            except AutomlError as exc:
                problems.append(f"cv: {exc}")
    if problems:
        raise RecipeError(problems, source=SOURCE)


def _check_paths(store: Store, recipe: Recipe, allowed_roots: Sequence[Path]) -> None:
    from automl.extractors import Weights, resolve

    roots = [Path(r).resolve() for r in allowed_roots] + [store.extractors_dir.resolve()]
    problems = []
    if not Weights.keyword(recipe.weights):
        problems += _outside("weights", recipe.weights, roots)
    for i, name in enumerate(recipe.extractors):
        path = getattr(resolve(name, store), "path", None)
        if path is not None:
            problems += _outside(f"extractors[{i}]", path, roots)
    for i, spec in enumerate(recipe.augment or []):
        problems += _params_outside(f"augment[{i}]", spec, roots)
    if problems:
        raise RecipeError(problems, source=SOURCE)


def _params_outside(field: str, spec, roots: Sequence[Path]) -> list[str]:
    """An augmentation plan's parameters that name paths outside ``roots`` (a folder augmenter's images)."""
    return [problem for key, value in spec.params.items()
            if isinstance(value, str) and (os.path.isabs(value) or os.path.exists(value))
            for problem in _outside(f"{field}.params.{key}", value, roots)]


def _outside(field: str, value: Any, roots: Sequence[Path]) -> list[str]:
    from automl.service.uploads import inside

    if inside(Path(os.fspath(value)).expanduser().resolve(), roots):
        return []
    where = ", ".join(str(r) for r in roots)
    return [f"{field}: {value} is a path outside the folders this server reads ({where}); put the file under one "
            "of them (the server's --allow-root) or upload what it holds."]


def check_kind_fields(kind: str, recipe: Any) -> None:
    """Keys that make no sense for a kind are refused rather than ignored."""
    if kind == "embed":
        extra = sorted(set(recipe) - {"data", "extractors", "weights", "image_size", "precision", "batch_size",
                                      "seed", "skip_bad", "name"})
        if extra:
            raise ConfigError(f"an embed job reads data, extractors, weights, image_size, precision, batch_size, "
                              f"seed and skip_bad; remove {', '.join(extra)} (or submit a fit).")


class PretrainRequest(BaseModel):
    """A pretrain job: ``automl pretrain``'s options as JSON, ``data`` and ``exclude`` as dataset ids."""

    model_config = ConfigDict(extra="forbid", strict=True)

    data: str = Field(..., min_length=1, description="the dataset to train on (its train and val splits)")
    extractor: str = "inception-v3"
    weights: str = "imagenet"
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=32)
    epochs: int = Field(10, ge=1)
    patience: int = Field(3, ge=1)
    freeze_until: Optional[str] = None
    name: Optional[str] = None
    exclude: list[str] = Field(default_factory=list, description="datasets whose test split must not be trained on")
    exclude_mode: Literal["drop", "refuse"] = "drop"
    overwrite: bool = False
    batch_size: Optional[int] = Field(None, ge=1)
    learning_rate: Optional[float] = Field(None, gt=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = Field(0, ge=0)
    skip_bad: bool = False
    augment: Optional[AugmentSpec] = Field(None, description=(
        "synthetic pretraining: one augmentation plan (type, ratio, classes, mix, real_fraction, params, filter)"))


def validate_pretrain(store: Store, body: Any, *, allowed_roots: Sequence[Path] = ()) -> dict:
    """A pretrain job's stored request: ``{"pretrain": <pretrain()'s keyword arguments>, "dataset": <id>}``."""
    from automl.extractors import EXTRACTORS, Weights, pretrained_path
    from automl.service.uploads import DatasetNotFoundError, get_dataset

    source = "the request's pretrain options"
    refused = [k for k in SERVER_KEYS if isinstance(body, dict) and k in body]
    if refused:
        raise RecipeError([f"{k}: set by the server; remove it from the request." for k in refused], source=source)
    try:
        request = PretrainRequest.model_validate(body)
    except ValidationError as exc:
        raise RecipeError([f"{'.'.join(str(p) for p in e['loc']) or 'recipe'}: {e['msg']}" for e in exc.errors()],
                          source=source) from None
    if request.extractor not in EXTRACTORS:
        raise RecipeError([f"extractor: unknown {request.extractor!r}; pretrain trains a built-in backbone: "
                           f"{', '.join(EXTRACTORS.names())}."], source=source)
    roots = [Path(r).resolve() for r in allowed_roots]
    # A keyword, or a pretrained extractor of this store to continue (automl pretrain --weights NAME).
    known = Weights.keyword(request.weights) or pretrained_path(store, request.weights) is not None
    problems = [] if known else _outside("weights", request.weights, roots)
    if request.augment is not None:
        problems += _params_outside("augment", request.augment, roots)
    paths = {}
    for field, ids in (("data", [request.data]), ("exclude", request.exclude)):
        for i, dataset_id in enumerate(ids):
            try:
                paths.setdefault(field, []).append(str(get_dataset(store, dataset_id).path))
            except DatasetNotFoundError as exc:
                problems.append(f"{field}{'' if field == 'data' else f'[{i}]'}: {exc}")
    if problems:
        raise RecipeError(problems, source=source)
    options = request.model_dump(exclude={"augment"})
    options.update(data=paths["data"][0], exclude=paths.get("exclude", []),
                   augment=None if request.augment is None else request.augment.model_dump(exclude_none=True))
    return {"pretrain": options, "dataset": request.data}
