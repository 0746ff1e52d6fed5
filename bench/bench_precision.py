"""Does the fast precision cost downstream accuracy? float32 vs ``auto`` (bfloat16 on AMX/AVX-512-BF16 CPUs).

Embeds BreastMNIST (``../shared/data/breastmnist.npz`` from the repository root) with one extractor
(default inception-v3, weights none, seed 0) once per precision, each into its own temporary store
(nothing cached), through ``automl.pipeline.embed_dataset`` as ``automl embed`` does. Then, per
precision, fits StandardScaler + LogisticRegression(max_iter=2000, random_state=0) on train + val and
evaluates on test: accuracy, macro F1, AUROC. Also compares the two precisions' embeddings (max and
mean absolute difference, cosine similarity per image) and their test predictions, and reports each
precision's images/s (automl's own figure: model build excluded, first-call tracing included).

With ``--weights none`` the features are random-network features, so the absolute accuracies are not
ImageNet-feature figures; what the benchmark measures is the difference between the precisions.

    .venv/bin/python bench/bench_precision.py             # full: 299 px
    .venv/bin/python bench/bench_precision.py --quick     # smoke run: 75 px
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/breastmnist.npz"


def fit_and_score(x_train, y_train, x_test, y_test, seed: int) -> tuple[dict, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(x_train, y_train)
    proba = clf.predict_proba(x_test)
    pred = clf.classes_[np.argmax(proba, axis=1)]
    if len(clf.classes_) == 2:
        auroc = roc_auc_score(y_test, proba[:, 1])
    else:
        auroc = roc_auc_score(y_test, proba, multi_class="ovr", average="macro", labels=clf.classes_)
    return {"accuracy": accuracy_score(y_test, pred), "macro_f1": f1_score(y_test, pred, average="macro"),
            "auroc": auroc}, proba


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset (default {DEFAULT_DATA})")
    p.add_argument("--extractor", default="inception-v3", help="extractor (default inception-v3)")
    p.add_argument("--weights", default="none", help="none (random, seeded; default), imagenet, or a file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and the classifier")
    p.add_argument("--image-size", type=int, default=None, help="input size in px (default 299; --quick 75)")
    p.add_argument("--precisions", default="float32,auto",
                   help="two precisions to compare, reference first (default float32,auto)")
    p.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run at 75 px")
    args = p.parse_args(argv)
    args.image_size = args.image_size or (75 if args.quick else 299)
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    if len(args.precisions) != 2:
        p.error("--precisions takes exactly two, e.g. float32,auto")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from automl.data import load_dataset
    from automl.extractors import extractor_key
    from automl.pipeline import embed_dataset
    from automl.store import Store

    print("\n".join(_common.machine_lines()))
    dataset = load_dataset(args.data)
    counts = {s: len(dataset.split(s)) for s in dataset.splits}
    print(f"data    : {args.data} ({dataset.layout}; classes {dataset.classes}; {counts})")
    print(f"settings: {args.extractor}, {args.image_size} px, weights {args.weights} (seed {args.seed}); "
          f"precisions {' vs '.join(args.precisions)}\n", flush=True)

    resolved = [extractor_key(args.extractor, weights=args.weights, image_size=args.image_size,
                              precision=p, seed=args.seed).precision for p in args.precisions]
    if resolved[0] == resolved[1]:
        print(f"note: both precisions resolve to {resolved[0]} here; the comparison is of a precision with itself.\n")

    tmp = Path(tempfile.mkdtemp(prefix="automl-bench-precision-"))
    runs = []
    try:
        for i, precision in enumerate(args.precisions):
            t0 = time.perf_counter()
            (res,) = embed_dataset(dataset, Store(tmp / f"store-{i}"), [args.extractor], weights=args.weights,
                                   image_size=args.image_size, precision=precision, seed=args.seed, progress=False)
            wall = time.perf_counter() - t0
            unique = len({it.fingerprint for it in dataset.items})  # identical images are embedded once
            if res.cache_hits or res.computed != unique or len(res.embeddings) != len(dataset.items):
                raise RuntimeError(f"expected {unique} computed and {len(dataset.items)} rows, got "
                                   f"{res.computed} computed, {len(res.embeddings)} rows ({res.cache_hits} cache hits)")
            runs.append({"asked": precision, "precision": res.key.precision, "embeddings": res.embeddings,
                         "images_per_s": res.images_per_s, "seconds": res.seconds, "build_s": res.build_seconds,
                         "wall_s": wall})
            print(f"{precision} ({res.key.precision}): {res.computed} distinct images computed, {res.images_per_s:.1f} img/s "
                  f"(embed {res.seconds:.1f} s + build {res.build_seconds:.1f} s; wall {wall:.1f} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    labels = np.array([it.label for it in dataset.items])
    split = np.array([it.split for it in dataset.items])
    train = np.isin(split, ["train", "val"])
    test = split == "test"
    if not test.any():
        raise SystemExit(f"{args.data} has no test split")
    probas = []
    for r in runs:
        e = r["embeddings"]
        r["nonfinite"] = int((~np.isfinite(e)).sum())
        r["metrics"], proba = fit_and_score(e[train], labels[train], e[test], labels[test], args.seed)
        probas.append(proba)

    a, b = (r["embeddings"].astype(np.float64) for r in runs)
    diff = np.abs(a - b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(1) / np.where(norms > 0, norms, 1.0), np.nan)
    agree = float(np.mean(np.argmax(probas[0], 1) == np.argmax(probas[1], 1)))
    compare = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
               "mean_abs_value_reference": float(np.abs(a).mean()),
               "relative_mean_abs_diff": float(diff.mean() / max(np.abs(a).mean(), 1e-30)),
               "cosine_mean": float(np.nanmean(cos)), "cosine_min": float(np.nanmin(cos)),
               "test_prediction_agreement": agree,
               "test_proba_max_abs_diff": float(np.abs(probas[0] - probas[1]).max())}

    print(f"\n== downstream: StandardScaler + LogisticRegression, fit on train+val ({int(train.sum())}), "
          f"scored on test ({int(test.sum())}) ==")
    rows = [(f"{r['asked']} ({r['precision']})", round(r["metrics"]["accuracy"], 4), round(r["metrics"]["macro_f1"], 4),
             round(r["metrics"]["auroc"], 4), round(r["images_per_s"], 1), round(r["seconds"], 1), r["nonfinite"])
            for r in runs]
    rows.append(("difference (2nd - 1st)",
                 *(round(runs[1]["metrics"][k] - runs[0]["metrics"][k], 4) for k in ("accuracy", "macro_f1", "auroc")),
                 round(runs[1]["images_per_s"] / runs[0]["images_per_s"], 2), None, None))
    print(_common.table(["precision", "accuracy", "macro F1", "AUROC", "images/s (last row: ratio)", "embed s",
                         "non-finite"], rows))
    print(f"\n== embeddings: {runs[1]['precision']} vs {runs[0]['precision']} ({len(a)} images x {a.shape[1]}) ==")
    print(_common.table(["figure", "value"], [
        ("max |difference|", f"{compare['max_abs_diff']:.4g}"),
        ("mean |difference|", f"{compare['mean_abs_diff']:.4g}"),
        ("mean |value| (reference)", f"{compare['mean_abs_value_reference']:.4g}"),
        ("mean |difference| / mean |value|", f"{compare['relative_mean_abs_diff']:.3%}"),
        ("cosine similarity, mean", f"{compare['cosine_mean']:.6f}"),
        ("cosine similarity, min", f"{compare['cosine_min']:.6f}"),
        ("test predictions identical", f"{agree:.1%}"),
        ("test probability max |difference|", f"{compare['test_proba_max_abs_diff']:.4g}"),
    ]))
    if args.weights.lower() in ("none", "random"):
        print("\n(weights none: random-network features; absolute accuracies are not ImageNet-feature figures)")
    if args.quick:
        print("(--quick: a smoke run at 75 px)")
    if args.json:
        args.json.write_text(json.dumps({
            "command": _common.command_line(), "machine": _common.machine_lines(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": [{k: v for k, v in r.items() if k != "embeddings"} for r in runs], "comparison": compare},
            indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
