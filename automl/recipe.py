"""A recipe: one ``automl fit`` run as a YAML file, validated by a pydantic model.

Every ``automl fit`` flag is a recipe key (``--image-size`` is ``image_size``), so a run can be
written down, shared and repeated; flags given beside ``--recipe`` override the file
(``Recipe.with_overrides``). ``recipe_to_yaml`` writes the resolved recipe a run folder keeps.

Rules worth knowing:

- YAML is read with ``yaml.safe_load`` only: tags such as ``!!python/object`` are refused.
- Unknown keys are errors that list the valid keys (the model has ``extra="forbid"``); values are
  not coerced across types (``cv: "5"`` is an error, not 5).
- Relative paths (``data``, ``weights`` when a file, ``store``) are resolved against the recipe
  file's folder, so a recipe means the same thing from any working directory.
- Component names are canonical kebab-case (``Inception_V3`` is stored as ``inception-v3``).

Import cost is pydantic and PyYAML only: the extractor and head registries are imported when a
recipe is validated, not when this module is.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr,
                      ValidationError, ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from automl.augment.plan import AugmentSpec
from automl.errors import ConfigError
from automl.evaluate import METRICS
from automl.registry import canonical

# The published study's three backbones, in its order (also the order runs report them in).
DEFAULT_EXTRACTORS = ("inception-resnet-v2", "xception", "inception-v3")
DEFAULT_HEADS = ("ffnn", "svc-rbf", "logreg-elasticnet")
WEIGHTS_KEYWORDS = ("imagenet", "none")
DEFAULT_IMAGE_SIZE = 299  # == automl.extract.DEFAULT_IMAGE_SIZE (a test keeps them equal)
MIN_IMAGE_SIZE = 71  # the smallest any Keras backbone accepts (Xception); others check their own


# --- the names a recipe may use ----------------------------------------------------------------


def extractor_names() -> list[str]:
    from automl.extract import EXTRACTORS

    return EXTRACTORS.names()


def head_names() -> list[str]:
    from automl.heads import HEADS

    return HEADS.names()


def precision_names() -> list[str]:
    from automl.extract import PRECISIONS

    return list(PRECISIONS)


def _unknown(kind: str, found: str, valid: list[str]) -> PydanticCustomError:
    close = difflib.get_close_matches(canonical(found), valid, n=1, cutoff=0.6)
    return PydanticCustomError(
        "unknown_name", "unknown {kind} {found!r}",
        {"kind": kind, "found": found, "valid": list(valid), "suggestion": close[0] if close else None})


def _named(kind: str, valid_names) -> AfterValidator:
    def check(name: str) -> str:
        valid = valid_names()
        key = canonical(name)
        if key not in valid:
            raise _unknown(kind, name, valid)
        return key

    return AfterValidator(check)


def _split_list(value: Any) -> Any:
    """``"a, b"`` and ``[a, b]`` mean the same (the CLI's ``--extractors a,b``)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, tuple):
        return list(value)
    return value


def _no_duplicates(kind: str) -> AfterValidator:
    def check(names: list[str]) -> list[str]:
        seen = {n for n in names if names.count(n) > 1}
        if seen:
            raise PydanticCustomError("duplicate_name", "{kind} listed more than once: {names}",
                                      {"kind": kind, "names": ", ".join(sorted(seen))})
        return names

    return AfterValidator(check)


def _canonical_metric(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    key = canonical(value)
    if key not in METRICS:
        raise _unknown("metric", value, list(METRICS))
    return key


def _extractor_spec(value: Any) -> Any:
    """``{file: PATH, scale: ..., mean: ..., std: ..., bgr: ...}`` -> the canonical ``file:PATH?...`` name."""
    if not isinstance(value, dict):
        return value
    from automl.file_extractors import spec_to_name

    try:
        return spec_to_name(value)
    except ConfigError as exc:
        raise PydanticCustomError("bad_extractor", "{problem}", {"problem": str(exc)}) from None


def _extractor_name(name: str, info: ValidationInfo) -> str:
    # file:PATH names a user's model file; its path is resolved (against the recipe's folder) below.
    if name.startswith("file:"):
        if not name[len("file:"):].strip():
            raise PydanticCustomError("empty_path", "file: needs a model path, e.g. file:models/mine.tflite", {})
        from automl.file_extractors import split_file_name

        try:
            split_file_name(name)
        except ConfigError as exc:
            raise PydanticCustomError("bad_extractor", "{problem}", {"problem": str(exc)}) from None
        return name
    key, valid = canonical(name), extractor_names()
    if key in valid:
        return key
    # Not built in: a pretrained extractor (automl pretrain) in the recipe's store, named by its file.
    from automl.pretrain import pretrained_names, pretrained_path

    store = (info.context or {}).get("extractor_store")
    path = pretrained_path(store, key)
    if path is not None:
        return f"file:{path}"
    raise _unknown("extractor", name, valid + pretrained_names(store))


ExtractorName = Annotated[str, BeforeValidator(_extractor_spec), AfterValidator(_extractor_name)]
HeadName = Annotated[str, _named("head", head_names)]


def _augment_shorthand(value: Any) -> Any:
    """``augment: dcgan`` means ``[{type: dcgan}]``: one variant or a list of them, names or mappings."""
    if isinstance(value, (str, dict, AugmentSpec)):
        value = [value]
    if isinstance(value, (list, tuple)):
        return [{"type": v} if isinstance(v, str) else v for v in value]
    return value


def _resolve(value: str, base_dir: Path | None) -> str:
    path = Path(value).expanduser()
    if base_dir is None or path.is_absolute():
        return str(path)
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), path))


