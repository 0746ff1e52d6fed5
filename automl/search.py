"""The Optuna search over extractor x head x hyperparameters, by cross-validation on training data.

Sees arrays and group ids only — never images, the store, or the test split. One study per fit
configuration, kept in persistent storage: an interrupted search resumes, a finished one can be
inspected with Optuna's own tools.

How a trial spends its time (``Stage``, ``plan_stages``): where the metric reads only labels or
ranks (``Metric.reads_scores``) a fold is scored from the head's ``fit_scores`` /
``decision_scores``: the saved model's predictions reached more cheaply (svc-rbf's calibrated SVC on
one Gram matrix); a trial is scored in stages — on growing stratified
subsamples of two folds' training sides (successive halving over data size, only where those
sides are large), then those two folds in full, then the rest — and Optuna's median pruner stops
it after any stage at which it is worse than the median of the finished trials there; within a
stage the folds are fitted in parallel (``n_jobs``, all usable cores by default): in threads with
BLAS held to one thread each, or, for a head whose fits cannot share a process (``ffnn``: Keras's
global seed), in worker processes with one TensorFlow thread each (``_in_workers``). The trial's
value is the mean over all folds at full size, as before. ``legacy=True`` keeps the earlier scheme
callable (calibrated probabilities, one fold after another, the earlier head settings) for
``bench/bench_search_scale.py``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from automl import progress as events
from automl.evaluate import full_proba, full_scores, metric_by_name
from automl.seeds import derive

# The published study's fixed setups, enqueued so the user sees what the search adds to them.
REFERENCE_SETUPS = (
    ("inception-resnet-v2", "ffnn", "study setup: Chongqing (InceptionResNetV2 + ffnn)"),
    ("xception", "svc-rbf", "study setup: brain MRI (Xception + svc-rbf)"),
    ("inception-v3", "logreg-elasticnet", "study setup: retinopathy (InceptionV3 + logreg-elasticnet)"),
)


@dataclass(frozen=True)
class Candidate:
    """One point of the search: what a trial chose."""

    extractor: str
    head: str
    params: dict

    def build(self, seed: int, overrides: Mapping[str, Mapping] | None = None):
        """The head, its ``random_state`` the run's ``head`` stream (the same in the search and the refit);
        ``overrides`` maps head names to parameters that replace the head's defaults (the legacy search)."""
        from automl.heads import HEADS

        extra = dict((overrides or {}).get(self.head, {}))
        return HEADS.get(self.head)(random_state=derive(seed, "head"), **{**extra, **self.params})

    def describe(self) -> str:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.params.items()))
        return f"{self.extractor} + {self.head}" + (f" ({shown})" if shown else "")


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def cv_splits(y: np.ndarray, cv: int, seed: int, groups: np.ndarray | None = None, *,
              synthetic: "SyntheticRows | None" = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds, fixed once per search so every trial is scored on the same folds.

    With ``groups``, images of one group never straddle a fold boundary. With ``synthetic``, the
    rows it names are synthetic: folds are drawn over the real rows only, validation sides hold
    real rows only, and a synthetic row joins a fold's training side only when none of its source
    groups is on that fold's validation side (so no fold scores a near-copy of its own training
    image); ``synthetic.train_real=False`` leaves the real rows out of every training side, and
    ``synthetic.select`` chooses among a side's synthetic rows from its real training rows alone.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    real = np.ones(len(y), bool) if synthetic is None else ~synthetic.mask(len(y))
    real_rows = np.flatnonzero(real)
    y_real = y[real_rows]
    check_cv(y_real, cv)
    if groups is None:
        splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        folds = list(splitter.split(np.zeros(len(y_real)), y_real))
    else:
        splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)
        folds = list(splitter.split(np.zeros(len(y_real)), y_real, np.asarray(groups)[real_rows]))
    folds = [(real_rows[tr], real_rows[va]) for tr, va in folds]
    if synthetic is None:
        return folds
    out = []
    for i, (tr, va) in enumerate(folds):
        held_out = set(np.asarray(groups)[va].tolist()) if groups is not None else set(va.tolist())
        extra = [row for row, sources in zip(synthetic.rows, synthetic.sources) if not held_out & set(sources)]
        if synthetic.select is not None:  # chosen by what the fold's real training rows teach, never its validation's
            extra = synthetic.select(tr, extra, i)
        train_side = np.concatenate([tr if synthetic.train_real else tr[:0], np.asarray(extra, dtype=tr.dtype)])
        out.append((np.sort(train_side), va))
    return out


