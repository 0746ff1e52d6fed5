"""`automl explain` (automl.attribution): the heads' decisions in TensorFlow equal scikit-learn's, CAM is
exact, and on a planted case — a class decided by a bright square in the top-left corner — the maps put
their mass on that corner: through a small Keras CNN trained here (CAM, integrated gradients, occlusion)
and through the real pretrained MobileNet TFLite file (occlusion). Then the command, its errors, and the
run report's maps and real-vs-synthetic grid.

"Mass on the corner": the map (ReLU'd, >= 0) holds more than half of its sum in the top-left quadrant of
the image (a map spread evenly would hold a quarter), for at least 90 % of the square class's test images
(measured: all of them) — for the MobileNet, most of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fakes  # noqa: F401 - registers the test augmenters
from automl.attribution import (IG_STEPS, MANIFEST, Explainer, class_scores, decision_function, linear_evidence,
                                read_manifest)
from automl.heads import get_head
from automl.runs import ModelBundle
from conftest import SHARED, run_cli

SIDE, SQUARE = 48, 12  # the planted images: 48 px, a 12 px square in the top-left corner
CLASSES = ["plain", "square"]
MOBILENET = SHARED / "models" / "mobilenet-v1-embedding" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
HEADS = {"logreg-elasticnet": {}, "svc-rbf": {}, "svc-nystroem": {"n_components": 40},
         "ffnn": {"hidden_layers": (32,), "max_epochs": 60, "patience": 10}}


def planted(n: int, seed: int, side: int = SIDE, square: int = SQUARE) -> tuple[np.ndarray, np.ndarray]:
    """Grey noise (mean 128, the occluding patch's grey); every second image (class "square") has a
    white square within a pixel or two of its top-left corner."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        image = np.clip(rng.normal(128, 25, (side, side, 3)), 0, 255)
        if i % 2:
            y, x = rng.integers(0, side // 16 + 1, 2)
            image[y:y + square, x:x + square] = 255
        images.append(image.astype(np.uint8))
        labels.append(i % 2)
    return np.stack(images), np.array(labels)


def corner_mass(heat: np.ndarray) -> float:
    h, w = heat.shape
    total = float(heat.sum())
    return float(heat[:h // 2, :w // 2].sum()) / total if total > 0 else 0.0


def on_the_corner(attributions, labels) -> tuple[int, int]:
    """(maps of the square class with more than half their mass in the top-left quadrant, their number)."""
    masses = [corner_mass(a.heat) for a, y in zip(attributions, labels) if y == 1]
    return sum(m > 0.5 for m in masses), len(masses)


def write_images(folder, images, labels) -> None:
    for i, (image, y) in enumerate(zip(images, labels)):
        (folder / CLASSES[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / CLASSES[y] / f"img_{i:03d}.png")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A small CNN trained here on the planted train split, saved as `automl pretrain` saves one: rescaling,
    then a nested network ending in global average pooling (8 x 8 x 16 maps). Its convolutions do not pad:
    zero padding gives the border locations evidence of their own, the same in every image, which the
    feature-map methods show too (bench/bench_explain.py). Returns its file spec."""
    from automl.extractors import import_keras, resolve

    keras = import_keras()
    layers = keras.layers
    images, labels = planted(80, seed=0)
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((SIDE, SIDE, 3)), layers.Conv2D(8, 3, activation="relu"),
                            layers.MaxPooling2D(2), layers.Conv2D(16, 3, activation="relu"), layers.MaxPooling2D(2),
                            layers.Conv2D(16, 3, activation="relu"), layers.GlobalAveragePooling2D()], name="net")
    inputs = keras.Input((SIDE, SIDE, 3))
    features = net(layers.Rescaling(1 / 255)(inputs))
    classifier = keras.Model(inputs, layers.Dense(2, activation="softmax")(features))
    classifier.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    classifier.fit(images.astype(np.float32), labels, epochs=20, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("cnn") / "corner.keras"
    keras.Model(inputs, features).save(path)
    return resolve(f"file:{path}")


def bundle_for(spec, head_name: str, images, labels, **params) -> ModelBundle:
    """A run's model bundle, built directly: ``head_name`` fitted on ``spec``'s embeddings of ``images``."""
    from automl import __version__
    from automl.extractors import Weights

    head = get_head(head_name)(**{**HEADS.get(head_name, {}), **params}).fit(spec.build()(images), labels)
    return ModelBundle(spec.key().to_dict(), Weights.parse("none").record(), 0, head_name, head, CLASSES, __version__,
                       source=spec.name)


# --- the heads' decisions, in TensorFlow ------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("head_name,params", [("logreg-elasticnet", {}), ("logreg-elasticnet", {"multi_class": "ovr"}),
                                              ("svc-rbf", {}), ("svc-nystroem", {"n_components": 30}),
                                              ("ffnn", {"hidden_layers": (16, 8), "max_epochs": 15})])
def test_the_decision_in_tensorflow_is_scikit_learns(head_name, params, classes):
    """On random data, through a head rebuilt from its saved state as `predict` rebuilds it."""
    import tensorflow as tf

    from automl.heads._state import from_state, to_state

    rng = np.random.default_rng(classes)
    X = rng.normal(size=(90, 12)) * rng.uniform(0.5, 3, 12) + rng.normal(size=12)
    y = rng.integers(0, classes, 90)
    X[np.arange(90), y] += 2.0
    fitted = get_head(head_name)(**params).fit(X, y)
    head = from_state(type(fitted), *to_state(fitted))
    rows = rng.normal(size=(40, 12)) * 2
    got = decision_function(head)(tf.constant(rows, tf.float64)).numpy()
    Z = head.scaler_.transform(rows)
    if head_name == "ffnn":  # the network's logits: their softmax is the head's own NumPy forward pass
        assert got.shape == (40, classes)
        np.testing.assert_allclose(tf.nn.softmax(got).numpy(), head.predict_proba(rows), atol=1e-5, rtol=0)
    else:
        model = (head.model_ if head_name == "logreg-elasticnet"
                 else head.calibrated_.calibrated_classifiers_[0].estimator)
        want = model.decision_function(head.nystroem_.transform(Z) if head_name == "svc-nystroem" else Z)
        assert got.shape == want.shape == ((40,) if classes == 2 else (40, classes))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    scores = class_scores(head)(tf.constant(rows, tf.float64)).numpy()
    assert scores.shape == (40, classes)
    linear = linear_evidence(head)
    assert (linear is not None) == (head_name == "logreg-elasticnet")
    if linear is not None:  # the weights projected through the standardisation give the same scores
        np.testing.assert_allclose(rows @ linear[0].T + linear[1], scores, atol=1e-9)


# --- the planted case ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_runs(cnn):
    images, labels = planted(60, seed=1)
    return {name: bundle_for(cnn, name, images, labels) for name in HEADS}


@pytest.fixture(scope="module")
def test_images():
    return planted(20, seed=2)


# Measured with four CNN seeds, 20 square images each (docs/benchmarks.md): 20/20 for every head with
# "auto" (CAM, integrated gradients) and with occlusion; Grad-CAM 3 to 19 of 20 (not asserted here).
@pytest.mark.parametrize("head_name,method,expected", [
    ("logreg-elasticnet", "auto", "CAM"), ("ffnn", "auto", "integrated gradients"),
    ("svc-rbf", "auto", "integrated gradients"), ("svc-nystroem", "auto", "integrated gradients"),
    ("logreg-elasticnet", "occlusion", "occlusion")])
def test_the_map_of_the_planted_square_falls_on_its_corner(planted_runs, test_images, head_name, method, expected):
    images, labels = test_images
    explainer = Explainer(planted_runs[head_name], method=method)
    grid = (SIDE, SIDE) if method == "occlusion" else (8, 8)
    assert explainer.method == expected and explainer.grid == grid and explainer.size == SIDE
    maps = explainer.explain(images)
    assert [a.predicted for a in maps] == labels.tolist()  # the square decides the class
    hits, total = on_the_corner(maps, labels)
    assert hits >= 0.9 * total, (hits, total)
    assert all(a.heat.shape == grid and a.heat.max() <= 1 and a.heat.min() >= 0 for a in maps)


def test_cam_is_exact_grad_cam_is_cam_and_integrated_gradients_add_up(planted_runs, test_images):
    import tensorflow as tf

    images, _ = test_images
    bundle = planted_runs["logreg-elasticnet"]
    explainer = Explainer(bundle)
    _, emb = explainer._maps.maps(images)
    scores = class_scores(bundle.head)(tf.constant(emb, tf.float64)).numpy()
    _, b = linear_evidence(bundle.head)
    cam = explainer.explain(images)
    for i, a in enumerate(cam):  # the map's mean plus the intercept is the class's score
        assert a.method == "CAM"
        assert np.isclose(np.float64(a.raw).mean() + b[a.target], scores[i, a.target], rtol=1e-4, atol=1e-4)
    grad = Explainer(bundle, method="grad-cam").explain(images)
    for c, g in zip(cam, grad):  # on mean-pooled maps, Grad-CAM of a linear head is CAM / (h w)
        assert g.method == "Grad-CAM"
        np.testing.assert_allclose(g.raw * 64, c.raw, rtol=1e-4, atol=1e-5 * np.abs(c.raw).max())

    svc = planted_runs["svc-rbf"]
    explainer = Explainer(svc, method="integrated-gradients")
    _, emb = explainer._maps.maps(images)
    score = class_scores(svc.head)
    at_image = score(tf.constant(emb, tf.float64)).numpy()
    at_mean = score(tf.constant(svc.head.scaler_.mean_[None], tf.float64)).numpy()[0]
    for i, a in enumerate(explainer.explain(images)):  # the map sums to score(image) - score(mean training image)
        want = at_image[i, a.target] - at_mean[a.target]
        assert np.isclose(np.float64(a.raw).sum(), want, rtol=2e-2, atol=1e-3), (a.raw.sum(), want, IG_STEPS)


def test_occlusion_on_the_pretrained_mobilenet_finds_the_corner(tmp_path):
    """The one real pretrained network here (ImageNet MobileNet v1, uint8 TFLite: no gradient, no feature
    map), a logistic regression on its embeddings of 24 images, and occlusion maps at its 224 px input:
    most maps of the square class on the corner (measured: 10 of 12; the grey patch is itself a smooth
    square on the noise, and only partly covers a square off the patch grid; docs/benchmarks.md)."""
    from automl.extractors import resolve

    spec = resolve(f"file:{MOBILENET}")

    def big(images):
        return np.stack([np.asarray(Image.fromarray(x).resize((224, 224), Image.Resampling.BILINEAR)) for x in images])

    images, labels = planted(24, seed=3, side=64, square=16)
    explainer = Explainer(bundle_for(spec, "logreg-elasticnet", big(images), labels))
    assert explainer.method == "occlusion" and explainer.grid == (224, 224) and explainer.patch == 56
    tests, test_labels = planted(6, seed=4, side=64, square=16)
    maps = explainer.explain(big(tests))
    assert [a.predicted for a in maps] == test_labels.tolist()
    hits, total = on_the_corner(maps, test_labels)
    assert total == 3 and hits >= 2, hits
    with pytest.raises(Exception, match="--method grad-cam: extractor file:.*gives no convolutional feature map"):
        Explainer(explainer.bundle, method="grad-cam")


def test_a_builtin_backbone_with_random_weights_gives_its_last_maps(tmp_path):
    """Xception at its smallest input (71 px: 3 x 3 maps of 2048 channels), random weights: the plumbing
    of the built-in backbones (their maps do not mean anything)."""
    from automl import __version__
    from automl.extractors import Weights, resolve

    spec = resolve("xception")
    key = spec.key(weights=Weights.parse("none"), image_size=71, precision="float32", seed=0)
    extractor = spec.build(weights=Weights.parse("none"), image_size=71, precision="float32", seed=0)
    images, labels = planted(12, seed=5, side=71, square=18)
    emb = extractor(images)
    for name, asked, method in (("logreg-elasticnet", "auto", "CAM"), ("svc-rbf", "auto", "integrated gradients"),
                                ("svc-rbf", "grad-cam", "Grad-CAM")):
        head = get_head(name)().fit(emb, labels)
        bundle = ModelBundle(key.to_dict(), Weights.parse("none").record(), 0, name, head, CLASSES, __version__,
                             source="xception")
        explainer = Explainer(bundle, method=asked)
        assert (explainer.method, explainer.grid, explainer.size) == (method, (3, 3), 71)
        maps = explainer.explain(images[:4], [1, 0, None, None])
        assert [a.target for a in maps[:2]] == [1, 0] and all(a.heat.shape == (3, 3) for a in maps)
        probs = head.predict_proba(emb[:4])
        np.testing.assert_allclose([a.proba for a in maps], probs, atol=1e-4)  # the model's own prediction


def test_layers_after_the_feature_map_take_grad_cam_through_them_and_no_map_takes_occlusion(tmp_path):
    """A Keras file whose embedding is a dense layer after the pooling: the gradient flows through it
    (here the identity, so the maps equal those of the same net without it); one without any
    convolutional map (flatten, dense) is explained by occlusion."""
    from automl.extractors import import_keras, resolve

    keras = import_keras()
    layers = keras.layers
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIDE, SIDE, 3))
    pooled = layers.GlobalAveragePooling2D()(layers.Conv2D(6, 3, activation="relu")(layers.Rescaling(1 / 255)(inputs)))
    identity = layers.Dense(6, use_bias=False, kernel_initializer="identity")(pooled)
    flat = layers.Dense(6)(layers.Flatten()(layers.Rescaling(1 / 255)(inputs)))
    specs = {}
    for name, output in (("pooled", pooled), ("dense", identity), ("flat", flat)):
        keras.Model(inputs, output).save(tmp_path / f"{name}.keras")
        specs[name] = resolve(f"file:{tmp_path / name}.keras")
    images, labels = planted(16, seed=10)
    maps = {}
    for name in ("pooled", "dense"):
        explainer = Explainer(bundle_for(specs[name], "svc-rbf", images, labels), method="grad-cam")
        assert explainer.method == "Grad-CAM" and explainer._maps.direct == (name == "pooled")
        maps[name] = explainer.explain(images[:4])
    for a, b in zip(maps["pooled"], maps["dense"]):
        np.testing.assert_allclose(a.raw, b.raw, rtol=1e-3, atol=1e-6 * np.abs(a.raw).max())
    dense = bundle_for(specs["dense"], "svc-rbf", images, labels)
    assert Explainer(dense).method == "Grad-CAM"
    with pytest.raises(Exception, match="--method integrated-gradients: extractor file:.* has layers between its "
                                        "last feature map and its embedding"):
        Explainer(dense, method="integrated-gradients")
    assert Explainer(bundle_for(specs["flat"], "svc-rbf", images, labels)).method == "occlusion"


# --- the command and the report -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(cnn, tmp_path_factory):
    """A real `fit` on the planted images (class folders, train/ and test/) with the CNN as a file extractor."""
    import automl

    root = tmp_path_factory.mktemp("explain")
    write_images(root / "data" / "train", *planted(32, seed=6))
    write_images(root / "data" / "test", *planted(8, seed=7))
    run = automl.fit(root / "data", extractors=cnn.name, heads="logreg-elasticnet", trials=2, cv=2,
                     store=str(root / "store"))
    return root, run


def test_explain_writes_maps_and_the_report_shows_them(fitted, capsys):
    from automl.report.pages import run_page
    from test_report_html import assert_self_contained

    root, run = fitted
    store = root / "store"
    code, out, err = run_cli(capsys, "explain", run.id, root / "data" / "test" / "square", "--store", store,
                             "--no-progress")
    assert code == 0, err
    folder = run.folder / "explain"
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == [f"img_{i:03d}.cam.square.png" for i in (1, 3, 5, 7)]
    lines = out.splitlines()
    assert lines[0].split() == ["image", "predicted", "p", "map", "of", "method", "file"]
    assert all(re.search(r"img_00\d\.png\s+square\s+[\d.]+\s+square\s+CAM\s+img_00\d\.cam\.square\.png", line)
               for line in lines[2:6])
    assert f"wrote 4 map(s) to {folder}" in out and f"`automl report {run.id}`" in out
    with Image.open(folder / pngs[0]) as im:  # the overlay: the image's aspect, at least 224 px, labelled
        assert im.size == (224, 224) and im.mode == "RGB" and im.text["automl-method"] == "CAM"
    heat = np.load(folder / pngs[0].replace(".png", ".npy"))
    assert heat.shape == (8, 8) and heat.max() == 1 and corner_mass(heat) > 0.5
    entries, note = read_manifest(folder)
    assert note is None and [e["png"] for e in entries] == pngs and {e["method"] for e in entries} == {"CAM"}

    # another class, another folder: named in the file and the table, written where asked
    code, out, err = run_cli(capsys, "explain", run.id, root / "data" / "test" / "plain" / "img_000.png", "--class",
                             "square", "--method", "occlusion", "-o", root / "mine", "--store", store, "--no-progress")
    assert code == 0, err
    assert (root / "mine" / "img_000.occlusion.square.png").is_file() and "occlusion" in out
    assert "`automl report" not in out

    page = run_page(run.folder)
    assert_self_contained(page)
    assert "<section id='explain'>" in page and page.count("alt='CAM map of class square") == 4
    assert "What the model looks at" in page and "img_001.png" in page

    # an entry naming a file outside the folder (a run folder edited by hand) is left out, and said so
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["maps"].append({**manifest["maps"][0], "png": "../report.html"})
    (folder / MANIFEST).write_text(json.dumps(manifest))
    page = run_page(run.folder)
    assert page.count("alt='CAM map of class square") == 4 and "1 entry of " in page and "left out" in page


@pytest.mark.parametrize("args,message", [
    (["nope"], "no run 'nope' in "),
    (["RUN"], "no images to explain: name image files or folders, or pass --synthetic N"),
    (["RUN", "EMPTY"], "no images ("),
    (["RUN", "MISSING"], "image not found: "),
    (["RUN", "IMAGE", "--class", "zebra"], "--class 'zebra' is not a class of run RUN; its classes: plain, square."),
    (["RUN", "IMAGE", "--method", "magic"], "--method 'magic': expected one of auto, grad-cam, integrated-gradients, "
                                            "occlusion."),
    (["RUN", "--synthetic", "2"], "--synthetic: run RUN is not augmented"),
    (["RUN", "BROKEN"], "1 file(s) are not decodable images"),
])
def test_explain_refuses_bad_input_with_the_cause(fitted, capsys, args, message):
    root, run = fitted
    (root / "empty").mkdir(exist_ok=True)
    (root / "broken.png").write_bytes(b"not a png")
    paths = {"RUN": run.id, "EMPTY": root / "empty", "MISSING": root / "missing.png", "BROKEN": root / "broken.png",
             "IMAGE": root / "data" / "test" / "plain" / "img_000.png"}
    code, out, err = run_cli(capsys, "explain", *[paths.get(a, a) for a in args], "--store", root / "store",
                             "--no-progress")
    assert code == 2 and not out, (out, err)
    assert err.startswith("error: ") and message.replace("RUN", run.id) in err, err


def test_the_report_grid_of_real_and_synthetic_images_with_their_maps(cnn, tmp_path, capsys):
    """An augmented run (`fit --augment`: the test augmenter that shifts each source and adds noise):
    `explain --synthetic 2` maps two real and two synthetic training images per class, each for its own
    class, and the run's page shows them side by side; a second call replaces the grid."""
    import automl
    from automl.report.pages import run_page
    from test_report_html import assert_self_contained

    write_images(tmp_path / "data" / "train", *planted(24, seed=8))
    write_images(tmp_path / "data" / "test", *planted(6, seed=9))
    store = tmp_path / "store"
    run = automl.fit(tmp_path / "data", extractors=cnn.name, heads="logreg-elasticnet", trials=2, cv=2,
                     store=str(store), augment={"type": "test-shift", "classes": "all"})
    code, out, err = run_cli(capsys, "explain", run.id, "--synthetic", "2", "--store", store, "--no-progress")
    assert code == 0, err
    entries, _ = read_manifest(run.folder / "explain")
    kinds = [(e["kind"], e["row"], e["explained"]) for e in entries]
    assert kinds == [(k, c, c) for c in CLASSES for k in ("real", "real", "synthetic", "synthetic")]
    assert re.search(r"synthetic square: .*000001\.png\s+square", out)
    # the real images shown are the synthetic images' own sources
    generated = Path(run.record.augment["folder"])
    sources = {s["path"] for label in (0, 1) for k in (0, 1)
               for s in json.loads((generated / str(label) / f"{k:06d}.json").read_text())["sources"]}
    assert {e["image"] for e in entries if e["kind"] == "real"} == sources

    page = run_page(run.folder)
    assert_self_contained(page)
    assert "Real and synthetic training images with their maps" in page
    assert page.count("class='thumb map synthetic'") == 4 and page.count("class='thumb map'") == 4

    code, out, err = run_cli(capsys, "explain", run.id, "--synthetic", "1", "--store", store, "--no-progress")
    assert code == 0, err
    entries, _ = read_manifest(run.folder / "explain")
    assert len(entries) == 4 and len(list((run.folder / "explain").glob("*.png"))) == 4
    assert json.loads((run.folder / "explain" / MANIFEST).read_text())["run"] == run.id
