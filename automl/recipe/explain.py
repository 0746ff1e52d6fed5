"""Pydantic ``ValidationError``s as one line per problem: where, the field, what was expected, what
was found, and the fix.

What a field accepts is read from the field itself, never restated: its type and Optional-ness, its
``Field`` constraints (``ge``, ``gt``, ``lt``, ``le``, ``min_length``), the ``Literal`` choices, the
registry names of its items (``fields.Names``), and its description's ``(null: ...)``. The example
in a fix is the field's ``examples[0]``, else its default. A field whose type says too little (a
path is a string) words itself with ``json_schema_extra={"expects": ...}``.

The functions take the model's fields (``Recipe.model_fields``): this module does not import the model.
"""

from __future__ import annotations

import difflib
import re
import types
from typing import Annotated, Any, Literal, Mapping, Optional, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from automl.errors import ConfigError
from automl.recipe.fields import CommaList, Names

Fields = Mapping[str, FieldInfo]


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


# --- what a field accepts, from its declaration --------------------------------------------------


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> (X, True); anything else -> (it, False)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) < len(get_args(annotation)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True
    return annotation, False


def _annotated(annotation: Any) -> tuple[Any, list]:
    """``Annotated[X, *meta]`` -> (X, meta)."""
    if get_origin(annotation) is Annotated:
        inner, *meta = get_args(annotation)
        return inner, meta
    return annotation, []


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_BOUNDS = ((at.Gt, "gt", ">"), (at.Ge, "ge", ">="), (at.Lt, "lt", "<"), (at.Le, "le", "<="))


def _bounds(metadata: list) -> str:
    """" >= 1", " strictly between 0 and 1", " > 0 and <= 1" (lower bound first)."""
    bounds = sorted(((op, getattr(m, attr)) for m in metadata for kind, attr, op in _BOUNDS if isinstance(m, kind)),
                    key=lambda bound: bound[0][0] == "<")
    if [op for op, _ in bounds] == [">", "<"]:
        return f" strictly between {_number(bounds[0][1])} and {_number(bounds[1][1])}"
    return "".join(f"{' and' if i else ''} {op} {_number(value)}" for i, (op, value) in enumerate(bounds))


def _non_empty(metadata: list) -> bool:
    return any(isinstance(m, at.MinLen) and m.min_length >= 1 for m in metadata)


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _words(annotation: Any, metadata: list) -> str:
    annotation, inner_meta = _annotated(annotation)
    metadata = metadata + inner_meta
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(choice) for choice in get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer" + _bounds(metadata)
    if annotation is float:
        return "a number" + _bounds(metadata)
    if annotation is str:
        return "a non-empty string" if _non_empty(metadata) else "a string"
    if origin is list:
        item, item_meta = _annotated(get_args(annotation)[0])
        names = next((m for m in item_meta if isinstance(m, Names)), None)
        items = f" of: {names.choices()}" if names else f", each {_words(item, item_meta)}"
        text = ("a non-empty list" if _non_empty(metadata) else "a list") + items
        return text + (" (or one comma-separated string)" if CommaList in metadata else "")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping of " + ", ".join(annotation.model_fields)
    return "a valid value"


_NULL_MEANS = re.compile(r"\(null: ([^)]*)\)")


def expected(field: FieldInfo) -> str:
    """What ``field`` accepts, in words: "an integer >= 1, or null (until the timeout)"."""
    annotation, optional = _optional(field.annotation)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    words = extra.get("expects") or _words(annotation, list(field.metadata))
    if optional:
        means = _NULL_MEANS.search(field.description or "")
        words += ", or null" + (f" ({means.group(1)})" if means else "")
    return words


def _item(field: FieldInfo) -> Optional[Names]:
    annotation, _ = _optional(field.annotation)
    if get_origin(annotation) is not list:
        return None
    return next((m for m in _annotated(get_args(annotation)[0])[1] if isinstance(m, Names)), None)


def example(field: FieldInfo) -> Any:
    """The value a fix suggests: the field's first example, else its default."""
    if field.examples:
        return field.examples[0]
    return None if field.default is PydanticUndefined else field.default


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20)
    return text.removesuffix("\n").removesuffix("\n...")


def _fix(name: str, field: Optional[FieldInfo], flags: bool) -> str:
    value = example(field) if field is not None else "..."
    if flags and isinstance(value, bool):
        return f"pass {_flag(name)}, or leave it out"
    if flags:
        shown = ",".join(map(str, value)) if isinstance(value, list) else _yaml(value)
        return f"pass e.g. {_flag(name)} {shown}"
    return f"write e.g. `{name}: {_yaml(value)}`"