def check_cv(labels, cv: int, classes: Sequence[str] | None = None) -> None:
    """Refuse ``cv`` folds when a class has fewer than ``cv`` real training images (``labels``: their
    class indices; ``classes`` names them in the message). The fit runs it before any embedding, on
    the dataset's counts, and ``cv_splits`` again on the rows that were embedded."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    present = np.flatnonzero(counts)
    smallest = int(present[np.argmin(counts[present])])
    n = int(counts[smallest])
    if n < cv:
        from automl.errors import DataError

        name = repr(classes[smallest]) if classes is not None else str(smallest)
        fix = f"Pass --cv {n} (cv: {n} in a recipe) or add images." if n >= 2 else "Add images to that class."
        raise DataError(f"{cv}-fold cross-validation needs at least {cv} real training images per class; the "
                        f"smallest class has {n} (class {name}). {fix}")


# --- how a trial spends its time ------------------------------------------------------------------

MIN_RUNG_ROWS = 500  # the smallest training subsample a trial is scored on (successive halving)
RUNG_FACTOR = 4  # each data rung has this many times the rows of the one before
FIRST_FOLDS = 2  # the folds a trial is scored on before the rest (where a bad one is pruned)
LARGE_N = 10_000  # real training images above which the default heads gain a scalable one
LARGE_N_HEAD = "svc-nystroem"
# The settings of the heads before the search's speed-up, for ``legacy=True`` (the benchmark's baseline).
LEGACY_HEAD_PARAMS = {"logreg-elasticnet": {"max_iter": 300, "tol": 1e-4}, "ffnn": {"epoch_rows": None}}


@dataclass(frozen=True)
class Stage:
    """A step of a trial: ``folds`` (indices) fitted on ``rows`` training rows each (a stratified
    subsample; None: the fold's whole training side), then reported to the pruner."""

    folds: tuple[int, ...]
    rows: int | None = None


def plan_stages(train_sizes: Sequence[int]) -> list[Stage]:
    """The stages of every trial, given the folds' training-side sizes: data rungs of
    ``MIN_RUNG_ROWS`` x ``RUNG_FACTOR``^k rows below the smallest side, on the first ``FIRST_FOLDS``
    folds; then those folds in full; then the others. Small data has no data rungs, and its one
    pruning point (after two folds) is where the search always had it."""
    folds = tuple(range(len(train_sizes)))
    first, rest = folds[:FIRST_FOLDS], folds[FIRST_FOLDS:]
    rungs, rows = [], min(train_sizes) // RUNG_FACTOR
    while rows >= MIN_RUNG_ROWS:
        rungs.insert(0, rows)
        rows //= RUNG_FACTOR
    return [Stage(first, r) for r in rungs] + [Stage(first)] + ([Stage(rest)] if rest else [])


def subsample(train: np.ndarray, y: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """``rows`` of the training rows ``train``, stratified by class (each class keeps its share, and
    at least 2 rows where it has them), sorted; the same for every trial of a search."""
    labels = y[train]
    generator = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = train[labels == label]
        share = max(int(round(rows * len(members) / len(train))), min(2, len(members)))
        keep.append(generator.choice(members, size=min(share, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def heads_for(heads: Sequence[str], n_train: int, explicit: bool) -> list[str]:
    """The heads a search runs: the chosen ones, plus ``LARGE_N_HEAD`` (an RBF-kernel SVM by Nystroem
    approximation, linear in n) when the heads are the defaults and there are more than ``LARGE_N``
    real training images — where the exact SVC's cost grows fastest. The leaderboard shows which won."""
    heads = list(heads)
    if not explicit and n_train > LARGE_N and LARGE_N_HEAD not in heads:
        heads.append(LARGE_N_HEAD)
    return heads


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SyntheticRows:
    """Which rows of a search's data are synthetic, and the groups of the real rows each was made from."""

    rows: tuple[int, ...]
    sources: tuple[tuple, ...]  # per synthetic row: group ids (of ``groups``) of its source images
    train_real: bool = True  # False: "synthetic-only", training sides hold synthetic rows alone
    # Which of a training side's synthetic rows it keeps, given its real rows (the selective filter,
    # ``automl.augment.filters.Selective``): called as select(real rows, synthetic rows, fold index).
    select: Optional[Callable] = None

    def mask(self, n: int) -> np.ndarray:
        out = np.zeros(n, bool)
        out[list(self.rows)] = True
        return out


def study_name(fingerprint: str, extractors: Sequence[str], heads: Sequence[str], metric: str, cv: int,
               seed: int) -> str:
    """Same data and configuration -> same study, so a rerun resumes it; anything else -> a new one."""
    config = json.dumps([fingerprint, list(extractors), list(heads), metric, cv, seed])
    return "automl-" + hashlib.blake2b(config.encode(), digest_size=8).hexdigest()


# --- a study that survives kills and company --------------------------------------------------
#
# Several processes may share one study (two fits of the same data on one store), and any of them
# may be killed. So:
# - every trial claims, as it starts, its owner (host, pid, process start, search session), its
#   slot (how many trials the history holds before it: finished, failed, and running ones of lower
#   number) and, while some are left, the next reference setup;
# - the sampler is TPE seeded from that slot (stream ``search:<slot>``), so what a trial suggests
#   depends on the study's history alone: a resumed search runs an interrupted trial's slot again
#   with the same suggestion (kill-and-resume reproduces the uninterrupted run exactly), and
#   concurrent trials, whose slots differ, draw differently (constant liar steers them apart too);
# - a RUNNING trial whose process is gone is failed ("interrupted") at once when its owner ran on
#   this host (its pid), else by Optuna's heartbeat after GRACE_S, and its slot goes to the next
#   trial; Optuna's RetryFailedTrialCallback is not used because its retry joins the queue behind
#   later trials, which would reorder the history TPE sees;
# - ``n_trials`` bounds the study's COMPLETE + PRUNED trials, however many processes share it: a
#   process starts a trial only while finished + running trials are below it, and a trial that
#   finds the budget taken as it claims (a concurrent start) fails at once as "surplus", unrun.
#   (Optuna's MaxTrialsCallback stops a process after a trial ends, which cannot prevent that.)

HEARTBEAT_S = 10  # seconds between a running trial's heartbeats (Optuna's RDB heartbeat)
GRACE_S = 120  # a trial silent this long is taken as dead (other hosts; this host asks the pid at once)
CLAIM_WAIT_S = 10  # a trial that has not claimed its slot this long after starting is taken as dead
_POLL_S = 0.2  # how often a process waiting for other processes' trials looks again
_LOCK_TRIES = 5  # a storage kept locked by other processes: tries (with backoff) before a clear error
_BUSY_S = 20  # SQLite: how long one statement waits for another process's write (the default is 5 s)
_CLAIM, _ERROR, _INTERRUPTED = "automl:claim", "automl:error", "automl:interrupted"
_LIVE_SESSIONS: set[str] = set()  # searches running in this process (threads may run several)


class _Surplus(Exception):
    """A trial started by a concurrent process after the budget was taken; it is failed unrun."""


@dataclass(frozen=True)
class _Ticket:
    """What a starting trial claimed."""

    number: int
    trial_id: int
    slot: int
    reference: tuple | None  # (label, params) of a reference setup, or None: the sampler suggests
    surplus: bool


def run_search(
    features: Mapping[str, np.ndarray],
    y: np.ndarray,
    *,
    heads: Sequence[str],
    metric: str,
    cv: int,
    seed: int,
    storage: str,
    name: str,
    n_trials: int | None,
    timeout: float | None,
    groups: np.ndarray | None = None,
    synthetic: SyntheticRows | None = None,
    progress: bool = True,
    cv_seed: int | None = None,
    n_jobs: int | None = None,
    legacy: bool = False,
):
    """Run (or resume, or join) the study; returns it. ``features`` maps extractor name -> (n, dim)
    rows aligned with ``y``; ``n_trials`` counts the study's finished trials, earlier runs and
    concurrent processes included, and the call returns once the study holds that many (having
    waited for other processes' running trials). ``seed`` seeds the sampler and the heads (streams
    ``search:<slot>`` and ``head``), ``cv_seed`` (default: ``seed``) the fold split (stream
    ``folds``); ``groups`` and ``synthetic`` shape the folds (``cv_splits``). ``timeout`` (seconds)
    stops starting trials. ``n_jobs``: folds fitted at once (None: every usable core); the study's
    results do not depend on it. ``legacy``: the earlier, slower scheme (see the module's docstring).
    A storage kept locked by other processes raises ``StoreError``."""
    import optuna

    from automl.heads import HEADS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective_metric = metric_by_name(metric)
    extractors = list(features)
    heads = list(heads)
    folds = cv_splits(y, cv, derive(seed if cv_seed is None else cv_seed, "folds"), groups, synthetic=synthetic)
    n_classes = int(y.max()) + 1
    references = [(label, {"extractor": extractor, "head": head, **HEADS.get(head).defaults_for_trial()})
                  for extractor, head, label in REFERENCE_SETUPS if extractor in extractors and head in heads]
    session = _Session(storage, name)
    sampler = _slot_sampler(session, seed, references, n_trials)
    # The median pruner: a trial worse than the median of the finished trials after a stage stops
    # there (never before 5 trials have finished). Legacy reports every fold and checks from the second.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1 if legacy else 0)
    study = session.retrying("opening the study", lambda: optuna.create_study(
        storage=session.storage, study_name=name, load_if_exists=True, direction=objective_metric.direction,
        sampler=sampler, pruner=pruner))
    session.study_id = session.storage.get_study_id_from_name(name)

    def objective(trial) -> float:
        ticket = sampler.ticket
        if ticket.surplus:
            raise _Surplus(f"the study's budget of {n_trials} trials was taken by other processes; not run")
        if ticket.reference is not None:
            trial.set_user_attr("reference", ticket.reference[0])
        try:
            return legacy_evaluate(trial) if legacy else staged_evaluate(trial)
        except (ValueError, np.linalg.LinAlgError) as e:
            # A failure of the trial itself (say, a learning rate that diverges), told apart from an
            # interrupted trial: its slot is spent, and the run record counts it as failed.
            session.storage.set_trial_system_attr(ticket.trial_id, _ERROR, f"{type(e).__name__}: {e}"[:2000])
            raise

    stages = plan_stages([len(tr) for tr, _ in folds])
    jobs = max(1, usable_cpus() if n_jobs is None else int(n_jobs))
    workers = min(jobs, max(len(stage.folds) for stage in stages))  # each holds a TensorFlow: no idle ones
    rung_rows = {(i, stage.rows): subsample(folds[i][0], y, stage.rows, derive(seed, "rung", i, stage.rows))
                 for stage in stages if stage.rows is not None for i in stage.folds}

    def legacy_evaluate(trial) -> float:
        # The search as it was before the speed-up, kept for the benchmark's baseline.
        candidate = suggest(trial, extractors, heads)
        X = features[candidate.extractor]
        scores = []
        for step, (tr, va) in enumerate(folds):
            events.checkpoint()
            model = candidate.build(seed, LEGACY_HEAD_PARAMS)
            model.fit(X[tr], y[tr])
            scores.append(objective_metric(y[va], full_proba(model, X[va], n_classes)))
            trial.report(float(np.nanmean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return finish(trial, scores)

    def staged_evaluate(trial) -> float:
        candidate = suggest(trial, extractors, heads)
        X = features[candidate.extractor]
        fits_in = HEADS.get(candidate.head).parallel_fits
        full: dict[int, float] = {}
        for step, stage in enumerate(stages):
            events.checkpoint()  # a listener may cancel here: the trial then ends as at a Ctrl-C (interrupted)

            def fold(i, rows=stage.rows) -> tuple:  # what scoring fold i at this stage takes
                tr, va = folds[i]
                tr = tr if rows is None else rung_rows[i, rows]
                return candidate, seed, metric, X[tr], y[tr], X[va], y[va], n_classes

            if fits_in == "processes":
                scores = _in_workers(_score_candidate, [fold(i) for i in stage.folds], workers)
            else:
                scores = _map(lambda i: _score_candidate(*fold(i)), stage.folds, jobs if fits_in == "threads" else 1)
            if stage.rows is None:
                full.update(zip(stage.folds, scores))
                scores = list(full.values())
            if step < len(stages) - 1:
                trial.report(float(np.nanmean(scores)), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return finish(trial, [full[i] for i in range(len(folds))])

    def finish(trial, scores: list[float]) -> float:
        trial.set_user_attr("fold_scores", scores)
        value = float(np.nanmean(scores))
        if math.isnan(value):
            raise ValueError(f"{metric} is undefined on every fold (a class missing from each validation fold)")
        return value

    deadline = None if timeout is None else time.monotonic() + timeout
    _LIVE_SESSIONS.add(session.token)
    bar = None
    try:
        while True:
            tally = _Tally(session.retrying("reading the study", lambda: session.settle(study)))
            if bar is None:
                if n_trials is not None and tally.finished >= n_trials:
                    break
                bar = events.bar(total=None if n_trials is None else n_trials - tally.finished, desc="search",
                                 unit="trial", disable=not progress, dynamic_ncols=True)
                start, began, estimated = tally.finished, time.monotonic(), False
            _show(bar, study, metric, tally.finished - start, tally.finished)
            if not estimated and tally.finished - start >= ESTIMATE_AFTER:
                estimated = True
                done, elapsed = tally.finished - start, time.monotonic() - began
                left = None if n_trials is None else n_trials - tally.finished
                time_left = None if deadline is None else max(0.0, deadline - time.monotonic())
                # On stderr beside the bar, out of the results on stdout.
                events.note(estimate_line(done, elapsed, left, time_left), echo=progress, trials=done,
                            elapsed_s=elapsed, left=left, time_left_s=time_left)
            if n_trials is not None and tally.finished >= n_trials:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if n_trials is not None and tally.finished + tally.running >= n_trials:
                time.sleep(_POLL_S)  # the budget is in other processes' hands: wait for their results
                events.checkpoint()
                continue
            session.retrying("running a trial", lambda: _one_trial(study, objective, sampler))
    finally:
        _LIVE_SESSIONS.discard(session.token)
        if bar is not None:
            bar.close()
    return study


ESTIMATE_AFTER = 3  # finished trials after which the search prints how long the rest should take


def estimate_line(done: int, elapsed: float, left: int | None, time_left: float | None) -> str:
    """What the user reads after the first trials: the time per trial so far and the time the ``left``
    trials should take (an upper estimate: the first trials are never pruned, later ones often are),
    or the ``time_left`` of the timeout where that comes first."""
    per = elapsed / done
    head = f"search: {done} trials in {_duration(elapsed)} ({_duration(per)} a trial)"
    if left is None:
        return f"{head}; it runs until the timeout, {_duration(time_left)} from now" if time_left else head
    rest = per * left
    capped = time_left is not None and time_left < rest
    tail = f"the timeout ends it {_duration(time_left)} from now" if capped else \
        f"the other {left} should take at most about {_duration(rest)} (pruned trials end sooner)"
    return f"{head}; {tail}. --trials and --timeout set the budget."


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 9.5 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _one_trial(study, objective, sampler) -> None:
    import optuna

    sampler.ticket = None
    with warnings.catch_warnings():
        # Non-converged saga/SVC fits are normal inside a search; the refit reports its own.
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
        try:
            # A trial whose fit fails is recorded as failed with its error, and the search goes on.
            study.optimize(objective, n_trials=1, catch=(ValueError, np.linalg.LinAlgError, _Surplus))
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another process took this trial for dead (a stall longer than CLAIM_WAIT_S before its
            # claim, or GRACE_S without a heartbeat) and failed it: its slot runs again, here or there.
            if sampler.ticket is not None and _state(study, sampler.ticket.number) == optuna.trial.TrialState.RUNNING:
                raise
        except ValueError:
            # The same, noticed as the result is told ("Cannot tell a FAIL trial").
            if sampler.ticket is None or _state(study, sampler.ticket.number) == optuna.trial.TrialState.RUNNING:
                raise


def _map(fn, items: Sequence, jobs: int) -> list:
    """``[fn(i) for i in items]``, on up to ``jobs`` threads with BLAS held to one thread each (so
    threads times BLAS threads never exceed the cores); the results in ``items``' order either way."""
    jobs = min(jobs, len(items))
    if jobs <= 1:
        return [fn(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="automl-fold") as pool:
        return list(pool.map(fn, items))


def _score(model, metric, X_tr, y_tr, X_va, y_va, n_classes: int) -> float:
    """``model`` fitted on the training rows, scored by ``metric`` on the validation rows: by
    ``fit_scores`` / ``decision_scores`` where the metric reads only labels or ranks, else by ``fit`` /
    probabilities."""
    if metric.reads_scores:
        model.fit_scores(X_tr, y_tr)
        return metric(y_va, full_scores(model, X_va, n_classes))
    model.fit(X_tr, y_tr)
    return metric(y_va, full_proba(model, X_va, n_classes))


def _score_candidate(candidate: Candidate, seed: int, metric: str, *arrays_and_classes) -> float:
    return _score(candidate.build(seed), metric_by_name(metric), *arrays_and_classes)


# The environment of the search's worker processes: TensorFlow on one thread for each op and one
# between ops (on 2 cores the ffnn trained no faster on two threads than on one, so two one-thread
# workers fit two folds in the time of one: docs/benchmarks.md), and GPU memory taken as it is needed,
# so that workers can share a GPU (TensorFlow's default maps it all into the first process).
WORKER_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true",
              "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
WORKER_IDLE_S = 300  # a worker this long without a fit exits (the next one starts afresh, importing again)


def _in_workers(fn, calls: Sequence[tuple], jobs: int) -> list:
    """``[fn(*args) for args in calls]`` in ``jobs`` worker processes (always processes, even for
    ``jobs=1``, so that the results never depend on ``jobs``); the results in ``calls``' order. The
    workers (loky's reusable executor, as joblib uses) outlive the call, so a search pays for their
    start and imports once, not per trial (they exit with this process, or after ``WORKER_IDLE_S``
    idle); a worker's exception is raised here."""
    from joblib.externals.loky import get_reusable_executor

    # loky replaces a worker whose memory grew 300 MB past its size after its first task (TensorFlow
    # grows by about 10 MB a fit: every few dozen fits), warning as it does; that is no fault here.
    warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given", category=UserWarning)
    executor = get_reusable_executor(max_workers=max(1, jobs), timeout=WORKER_IDLE_S, env=WORKER_ENV)
    futures = [executor.submit(fn, *args) for args in calls]
    try:
        return [f.result() for f in futures]
    except BaseException:  # a failed fold or an interrupt: the folds not yet started never start
        for f in futures:
            f.cancel()
        raise


def _state(study, number: int):
    return next(t.state for t in study.get_trials(deepcopy=False) if t.number == number)


def _show(bar, study, metric: str, done: int, finished: int) -> None:
    """Move the search's bar to ``done`` trials of this search; its events carry the study's
    ``finished`` trials and the best one so far (the terminal shows the best only, as ever)."""
    if done > bar.n:
        best = best_trial(study)
        bar.info = {"trials": finished}
        if best is not None:
            pipeline = describe_trial(best)
            bar.info.update(best=best.value, metric=metric, pipeline=pipeline)
        bar.update(done - bar.n)
        if best is not None:
            bar.set_postfix_str(f"best {metric} {best.value:.4f}: {pipeline}"[:90], info=bar.info)


def _free_slot(holders) -> int:
    """The lowest slot none of ``holders`` (trials finished, failed, or running ahead) holds. A trial
    interrupted while later ones ran frees its slot, and the next trial takes that one, never a slot a
    later trial still holds (the same slot seeds the same sampler: the same configuration twice).
    Trials without a claimed slot hold the lowest free ones."""
    held = [(t.system_attrs.get(_CLAIM) or {}).get("slot") for t in holders]
    taken, unclaimed = {s for s in held if s is not None}, sum(s is None for s in held)
    slot = 0
    while True:
        if slot not in taken:
            if unclaimed == 0:
                return slot
            unclaimed -= 1
        slot += 1


class _Tally:
    """Counts of a study's trials (those numbered below ``before`` for the running ones)."""

    def __init__(self, trials, before: int | None = None):
        from optuna.trial import TrialState

        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        failed = [t for t in trials if t.state == TrialState.FAIL and _ERROR in t.system_attrs]
        running = [t for t in trials if t.state == TrialState.RUNNING and (before is None or t.number < before)
                   and not (t.system_attrs.get(_CLAIM) or {}).get("surplus")]
        self.finished, self.running = len(finished), len(running)
        self.slot = _free_slot(finished + failed + running)
        self.references = {t.user_attrs.get("reference") or (t.system_attrs.get(_CLAIM) or {}).get("reference")
                           for t in finished + failed + running} - {None}


class _Session:
    """One ``run_search`` call's hold on the study: its storage (with heartbeats), its identity as
    an owner of trials, and the bookkeeping of claims and dead trials."""

    def __init__(self, url: str, name: str):
        import uuid

        self.url, self.name = url, name
        self.token = uuid.uuid4().hex
        self.storage = self.retrying("opening the storage", lambda: open_storage(url))
        self.study_id: int | None = None

    @property
    def owner(self) -> dict:
        return process_owner(self.token)

    def retrying(self, what: str, fn):
        """``fn()``, tried again while other processes keep the database locked; then a clear error."""
        from automl.errors import StoreError

        delay, began = 0.1, time.monotonic()
        for attempt in range(_LOCK_TRIES):
            try:
                return fn()
            except Exception as e:
                if isinstance(e, events.Cancelled) or not _locked(e):
                    raise
                if attempt == _LOCK_TRIES - 1:
                    where = self.url if self.url.startswith("sqlite") else f"the {self.url.split(':')[0]} database"
                    raise StoreError(
                        f"the Optuna storage {where} stayed locked by other processes while {what} "
                        f"({_LOCK_TRIES} tries over {time.monotonic() - began:.0f} s). Rerun the command "
                        "(the search resumes where it stopped), or give concurrent fits their own --storage."
                    ) from None
                time.sleep(delay)
                delay *= 4

    def settle(self, study) -> list:
        """Fail the study's RUNNING trials whose process is gone; returns its trials after that."""
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # heartbeats: trials of other hosts
        trials = study.get_trials(deepcopy=False)
        dead = [(t, why) for t in trials if t.state == optuna.trial.TrialState.RUNNING
                for why in [abandoned(t, self.token)] if why]
        for t, why in dead:
            self.fail(t.number, why)
        return study.get_trials(deepcopy=False) if dead else trials

    def fail(self, number: int, why: str) -> None:
        import optuna

        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        try:
            self.storage.set_trial_system_attr(trial_id, _INTERRUPTED, why)
            self.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process got there first

    def claim(self, study, trial, references: list, n_trials: int | None) -> _Ticket:
        """The starting ``trial``'s slot, reference setup and budget check, written to the study.
        Waits until every running trial of lower number has claimed (they are ahead of it)."""
        import optuna

        began = time.monotonic()
        while True:
            trials = study.get_trials(deepcopy=False)
            lower = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.number < trial.number]
            dead = [(t, why) for t in lower for why in [abandoned(t, self.token)] if why]
            if not dead and time.monotonic() - began > CLAIM_WAIT_S:  # whatever its clock says
                dead = [(t, "its process died as it started (no slot claimed)") for t in lower
                        if _CLAIM not in t.system_attrs]
            for t, why in dead:
                self.fail(t.number, why)
            if not dead and all(_CLAIM in t.system_attrs for t in lower):
                break
            if not dead:
                time.sleep(0.02)  # a concurrent trial between its creation and its claim: milliseconds
        tally = _Tally(trials, before=trial.number)
        surplus = n_trials is not None and tally.finished + tally.running >= n_trials
        reference = None
        if not surplus and "fixed_params" not in trial.system_attrs:  # an enqueued trial keeps its params
            reference = next((r for r in references if r[0] not in tally.references), None)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        self.storage.set_trial_system_attr(trial_id, _CLAIM, {
            "owner": self.owner, "slot": tally.slot, "reference": reference and reference[0], "surplus": surplus})
        return _Ticket(trial.number, trial_id, tally.slot, reference, surplus)


def _slot_sampler(session: _Session, seed: int, references: list, n_trials: int | None):
    """A sampler that, as each trial starts, claims its slot and builds TPE seeded from it (or
    hands out a reference setup's parameters)."""
    import optuna

    class SlotSampler(optuna.samplers.BaseSampler):
        def __init__(self):
            self.ticket: _Ticket | None = None
            self._tpe = None

        def before_trial(self, study, trial) -> None:
            self.ticket = session.claim(study, trial, references, n_trials)
            with warnings.catch_warnings():
                # multivariate/group TPE is marked experimental, and is what a conditional space (each
                # head has its own parameters) needs to model parameters jointly.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._tpe = optuna.samplers.TPESampler(seed=derive(seed, "search", self.ticket.slot),
                                                       multivariate=True, group=True, constant_liar=True)
            self._tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return {} if self.ticket.reference else self._tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return {} if self.ticket.reference else self._tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            if self.ticket.reference and param_name in self.ticket.reference[1]:
                return self.ticket.reference[1][param_name]
            return self._tpe.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            if self._tpe is not None:
                self._tpe.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            pass  # the seeds come from the study's history

    return SlotSampler()


def open_storage(url: str):
    """Optuna's RDB storage of ``url`` with the search's heartbeats; a server's connections are checked
    before use (``pool_pre_ping``), so one dropped during a long embedding or refit is replaced."""
    import optuna

    kwargs = {"connect_args": {"timeout": _BUSY_S}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(_LOCK_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S)
        except Exception as e:
            # Processes opening a new database at once race to create its tables: the losers
            # find them made ("already exists", or a duplicate schema-version row); look again.
            if attempt == _LOCK_TRIES - 1 or not _chain_says(e, "already exists", "unique constraint", "duplicate"):
                raise
            time.sleep(0.05 * (attempt + 1))


def _locked(error: BaseException) -> bool:
    """A database lock held by another process (SQLite) or a deadlock (server databases)."""
    return _chain_says(error, "locked", "deadlock", "database is busy")


def _chain_says(error: BaseException | None, *phrases: str) -> bool:
    """Whether ``error`` or an error it came from says one of ``phrases`` (lower case)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(phrase in str(error).lower() for phrase in phrases):
            return True
        error = error.__cause__ or error.__context__
    return False


def abandoned(trial, session: str | None = None) -> str | None:
    """Why a RUNNING ``trial``'s process is certainly gone, or None (alive, or another host's: the
    heartbeat tells). ``session``: the calling search's, which runs none of the study's trials now."""
    claim = trial.system_attrs.get(_CLAIM)
    if claim is None:
        started = trial.datetime_start
        if started is not None and (datetime.datetime.now() - started).total_seconds() > CLAIM_WAIT_S:
            return "its process died as it started (no slot claimed)"
        return None
    return owner_gone(claim["owner"], session)


def owner_gone(owner: dict, session: str | None = None) -> str | None:
    """Why the process a trial's claim names (``{"host", "pid", "started", "session"}``) is certainly
    gone, or None (alive, or on another host, where only the heartbeat tells)."""
    from automl._files import process_alive

    if owner.get("host") != _host():
        return None
    pid = owner["pid"]
    if pid == os.getpid():
        if owner.get("session") == session or owner.get("session") not in _LIVE_SESSIONS:
            return f"its search in this process (pid {pid}) stopped"
        return None
    if not process_alive(pid):
        return f"its process (pid {pid}) is gone"
    if owner.get("started") is not None and _process_start(pid) != owner["started"]:
        return f"its process (pid {pid}) is gone (the pid now names another process)"
    return None


def process_owner(session: str) -> dict:
    """This process as the owner of a trial (or of a run being written): its host and pid namespace,
    pid, start time (a reused pid is told apart) and ``session``, what it runs."""
    return {"host": _host(), "pid": os.getpid(), "started": _process_start(os.getpid()), "session": session}


@lru_cache(maxsize=1)
def _host() -> str:
    """This machine, and the process-id namespace, so pids compare only where they mean the same."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}|{namespace}"


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks after boot), to tell a reused pid; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def suggest(trial, extractors: Sequence[str], heads: Sequence[str]) -> Candidate:
    from automl.heads import HEADS

    extractor = trial.suggest_categorical("extractor", list(extractors))
    head = trial.suggest_categorical("head", list(heads))
    return Candidate(extractor, head, HEADS.get(head).search_space(trial))


def candidate_of(trial) -> Candidate:
    """Rebuild a finished trial's choice from its stored params."""
    from automl.heads import HEADS

    import optuna

    params = dict(trial.params)
    fixed = optuna.trial.FixedTrial(params)
    return Candidate(params["extractor"], params["head"], HEADS.get(params["head"]).search_space(fixed))


def describe_trial(trial) -> str:
    return candidate_of(trial).describe()


def best_trial(study):
    """The best COMPLETE trial, the lowest-numbered among equals (so every process sharing the study,
    and a resumed search, names the same one); None when none completed."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return min(done, key=lambda t: (sign * t.value, t.number))


def trial_counts(study) -> dict[str, int]:
    """Trials per outcome, for the run record: ``complete``, ``pruned``, ``fail`` (the trial itself
    failed), ``interrupted`` (its process died or was stopped; its slot ran again), ``running``
    (another process's, still going). Surplus trials (started by a concurrent process after the
    budget was taken, never run) and queued ones are left out."""
    from optuna.trial import TrialState

    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        claim = t.system_attrs.get(_CLAIM) or {}
        if t.state == TrialState.WAITING or claim.get("surplus"):
            continue
        if t.state == TrialState.FAIL:
            kind = "fail" if _ERROR in t.system_attrs else "interrupted"
        elif t.state == TrialState.RUNNING:
            kind = "interrupted" if abandoned(t) else "running"
        else:
            kind = t.state.name.lower()
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def failure_reason(trial) -> str:
    """A failed trial's error, as its objective raised it ('' for an interrupted one)."""
    return trial.system_attrs.get(_ERROR, "")


def leaderboard(study, top: int = 10) -> list[dict]:
    """Completed trials, best first, plus every reference trial wherever it ranks."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    rows = []
    for rank, t in enumerate(done, 1):
        ref = t.user_attrs.get("reference")
        if rank <= top or ref:
            rows.append({"rank": rank, "trial": t.number, "cv": t.value, "pipeline": describe_trial(t),
                         "reference": ref, "fold_scores": t.user_attrs.get("fold_scores")})
    return rows
