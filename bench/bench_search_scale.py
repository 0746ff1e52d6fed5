"""The cost curve of the default search: ``run_search``'s wall time against the number of images,
before and after the search's rework, with what the rework does to the scores.

Data: synthetic but learnable stand-ins for cached CNN embeddings, one "extractor" ``synthetic-<dim>``.
Per (classes, seed): ``sklearn.datasets.make_classification`` draws a pool of max(20,000, largest size)
rows in 64 latent directions (12 informative, 12 redundant, 40 noise; 2 clusters per class; 10 % of
labels redrawn at random, ``flip_y=0.1``; ``class_sep`` 0.5 for 2 classes, 1.1 otherwise, so a tuned
head scores about 0.75-0.9 accuracy on the test split). A fixed random projection (per dim and seed)
maps them to ``dim`` columns, plus a per-column offset and independent Gaussian noise (sd 0.5) so the
embedding has full rank, then a ReLU (CNN embeddings are non-negative, about half the entries 0
here), float32. A size of n images is the pool's first n rows (the pool is shuffled), so every size
of one seed comes from the same distribution and the smaller sets are subsets of the larger. A
stratified 20 % of the n is held out as the test split (``automl.data.stratified_holdout``, seed =
the data seed, as ``automl fit`` holds out ``test_fraction`` 0.2); the search sees the other 80 %
(the "training split": 400 rows at n = 500, 16,000 at n = 20,000).

The search is the product's default: heads ``automl.recipe.model.DEFAULT_HEADS`` (when the training
split has more than 10,000 rows and ``automl.search.heads_for`` exists, the after search uses what
it returns; the before search keeps the defaults, as today's product does), macro-F1, ``--cv`` folds,
``--trials`` trials (30, the product's default), a fresh SQLite storage in a temp dir per search.
A default ``automl fit`` searches the study's three backbones and so enqueues the three reference
setups first (each head at its defaults, ``automl.search.REFERENCE_SETUPS``); their extractor names
would not match ``synthetic-<dim>``, so the script points them at it for its searches: the first
trials are ffnn, svc-rbf and logreg-elasticnet at their defaults, as in a default fit
(``--no-references``: TPE from the first trial).

Measured, in one process (one untimed tiny ffnn fit first, so no search pays TensorFlow's import),
per (classes, dim, n, seed), for
- ``before``: ``run_search(..., legacy=True)``, today's code path (calibrated probabilities in every
  fold, folds one after another, the old head settings), and
- ``after``: ``run_search(..., legacy=False)`` with ``n_jobs`` (``--n-jobs``; default the product's
  None, all usable cores):
the wall time of the whole ``run_search`` call; per head, seconds per trial (``datetime_start`` to
``datetime_complete`` of each finished trial, grouped by ``params["head"]``) with the counts of
complete and pruned trials; the best CV score (``best_trial``); the test macro-F1 and accuracy of
the best pipeline refitted on the training split (``candidate_of(best).build(seed, overrides).fit(...)``, the legacy head settings for before,
scored with ``full_proba`` on the held-out split) and the refit's seconds. Seeds ``--seeds``: each
is both the data seed and the search seed; tables show medians over seeds, the per-seed figures are
printed as each search ends and in the per-seed table. Before and after run back to back per seed
(alternating which goes first), so shared-machine load drifts hit both alike.

``before`` takes about an hour at 5,000 images, so it runs its full ``--trials`` only at
``--before-sizes`` (and at most ``--before-max-trials``); elsewhere it runs ``--before-probe-trials``
trials and its wall time is extrapolated linearly to ``--trials``, printed as "~" and labelled
"extrapolated from k trials", never as a measurement; its best CV and test columns are then "-"
(``--before-probe-trials 0``: no before search there at all).
Linear extrapolation is rough: Optuna's median pruner prunes nothing in the first 5 trials and TPE
picks heads at random for its first 10, so a probe sees no pruning and a random head mix (with the
references: one trial of each head at its defaults).

Where ``run_search`` has no ``legacy`` keyword yet (the branch before the rework), only today's path
runs, labelled ``current``, under ``before``'s size limits (it is the same code path).

Growth: the after (or current) median wall time's ratio between consecutive sizes, and the fitted
exponent b of wall ~ n^b (least-squares slope of log wall on log n). Targets (the issue's): 5,000
images in <= 180 s, 20,000 in <= 900 s, and 600 images no slower than before. 600 is in the default
sizes (and before-sizes) because that target names it and needs a measured before at exactly 600;
as one more point of the curve it costs little.

    .venv/bin/python bench/bench_search_scale.py --json bench/out/bench_search_scale.json   # full (hours)
    .venv/bin/python bench/bench_search_scale.py --quick                                    # smoke: ~1-2 min
    .venv/bin/python bench/bench_search_scale.py --classes 2 --dims 2048 --seeds 0          # one configuration
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
import tempfile
import time
import warnings
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import median, table  # noqa: E402

import automl.search as search_module  # noqa: E402
from automl.data import stratified_holdout  # noqa: E402
from automl.evaluate import full_proba, metric_by_name  # noqa: E402
from automl.recipe.model import DEFAULT_HEADS  # noqa: E402
from automl.search import best_trial, candidate_of, run_search  # noqa: E402

LATENT, INFORMATIVE, REDUNDANT = 64, 12, 12
FLIP_Y, NOISE_SD, OFFSET_SD = 0.1, 0.5, 0.5
POOL = 20_000  # rows drawn per (classes, seed) at least, so a size's data does not depend on --sizes
TEST_FRACTION = 0.2
BIG_TRAIN = 10_000  # training rows above which heads_for (if the product has it) picks the heads
TARGETS = ((5000, 180.0), (20000, 900.0))  # (images, seconds the after search may take)
SMALL_TARGET = 600  # images at which after must be no slower than before

QUICK = dict(sizes="300,600", classes="2", dims="64", trials=6, seeds="0", cv=3, before_sizes="300",
             before_probe_trials=3)


def class_sep(n_classes: int) -> float:
    return 0.5 if n_classes == 2 else 1.1


@lru_cache(maxsize=4)
def pool(n_classes: int, dim: int, seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` synthetic embeddings (float32, >= 0) and labels; see the module docstring."""
    from sklearn.datasets import make_classification

    z, y = make_classification(n_samples=rows, n_features=LATENT, n_informative=INFORMATIVE, n_redundant=REDUNDANT,
                               n_classes=n_classes, n_clusters_per_class=2, flip_y=FLIP_Y,
                               class_sep=class_sep(n_classes), shuffle=True, random_state=seed)
    rng = np.random.default_rng([seed, dim])
    projection = rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)
    offset = rng.normal(0.0, OFFSET_SD, dim)
    x = z @ projection + offset + rng.normal(0.0, NOISE_SD, (rows, dim))
    return np.maximum(x, 0.0).astype(np.float32), y.astype(np.int64)