# --- the found value ------------------------------------------------------------------------------


def kind_of(value: Any) -> str:
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
    return f"{text} ({kind_of(value)})"


# --- the lines --------------------------------------------------------------------------------------


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _flag(field: str) -> str:
    return "DATA" if field == "data" else "--" + field.replace("_", "-")


def valid_keys(fields: Fields) -> str:
    return ", ".join(fields)


def unknown_key_line(key: Any, fields: Fields, *, flag: bool = False, where: str = "") -> str:
    text = str(key)
    close = difflib.get_close_matches(text.replace("-", "_").lower(), list(fields), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    what = "override" if flag else "key"
    return (f"{where + '.' if where else ''}{text}: unknown {what}.{hint} Valid keys: {valid_keys(fields)}. "
            f"Fix: rename or remove {text!r}.")


def _nested_model(field: Optional[FieldInfo]) -> Optional[type[BaseModel]]:
    """The pydantic model a field holds (``Optional[list[AugmentSpec]]`` -> ``AugmentSpec``), if any."""
    annotation = _optional(field.annotation)[0] if field is not None else None
    while get_origin(annotation) in (list, Annotated):
        annotation = get_args(annotation)[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _inner_field(loc: tuple, fields: Fields) -> Optional[FieldInfo]:
    """The field ``loc`` names inside a nested model (``augment[0].filter.selective``: ``selective``),
    or None for a top-level field and anything that is not a nested model's field."""
    model_fields, field, depth = fields, None, 0
    for part in loc:
        if isinstance(part, int):
            continue
        if model_fields is None or part not in model_fields:
            return None
        field, depth = model_fields[part], depth + 1
        model = _nested_model(field)
        model_fields = model.model_fields if model is not None else None
    return field if depth > 1 else None


def explain(exc: ValidationError, fields: Fields, *, lines: dict[tuple, int] | None = None,
            flags: bool = False) -> list[str]:
    """One line per problem, in file order: where, the field path, what was expected, what was found, the fix.

    ``lines`` maps a location (``("heads", 1)``) to its line in the YAML file; ``flags`` words the
    fix as a command-line flag instead of a recipe key.
    """
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = (lines.get(loc) or lines.get(loc[:1]) or 0) if lines else 0
        out.append((line, (f"line {line}: " if line else "") + _explain_one(err, loc, fields, flags)))
    return [text for _, text in sorted(out, key=lambda item: item[0])]


def _explain_one(err: dict, loc: tuple, fields: Fields, flags: bool) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    path = _field_path(loc)
    name = str(loc[0]) if loc else ""
    if kind == "extra_forbidden" and len(loc) > 1:  # a key inside a nested mapping (an augment variant)
        model = _nested_model(fields.get(name))
        return unknown_key_line(loc[-1], model.model_fields if model else {}, where=_field_path(loc[:-1]))
    if kind == "extra_forbidden":
        return unknown_key_line(name, fields, flag=flags)
    if kind == "no_budget":
        return ("trials, timeout: both are null, so the search would never stop; expected trials >= 1, "
                "a timeout in seconds, or both. Fix: set e.g. `trials: 30` or `timeout: 3600`.")
    field = fields.get(name)
    expects = expected(field) if field is not None else "a valid value"
    fix = _fix(name, field, flags)
    if kind == "missing":
        return f"{path}: missing; expected {expects}. Fix: {fix}."
    found = _show(err.get("input"))
    if kind == "value_error":
        return f"{path}: {str(err['msg']).removeprefix('Value error, ')}."
    if _inner_field(loc, fields) is not None:  # a key of a nested mapping (augment[0].filter.selective)
        return f"{path}: {err['msg']}; found {found}. Fix: give {loc[-1]} such a value, or leave it out."
    if kind == "string_unicode":  # a str holding surrogate escapes: a path with a name that is not UTF-8
        return (f"{path}: found {found}, which holds bytes that are not UTF-8 (shown as \\udcNN); a recipe "
                "value must be text. Fix: rename that file or folder with UTF-8 characters only.")
    if kind in ("bad_extractor", "bad_storage"):
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
    names = _item(field) if field is not None else None
    if names is not None and len(loc) > 1 and isinstance(loc[1], int):
        return f"{path}: expected {_a(names.kind)} name (a string); found {found}. Fix: {fix}."
    if kind == "too_short" and isinstance(err.get("input"), list):
        return f"{path}: empty; expected {expects}. Fix: {fix}, or leave the key out for the default."
    return f"{path}: expected {expects}; found {found}. Fix: {fix}."
