"""Recipe files: YAML in (``load_recipe``, ``parse_recipe``), YAML and JSON Schema out.

YAML is read with ``yaml.safe_load`` only: tags such as ``!!python/object`` are refused. Every
problem is reported with its line; a key given twice is an error (PyYAML would keep the last).
``recipe_to_yaml`` writes the resolved recipe a run folder keeps.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from automl.recipe.explain import RecipeError, kind_of, valid_keys
from automl.recipe.fields import extractor_names, head_names
from automl.recipe.model import Recipe, explain_errors


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
    keys = valid_keys(Recipe.model_fields)
    if data is None:
        raise RecipeError(["the file is empty (or only comments); expected a mapping of recipe keys, at "
                           f"least `data: PATH`. Valid keys: {keys}."], source=source)
    if not isinstance(data, dict):
        raise RecipeError([f"the top level is {kind_of(data)}; expected a mapping of recipe keys "
                           f"(`key: value` lines, at least `data: PATH`). Valid keys: {keys}."], source=source)
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
    for prop in props.values():
        prop.pop("expects", None)  # words for error messages (explain.py), not a JSON Schema keyword
    return schema
