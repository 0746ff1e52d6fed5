"""The Optuna search over extractor x head x hyperparameters, by cross-validation on training data.

Sees arrays and group ids only — never images, the store, or the test split. One study per fit
configuration, kept in persistent storage: an interrupted search resumes, a finished one can be
inspected with Optuna's own tools.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from automl.evaluate import full_proba, metric_by_name
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

    def build(self, seed: int):
        """The head, its ``random_state`` the run's ``head`` stream (the same in the search and the refit)."""
        from automl.heads import HEADS

        return HEADS.get(self.head)(random_state=derive(seed, "head"), **self.params)

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
    image); ``synthetic.train_real=False`` leaves the real rows out of every training side.
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
    for tr, va in folds:
        held_out = set(np.asarray(groups)[va].tolist()) if groups is not None else set(va.tolist())
        extra = [row for row, sources in zip(synthetic.rows, synthetic.sources) if not held_out & set(sources)]
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


@dataclass(frozen=True)
class SyntheticRows:
    """Which rows of a search's data are synthetic, and the groups of the real rows each was made from."""

    rows: tuple[int, ...]
    sources: tuple[tuple, ...]  # per synthetic row: group ids (of ``groups``) of its source images
    train_real: bool = True  # False: "synthetic-only", training sides hold synthetic rows alone

    def mask(self, n: int) -> np.ndarray:
        out = np.zeros(n, bool)
        out[list(self.rows)] = True
        return out


def study_name(fingerprint: str, extractors: Sequence[str], heads: Sequence[str], metric: str, cv: int,
               seed: int) -> str:
    """Same data and configuration -> same study, so a rerun resumes it; anything else -> a new one."""
    config = json.dumps([fingerprint, list(extractors), list(heads), metric, cv, seed])
    return "automl-" + hashlib.blake2b(config.encode(), digest_size=8).hexdigest()


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
):
    """Run (or resume) the study; returns it. ``features`` maps extractor name -> (n, dim) rows
    aligned with ``y``; ``n_trials`` counts finished trials, earlier runs of this study included.
    ``seed`` seeds the sampler and the heads (streams ``search`` and ``head``), ``cv_seed`` (default:
    ``seed``) the fold split (stream ``folds``);
    ``groups`` and ``synthetic`` shape the folds (``cv_splits``)."""
    import optuna

    from automl.heads import HEADS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective_metric = metric_by_name(metric)
    extractors = list(features)
    heads = list(heads)
    folds = cv_splits(y, cv, derive(seed if cv_seed is None else cv_seed, "folds"), groups, synthetic=synthetic)
    n_classes = int(y.max()) + 1
    with warnings.catch_warnings():
        # multivariate/group TPE is marked experimental, and is what a conditional space (each
        # head has its own parameters) needs to model parameters jointly.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=derive(seed, "search"), multivariate=True, group=True)
    study = optuna.create_study(
        storage=storage, study_name=name, load_if_exists=True, direction=objective_metric.direction, sampler=sampler,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    for extractor, head, label in REFERENCE_SETUPS:
        if extractor in extractors and head in heads:
            params = {"extractor": extractor, "head": head, **HEADS.get(head).defaults_for_trial()}
            study.enqueue_trial(params, user_attrs={"reference": label}, skip_if_exists=True)

    def objective(trial) -> float:
        candidate = suggest(trial, extractors, heads)
        X = features[candidate.extractor]
        scores = []
        for step, (tr, va) in enumerate(folds):
            model = candidate.build(seed)
            model.fit(X[tr], y[tr])
            scores.append(objective_metric(y[va], full_proba(model, X[va], n_classes)))
            trial.report(float(np.nanmean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("fold_scores", scores)
        value = float(np.nanmean(scores))
        if math.isnan(value):
            raise ValueError(f"{metric} is undefined on every fold (a class missing from each validation fold)")
        return value

    done = _finished(study)
    remaining = None if n_trials is None else max(0, n_trials - done)
    if remaining == 0:
        return study
    bar = tqdm(total=remaining, desc="search", unit="trial", disable=not progress, dynamic_ncols=True)

    def report(study, trial):
        bar.update(1)
        best = _best_or_none(study)
        if best is not None:
            bar.set_postfix_str(f"best {metric} {best.value:.4f}: {describe_trial(best)}"[:90])

    try:
        with warnings.catch_warnings():
            # Non-converged saga/SVC fits are normal inside a search; the refit reports its own.
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", ConvergenceWarning)
            # A trial whose fit fails (say, a learning rate that diverges) is recorded as failed with
            # its error, and the search goes on; the run record counts failed trials.
            study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[report],
                           catch=(ValueError, np.linalg.LinAlgError))
    finally:
        bar.close()
    return study


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


def _finished(study) -> int:
    import optuna

    return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
               for t in study.get_trials(deepcopy=False))


def _best_or_none(study):
    try:
        return study.best_trial
    except ValueError:
        return None


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
