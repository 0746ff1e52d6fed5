"""Recipes: the shipped files, defaults, canonical names, paths, every error's wording, overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from automl.errors import ConfigError
from automl.recipe import (DEFAULT_EXTRACTORS, DEFAULT_HEADS, METRICS, Recipe, RecipeError, explain_errors,
                           extractor_names, head_names, load_recipe, parse_recipe, recipe_json_schema,
                           recipe_to_yaml)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message, message  # every recipe error names the file
    return message


# --- the shipped recipes -------------------------------------------------------------------------


def test_recipes_folder_ships_the_four():
    assert {p.stem for p in RECIPES} >= {"chongqing", "brain-mri", "retinopathy", "demo"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert Path(recipe.data).is_absolute()
    assert load_recipe(path) == recipe
    # Comments explain the fields: every key written in the file carries one somewhere.
    assert path.read_text().count("#") >= 5


@pytest.mark.parametrize("stem, extractor, head", [
    ("chongqing", "inception-resnet-v2", "ffnn"),
    ("brain-mri", "xception", "svc-rbf"),
    ("retinopathy", "inception-v3", "logreg-elasticnet"),
])
def test_study_recipes(stem, extractor, head):
    recipe = load_recipe(ROOT / "recipes" / f"{stem}.yaml")
    assert recipe.extractors == [extractor]
    assert recipe.heads == [head]
    assert recipe.weights == "imagenet"
    assert recipe.data == str(ROOT / "data" / stem)


def test_demo_recipe_is_offline_and_small():
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    assert recipe.data == str(ROOT / "demo")  # where `automl demo-data demo` writes from the repo root
    assert recipe.weights == "none"
    assert recipe.image_size == 75
    assert recipe.extractors == list(DEFAULT_EXTRACTORS)
    assert recipe.heads == list(DEFAULT_HEADS)
    assert recipe.trials is not None and recipe.trials <= 20
    assert recipe.cv == 3


# --- defaults and canonical names ------------------------------------------------------------------


def test_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, "data: images\n"))
    assert recipe.data == str(tmp_path / "images")
    assert recipe.extractors == ["inception-resnet-v2", "xception", "inception-v3"]
    assert recipe.heads == ["ffnn", "svc-rbf", "logreg-elasticnet"]
    assert (recipe.weights, recipe.image_size, recipe.precision, recipe.batch_size) == ("imagenet", 299, "auto", None)
    assert (recipe.trials, recipe.timeout, recipe.metric, recipe.cv, recipe.seed) == (30, None, "macro-f1", 5, 0)
    assert (recipe.test_fraction, recipe.skip_bad, recipe.store, recipe.storage, recipe.name) == (
        0.2, False, None, None, None)


def test_constants_agree_with_extract():
    from automl.extractors import DEFAULT_IMAGE_SIZE, EXTRACTORS, PRECISIONS

    assert Recipe.model_fields["image_size"].default == DEFAULT_IMAGE_SIZE
    assert sorted(DEFAULT_EXTRACTORS) == EXTRACTORS.names() == extractor_names()
    assert recipe_json_schema()["properties"]["precision"]["enum"] == list(PRECISIONS)
    assert set(DEFAULT_HEADS) <= set(head_names())


def test_every_fit_option_is_a_field():
    assert list(Recipe.model_fields) == [
        "name", "data", "extractors", "weights", "image_size", "precision", "batch_size", "heads", "metric",
        "trials", "timeout", "cv", "seed", "test_fraction", "skip_bad", "store", "storage", "workers", "augment",
        "repeats"]


def test_names_are_canonicalised(tmp_path):
    recipe = load_recipe(write(tmp_path, """