def _is_weights_keyword(value: str) -> bool:
    return value.strip().lower() in (*WEIGHTS_KEYWORDS, "random")


# --- the model ---------------------------------------------------------------------------------


class Recipe(BaseModel):
    """One ``automl fit`` run. Field names are the recipe keys; the CLI flags are the same with ``-``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True,
                              title="automl recipe")

    name: Optional[str] = Field(None, min_length=1, description="A label for the run (shown in reports).")
    data: str = Field(..., min_length=1, description=(
        "Dataset: a folder of class folders, a folder with train/ and test/ (optionally val/), or a "
        "MedMNIST-style .npz. Relative paths are resolved against the recipe file's folder."))
    extractors: Annotated[list[ExtractorName], BeforeValidator(_split_list), _no_duplicates("extractor")] = Field(
        default=list(DEFAULT_EXTRACTORS), min_length=1,
        description="Frozen CNN feature extractors to search over (a list, or one comma-separated string).")
    weights: str = Field("imagenet", min_length=1, description=(
        "imagenet (the Keras download and cache), none (random, seeded: offline tests and demos), or "
        "the path of a weights file (relative to the recipe file's folder)."))
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=MIN_IMAGE_SIZE, description=(
        "Input side in pixels; each extractor has its own Keras minimum (75; 71 for xception)."))
    precision: str = Field("auto", description=(
        "auto (the fastest the hardware runs well), float32, bfloat16 or float16."))
    batch_size: Optional[int] = Field(None, ge=1, description="Images per model call (null: from the image size).")
    heads: Annotated[list[HeadName], BeforeValidator(_split_list), _no_duplicates("head")] = Field(
        default=list(DEFAULT_HEADS), min_length=1,
        description="Classifier heads to search over (a list, or one comma-separated string).")
    metric: Annotated[Literal[METRICS], BeforeValidator(_canonical_metric)] = Field(
        METRICS[0], description="What the search maximises on the cross-validation folds.")
    trials: Optional[int] = Field(30, ge=1, description="Optuna trials (null: until the timeout).")
    timeout: Optional[float] = Field(None, gt=0, description="Search time budget in seconds (null: no limit).")
    cv: int = Field(5, ge=2, description="Cross-validation folds on the train split.")
    seed: int = Field(0, ge=0, description="Seed for the split, the folds, the search and random weights.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description=(
        "Share of images held out as the test split, only when the dataset has no test split."))
    skip_bad: bool = Field(False, description="Leave out undecodable images (and list them) instead of failing.")
    store: Optional[str] = Field(None, min_length=1, description=(
        "Store folder (null: $AUTOML_STORE or ./store). Relative paths follow the recipe file's folder."))
    storage: Optional[str] = Field(None, min_length=1, description=(
        "Optuna storage URL, e.g. sqlite:///path/optuna.db or postgresql://... (null: SQLite in the store)."))
    augment: Annotated[Optional[list[AugmentSpec]], BeforeValidator(_augment_shorthand)] = Field(
        None, description=(
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
            info.context["extractor_store"] = (_resolve(store, info.context.get("base_dir"))
                                               if isinstance(store, str) and store else None)
        return data

    @field_validator("data", "store")
    @classmethod
    def _resolve_path(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if value is None:
            return None
        return _resolve(value, (info.context or {}).get("base_dir"))

    @field_validator("extractors")
    @classmethod
    def _resolve_model_files(cls, names: list[str], info: ValidationInfo) -> list[str]:
        base = (info.context or {}).get("base_dir")
        return [f"file:{_resolve(n[len('file:'):], base)}" if n.startswith("file:") else n for n in names]

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str, info: ValidationInfo) -> str:
        if _is_weights_keyword(value):
            key = value.strip().lower()
            return "none" if key == "random" else key  # parse_weights reads "random" as "none"
        return _resolve(value, (info.context or {}).get("base_dir"))

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        valid = precision_names()
        if value.strip().lower() not in valid:
            raise _unknown("precision", value, valid)
        return value.strip().lower()

    @field_validator("image_size")
    @classmethod
    def _image_size_fits_extractors(cls, value: int, info: ValidationInfo) -> int:
        # Checked here too (not only when a model is built) so `automl validate` catches it up front.
        from automl.extract import EXTRACTORS

        for name in info.data.get("extractors") or ():
            if name.startswith("file:"):
                continue  # a model file has its own input size
            minimum = getattr(EXTRACTORS.get(name), "min_size", 0)
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
        recipe = _apply_flags(self.model_dump(), flags, source=source)
        recipe._source = self._source
        return recipe


def _apply_flags(base: dict, flags: dict, source: str) -> Recipe:
    unknown = sorted(k for k in flags if k not in Recipe.model_fields)
    if unknown:
        raise RecipeError([_unknown_key_line(k, flag=True) for k in unknown], source=source)
    given = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in flags.items() if v is not None}
    for key in ("data", "store", "weights"):
        value = given.get(key)
        if isinstance(value, str) and not (key == "weights" and _is_weights_keyword(value)):
            given[key] = _resolve(value, Path.cwd())
    if isinstance(given.get("extractors"), list):
        given["extractors"] = [f"file:{_resolve(n[len('file:'):], Path.cwd())}" if str(n).startswith("file:") else n
                               for n in given["extractors"]]
    try:
        return Recipe.model_validate({**base, **given}, context={})
    except ValidationError as exc:
        raise RecipeError(explain_errors(exc, flags=True), source=source) from None


# --- errors ------------------------------------------------------------------------------------


class RecipeError(ConfigError):
    """A recipe (file or flags) has problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            message = f"{prefix}{len(self.problems)} problems:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