def dataset(n_classes: int, dim: int, seed: int, n: int, pool_rows: int):
    """(X_train, y_train, X_test, y_test) of ``n`` images: the pool's first n, a stratified 20 % held out."""
    x, y = pool(n_classes, dim, seed, pool_rows)
    x, y = x[:n], y[:n]
    held = stratified_holdout(y.tolist(), TEST_FRACTION, seed)
    if held is None:
        raise SystemExit(f"cannot hold out a stratified {TEST_FRACTION:.0%} of {n} images in {n_classes} classes")
    test = np.zeros(n, bool)
    test[sorted(held)] = True
    return x[~test], y[~test], x[test], y[test]


@contextlib.contextmanager
def references_on(extractor: str, enabled: bool):
    """Point the study's reference setups at the one synthetic extractor for the duration."""
    original = getattr(search_module, "REFERENCE_SETUPS", None)
    if original is None:
        yield
        return
    search_module.REFERENCE_SETUPS = (tuple((extractor, head, label) for _, head, label in original)
                                      if enabled else ())
    try:
        yield
    finally:
        search_module.REFERENCE_SETUPS = original


def warm_up() -> float:
    """One tiny ffnn fit, so TensorFlow's import and first graph land in no timed search."""
    from automl.heads import HEADS

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.random((40, 8), dtype=np.float32)
    y = np.arange(40) % 2
    HEADS.get("ffnn")(hidden_layers=(8,), max_epochs=2, random_state=0).fit(x, y)
    return time.perf_counter() - t0


