"""The search against a plain scikit-learn GridSearchCV, on the same cached embeddings and folds.

Data: BreastMNIST (../shared/data/breastmnist.npz), train + val (624 images) for the search, test
(156) for one final evaluation. Embeddings come from the store (``--store``, cached across runs).

Measured, in one process:
- ours: ``automl.search.run_search`` (TPE + median pruner, the study's setups enqueued first) for
  ``--trials`` trials, once per seed in ``--seeds`` (sampler and heads; the folds stay the grid's); trials per minute, and the time until its
  best-so-far CV score first reaches GridSearchCV's best (from the start of ``run_search``);
- baseline: ``GridSearchCV`` over the same heads on every extractor's embeddings — a grid of the
  usual values around each head's defaults — with the same folds, the same metric and n_jobs=1;
  its total wall time and best score;
- the ratio ours-time-to-reach / GridSearchCV-time (target <= 0.5; median over seeds, a seed that
  never reaches the grid's best counts as infinite);
- BreastMNIST test metrics of the best pipeline of the first seed (refit on the whole training split,
  test embedded with its extractor, evaluated once), next to the MedMNIST v2 rows.

    .venv/bin/python bench/bench_search.py            # 3 extractors at 299 px, 50 trials x 3 sampler seeds
    .venv/bin/python bench/bench_search.py --budget 0.5  # each seed searches for half the grid's time
    .venv/bin/python bench/bench_search.py --quick    # 1 extractor at 75 px, 15 trials, 1 seed
    .venv/bin/python bench/bench_search.py --labels-check  # svc-rbf: decision-value vs calibrated CV scores only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from automl.data import load_dataset  # noqa: E402
from automl.evaluate import evaluation_report, full_proba, score  # noqa: E402
from automl.heads import HEADS  # noqa: E402
from automl.pipeline import Extractors  # noqa: E402
from automl.recipe import Recipe  # noqa: E402
from automl.report import table  # noqa: E402
from automl.search import candidate_of, cv_splits, run_search  # noqa: E402
from automl.seeds import derive  # noqa: E402
from automl.store import Store  # noqa: E402

MEDMNIST = [  # ../shared/README.md: BreastMNIST test split, (name, AUROC, accuracy)
    ("ResNet-18 (28)", 0.901, 0.863), ("ResNet-18 (224)", 0.891, 0.833), ("ResNet-50 (28)", 0.857, 0.812),
    ("ResNet-50 (224)", 0.866, 0.842), ("auto-sklearn", 0.836, 0.803), ("AutoKeras", 0.871, 0.831),
    ("Google AutoML Vision", 0.919, 0.861),
]

GRID = {
    "ffnn": {"hidden_layers": [(256,), (256, 256), (256,) * 4], "learning_rate": [1e-3, 1e-4]},
    "svc-rbf": {"C": [1.0, 10.0, 100.0], "gamma": ["scale", 1e-4, 1e-3]},
    "logreg-elasticnet": {"C": [0.1, 1.0, 10.0], "l1_ratio": [0.1, 0.5, 0.9]},
}
QUICK_GRID = {
    "ffnn": {"hidden_layers": [(256,), (256,) * 4]},
    "svc-rbf": {"C": [1.0, 10.0], "gamma": ["scale", 1e-4]},
    "logreg-elasticnet": {"C": [0.1, 10.0]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "breastmnist.npz"))
    ap.add_argument("--extractors", default="inception-resnet-v2,xception,inception-v3")
    ap.add_argument("--image-size", type=int, default=299)
    ap.add_argument("--weights", default="none")
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--budget", type=float, default=None,
                    help="instead of --trials: each seed's search runs for this share of GridSearchCV's wall time "
                         "(0.5: the target itself), as many trials as start in it")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--metric", default="macro-f1")
    ap.add_argument("--store", default=str(ROOT / "bench" / "out" / "store"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--labels-check", action="store_true",
                    help="only: the CV score of each svc-rbf grid setting from the bare SVC's decision values (as "
                         "the search scored a fold before it scored the calibrated model) and from the calibrated "
                         "model's labels (what the saved model predicts)")
    args = ap.parse_args()
    grid = GRID
    if args.quick:
        args.extractors, args.image_size, args.trials, args.seeds, args.cv = "inception-v3", 75, 15, "0", 3
        grid = QUICK_GRID
    names = args.extractors.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"command : {' '.join([Path(sys.executable).name] + sys.argv)}")
    budget = f"{args.budget:g} x GridSearchCV's time" if args.budget else f"{args.trials} trials"
    print(f"settings: {args.data}; {names} at {args.image_size} px, weights {args.weights}; {args.metric}, "
          f"{args.cv}-fold; ours {budget} x seeds {seeds}")

    recipe = Recipe.from_flags(data=args.data, extractors=names, weights=args.weights, image_size=args.image_size,
                               store=args.store, cv=args.cv, metric=args.metric, seed=seeds[0])
    dataset = load_dataset(recipe.data)
    store = Store(recipe.store)
    extractors = Extractors.resolve(recipe.extractors, store, weights=recipe.weights, image_size=recipe.image_size,
                                    precision=recipe.precision, seed=recipe.seed)
    train = [it for it in dataset.items if it.split != "test"]
    test = dataset.split("test")
    features = {n: extractors.embed(train, n, store, batch_size=None, skip_bad=False, progress=True).embeddings
                for n in extractors.specs}
    names = list(extractors.specs)
    y = np.array([it.label for it in train])
    n_classes = len(dataset.classes)

    folds = cv_splits(y, args.cv, derive(seeds[0], "folds"))  # the folds run_search(cv_seed=seeds[0]) makes
    if args.labels_check:
        labels_check(features, y, folds, args.metric, grid["svc-rbf"], n_classes)
        return

    # Baseline: GridSearchCV per (extractor, head), same folds and metric.
    from sklearn.model_selection import GridSearchCV

    def scorer(est, X, y_true):
        return score(args.metric, y_true, full_proba(est, X, n_classes))

    grid_best, grid_where, grid_fits = -np.inf, None, 0
    t0 = time.perf_counter()
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for n in names:
            for head, params in grid.items():
                gs = GridSearchCV(HEADS.get(head)(random_state=seeds[0]), params, scoring=scorer, cv=folds,
                                  refit=False, n_jobs=1, error_score=np.nan)
                gs.fit(features[n], y)
                grid_fits += len(gs.cv_results_["params"])
                if gs.best_score_ > grid_best:
                    grid_best, grid_where = gs.best_score_, f"{n} + {head} {gs.best_params_}"
    grid_time = time.perf_counter() - t0
    print(f"GridSearchCV: {grid_fits} configurations x {args.cv} folds in {grid_time:.1f} s; best {grid_best:.4f} "
          f"({grid_where})")

    rows, reach_times, first_study = [], [], None
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            # Other seeds change the sampler and the heads' seeds, never the folds the grid used.
            study = run_search(features, y, heads=list(grid), metric=args.metric, cv=args.cv, seed=seed,
                               cv_seed=seeds[0], storage=f"sqlite:///{tmp}/s.db", name="bench",
                               n_trials=None if args.budget else args.trials,
                               timeout=args.budget * grid_time if args.budget else None, progress=False)
            wall = time.perf_counter() - t0
            trials = sorted((t for t in study.trials if t.datetime_complete), key=lambda t: t.datetime_complete)
            start = min(t.datetime_start for t in trials)
            best, reached = -np.inf, None
            for t in trials:
                if t.value is not None and t.state.name == "COMPLETE":
                    best = max(best, t.value)
                if reached is None and best >= grid_best - 1e-12:
                    reached = (t.datetime_complete - start).total_seconds()
            reach_times.append(np.inf if reached is None else reached)
            rows.append([seed, len(trials), round(wall, 1), round(len(trials) / wall * 60, 1), round(study.best_value, 4),
                         "not reached" if reached is None else round(reached, 1),
                         "-" if reached is None else round(reached / grid_time, 3)])
            if first_study is None:
                first_study = (candidate_of(study.best_trial), seed)
    print()
    print(table(["seed", "trials", "wall s", "trials/min", "best cv", "s to reach grid best", "/ grid time"], rows))
    median = float(np.median(reach_times))
    print(f"\nmedian time to reach GridSearchCV's best / GridSearchCV time: "
          f"{'not reached' if np.isinf(median) else f'{median / grid_time:.3f}'} (target <= 0.5)")

    candidate, seed = first_study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        head = candidate.build(seed).fit(features[candidate.extractor], y)
    test_emb = extractors.embed(test, candidate.extractor, store, batch_size=None, skip_bad=False, progress=True)
    report = evaluation_report(np.array([it.label for it in test]), full_proba(head, test_emb.embeddings, n_classes),
                               dataset.classes)
    print(f"\nBreastMNIST test (156 images), best of seed {seed}: {candidate.describe()}; weights {args.weights}")
    print(table(["model", "AUROC", "accuracy", "macro F1"],
                [[f"automl ({args.weights} weights, {args.image_size} px)", round(report["auroc"], 3),
                  round(report["accuracy"], 3), round(report["f1_macro"], 3)]]
                + [[name, auc, acc, None] for name, auc, acc in MEDMNIST]))


def labels_check(features, y, folds, metric, grid, n_classes) -> None:
    """Per extractor and svc-rbf setting of the grid: the mean CV score from the bare SVC's decision
    values (as the search scored its folds before) and from the Platt-calibrated model's probabilities
    (the saved model's)."""
    from sklearn.model_selection import ParameterGrid

    rows, gaps = [], []
    for name, X in features.items():
        for params in ParameterGrid(grid):
            by = {"decision": [], "calibrated": []}
            for tr, va in folds:
                # The bare SVC on the head's standardised features, threshold 0: how the search scored
                # a fold before it scored the calibrated model.
                head = HEADS.get("svc-rbf")(random_state=0, **params)
                svc = head._svc().fit(*head._prepare_fit(X[tr], y[tr]))
                values = svc.decision_function(head._prepare_predict(X[va]))
                values = np.column_stack([-values, values]) if values.ndim == 1 else values
                by["decision"].append(score(metric, y[va], values))
                head = HEADS.get("svc-rbf")(random_state=0, **params).fit(X[tr], y[tr])
                by["calibrated"].append(score(metric, y[va], full_proba(head, X[va], n_classes)))
            d, c = (float(np.mean(v)) for v in by.values())
            gaps.append(d - c)
            rows.append([name, ", ".join(f"{k} {v}" for k, v in sorted(params.items())), round(d, 4), round(c, 4),
                         round(d - c, 4)])
    print(f"\nsvc-rbf, mean {metric} over the search's folds: from decision values vs from calibrated labels")
    print(table(["extractor", "setting", "decision", "calibrated", "difference"], rows))
    print(f"difference: median {np.median(gaps):+.4f}, mean |d| {np.mean(np.abs(gaps)):.4f}, "
          f"range {min(gaps):+.4f} .. {max(gaps):+.4f}")


if __name__ == "__main__":
    main()
