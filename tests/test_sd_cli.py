"""End to end: a recipe whose augment entry is sd-img2img on the tiny SD model, through `automl run`
(the augmented fit beside its baseline) and `automl compare` (two repeats, the table and verdict)."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from conftest import class_folders, run_cli  # noqa: E402

RECIPE = """\
name: sd-tiny
data: {data}
extractors: [inception-v3]
weights: none
image_size: 75
precision: float32
heads: [logreg-elasticnet]
trials: 2
cv: 2
seed: 0
store: {store}
augment:
  - type: sd-img2img
    ratio: 1.0
    classes: minority
    params: {{model: {model}, resolution: 32, steps: 4, strength: 0.5}}
"""


def test_run_recipe_with_sd_img2img(tiny_sd, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = class_folders(tmp_path / "data", {"big": 12, "small": 6}, size=(32, 32))
    store = tmp_path / "store"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(data=data, store=store, model=tiny_sd))
    code, out, err = run_cli(capsys, "run", recipe, "--no-progress")
    assert code == 0, err
    assert "augmented" in out and "difference" in out
    records = [json.loads((r / "run.json").read_text()) for r in sorted((store / "runs").iterdir())]
    aug = next(r for r in records if r["augment"])
    assert aug["augment"]["augmenter"] == "sd-img2img"
    n_small = aug["counts"]["train"]["small"]
    assert aug["augment"]["synthetic_per_class"] == {"small": n_small}
    assert aug["train_images"]["synthetic"] == n_small
    generated = list((store / "generated").rglob("*.json"))
    provenance = [json.loads(p.read_text()) for p in generated if p.name != "key.json"]
    assert len(provenance) == n_small and all(len(p["sources"]) == 1 for p in provenance)

    # compare over two seeds: seed 0's images and embeddings come from the run above.
    code, out, err = run_cli(capsys, "compare", "--recipe", recipe, "--repeats", "2", "--no-progress")
    assert code == 0, err
    assert "sd-img2img" in out and "repeat(s) (seeds 0, 1)" in out
    assert any(word in out for word in ("helps", "no significant difference", "hurts"))
    (comparison,) = (store / "comparisons").glob("*/comparison.json")
    assert "sd-img2img" in comparison.read_text()


def test_missing_weights_fail_before_the_baseline_and_leave_no_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = class_folders(tmp_path / "data", {"big": 12, "small": 6}, size=(32, 32))
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "fit", data, "--augment", "sd-dreambooth", "--augment-param",
                           "model=no-such-org/no-such-model", "-e", "inception-v3", "--weights", "none",
                           "--image-size", "75", "--store", store, "--no-progress")
    assert code == 3 and "'no-such-org/no-such-model'" in err and "HF_HOME" in err
    # The check ran before the baseline: nothing was embedded, searched or saved.
    assert not (store / "runs").exists() and not (store / "embeddings").exists()