def pick_heads(base: list[str], n_train: int, explicit: bool, mode: str) -> list[str]:
    heads_for = getattr(search_module, "heads_for", None)
    if mode == "after" and heads_for is not None and n_train > BIG_TRAIN:
        return list(heads_for(list(base), n_train, explicit))
    return list(base)


def trial_figures(study) -> tuple[list[dict], dict]:
    """Every trial (head, state, seconds, value) and, per head, counts and seconds per finished trial."""
    rows, by_head = [], {}
    for t in study.get_trials(deepcopy=False):
        head = t.params.get("head", "?")
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start else None)
        rows.append({"number": t.number, "head": head, "state": t.state.name.lower(), "seconds": seconds,
                     "value": t.value, "params": dict(t.params), "reference": t.user_attrs.get("reference")})
        h = by_head.setdefault(head, {"complete": 0, "pruned": 0, "fail": 0, "other": 0, "seconds": 0.0})
        state = t.state.name.lower()
        h[state if state in ("complete", "pruned", "fail") else "other"] += 1
        if seconds is not None and state in ("complete", "pruned"):
            h["seconds"] += seconds
    for h in by_head.values():
        finished = h["complete"] + h["pruned"]
        h["s_per_trial"] = h["seconds"] / finished if finished else None
    return rows, by_head


def one_search(mode: str, args, features: dict, y_train, x_test, y_test, heads: list[str], seed: int,
               n_trials: int, has_legacy: bool, has_n_jobs: bool) -> dict:
    kwargs = {}
    if has_legacy and mode in ("before", "after"):
        kwargs["legacy"] = mode == "before"
    if has_n_jobs and mode == "after" and args.n_jobs is not None:
        kwargs["n_jobs"] = args.n_jobs
    extractor = next(iter(features))
    with tempfile.TemporaryDirectory(prefix="automl-bench-scale-") as tmp, \
            references_on(extractor, not args.no_references):
        t0 = time.perf_counter()
        study = run_search(features, y_train, heads=heads, metric=args.metric, cv=args.cv, seed=seed,
                           storage=f"sqlite:///{tmp}/search.db", name="bench-search-scale", n_trials=n_trials,
                           timeout=None, progress=False, **kwargs)
        wall = time.perf_counter() - t0
        trials, by_head = trial_figures(study)
        best = best_trial(study)
    finished = sum(h["complete"] + h["pruned"] for h in by_head.values())
    probe = n_trials < min(args.trials, args.before_max_trials)  # its best means nothing: no refit, CV shown "-"
    out = {"mode": mode, "probe": probe, "kwargs": kwargs, "heads": heads, "trials_asked": n_trials,
           "trials_finished": finished,
           "wall_s": wall, "measured": n_trials >= args.trials,
           "wall_extrapolated_s": None if n_trials >= args.trials else wall * args.trials / max(finished, 1),
           "per_head": by_head, "trials": trials,
           "best_cv": None, "best_pipeline": None, "test_macro_f1": None, "test_accuracy": None, "refit_s": None}
    if best is None:
        return out
    out["best_cv"], out["best_pipeline"] = best.value, candidate_of(best).describe()
    if probe:
        return out
    from sklearn.exceptions import ConvergenceWarning

    n_classes = int(max(y_train.max(), y_test.max())) + 1
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # The before search's winner refits with the settings it was scored with (LEGACY_HEAD_PARAMS).
        overrides = getattr(search_module, "LEGACY_HEAD_PARAMS", None) if kwargs.get("legacy") else None
        head = candidate_of(best).build(seed, overrides).fit(features[extractor], y_train)
    out["refit_s"] = time.perf_counter() - t0
    proba = full_proba(head, x_test, n_classes)
    out["test_macro_f1"] = metric_by_name("macro-f1")(y_test, proba)
    out["test_accuracy"] = metric_by_name("accuracy")(y_test, proba)
    return out


# --- summary --------------------------------------------------------------------------------------


def _med(values):
    values = [v for v in values if v is not None]
    return median(values) if values else None


