"""One study on several search processes: throughput on this machine, and what the database costs a trial.

- throughput: ``automl fit DATA --workers N --trials T`` (a subprocess, as a user runs it) for N in
  ``--workers`` on the store's SQLite file and on PostgreSQL (a throw-away local cluster of Debian's
  postgresql), on the same cached embeddings: scikit-learn's digits (``automl demo-data``, 10 classes,
  ``--per-class`` images each) embedded once by ``automl embed`` (inception-v3, random weights, 75 px:
  2048-d features; the time a head takes does not depend on what the features mean), heads svc-rbf
  and logreg-elasticnet, 5-fold CV. Each repeat is a new study (seed r). Reported: the command's wall
  time, and trials per minute over the search (first trial start to last trial end, from the study).
- the database's cost per trial: Optuna trials that do nothing (one suggested float) on an in-memory
  storage, the SQLite file and PostgreSQL, and ``run_search`` trials that do almost nothing (a
  30-row, 4-feature problem, logreg-elasticnet, 2 folds) on SQLite and PostgreSQL: the floor the
  search's own bookkeeping (slots, claims, budget, heartbeats) puts under every trial.

    .venv/bin/python bench/bench_scale_out.py              # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import REPO, fmt_spread, machine_lines, median, table  # noqa: E402
from conftest import postgres_cluster  # noqa: E402

EMBED = ("-e", "inception-v3", "--weights", "none", "--image-size", "75", "--precision", "float32")


def automl(*args) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "automl", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"automl {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - began


def search_span(url: str, seed_marker: int) -> tuple[int, float]:
    """Finished trials and seconds from the first trial's start to the last one's end, of the study
    the fit with ``seed_marker`` made (the newest search study in ``url``)."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    studies = [s for s in storage.get_all_studies() if ":run:" not in s.study_name]
    study_id = max(storage.get_study_id_from_name(s.study_name) for s in studies)
    trials = [t for t in storage.get_all_trials(study_id) if t.datetime_complete is not None and
              t.state.name in ("COMPLETE", "PRUNED")]
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    return len(trials), (end - start).total_seconds()


def throughput(data: Path, store: Path, url: str | None, workers: int, trials: int, repeats: int, first_seed: int):
    walls, rates = [], []
    for r in range(repeats):
        seed = first_seed + r
        storage = ["--storage", url] if url else []
        walls.append(automl("fit", data, *EMBED, "--heads", "svc-rbf,logreg-elasticnet", "--cv", "5", "--trials",
                            trials, "--workers", workers, "--seed", seed, "--store", store, "--no-progress", *storage))
        n, span = search_span(url or f"sqlite:///{store / 'optuna.db'}", seed)
        rates.append(60 * n / span)
    return walls, rates


def empty_trials(storage, n: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=f"empty-{time.monotonic_ns()}")
    began = time.perf_counter()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return (time.perf_counter() - began) / n


def tiny_searches(url: str, n: int) -> float:
    from automl.search import run_search

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)).astype(np.float32), np.arange(30) % 2
    began = time.perf_counter()
    run_search({"tiny": X}, y, heads=["logreg-elasticnet"], metric="accuracy", cv=2, seed=0, storage=url,
               name=f"tiny-{time.monotonic_ns()}", n_trials=n, timeout=None, progress=False, n_jobs=1)
    return (time.perf_counter() - began) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=120, help="demo images per class (10 classes)")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--empty-trials", type=int, default=200)
    args = parser.parse_args()
    print("\n".join(machine_lines(with_tf=False)))
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, postgres_cluster() as pg:
        tmp = Path(tmp)
        data, store = tmp / "digits", tmp / "store"
        automl("demo-data", data, "--per-class", args.per_class, "--classes", 10, "--size", 16)
        embed_s = automl("embed", data, *EMBED, "--store", store)
        print(f"data    : {args.per_class * 10} demo digits, embedded once in {embed_s:.0f} s (inception-v3, 75 px)")

        rows, seed = [], 100
        for name, url in (("SQLite (store)", None), ("PostgreSQL 15 (local)", pg)):
            base = None
            for n in (int(w) for w in args.workers.split(",")):
                walls, rates = throughput(data, store, url, n, args.trials, args.repeats, seed)
                seed += args.repeats
                base = base or median(rates)
                rows.append([name, n, fmt_spread(walls, " s"), fmt_spread(rates, "/min"), f"{median(rates) / base:.2f}x"])
                print(f"  {name}, {n} worker(s): {rows[-1][2]}, {rows[-1][3]}", flush=True)
        print(f"\n{args.trials} trials a fit (svc-rbf, logreg-elasticnet; 5-fold CV), {args.repeats} repeats, "
              "median (min..max)")
        print(table(["storage", "workers", "fit wall time", "trials/min (search)", "vs 1 worker"], rows))

        import optuna

        from automl.search import open_storage

        sqlite = f"sqlite:///{tmp / 'empty.db'}"
        floors = [["in memory", fmt_spread([1000 * empty_trials(optuna.storages.InMemoryStorage(), args.empty_trials)
                                            for _ in range(args.repeats)], " ms"), "-"]]
        for name, url in (("SQLite file", sqlite), ("PostgreSQL 15 (local)", pg)):
            empty = [1000 * empty_trials(open_storage(url), args.empty_trials) for _ in range(args.repeats)]
            tiny = [1000 * tiny_searches(url, 40) for _ in range(args.repeats)]
            floors.append([name, fmt_spread(empty, " ms"), fmt_spread(tiny, " ms")])
        print("\nper trial: an Optuna trial that does nothing; a run_search trial on a 30 x 4 problem")
        print(table(["storage", "empty Optuna trial", "tiny run_search trial"], floors))


if __name__ == "__main__":
    main()
