"""A user's own model file as a frozen extractor: a tiny .keras model made here, and the shared real
ImageNet-pretrained MobileNet v1 (uint8 TFLite)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from automl.errors import ConfigError, DataError
from automl.extractors import build_extractor, extractor_key
from conftest import class_folders, run_cli

MOBILENET = "models/mobilenet-v1-embedding/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    from automl.extractors import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)  # a feature map: pooled by automl
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    keras.Model(inputs, x).save(path)
    return path


def test_keras_file_extractor_embeds_with_its_own_size(keras_file):
    extractor = build_extractor(f"file:{keras_file}")
    assert (extractor.image_size, extractor.dim) == (32, 16)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = extractor(images)
    assert out.shape == (3, 16) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, build_extractor(f"file:{keras_file}")(images))
    key = extractor_key(f"file:{keras_file}")
    assert key.extractor == "file:tiny.keras" and key.weights.startswith("file:") and key.image_size == 0
    assert "file-tiny.keras-native" in key.slug()


def test_mobilenet_tflite_embeds_dequantized(shared):
    extractor = build_extractor(f"file:{shared / MOBILENET}")
    assert (extractor.image_size, extractor.dim) == (224, 1024)
    gray = np.full((2, 224, 224, 3), 128, np.uint8)
    gray[1] = 30
    out = extractor(gray)
    assert out.shape == (2, 1024) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() > 0  # dequantized ReLU6 activations, not raw uint8 codes
    assert not np.allclose(out[0], out[1])


def test_cli_embed_caches_by_content_and_fit_predict_refuse_a_changed_file(keras_file, capsys, tmp_path):
    data = class_folders(tmp_path / "data", {"a": 10, "b": 10}, size=(40, 40))
    model = tmp_path / "mine.keras"
    model.write_bytes(keras_file.read_bytes())
    store = tmp_path / "store"
    args = ("embed", data, "-e", f"file:{model}", "--store", store, "--no-progress")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "file:mine.keras" in out and " 16 " in out
    code, out, _ = run_cli(capsys, *args)
    row = out.splitlines()[2].split()
    assert row[:6] == ["file:mine.keras", "native", "16", "20", "20", "0"]  # all cached, nothing computed

    code, out, err = run_cli(capsys, "fit", data, "-e", f"file:{model}", "--heads", "svc-rbf", "--trials", "3",
                             "--cv", "3", "--test-fraction", "0.3", "--store", store, "--no-progress")
    assert code == 0, err
    run_dir, = (store / "runs").iterdir()
    with open(run_dir / "predictions.csv") as f:
        saved = {row["path"]: row for row in csv.DictReader(f)}
    some = next(iter(saved))
    code, out, err = run_cli(capsys, "predict", run_dir.name, some, "--json", "--store", store, "--no-progress")
    assert code == 0, err
    assert json.loads(out)["class"] == saved[some]["predicted"]

    # Another model saved over the same path: the run must refuse to use it.
    from automl.extractors import import_keras

    keras = import_keras()
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3)(inputs))).save(model)
    code, _, err = run_cli(capsys, "predict", run_dir.name, some, "--store", store, "--no-progress")
    assert code == 2 and "has changed since this run was fitted" in err and str(model) in err


def test_fit_chooses_among_builtin_and_file_extractors_on_real_images(shared, capsys, tmp_path):
    code, out, err = run_cli(capsys, "fit", shared / "data" / "breastmnist.npz", "-e",
                             f"file:{shared / MOBILENET},inception-v3", "--weights", "none", "--image-size", "75",
                             "--heads", "svc-rbf", "--trials", "4", "--cv", "3", "--store", tmp_path / "s",
                             "--no-progress")
    assert code == 0, err
    run_dir, = (tmp_path / "s" / "runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    board = json.loads((run_dir / "leaderboard.json").read_text())
    assert {r["pipeline"].split(" + ")[0] for r in board} == {f"file:{(shared / MOBILENET).resolve()}", "inception-v3"}
    assert record["test"]["auroc"] > 0.7  # real ImageNet features on BreastMNIST (measured 0.84-0.88)


@pytest.mark.parametrize("content, suffix, message", [
    (b"not a model", ".tflite", "is not a readable TFLite model"),
    (b"not a model", ".keras", "is not a loadable Keras model"),
    (b"x", ".onnx", "not a model file automl reads"),
])
def test_bad_model_files(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        build_extractor(f"file:{path}")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("make, message", [
    (lambda k: k.Model(i := k.Input((10,)), k.layers.Dense(4)(i)), r"input has shape \(None, 10\)"),
    (lambda k: k.Model(i := k.Input((8, 8, 3)), k.layers.Reshape((64, 3))(i)), r"output has shape \(None, 64, 3\)"),
    (lambda k: k.Model(i := k.Input((8, 6, 3)), k.layers.GlobalAveragePooling2D()(i)), "square images"),
])
def test_model_with_wrong_shapes(tmp_path, make, message):
    from automl.extractors import import_keras

    path = tmp_path / "m.keras"
    make(import_keras()).save(path)
    with pytest.raises(DataError, match=message):
        build_extractor(f"file:{path}")


def test_missing_model_file(tmp_path, capsys):
    with pytest.raises(ConfigError, match="model file not found"):
        extractor_key(f"file:{tmp_path / 'nope.tflite'}")
    data = class_folders(tmp_path / "data", {"a": 2, "b": 2})
    code, _, err = run_cli(capsys, "embed", data, "-e", f"file:{tmp_path / 'nope.tflite'}", "--store",
                           tmp_path / "s", "--no-progress")
    assert code == 2 and "model file not found" in err and not (tmp_path / "s").exists()


def test_recipe_resolves_model_files_against_its_folder(tmp_path):
    from automl.recipe import load_recipe

    (tmp_path / "models").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: data\nextractors: [file:models/m.tflite, xception]\nimage_size: 75\n")
    loaded = load_recipe(recipe)
    assert loaded.extractors == [f"file:{tmp_path / 'models' / 'm.tflite'}", "xception"]


def test_grayscale_png_through_mobilenet_matches_npz_pixels(shared, tmp_path):
    """The same pixels from an .npz and from a PNG file give the same embedding."""
    from automl.data import load_dataset

    pixels = np.load(shared / "data" / "breastmnist.npz")["test_images"][3]
    Image.fromarray(pixels).save(tmp_path / "x.png")
    extractor = build_extractor(f"file:{shared / MOBILENET}")
    npz_item = load_dataset(shared / "data" / "breastmnist.npz").split("test")[3]
    from automl.data import load_images

    (png_item,), _ = load_images([tmp_path / "x.png"])
    a = extractor(npz_item.load(224)[None])
    b = extractor(png_item.load(224)[None])
    np.testing.assert_array_equal(a, b)


def test_savedmodel_folder_embeds_like_the_keras_file_it_was_exported_from(keras_file, tmp_path):
    from automl.extractors import import_keras, resolve

    folder = tmp_path / "exported"
    import_keras().models.load_model(keras_file).export(str(folder), verbose=False)
    extractor = build_extractor(f"file:{folder}")
    assert (extractor.image_size, extractor.dim) == (32, 16)
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(extractor(images), build_extractor(f"file:{keras_file}")(images), rtol=1e-5, atol=1e-6)
    key = extractor_key(f"file:{folder}")
    assert key.extractor == "file:exported" and key.backend == "tensorflow"
    assert resolve(f"file:{folder}").name == f"file:{folder.resolve()}"
    (folder / "fingerprint.pb").write_bytes(b"changed")  # any file of the folder is part of its identity
    assert extractor_key(f"file:{folder}").weights != key.weights


def test_folder_without_saved_model_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a model file automl reads"):
        extractor_key(f"file:{tmp_path / 'empty'}")


def test_preprocessing_overrides_change_embeddings_and_cache_key(keras_file):
    from automl.extractors import import_keras, resolve

    plain, custom = f"file:{keras_file}", f"file:{keras_file}?scale=0.5&mean=10&std=2:4:8&bgr=true"
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    model = import_keras().models.load_model(keras_file)
    fed = (images[..., ::-1].astype(np.float32) * 0.5 - 10) / np.array([2, 4, 8], np.float32)
    expected = np.asarray(model.predict_on_batch(fed)).mean(axis=(1, 2))
    out = build_extractor(custom)(images)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, build_extractor(plain)(images))
    a, b = extractor_key(plain), extractor_key(custom)
    assert b.extractor == "file:tiny.keras?scale=0.5&mean=10.0&std=2.0:4.0:8.0&bgr=true"
    assert a.weights == b.weights and a.slug() != b.slug()
    assert resolve(custom).name == f"file:{keras_file.resolve()}?scale=0.5&mean=10.0&std=2.0:4.0:8.0&bgr=true"


def test_quantized_tflite_overrides_are_quantized_with_the_models_own_scale(shared):
    # MobileNet's uint8 input means pixel / 128 - 1 (scale 1/128, zero-point 128): overrides that say
    # exactly that must reproduce the default mapping; others must not.
    images = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    default = build_extractor(f"file:{shared / MOBILENET}")(images)
    same = build_extractor(f"file:{shared / MOBILENET}?scale=0.0078125&mean=1")(images)
    np.testing.assert_array_equal(same, default)
    other = build_extractor(f"file:{shared / MOBILENET}?scale=0.00392156862745098")(images)
    assert not np.allclose(other, default)


@pytest.mark.parametrize("item, message", [
    ("{file: m.keras, scale: -1}", "scale: expected a number > 0; found -1"),
    ("{file: m.keras, scale: 0.5, sclae: 1}", "unknown option(s) 'sclae'"),
    ("{file: m.keras, mean: [1, 2]}", "mean: expected one number or a list of 3"),
    ("{file: m.keras, bgr: maybe}", "bgr: expected true or false"),
    ("{scale: 0.5}", "file: expected the path of a model file"),
    ("'file:m.keras?scale=abc'", "scale: expected a number > 0; found 'abc'"),
    ("'file:m.keras?scale'", "option 'scale' is not key=value"),
])
def test_bad_preprocessing_overrides_in_recipes(tmp_path, item, message):
    from automl.recipe import RecipeError, parse_recipe

    with pytest.raises(RecipeError) as info:
        parse_recipe(f"data: d\nextractors:\n  - xception\n  - {item}\n", base_dir=tmp_path)
    assert "line 4: extractors[1]: " in str(info.value) and message in str(info.value), str(info.value)


def test_recipe_mapping_with_overrides_fits_and_predicts_through_the_cli(keras_file, capsys, tmp_path):
    from automl.recipe import load_recipe

    data = class_folders(tmp_path / "data", {"a": 8, "b": 8}, size=(40, 40))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: data\nextractors:\n  - {{file: {keras_file}, scale: 0.5, mean: [1, 2, 3], bgr: true}}\n"
                      "heads: [svc-rbf]\ntrials: 2\ncv: 2\ntest_fraction: 0.25\nstore: store\n")
    name = f"file:{keras_file.resolve()}?scale=0.5&mean=1.0:2.0:3.0&bgr=true"
    assert load_recipe(recipe).extractors == [name]
    code, _, err = run_cli(capsys, "run", recipe, "--no-progress")
    assert code == 0, err
    run_dir, = (tmp_path / "store" / "runs").iterdir()
    assert load_recipe(run_dir / "recipe.yaml").extractors == [name]  # the saved recipe reads back the same
    assert json.loads((run_dir / "run.json").read_text())["extractor_key"]["extractor"] == \
        "file:tiny.keras?scale=0.5&mean=1.0:2.0:3.0&bgr=true"
    with open(run_dir / "predictions.csv") as f:
        saved = {row["path"]: row for row in csv.DictReader(f)}
    some = next(iter(saved))
    code, out, err = run_cli(capsys, "predict", run_dir.name, some, "--json", "--store", tmp_path / "store",
                             "--no-progress")
    assert code == 0, err
    assert json.loads(out)["class"] == saved[some]["predicted"]
