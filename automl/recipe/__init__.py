"""A recipe: one ``automl fit`` run as a YAML file, validated by a pydantic model.

- ``model.py``: the ``Recipe`` model (every ``automl fit`` flag a key), ``from_flags`` and
  ``with_overrides``; ``fields.py``: its field types (component names, comma-separated lists, paths).
- ``explain.py``: validation errors as one line per problem (``RecipeError``), worded from the
  fields' own constraints and examples.
- ``load.py``: YAML files and text in (``safe_load`` only, with line numbers), YAML and JSON Schema out.

Import cost is pydantic, PyYAML and the extractor registry (which loads no framework): the head
registry is imported when a recipe is validated, not when this package is. This package never
imports the pipeline, the search, the store or the run records.
"""

from automl.evaluate import METRICS
from automl.extractors import DEFAULT_IMAGE_SIZE, MIN_IMAGE_SIZE
from automl.recipe.explain import RecipeError
from automl.recipe.fields import extractor_names, head_names, precision_names
from automl.recipe.load import load_recipe, parse_recipe, recipe_json_schema, recipe_to_yaml
from automl.recipe.model import DEFAULT_EXTRACTORS, DEFAULT_HEADS, Recipe, explain_errors

__all__ = ["DEFAULT_EXTRACTORS", "DEFAULT_HEADS", "DEFAULT_IMAGE_SIZE", "METRICS", "MIN_IMAGE_SIZE", "Recipe",
           "RecipeError", "explain_errors", "extractor_names", "head_names", "load_recipe", "parse_recipe",
           "precision_names", "recipe_json_schema", "recipe_to_yaml"]