# What each field accepts, in words, and an example value for the fix.
_EXPECTED: dict[str, tuple[str, str]] = {
    "name": ("a non-empty string (a label for the run)", "chongqing-irv2-ffnn"),
    "data": ("a dataset path (a folder of class folders, a folder with train/ and test/, or a .npz file)",
             "data/chongqing"),
    "extractors": ("a non-empty list of extractor names (or one comma-separated string)", "[xception]"),
    "weights": ("imagenet, none, or the path of a weights file", "imagenet"),
    "image_size": (f"an integer >= {MIN_IMAGE_SIZE} (pixels)", str(DEFAULT_IMAGE_SIZE)),
    "precision": ("one of auto, float32, bfloat16, float16", "auto"),
    "batch_size": ("an integer >= 1, or null (from the image size)", "null"),
    "heads": ("a non-empty list of head names (or one comma-separated string)", "[ffnn]"),
    "metric": ("one of " + ", ".join(METRICS), METRICS[0]),
    "trials": ("an integer >= 1, or null (until the timeout)", "30"),
    "timeout": ("a number of seconds > 0, or null (no time limit)", "3600"),
    "cv": ("an integer >= 2 (cross-validation folds)", "5"),
    "seed": ("an integer >= 0", "0"),
    "test_fraction": ("a number strictly between 0 and 1", "0.2"),
    "skip_bad": ("true or false", "false"),
    "store": ("a folder path, or null ($AUTOML_STORE or ./store)", "store"),
    "storage": ("an Optuna storage URL (sqlite:///..., postgresql://...), or null (SQLite in the store)",
                "sqlite:///store/optuna.db"),
    "augment": ("an augmenter name, or a mapping with type, ratio (> 0, balance or full), classes (minority, all "
                "or a list of class names), mix (real+synthetic or synthetic-only), real_fraction (0 < f <= 1), "
                "params, label; or a list of those", "{type: conventional, ratio: 1.0}"),
    "repeats": ("an integer >= 1 (seeds per variant in automl compare)", "5"),
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({_kind(value)})"


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _flag(field: str) -> str:
    return "DATA" if field == "data" else "--" + field.replace("_", "-")


def _valid_keys() -> str:
    return ", ".join(Recipe.model_fields)


def _unknown_key_line(key: Any, *, flag: bool = False) -> str:
    text = str(key)
    candidates = list(Recipe.model_fields)
    close = difflib.get_close_matches(text.replace("-", "_").lower(), candidates, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    what = "override" if flag else "key"
    return (f"{text}: unknown {what}.{hint} Valid keys: {_valid_keys()}. "
            f"Fix: rename or remove {text!r}.")


def explain_errors(exc: ValidationError, *, lines: dict[tuple, int] | None = None,
                   flags: bool = False) -> list[str]:
    """One line per problem: where, the field path, what was expected, what was found, the fix.

    ``lines`` maps a location (``("heads", 1)``) to its line in the YAML file; ``flags`` words the
    fix as a command-line flag instead of a recipe key.
    """
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = (lines.get(loc) or lines.get(loc[:1]) or 0) if lines else 0
        out.append((line, (f"line {line}: " if line else "") + _explain_one(err, loc, flags)))
    return [text for _, text in sorted(out, key=lambda item: item[0])]


def _explain_one(err: dict, loc: tuple, flags: bool) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    path = _field_path(loc)
    field = str(loc[0]) if loc else ""
    if kind == "extra_forbidden":
        return _unknown_key_line(field, flag=flags)
    if kind == "no_budget":
        return ("trials, timeout: both are null, so the search would never stop; expected trials >= 1, "
                "a timeout in seconds, or both. Fix: set e.g. `trials: 30` or `timeout: 3600`.")
    expected, example = _expected_and_example(field)
    if flags and field == "skip_bad":
        fix = "pass --skip-bad, or leave it out"
    elif flags:
        fix = f"pass e.g. {_flag(field)} {example.strip('[]')}"
    else:
        fix = f"write e.g. `{field}: {example}`"
    if kind == "missing":
        return f"{path}: missing; expected {expected}. Fix: {fix}."
    found = _show(err.get("input"))
    if kind == "value_error":
        return f"{path}: {str(err['msg']).removeprefix('Value error, ')}."
    if kind == "bad_extractor":
        return f"{path}: {ctx['problem']}"
    if kind == "unknown_name":
        hint = f" Did you mean {ctx['suggestion']!r}?" if ctx.get("suggestion") else ""
        return (f"{path}: unknown {ctx['kind']}; expected one of {', '.join(ctx['valid'])}; found {found}.{hint} "
                f"Fix: use one of the listed names.")
    if kind == "duplicate_name":
        return (f"{path}: {ctx['kind']} listed more than once ({ctx['names']}); expected each once. "
                "Fix: remove the repeat.")
    if kind == "image_too_small":
        return (f"{path}: {ctx['extractor']} needs at least {ctx['minimum']} pixels; found {found}. "
                f"Fix: set image_size >= {ctx['minimum']} or leave {ctx['extractor']} out.")
    if kind in ("list_type", "string_type") and loc and isinstance(loc[-1], int):
        what = "an extractor name" if field == "extractors" else "a head name"
        return f"{path}: expected {what} (a string); found {found}. Fix: {fix}."
    if kind in ("too_short",) and field in ("extractors", "heads"):
        return f"{path}: empty; expected {expected}. Fix: {fix}, or leave the key out for the default."
    return f"{path}: expected {expected}; found {found}. Fix: {fix}."


def _expected_and_example(field: str) -> tuple[str, str]:
    if field == "extractors":
        return (f"a non-empty list of: {', '.join(extractor_names())}, file:PATH (a model file) or the name of an "
                "extractor made by `automl pretrain` (or one comma-separated string)", "[xception]")
    if field == "heads":
        return f"a non-empty list of: {', '.join(head_names())} (or one comma-separated string)", "[ffnn]"
    return _EXPECTED.get(field, ("a valid value", "..."))


# --- files -------------------------------------------------------------------------------------


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a recipe file; relative paths in it follow the file's folder.

    Raises ``RecipeError`` (a ``ConfigError``) naming the file and, for each problem, its line, the
    field, what was expected, what was found and the fix.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise RecipeError([f"the recipe file {what}. Fix: pass the path of a .yaml recipe "
                           "(see recipes/ for examples)."], source=source)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError([f"not UTF-8 text ({exc.reason} at byte {exc.start}); expected a YAML file. "
                           "Fix: save the recipe as UTF-8."], source=source) from None
    except OSError as exc:
        raise RecipeError([f"cannot be read ({exc.strerror}). Fix: check the file's permissions."],
                          source=source) from None
    data, lines = _parse_yaml(text, source)
    recipe = _validate(data, source, lines, base_dir=path.resolve().parent)
    recipe._source = source
    return recipe


def parse_recipe(text: str, *, base_dir: str | os.PathLike | None = None, source: str = "<recipe>") -> Recipe:
    """Validate recipe YAML given as text (relative paths follow ``base_dir`` when given)."""
    data, lines = _parse_yaml(text, source)
    recipe = _validate(data, source, lines, base_dir=None if base_dir is None else Path(base_dir))
    recipe._source = source
    return recipe


def _parse_yaml(text: str, source: str) -> tuple[dict, dict[tuple, int]]:
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes only, for line numbers and duplicate keys
    except yaml.constructor.ConstructorError as exc:
        raise RecipeError([_yaml_where(exc) + f"{exc.problem}; recipes are read with yaml.safe_load, which "
                           "builds only plain data (mappings, lists, strings, numbers, booleans, null). "
                           "Fix: remove the tag and write the value as plain data."], source=source) from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise RecipeError([_yaml_where(exc) + f"YAML syntax error: {detail}. Fix: check the indentation, "
                           "colons and quotes on that line (and the line before)."], source=source) from None
    if data is None:
        raise RecipeError(["the file is empty (or only comments); expected a mapping of recipe keys, at "
                           f"least `data: PATH`. Valid keys: {_valid_keys()}."], source=source)
    if not isinstance(data, dict):
        raise RecipeError([f"the top level is {_kind(data)}; expected a mapping of recipe keys "
                           f"(`key: value` lines, at least `data: PATH`). Valid keys: {_valid_keys()}."],
                          source=source)
    lines: dict[tuple, int] = {}
    dupes = []
    for key_node, value_node in node.value:
        key = key_node.value
        if (key,) in lines:
            dupes.append(f"line {key_node.start_mark.line + 1}: {key}: given twice (also on line "
                         f"{lines[(key,)]}); expected each key once. Fix: keep one of them.")
            continue
        lines[(key,)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.SequenceNode):
            for i, item in enumerate(value_node.value):
                lines[(key, i)] = item.start_mark.line + 1
    if dupes:
        raise RecipeError(dupes, source=source)
    return data, lines


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""


def _validate(data: dict, source: str, lines: dict[tuple, int], base_dir: Path | None) -> Recipe:
    try:
        return Recipe.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise RecipeError(explain_errors(exc, lines=lines), source=source) from None


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe (every key, defaults included) as YAML that ``load_recipe`` reads back."""
    header = "# automl recipe, resolved: every key with the value the run used.\n"
    return header + yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None,
                                   allow_unicode=True)


def recipe_json_schema() -> dict:
    """JSON Schema of a recipe file, with the valid component names filled in from the registries."""
    schema = Recipe.model_json_schema()
    props = schema["properties"]
    props["extractors"]["items"]["enum"] = extractor_names()
    props["heads"]["items"]["enum"] = head_names()
    props["precision"]["enum"] = precision_names()
    return schema