def _f(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def _secs(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def wall_of(run: dict) -> float:
    """Measured wall, or the linear extrapolation to --trials."""
    return run["wall_s"] if run["measured"] else run["wall_extrapolated_s"]


def summarise(runs: list[dict], modes: list[str], sizes: list[int], args) -> dict:
    """Medians per (classes, dim, n, mode); growth and targets per (classes, dim)."""
    configs = {}
    for r in runs:
        configs.setdefault((r["classes"], r["dim"]), []).append(r)
    out = {}
    for (k, dim), rs in configs.items():
        per_size = {}
        for n in sizes:
            cell = {}
            for mode in modes:
                mine = [r for r in rs if r["n"] == n and r["mode"] == mode]
                if not mine:
                    continue
                heads = sorted({h for r in mine for h in r["per_head"]})
                cell[mode] = {
                    "seeds": [r["seed"] for r in mine],
                    "n_train": mine[0]["n_train"],
                    "measured": all(r["measured"] for r in mine),
                    "trials_finished": [r["trials_finished"] for r in mine],
                    "wall_s": _med([wall_of(r) for r in mine]),
                    "wall_per_seed_s": [wall_of(r) for r in mine],
                    "capped": any(not r["measured"] and not r["probe"] for r in mine),
                    "best_cv": None if any(r["probe"] for r in mine) else _med([r["best_cv"] for r in mine]),
                    "test_macro_f1": _med([r["test_macro_f1"] for r in mine]),
                    "test_accuracy": _med([r["test_accuracy"] for r in mine]),
                    "per_head": {h: {"s_per_trial": _med([r["per_head"].get(h, {}).get("s_per_trial") for r in mine]),
                                     "complete": sum(r["per_head"].get(h, {}).get("complete", 0) for r in mine),
                                     "pruned": sum(r["per_head"].get(h, {}).get("pruned", 0) for r in mine),
                                     "fail": sum(r["per_head"].get(h, {}).get("fail", 0) for r in mine)}
                                 for h in heads},
                }
            if cell:
                per_size[n] = cell
        growth_mode = "after" if "after" in modes else modes[-1]
        out[f"{k} classes, dim {dim}"] = {"classes": k, "dim": dim, "sizes": per_size,
                                          "growth": growth(per_size, growth_mode),
                                          "targets": targets(per_size, modes)}
    return out


def growth(per_size: dict, mode: str) -> dict:
    points = [(n, c[mode]["wall_s"], c[mode]["measured"]) for n, c in sorted(per_size.items())
              if mode in c and c[mode]["wall_s"]]
    ratios = [{"from": a[0], "to": b[0], "n_ratio": b[0] / a[0], "wall_ratio": b[1] / a[1],
               "extrapolated": not (a[2] and b[2])} for a, b in zip(points, points[1:])]

    def slope(pts):
        if len(pts) < 2:
            return None
        return float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])

    return {"mode": mode, "ratios": ratios, "exponent_all": slope(points),
            "exponent_from_2000": slope([p for p in points if p[0] >= 2000]),
            "includes_extrapolated": not all(p[2] for p in points)}


def targets(per_size: dict, modes: list[str]) -> list[dict]:
    mode = "after" if "after" in modes else modes[-1]
    out = []
    for n, limit in TARGETS:
        cell = per_size.get(n, {}).get(mode)
        if cell is None:
            out.append({"target": f"{n} images <= {limit:.0f} s", "mode": mode, "value_s": None, "verdict": "not run"})
        else:
            verdict = "met" if cell["wall_s"] <= limit else "NOT met"
            if not cell["measured"]:
                verdict += " (extrapolated, not measured)"
            out.append({"target": f"{n} images <= {limit:.0f} s", "mode": mode, "value_s": cell["wall_s"],
                        "verdict": verdict})
    cell = per_size.get(SMALL_TARGET, {})
    entry = {"target": f"{SMALL_TARGET} images no slower than before", "mode": "after vs before"}
    if "before" not in cell or "after" not in cell:
        entry.update(value_s=None, verdict="not run (needs before and after at 600)")
    else:
        b, a = cell["before"], cell["after"]
        paired = [x / y for x, y in zip(a["wall_per_seed_s"], b["wall_per_seed_s"])]
        verdict = "met" if a["wall_s"] <= b["wall_s"] else "NOT met"
        if not b["measured"]:
            verdict = "before only extrapolated, not a measurement: " + verdict
        entry.update(value_s={"before": b["wall_s"], "after": a["wall_s"]}, after_over_before_per_seed=paired,
                     verdict=verdict)
    out.append(entry)
    return out


