"""Domain pretraining and file extractors on BreastMNIST, next to the MedMNIST v2 rows.

Three extractors, each followed by the same head search (``automl.pipeline.fit``: ``--heads``,
``--trials``, ``--cv``, seed 0; the test split evaluated once):

  (a) InceptionV3 with random weights (seeded) — what the offline tests use;
  (b) the ImageNet-pretrained MobileNet v1 uint8 TFLite file in ../shared/models (224 px, its own size);
  (c) InceptionV3 trained by ``automl pretrain`` from random weights on BreastMNIST's own train split
      (val split for early stopping; its test split excluded with ``--exclude`` and never seen).

No ImageNet weights exist offline here, so (c) starts from random weights: it measures what
pretraining on ~550 images buys over random features, not ImageNet fine-tuning.

Also: embedding throughput of the TFLite file vs a Keras extractor (InceptionV3, random weights,
precision auto) at the same 224 px, on the same in-memory images: median of ``--repeats`` timed
passes after one warm-up pass each.

    .venv/bin/python bench/bench_pretrain.py            # 75 px, 15 epochs, 10 trials: ~10-15 min on 2 cores
    .venv/bin/python bench/bench_pretrain.py --quick    # 2 epochs, 4 trials, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import fmt_spread, machine_lines, median, table  # noqa: E402

MEDMNIST = [  # ../shared/README.md: BreastMNIST test split, (name, AUROC, accuracy)
    ("ResNet-18 (28)", 0.901, 0.863), ("ResNet-18 (224)", 0.891, 0.833), ("ResNet-50 (28)", 0.857, 0.812),
    ("ResNet-50 (224)", 0.866, 0.842), ("auto-sklearn", 0.836, 0.803), ("AutoKeras", 0.871, 0.831),
    ("Google AutoML Vision", 0.919, 0.861),
]
MOBILENET = ROOT.parent / "shared" / "models" / "mobilenet-v1-embedding" / \
    "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


def fit_metrics(recipe_kwargs: dict) -> tuple[dict, object, float]:
    import automl

    t0 = time.perf_counter()
    run = automl.fit(**recipe_kwargs)
    seconds = time.perf_counter() - t0
    return run.metrics, run.record.best, seconds


def throughput(name: str, images: np.ndarray, repeats: int, batch: int) -> list[float]:
    from automl.extractors import build_extractor

    extractor = build_extractor(name, weights="none", image_size=images.shape[1], precision="auto")
    runs = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            extractor(images[i:i + batch])
        if r:  # the first pass traces graphs and allocates: not timed
            runs.append(len(images) / (time.perf_counter() - t0))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "breastmnist.npz"))
    ap.add_argument("--image-size", type=int, default=75)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--heads", default="svc-rbf,logreg-elasticnet")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--images", type=int, default=128, help="images per throughput pass")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--store", default=str(ROOT / "bench" / "out" / "pretrain-store"))
    ap.add_argument("--json", help="also write every figure to this file")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.trials, args.cv, args.images, args.repeats = 2, 4, 3, 32, 2
    for line in machine_lines():
        print(line)
    heads = args.heads.split(",")
    common = dict(data=args.data, heads=heads, trials=args.trials, cv=args.cv, seed=0, store=args.store,
                  weights="none", image_size=args.image_size)
    print(f"settings: {args.data}; heads {heads}, {args.trials} trials, {args.cv}-fold CV; InceptionV3 at "
          f"{args.image_size} px; pretraining up to {args.epochs} epochs (patience {args.patience})\n", flush=True)

    rows, figures = [], {}
    report, best, sec = fit_metrics(dict(common, extractors=["inception-v3"]))
    rows.append(("(a) InceptionV3, random weights", args.image_size, report, best, sec))

    report, best, sec = fit_metrics(dict(common, extractors=[f"file:{MOBILENET}"]))
    rows.append(("(b) MobileNet v1 TFLite (ImageNet, uint8)", 224, report, best, sec))

    from automl.pretrain import pretrain

    name = f"bench-inception-v3-{args.image_size}px"
    t0 = time.perf_counter()
    result = pretrain(args.data, extractor="inception-v3", weights="none", image_size=args.image_size,
                      epochs=args.epochs, patience=args.patience, name=name, exclude=[args.data], store=args.store,
                      overwrite=True, seed=0, progress=False)
    pretrain_sec = time.perf_counter() - t0
    report, best, sec = fit_metrics(dict(common, extractors=[name]))
    rows.append((f"(c) InceptionV3 pretrained on BreastMNIST train ({len(result.record['epochs'])} epochs)",
                 args.image_size, report, best, sec))
    figures["pretraining"] = {"seconds": pretrain_sec, "record": result.record}

    print("\nBreastMNIST test split (156 images), each evaluated once:")
    print(table(["extractor", "px", "best head (CV)", "AUROC", "accuracy", "macro F1", "fit s"],
                [[label, px, f"{b.head} ({b.cv_score:.3f})", round(r["auroc"], 3), round(r["accuracy"], 3),
                  round(r["f1_macro"], 3), round(s)] for label, px, r, b, s in rows]
                + [[f"MedMNIST v2: {n}", "", "", auc, acc, None, None] for n, auc, acc in MEDMNIST]))
    rec = result.record
    print(f"\npretraining (c): {pretrain_sec:.0f} s; {rec['counts']['train']} train / {rec['counts']['val']} val "
          f"images ({rec['validation']}); best epoch {rec['best_epoch']}"
          + (" (stopped early)" if rec["stopped_early"] else "") + f"; excluded: {rec['excluded']}")
    print(table(["epoch", "loss", "acc", "val loss", "val acc", "s"],
                [[e["epoch"], round(e["loss"], 4), round(e["accuracy"], 3), round(e["val_loss"], 4),
                  round(e["val_accuracy"], 3), round(e["seconds"], 1)] for e in rec["epochs"]]))
    figures["test"] = [{"extractor": label, "image_size": px, "best": b, "auroc": r["auroc"], "accuracy": r["accuracy"],
                        "f1_macro": r["f1_macro"], "fit_seconds": s} for label, px, r, b, s in rows]

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 224, 224, 3), dtype=np.uint8)
    tput = {"tflite mobilenet-v1 uint8": throughput(f"file:{MOBILENET}", images, args.repeats, 32),
            "keras inception-v3 (precision auto)": throughput("inception-v3", images, args.repeats, 32)}
    figures["throughput_img_per_s"] = tput
    print(f"\nembedding throughput at 224 px, {args.images} in-memory images, batch 32 "
          f"(median of {args.repeats}, min..max):")
    print(table(["extractor", "img/s"], [[k, fmt_spread(v)] for k, v in tput.items()]))
    ratio = median(tput["tflite mobilenet-v1 uint8"]) / median(tput["keras inception-v3 (precision auto)"])
    print(f"TFLite / Keras: {ratio:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
