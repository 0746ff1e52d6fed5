"""`automl explain`: does each map find the evidence, and what does a map cost?

1. The planted case of tests/test_attribution.py, larger: 48 px grey-noise images, class "square" decided
   by a white 12 px square in the top-left corner. A small CNN (rescaling, then a nested conv net ending
   in global average pooling, 8 x 8 x 16 maps) is trained on 80 images, once per CNN seed, with
   convolutions that do not pad ("valid", as the test's) and, to show what zero padding does, that do
   ("same"); each head is fitted on its embeddings of 60 other images, and 40 more (20 square) are
   explained with "auto" (CAM or integrated gradients), Grad-CAM and occlusion. A map is "on the corner"
   when more than half of its (ReLU'd) sum lies in the top-left quadrant; an "empty" map has nothing for
   the class. Printed: hits / square images, empty maps, and the head's test accuracy.
2. The same with the real pretrained MobileNet v1 (uint8 TFLite, ../shared/models): 64 px images
   upsampled to its 224 px input, logistic regression on 24 images, occlusion maps of 12 square images.
3. Seconds per image of each method with a built-in backbone (xception, random weights: timing only)
   at 299 px, and of occlusion; model build and first-call tracing excluded.

    .venv/bin/python bench/bench_explain.py            # about 3 min on 2 cores
    .venv/bin/python bench/bench_explain.py --quick    # one CNN seed, fewer images, 150 px
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common  # noqa: E402
from test_attribution import HEADS, MOBILENET, corner_mass, planted  # noqa: E402  (the test's planted case)

METHODS = ("auto", "grad-cam", "occlusion")


def train_cnn(folder: Path, seed: int, padding: str):
    from automl.extractors import import_keras, resolve

    keras = import_keras()
    layers = keras.layers
    images, labels = planted(80, seed=0)
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input((48, 48, 3)), layers.Conv2D(8, 3, padding=padding, activation="relu"),
                            layers.MaxPooling2D(2), layers.Conv2D(16, 3, padding=padding, activation="relu"),
                            layers.MaxPooling2D(2), layers.Conv2D(16, 3, padding=padding, activation="relu"),
                            layers.GlobalAveragePooling2D()])
    inputs = keras.Input((48, 48, 3))
    features = net(layers.Rescaling(1 / 255)(inputs))
    classifier = keras.Model(inputs, layers.Dense(2, activation="softmax")(features))
    classifier.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    classifier.fit(images.astype(np.float32), labels, epochs=20, batch_size=16, verbose=0)
    path = folder / f"cnn-{padding}-{seed}.keras"
    keras.Model(inputs, features).save(path)
    return resolve(f"file:{path}")


def bundle(spec, head_name, images, labels, **settings):
    from automl import __version__
    from automl.extractors import Weights
    from automl.heads import get_head
    from automl.runs import ModelBundle

    embeddings = spec.build(**settings)(images)
    head = get_head(head_name)(**HEADS.get(head_name, {})).fit(embeddings, labels)
    key = spec.key(**settings) if settings else spec.key()
    return ModelBundle(key.to_dict(), Weights.parse("none").record(), 0, head_name, head, ["plain", "square"],
                       __version__, source=spec.name)


def score(explainer, images, labels) -> tuple[str, int, int, float]:
    """(method, square maps on the corner, empty square maps, accuracy of the predictions)."""
    every = explainer.explain(images)
    maps = [a for a, y in zip(every, labels) if y == 1]
    hits = sum(corner_mass(a.heat) > 0.5 for a in maps)
    accuracy = float(np.mean([a.predicted == y for a, y in zip(every, labels)]))
    return explainer.method, hits, sum(a.heat.max() == 0 for a in maps), accuracy


def upsampled(images, side=224):
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(x).resize((side, side), Image.Resampling.BILINEAR)) for x in images])


def main(argv=None) -> None:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from automl.attribution import Explainer

    print("\n".join(_common.machine_lines()) + "\n")
    seeds = (0,) if args.quick else (0, 1, 2, 3)
    n_test = 20 if args.quick else 40
    tests, test_labels = planted(n_test, seed=2)
    train, train_labels = planted(60, seed=1)
    print("1. planted square, small CNN: maps of the square class with most of their mass on the corner "
          f"(of {n_test // 2}; empty maps in brackets), per CNN seed")
    for padding in ("valid", "same"):
        results: dict[tuple[str, str], list[str]] = {}
        accuracies: dict[str, list[float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for seed in seeds:
                spec = train_cnn(Path(tmp), seed, padding)
                for head in HEADS:
                    b = bundle(spec, head, train, train_labels)
                    for method in METHODS:
                        label, hits, empty, accuracy = score(Explainer(b, method=method), tests, test_labels)
                        results.setdefault((head, label), []).append(f"{hits}" + (f" ({empty})" if empty else ""))
                        accuracies.setdefault(head, []).append(accuracy)
        rows = [[head, label, f"{min(accuracies[head]):.2f}", "  ".join(cells)]
                for (head, label), cells in results.items()]
        print(f"\nconvolutions padding={padding!r}")
        print(_common.table(["head", "method", "min test acc", "on the corner, per seed"], rows))

    from automl.extractors import Weights, resolve

    mobilenet = resolve(f"file:{MOBILENET}")
    images, labels = planted(24, seed=3, side=64, square=16)
    n_mb = 8 if args.quick else 24
    tests, test_labels = planted(n_mb, seed=4, side=64, square=16)
    explainer = Explainer(bundle(mobilenet, "logreg-elasticnet", upsampled(images), labels))
    explainer.explain(upsampled(tests[:1]))  # warm-up
    t0 = time.perf_counter()
    label, hits, empty, accuracy = score(explainer, upsampled(tests), test_labels)
    seconds = (time.perf_counter() - t0) / len(tests)
    print(f"\n2. planted square, MobileNet v1 (TFLite) + logreg-elasticnet (test acc {accuracy:.2f}), {label}: "
          f"{hits}/{n_mb // 2} on the corner, {empty} empty; {seconds:.2f} s/image "
          f"({len(explainer._positions) + 1} model calls each)")

    side = 150 if args.quick else 299
    xception = resolve("xception")
    settings = {"weights": Weights.parse("none"), "image_size": side, "precision": "float32", "seed": 0}
    images, labels = planted(16, seed=5, side=side, square=side // 4)
    timing = []
    for head, method in (("logreg-elasticnet", "auto"), ("svc-rbf", "auto"), ("svc-rbf", "grad-cam"),
                         ("ffnn", "auto"), ("logreg-elasticnet", "occlusion")):
        explainer = Explainer(bundle(xception, head, images, labels, **settings), method=method)
        n = 2 if method == "occlusion" else 8
        explainer.explain(images[:n])  # warm-up: traces the graph for this batch shape
        t0 = time.perf_counter()
        explainer.explain(images[:n])
        timing.append([head, explainer.method, f"{explainer.grid[0]}x{explainer.grid[1]}",
                       f"{(time.perf_counter() - t0) / n:.2f}"])
    print(f"\n3. seconds per image, xception at {side} px (random weights), float32, batches of 8")
    print(_common.table(["head", "method", "map", "s/image"], timing))


if __name__ == "__main__":
    main()