def print_summary(summary: dict, modes: list[str], heads_seen: list[str], args) -> None:
    both = "before" in modes and "after" in modes
    main = "after" if both else modes[0]
    for title, s in summary.items():
        print(f"\n== {title}: median over seeds; wall time of the whole search, {args.trials} trials, {args.cv}-fold, "
              f"macro-F1 ==")
        rows = []
        for n, c in sorted(s["sizes"].items()):
            m = c.get(main, {})
            ph = [_f((m.get("per_head", {}).get(h) or {}).get("s_per_trial"), 2) for h in heads_seen]
            if both:
                b, a = c.get("before"), c.get("after")
                bw = "-" if b is None else (_secs(b["wall_s"]) if b["measured"]
                                            else f"~{_secs(b['wall_s'])} (x{min(b['trials_finished'])})")
                speed = (b["wall_s"] / a["wall_s"]) if b and a and a["wall_s"] else None
                speed_s = "-" if speed is None else (f"{speed:.2f}" if b["measured"] else f"~{speed:.2f}")
                dcv = None
                if b and a and b["best_cv"] is not None and a["best_cv"] is not None:
                    dcv = a["best_cv"] - b["best_cv"]
                cap = "*" if b and b["capped"] else ""
                rows.append([n, m.get("n_train", "-"), bw, _secs(a and a["wall_s"]), speed_s,
                             _f(b and b["best_cv"]) + cap, _f(a and a["best_cv"]),
                             "-" if dcv is None else f"{dcv:+.3f}",
                             _f(b and b["test_macro_f1"]), _f(a and a["test_macro_f1"]), *ph])
            else:
                w = "-" if not m else (_secs(m["wall_s"]) if m["measured"]
                                       else f"~{_secs(m['wall_s'])} (x{min(m['trials_finished'])})")
                cap = "*" if m and m["capped"] else ""
                rows.append([n, m.get("n_train", "-"), w, _f(m.get("best_cv")) + cap, _f(m.get("test_macro_f1")),
                             _f(m.get("test_accuracy")), *ph])
        if both:
            headers = ["n", "train", "before s", "after s", "speed-up", "CV before", "CV after", "d CV",
                       "test F1 before", "test F1 after", *[f"after s/trial {h}" for h in heads_seen]]
        else:
            headers = ["n", "train", f"{main} s", "best CV", "test F1", "test acc",
                       *[f"s/trial {h}" for h in heads_seen]]
        print(table(headers, rows, ))
        print('"~X (xk)": extrapolated linearly to --trials from a search of k trials (the fewest of the seeds), '
              "not measured; a probe's CV/test columns are '-'; '*': the best of only --before-max-trials "
              f"({args.before_max_trials}) trials.")

        # Per-head detail: seconds per trial and counts, every mode.
        rows = []
        for n, c in sorted(s["sizes"].items()):
            for mode in modes:
                if mode not in c:
                    continue
                for h, v in c[mode]["per_head"].items():
                    rows.append([n, mode, h, _f(v["s_per_trial"], 2), v["complete"], v["pruned"], v["fail"]])
        print(f"\nper head ({title}): seconds per finished trial (median over seeds of each search's mean); "
              "trials summed over seeds")
        print(table(["n", "search", "head", "s/trial", "complete", "pruned", "failed"], rows))

        g = s["growth"]
        print(f"\ngrowth of the {g['mode']} wall time ({title})"
              + (" - includes extrapolated walls" if g["includes_extrapolated"] else "") + ":")
        print("  " + "; ".join(f"{r['from']}->{r['to']} (n x{r['n_ratio']:.2f}): x{r['wall_ratio']:.2f}"
                               + ("~" if r["extrapolated"] else "") for r in g["ratios"]))
        print(f"  fitted exponent b of wall ~ n^b: {_f(g['exponent_all'], 2)} over all sizes; "
              f"{_f(g['exponent_from_2000'], 2)} over sizes >= 2000")
        print(f"targets ({title}):")
        for t in s["targets"]:
            v = t["value_s"]
            shown = "-" if v is None else (f"before {_secs(v['before'])} s, after {_secs(v['after'])} s"
                                           if isinstance(v, dict) else f"{t['mode']} {_secs(v)} s")
            print(f"  {t['target']:<38} {shown:<30} {t['verdict']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="500,600,1000,2000,5000,10000,20000", help="total images per dataset")
    ap.add_argument("--classes", default="2,4")
    ap.add_argument("--dims", default="1024,2048")
    ap.add_argument("--trials", type=int, default=30, help="the product's default, 30")
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2", help="each is the data seed and the search seed")
    ap.add_argument("--metric", default="macro-f1")
    ap.add_argument("--heads", default=None,
                    help="comma-separated (default: the product's DEFAULT_HEADS; given: heads_for's explicit=True)")
    ap.add_argument("--n-jobs", type=int, default=None, help="after only (default: the product's None, all cores)")
    ap.add_argument("--before-sizes", default="500,600,1000,2000", help="sizes where before runs in full")
    ap.add_argument("--before-max-trials", type=int, default=30,
                    help="at most this many trials for before even at --before-sizes (fewer: extrapolated)")
    ap.add_argument("--before-probe-trials", type=int, default=4,
                    help="trials of before's probe at other sizes (its wall is extrapolated to --trials); "
                         "0: no before there")
    ap.add_argument("--no-references", action="store_true",
                    help="do not enqueue the reference setups (each head at its defaults) first")
    ap.add_argument("--json", type=Path, default=None, help="write every figure (every seed, every trial) here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: sizes 300,600, 2 classes, dim 64, 6 trials, seed 0, 3-fold; before in full at "
                         "300 only, a 3-trial probe at 600")
    args = ap.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    ints = lambda s: [int(v) for v in str(s).split(",") if v.strip()]  # noqa: E731
    sizes, class_counts, dims, seeds = ints(args.sizes), ints(args.classes), ints(args.dims), ints(args.seeds)
    before_sizes = set(ints(args.before_sizes))
    explicit = args.heads is not None
    base_heads = args.heads.split(",") if explicit else list(DEFAULT_HEADS)
    pool_rows = max(POOL, max(sizes))

    params = inspect.signature(run_search).parameters
    has_legacy, has_n_jobs = "legacy" in params, "n_jobs" in params
    modes = ["before", "after"] if has_legacy else ["current"]
    limited = "before" if has_legacy else "current"  # today's path: the size limits apply to it

    machine = _common.machine_lines(with_tf=True)
    print("\n".join(machine))
    load0 = os.getloadavg()
    print(f"load    : {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} (1/5/15 min) at the start")
    print(f"run_search: legacy keyword {'yes' if has_legacy else 'no'}, n_jobs keyword {'yes' if has_n_jobs else 'no'}"
          f", heads_for {'yes' if hasattr(search_module, 'heads_for') else 'no'} -> searches: {', '.join(modes)}"
          + ("" if has_legacy else " (today's path; before/after need the reworked run_search)"))
    print(f"settings: sizes {sizes}; classes {class_counts}; dims {dims}; seeds {seeds}; {args.trials} trials, "
          f"{args.cv}-fold, {args.metric}; heads {base_heads}"
          f"{' (explicit)' if explicit else ' (DEFAULT_HEADS)'}; references "
          f"{'off' if args.no_references else 'on'}; n_jobs {args.n_jobs if args.n_jobs is not None else 'default'}")
    print(f"{limited} limits: full (<= {args.before_max_trials} trials) at {sorted(before_sizes)}; elsewhere a "
          f"{args.before_probe_trials}-trial probe, wall extrapolated linearly to {args.trials}")
    print(f"data    : synthetic-<dim>: make_classification pool of {pool_rows} rows ({LATENT} latent, {INFORMATIVE} "
          f"informative, {REDUNDANT} redundant, flip_y {FLIP_Y}, class_sep 0.5 for 2 classes / 1.1 else), random "
          f"projection + noise sd {NOISE_SD}, ReLU, float32; n = the pool's first n, stratified "
          f"{TEST_FRACTION:.0%} held out as test")
    print(f"warm-up : tiny ffnn fit (TensorFlow import) {warm_up():.1f} s, untimed\n", flush=True)

    record = {"machine": machine, "settings": {**vars(args), "json": str(args.json) if args.json else None,
                                               "pool_rows": pool_rows, "base_heads": base_heads,
                                               "has_legacy": has_legacy, "has_n_jobs": has_n_jobs,
                                               "has_heads_for": hasattr(search_module, "heads_for"), "modes": modes},
              "load_at_start": load0, "runs": []}

    def save():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=1, default=str))

    t_all = time.perf_counter()
    for k in class_counts:
        for dim in dims:
            extractor = f"synthetic-{dim}"
            for n in sizes:
                for i, seed in enumerate(seeds):
                    x_tr, y_tr, x_te, y_te = dataset(k, dim, seed, n, pool_rows)
                    order = modes if i % 2 == 0 else modes[::-1]
                    for mode in order:
                        if mode == limited and n not in before_sizes and args.before_probe_trials <= 0:
                            continue  # --before-probe-trials 0: no probe, the before columns stay "-"
                        if mode == limited:
                            n_trials = (min(args.trials, args.before_max_trials) if n in before_sizes
                                        else min(args.trials, args.before_probe_trials))
                        else:
                            n_trials = args.trials
                        heads = pick_heads(base_heads, len(y_tr), explicit, mode)
                        r = one_search(mode, args, {extractor: x_tr}, y_tr, x_te, y_te, heads, seed, n_trials,
                                       has_legacy, has_n_jobs)
                        r.update(classes=k, dim=dim, n=n, n_train=len(y_tr), n_test=len(y_te), seed=seed,
                                 load_after=os.getloadavg()[0])
                        record["runs"].append(r)
                        save()
                        per_head = ", ".join(f"{h} {v['s_per_trial']:.2f} s x{v['complete']}+{v['pruned']}p"
                                             for h, v in r["per_head"].items() if v["s_per_trial"] is not None)
                        wall = (f"{r['wall_s']:.1f} s" if r["measured"] else
                                f"{r['wall_s']:.1f} s for {r['trials_finished']} trials, "
                                f"~{r['wall_extrapolated_s']:.0f} s extrapolated from {r['trials_finished']} trials "
                                f"to {args.trials}")
                        best_cv = "- (probe)" if r["probe"] else _f(r["best_cv"])
                        print(f"[{k} cl, dim {dim}, n {n} ({len(y_tr)} train), seed {seed}] {mode}: {wall}; "
                              f"best CV {best_cv}, test F1 {_f(r['test_macro_f1'])} acc "
                              f"{_f(r['test_accuracy'])} (refit {_secs(r['refit_s'])} s); {per_head}; "
                              f"load {r['load_after']:.1f}", flush=True)

    seen = {h for r in record["runs"] for h in r["per_head"]}
    heads_seen = [h for h in base_heads if h in seen] + sorted(seen - set(base_heads))
    summary = summarise(record["runs"], modes, sizes, args)
    record["summary"] = summary
    record["total_s"] = time.perf_counter() - t_all
    print_summary(summary, modes, heads_seen, args)

    rows = []
    for r in record["runs"]:
        rows.append([r["classes"], r["dim"], r["n"], r["seed"], r["mode"], r["trials_finished"],
                     _secs(r["wall_s"]), "-" if r["measured"] else f"~{_secs(r['wall_extrapolated_s'])}",
                     "-" if r["probe"] else _f(r["best_cv"]), _f(r["test_macro_f1"]), _f(r["test_accuracy"]),
                     _secs(r["refit_s"])])
    print("\nper seed (every search run):")
    print(table(["classes", "dim", "n", "seed", "search", "trials", "wall s", "extrapolated s", "best CV",
                 "test F1", "test acc", "refit s"], rows))
    load1 = os.getloadavg()
    record["load_at_end"] = load1
    print(f"\ntotal {record['total_s']:.0f} s; load {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at the end")
    save()
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