data: d
extractors: [Inception_V3, XCEPTION]
heads: [SVC_RBF, logreg_elasticnet]
metric: macro_f1
precision: Float32
weights: ImageNet
"""))
    assert recipe.extractors == ["inception-v3", "xception"]
    assert recipe.heads == ["svc-rbf", "logreg-elasticnet"]
    assert recipe.metric == "macro-f1"
    assert recipe.precision == "float32"
    assert recipe.weights == "imagenet"


@pytest.mark.parametrize("metric", METRICS)
def test_every_metric(tmp_path, metric):
    assert load_recipe(write(tmp_path, f"data: d\nmetric: {metric.replace('-', '_').upper()}\n")).metric == metric


def test_comma_separated_strings(tmp_path):
    recipe = load_recipe(write(tmp_path, "data: d\nextractors: xception, inception_v3\nheads: 'ffnn,svc-rbf'\n"))
    assert recipe.extractors == ["xception", "inception-v3"]
    assert recipe.heads == ["ffnn", "svc-rbf"]


def test_relative_paths_follow_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    path = write(folder, "data: ../demo\nweights: w/model.h5\nstore: ../store\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the answer must not depend on the working directory
    recipe = load_recipe(os.path.relpath(path))
    assert recipe.data == str(tmp_path / "demo")
    assert recipe.weights == str(folder / "w" / "model.h5")
    assert recipe.store == str(tmp_path / "store")


def test_absolute_paths_and_keywords_are_kept(tmp_path):
    recipe = load_recipe(write(tmp_path, "data: /data/x.npz\nweights: none\nstore: /srv/store\n"))
    assert (recipe.data, recipe.weights, recipe.store) == ("/data/x.npz", "none", "/srv/store")


def test_timeout_only_budget(tmp_path):
    recipe = load_recipe(write(tmp_path, "data: d\ntrials: null\ntimeout: 90\n"))
    assert recipe.trials is None and recipe.timeout == 90.0


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_key_lists_valid_keys_and_suggests(tmp_path):
    message = error_for(tmp_path, "data: d\ntrails: 10\n")
    assert "trails" in message and "line 2" in message
    assert "Did you mean 'trials'?" in message
    for key in Recipe.model_fields:
        assert key in message


def test_dashed_key_suggests_underscore(tmp_path):
    assert "Did you mean 'image_size'?" in error_for(tmp_path, "data: d\nimage-size: 75\n")


def test_unknown_extractor_lists_valid_names(tmp_path):
    message = error_for(tmp_path, "data: d\nextractors: [xception, inceptionv3]\n")
    assert "extractors[1]" in message and "'inceptionv3'" in message
    assert ", ".join(extractor_names()) in message
    assert "Did you mean 'inception-v3'?" in message


def test_unknown_head_lists_valid_names(tmp_path):
    message = error_for(tmp_path, "data: d\nheads:\n  - ffnn\n  - svm\n")
    assert "line 4: heads[1]" in message and "'svm'" in message
    assert ", ".join(head_names()) in message


def test_unknown_metric_lists_valid_names(tmp_path):
    message = error_for(tmp_path, "data: d\nmetric: f1\n")
    assert "metric" in message and "'f1'" in message
    for metric in METRICS:
        assert metric in message


def test_unknown_precision_lists_valid_names(tmp_path):
    message = error_for(tmp_path, "data: d\nprecision: half\n")
    assert "precision" in message and "bfloat16" in message and "'half'" in message


@pytest.mark.parametrize("line, field, expected, found", [
    ("cv: 1", "cv", "an integer >= 2", "found 1"),
    ("trials: 0", "trials", "an integer >= 1", "found 0"),
    ("test_fraction: 1.5", "test_fraction", "strictly between 0 and 1", "found 1.5"),
    ("test_fraction: 0", "test_fraction", "strictly between 0 and 1", "found 0"),
    ("timeout: -5", "timeout", "> 0", "found -5"),
    ("timeout: .inf", "timeout", "> 0", "found inf"),
    ("image_size: 32", "image_size", ">= 71", "found 32"),
    ("batch_size: 0", "batch_size", ">= 1", "found 0"),
    ("seed: -1", "seed", ">= 0", "found -1"),
    ("cv: five", "cv", "an integer", "found 'five' (a string)"),
    ("cv: '5'", "cv", "an integer", "found '5' (a string)"),
    ("trials: 2.5", "trials", "an integer", "found 2.5 (a number)"),
    ("skip_bad: maybe", "skip_bad", "true or false", "found 'maybe' (a string)"),
    ("image_size: true", "image_size", "an integer", "found true (a boolean)"),
    ("extractors: {a: 1}", "extractors", "list of", "(a mapping)"),
    ("heads: [ffnn, 3]", "heads[1]", "a head name", "found 3 (an integer)"),
    ("heads: []", "heads", "non-empty list", "empty"),
    ("heads: [ffnn, FFNN]", "heads", "each once", "ffnn"),
    ("name: ''", "name", "non-empty string", "found ''"),
    ("storage: store/optuna.db", "storage", "URL", "'store/optuna.db'"),
    ("weights: null", "weights", "imagenet, none", "found null"),
])
def test_bad_values_name_field_expected_found_and_fix(tmp_path, line, field, expected, found):
    message = error_for(tmp_path, f"data: d\n{line}\n")
    assert f"line 2: {field}:" in message, message
    assert expected in message and found in message, message
    assert "Fix:" in message


def test_image_size_below_an_extractors_minimum(tmp_path):
    message = error_for(tmp_path, "data: d\nextractors: [xception, inception-v3]\nimage_size: 72\n")
    assert "image_size" in message and "inception-v3" in message and "75" in message
    assert load_recipe(write(tmp_path, "data: d\nextractors: xception\nimage_size: 71\n")).image_size == 71


def test_no_budget(tmp_path):
    message = error_for(tmp_path, "data: d\ntrials: null\ntimeout: null\n")
    assert "trials" in message and "timeout" in message and "null" in message and "Fix:" in message


def test_missing_data(tmp_path):
    message = error_for(tmp_path, "cv: 3\n")
    assert "data: missing" in message and "Fix:" in message


def test_every_problem_is_reported_one_per_line_in_file_order(tmp_path):
    path = write(tmp_path, "data: d\nmetric: f1\ncv: 1\ntrails: 3\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4"]
    assert str(info.value).splitlines()[0] == f"{path}: 3 problems:"
    assert all("\n" not in p for p in problems)


def test_yaml_syntax_error_names_the_line(tmp_path):
    message = error_for(tmp_path, "data: d\ncv: 3\nheads: [ffnn, svc-rbf\ntrials: 5\n")
    assert "YAML syntax error" in message and "line 4" in message


def test_yaml_bad_indentation(tmp_path):
    message = error_for(tmp_path, "data: d\n  cv: 3\n")
    assert "YAML syntax error" in message and "line 2" in message


@pytest.mark.parametrize("text, found", [
    ("- data: d\n- cv: 3\n", "a list"),
    ("just a string\n", "a string"),
    ("42\n", "an integer"),
])
def test_top_level_must_be_a_mapping(tmp_path, text, found):
    message = error_for(tmp_path, text)
    assert f"the top level is {found}" in message and "expected a mapping" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    message = error_for(tmp_path, text)
    assert "empty" in message and "data: PATH" in message


def test_duplicate_key(tmp_path):
    message = error_for(tmp_path, "data: d\ncv: 3\ncv: 4\n")
    assert "line 3: cv: given twice (also on line 2)" in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_recipe(tmp_path)


def test_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    message = error_for(tmp_path, f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    assert "safe_load" in message and "python/object" in message and "line 1" in message
    assert not marker.exists()
    message = error_for(tmp_path, "data: d\nname: !!python/object:collections.OrderedDict {}\n")
    assert "line 2" in message and "python/object" in message


def test_explain_errors_on_direct_construction():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        Recipe(data="d", cv=1, metric="f2")
    lines = explain_errors(info.value)
    assert len(lines) == 2 and any(line.startswith("cv:") for line in lines)


# --- overrides and the saved recipe ---------------------------------------------------------------


def test_with_overrides_replaces_only_given_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(ROOT / "recipes" / "chongqing.yaml")
    new = recipe.with_overrides(trials=50, cv=None, extractors="xception,inception_v3", data=Path("mine"),
                                weights="none", timeout=None)
    assert new.trials == 50
    assert new.extractors == ["xception", "inception-v3"]
    assert new.data == str(tmp_path / "mine")  # a flag's relative path follows the working directory
    assert new.weights == "none"
    changed = {"trials", "extractors", "data", "weights"}
    assert {k: v for k, v in new.model_dump().items() if k not in changed} == {
        k: v for k, v in recipe.model_dump().items() if k not in changed}
    assert recipe.trials == 30  # the original is untouched


def test_with_overrides_revalidates():
    recipe = Recipe(data="d")
    with pytest.raises(ConfigError) as info:
        recipe.with_overrides(cv=1)
    assert "--cv" in str(info.value) and "cv" in str(info.value)
    with pytest.raises(ConfigError, match="unknown head"):
        recipe.with_overrides(heads=["svm"])
    with pytest.raises(ConfigError, match="Did you mean 'trials'"):
        recipe.with_overrides(trails=5)


def test_override_error_names_the_recipe_file():
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    with pytest.raises(ConfigError) as info:
        recipe.with_overrides(test_fraction=2.0)
    assert "demo.yaml" in str(info.value) and "test_fraction" in str(info.value)


def test_from_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = Recipe.from_flags(data="imgs", trials=None, cv=3, heads=None)
    assert recipe.data == str(tmp_path / "imgs") and recipe.cv == 3 and recipe.trials == 30
    with pytest.raises(ConfigError, match="data: missing"):
        Recipe.from_flags(cv=3)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_to_yaml_round_trips(tmp_path, path):
    recipe = load_recipe(path).with_overrides(timeout=60.0, name="copy", storage="sqlite:///x.db")
    text = recipe_to_yaml(recipe)
    assert yaml.safe_load(text)["extractors"] == recipe.extractors
    (tmp_path / "run").mkdir()
    assert load_recipe(write(tmp_path / "run", text, "recipe.yaml")) == recipe


def test_recipe_to_yaml_writes_every_key(tmp_path):
    text = recipe_to_yaml(load_recipe(write(tmp_path, "data: d\n")))
    assert list(yaml.safe_load(text)) == list(Recipe.model_fields)


# --- schema and import cost ------------------------------------------------------------------------


def test_json_schema():
    schema = recipe_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["data"]
    props = schema["properties"]
    assert props["extractors"]["items"]["enum"] == extractor_names()
    assert props["heads"]["items"]["enum"] == head_names()
    assert props["metric"]["enum"] == list(METRICS)
    assert props["cv"]["minimum"] == 2
    assert all(p.get("description") for p in props.values())


def test_import_is_light():
    code = ("import sys, automl.recipe; heavy = [m for m in ('PIL', 'tensorflow', 'keras', 'torch', "
            "'sklearn', 'automl.extractors.file_models', 'automl.heads') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# --- messages come from the fields' own declarations ---------------------------------------------


@pytest.mark.parametrize("key", list(Recipe.model_fields))
def test_every_key_words_what_it_accepts_and_has_a_valid_example(key):
    from automl.recipe.explain import example, expected

    field = Recipe.model_fields[key]
    assert expected(field) != "a valid value"
    Recipe.model_validate({"data": "d", key: example(field)}, context={})  # the fix it suggests is valid


def test_expected_words_are_derived_from_constraints():
    from typing import Literal, Optional

    from pydantic import BaseModel, Field, ValidationError

    from automl.recipe.explain import explain, expected

    class Toy(BaseModel):
        model_config = {"extra": "forbid", "strict": True}
        folds: int = Field(3, ge=3)
        share: float = Field(0.5, gt=0, le=1)
        budget: Optional[float] = Field(None, gt=0, examples=[60], description="Seconds (null: forever).")
        mode: Literal["fast", "slow"] = "fast"
        tags: list[str] = Field(default_factory=list, min_length=1, examples=[["a"]])

    fields = Toy.model_fields
    assert expected(fields["folds"]) == "an integer >= 3"
    assert expected(fields["share"]) == "a number > 0 and <= 1"
    assert expected(fields["budget"]) == "a number > 0, or null (forever)"
    assert expected(fields["mode"]) == "one of fast, slow"
    assert expected(fields["tags"]) == "a non-empty list, each a string"
    with pytest.raises(ValidationError) as info:
        Toy(folds=1, budget=-1, colour=2)
    lines = explain(info.value, fields)
    assert lines[0] == "folds: expected an integer >= 3; found 1 (an integer). Fix: write e.g. `folds: 3`."
    assert "budget: expected a number > 0, or null (forever); found -1" in lines[1] and "`budget: 60`" in lines[1]
    assert lines[2].startswith("colour: unknown key. Valid keys: folds, share, budget, mode, tags.")


def test_unknown_key_in_an_augment_variant_lists_the_variants_keys(tmp_path):
    message = error_for(tmp_path, "data: d\naugment:\n  type: conventional\n  ratoi: 2\n")
    assert "augment[0].ratoi: unknown key. Did you mean 'ratio'?" in message
    assert "Valid keys: type, ratio, classes" in message


def test_the_recipe_package_imports_no_orchestration():
    from test_layers import graph

    assert not graph()["recipe"] & {"pipeline", "search", "store", "runs", "pretrain", "api"}
