"""Synthetic-image quality (automl.quality): what it costs, where its near-copy threshold comes from,
and the quality table of BreastMNIST's augmentation variants.

    .venv/bin/python bench/bench_quality.py                  # timing: 1,000 real vs 1,000 synthetic, 2048-d
    .venv/bin/python bench/bench_quality.py --calibrate      # the near-copy threshold, on BreastMNIST
    .venv/bin/python bench/bench_quality.py --fit            # what quality.json adds to an augmented fit

Timing: random Gaussian features (their values do not change the work), two classes of 500 real and
500 synthetic images each plus the overall row — what ``measure`` computes for a run: FID and KID with
their bootstrap intervals, precision/recall, density/coverage; and the copy check, which decodes
every image (2,000 PNGs of 64x64 written here) to 32 px grayscale. Median of ``--repeats`` runs.

Calibration: BreastMNIST's 624 training images (train + val) at 32 px grayscale: each image's
correlation with its nearest other image, and with itself under noise, JPEG, a shift, a flip and a
rotation; with ``--extractor FILE`` the same in that model's features (cosine).

The quality table itself is ``automl quality`` (see docs/benchmarks.md for the commands).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from _common import fmt_spread, machine_lines, table  # noqa: E402

from automl import quality as q  # noqa: E402

BREAST = ROOT.parent / "shared" / "data" / "breastmnist.npz"
MOBILENET = ROOT.parent / "shared" / "models" / "mobilenet-v1-embedding" / \
    "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


def timing(args) -> None:
    from dataclasses import replace
    from types import SimpleNamespace

    from PIL import Image

    from automl.data import load_images

    n, d = args.n, args.dim
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(2 * n):
            paths.append(Path(tmp) / f"{i:05d}.png")
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
        loaded, _ = load_images(paths)
        labels = [i % 2 for i in range(n)] * 2
        items = [replace(it, label=label, split="synthetic" if i >= n else "train")
                 for i, (it, label) in enumerate(zip(loaded, labels))]
        features = {"f": rng.normal(size=(2 * n, d)).astype(np.float32)}
        features["f"][n:] += 0.05
        variant = SimpleNamespace(real=items[:n], sources=[()] * n, record={"variant": "bench"})
        keys = {"f": {"extractor": "random", "weights": "none", "image_size": 0, "precision": "float32"}}
        parts: dict[str, list[float]] = {"FID + KID + intervals, PR, DC (one set)": [], "copy check": [],
                                         "measure(): 2 classes + overall, copies": []}
        f = features["f"].astype(np.float64)
        for r in range(args.repeats):
            t = time.perf_counter()
            q.compare_sets(f[:n], f[n:], rng=np.random.default_rng(r))
            parts["FID + KID + intervals, PR, DC (one set)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            q.find_copies(items[:n], items[n:], [()] * n, {"f": (f[:n], f[n:])})
            parts["copy check"].append(time.perf_counter() - t)
            t = time.perf_counter()
            q.measure(items, list(range(2 * n)), features, variant, ["a", "b"], keys=keys, seed=r)
            parts["measure(): 2 classes + overall, copies"].append(time.perf_counter() - t)
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in parts.items()), flush=True)
    print(f"\n{n} real vs {n} synthetic rows, {d}-d features, {q.BOOTSTRAP} bootstrap resamples; "
          f"median (min..max) of {args.repeats}:")
    print(table(["part", "seconds"], [[k, fmt_spread(v, " s")] for k, v in parts.items()]))


def calibrate(args) -> None:
    from PIL import Image

    from automl.data import load_dataset
    from automl.images import decode_array

    train = [it for it in load_dataset(BREAST).items if it.split != "test"]
    pixels = q.pixel_vectors(train)
    sim = q.pixel_similarity(pixels, pixels)
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.max(axis=1)
    print(f"BreastMNIST: {len(train)} training images (train + val), {q.PIXEL_SIZE} px grayscale, mirror included")
    print("each image's nearest other image: median %.3f, 95th percentile %.3f, 99th %.3f, max %.3f"
          % (*np.quantile(nearest, [0.5, 0.95, 0.99]), nearest.max()))
    edges = [0.0, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0001]
    counts, _ = np.histogram(nearest, bins=edges)
    print(table(["nearest r in", "images"], [[f"[{a:.2f}, {min(b, 1):.2f}{']' if b > 1 else ')'}", str(c)]
                                             for a, b, c in zip(edges, edges[1:], counts)]))
    rng = np.random.default_rng(0)

    def variants(a: np.ndarray) -> dict:
        out = {"noise 5": np.clip(a + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8),
               "noise 10": np.clip(a + rng.normal(0, 10, a.shape), 0, 255).astype(np.uint8)}
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="JPEG", quality=75)
        out["JPEG q75"] = np.asarray(Image.open(buffer).convert("RGB"))
        out["shift 1 px"] = np.roll(a, 1, axis=1)
        out["shift 2 px"] = np.roll(a, 2, axis=1)
        out["mirror"] = a[:, ::-1].copy()
        out["rotate 10 deg"] = np.asarray(Image.fromarray(a).rotate(10, resample=Image.Resampling.BILINEAR))
        return out

    class Pixels:
        def __init__(self, a):
            self.a = a

        def load(self, size):
            return decode_array(self.a, size)

    extractor = None
    if args.extractor:
        from automl.extractors import build_extractor

        extractor = build_extractor(f"file:{args.extractor}")

        def embed(arrays):
            return q._unit(extractor(np.stack([decode_array(a, extractor.image_size) for a in arrays])))
    results: dict[str, list] = {}
    for it in train[:200]:
        a = it.load(None)
        made = variants(a)
        source = q.pixel_vectors([it])
        rows = q.pixel_vectors([Pixels(m) for m in made.values()])
        r = q.pixel_similarity(rows, source)[:, 0]
        cos = embed(list(made.values())) @ embed([a])[0] if extractor is not None else [None] * len(made)
        for (name, _), value, c in zip(made.items(), r, cos):
            results.setdefault(name, []).append((value, c))
    rows = []
    for name, values in results.items():
        r = np.array([v for v, _ in values])
        row = [name, "%.3f" % r.min(), "%.3f" % np.quantile(r, 0.05), "%.3f" % np.median(r)]
        if extractor is not None:
            c = np.array([c for _, c in values])
            row += ["%.3f" % c.min(), "%.3f" % np.median(c)]
        rows.append(row)
    headers = ["copy of a training image", "pixel r min", "5th pct", "median"]
    if extractor is not None:
        headers += ["cosine min", "cosine median"]
    print(f"\n200 training images, each against itself changed:\n{table(headers, rows)}")
    if extractor is not None:
        features = np.concatenate([embed([it.load(None) for it in train[i:i + 64]]) for i in range(0, len(train), 64)])
        cos = features @ features.T
        np.fill_diagonal(cos, -np.inf)
        near = cos.max(axis=1)
        distinct = nearest < q.PIXEL_COPY
        print(f"\nfeature cosine ({Path(args.extractor).name}) of each image's nearest other image: median "
              f"%.3f, max %.3f; among the {distinct.sum()} images without a pixel near-copy: median %.3f, "
              "99th percentile %.3f, max %.3f" % (np.median(near), near.max(), np.median(near[distinct]),
                                                  np.quantile(near[distinct], 0.99), near[distinct].max()))


def fit_cost(args) -> None:
    """quality.json's share of augmented fits: the tests' tiny data and ~200 images."""
    import json

    import automl
    from automl.demo import make_demo_dataset

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import class_folders

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = class_folders(tmp / "tiny", {"big": 10, "small": 6}, size=(32, 32))
        demo = tmp / "demo"
        make_demo_dataset(demo, per_class=25, size=32, classes=8, seed=0)  # 200 images, 150 for training
        cases = [
            ("tests' tiny data (16 images), test-shift, MobileNet file", tiny,
             dict(augment={"type": "test-shift", "classes": "all"}, extractors=f"file:{MOBILENET}")),
            ("demo digits (200 images, 8 classes), conventional, MobileNet file", demo,
             dict(augment={"type": "conventional", "classes": "all"}, extractors=f"file:{MOBILENET}")),
            ("demo digits (200 images, 8 classes), conventional, 3 random-weight Keras extractors at 75 px", demo,
             dict(augment={"type": "conventional", "classes": "all"}, weights="none", image_size=75,
                  precision="float32")),
        ]
        import fakes  # noqa: F401 - registers test-shift
        rows = []
        for name, data, keys in cases:
            t = time.perf_counter()
            run = automl.fit(str(data), heads="logreg-elasticnet", trials=3, cv=2, store=str(tmp / "store"), **keys)
            total = time.perf_counter() - t
            record = json.loads((run.folder / "quality.json").read_text())
            rows.append([name, f"{record['seconds']:.3f} s", f"{total:.1f} s", str(len(record["copies"]["images"])),
                         str(len(record["extractors"]))])
            print(rows[-1], flush=True)
    print(table(["augmented fit", "quality.json (measure)", "whole fit (baseline + augmented, 1st run)",
                 "synthetic images", "extractors"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="the near-copy threshold's measurements")
    parser.add_argument("--extractor", default=str(MOBILENET), help="with --calibrate: a model file ('' for none)")
    parser.add_argument("--fit", action="store_true", help="what quality.json adds to augmented fits")
    parser.add_argument("-n", type=int, default=1000, help="real and synthetic rows (timing)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from automl._imports import before_tensorflow

    before_tensorflow()  # the fits run torch augmenters after TensorFlow: triton must load first
    print("\n".join(machine_lines(with_tf=args.fit or (args.calibrate and bool(args.extractor)))))
    print(f"load    : {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min) at the start", flush=True)
    if args.calibrate:
        calibrate(args)
    elif args.fit:
        fit_cost(args)
    else:
        timing(args)
    print(f"load    : {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min) at the end")


if __name__ == "__main__":
    main()
