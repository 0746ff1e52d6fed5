"""The one orchestrator: wires datasets, extractors, the store, the search and the evaluation.

Components never import this module; it imports them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from automl import __version__
from automl.data import Dataset
from automl.embed import EmbedResult, embed_items
from automl.errors import AutomlError
from automl.extract import (DEFAULT_IMAGE_SIZE, EXTRACTORS, build_extractor, canonical_extractor, extractor_key,
                            parse_weights)
from automl.store import Store


def embed_dataset(
    dataset: Dataset,
    store: Store,
    extractors: Sequence[str] | None = None,
    *,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int = DEFAULT_IMAGE_SIZE,
    precision: str = "auto",
    seed: int = 0,
    batch_size: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> list[EmbedResult]:
    """Embed every image of every split with each extractor, reusing the store's cache."""
    names = [canonical_extractor(n) for n in (extractors or EXTRACTORS.names())]
    # Resolve every name and option before any work, so a typo fails fast and writes nothing.
    keys = [extractor_key(n, weights=weights, image_size=image_size, precision=precision, seed=seed)
            for n in names]
    results = []
    for name, key in zip(names, keys):
        results.append(embed_items(
            dataset.items, key, store.embedding_cache,
            lambda name=name: build_extractor(name, weights=weights, image_size=image_size,
                                              precision=precision, seed=seed),
            batch_size=batch_size, skip_bad=skip_bad, progress=progress,
        ))
    return results


# --- fit -----------------------------------------------------------------------------------------


@dataclass
class FitResult:
    run_id: str
    run_dir: Path
    record: dict  # what run.json holds
    leaderboard: list[dict]
    embeddings: list[EmbedResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings worth showing the user


def fit(recipe, *, progress: bool = True) -> FitResult:
    """Split, embed the training images, search, refit the best, evaluate the test split once, save.

    ``recipe`` is an ``automl.recipe.Recipe``. An interrupted fit leaves no run behind; rerunning it
    reuses the cached embeddings and resumes the Optuna study.
    """
    from automl.data import load_dataset, split_test
    from automl.evaluate import full_proba, evaluation_report
    from automl.runs import ModelBundle, new_run_id, write_run
    from automl.search import candidate_of, leaderboard, run_search, study_name

    # The recipe has validated every name and value (metric, heads, extractors) already.
    metric, heads = recipe.metric, list(recipe.heads)
    dataset = split_test(load_dataset(recipe.data, skip_bad=recipe.skip_bad),
                         test_fraction=recipe.test_fraction, seed=recipe.seed)
    notes = dataset_notes(dataset)
    store = Store(recipe.store)
    names = [canonical_extractor(n) for n in recipe.extractors]
    opts = dict(weights=recipe.weights, image_size=recipe.image_size, precision=recipe.precision, seed=recipe.seed)
    keys = {n: extractor_key(n, **opts) for n in names}

    # The training split (val folded in: cross-validation replaces it) is all the search sees.
    train = [it for it in dataset.items if it.split != "test"]
    test = dataset.split("test")
    embedded = {n: _embed(train, n, keys[n], store, opts, recipe, progress) for n in names}
    kept = sorted(set.intersection(*(set(r.kept) for r in embedded.values())))
    features = {n: _rows(r, kept) for n, r in embedded.items()}
    y = np.array([train[i].label for i in kept])

    store.ensure()  # SQLite needs the folder
    storage = recipe.storage or store.optuna_url
    name = study_name(_fingerprint(train, kept), [keys[n].slug() for n in names], heads, metric, recipe.cv,
                      recipe.seed)
    study = run_search(features, y, heads=heads, metric=metric, cv=recipe.cv, seed=recipe.seed, storage=storage,
                       name=name, n_trials=recipe.trials, timeout=recipe.timeout, progress=progress)
    best = _best_trial(study)
    candidate = candidate_of(best)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head = candidate.build(recipe.seed).fit(features[candidate.extractor], y)
    notes += [f"refitting {candidate.describe()}: {w.message}" for w in caught
              if issubclass(w.category, (UserWarning, RuntimeWarning))]

    # The one look at the test split: embedded with the chosen extractor only, scored once.
    test_result = _embed(test, candidate.extractor, keys[candidate.extractor], store, opts, recipe, progress)
    test_items = [test[i] for i in test_result.kept]
    y_test = np.array([it.label for it in test_items])
    proba = full_proba(head, test_result.embeddings, len(dataset.classes))
    report = evaluation_report(y_test, proba, dataset.classes)

    board = leaderboard(study)
    run_id = new_run_id()
    record = {
        "id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "name": recipe.name,
        "data": str(dataset.root),
        "layout": dataset.layout,
        "classes": dataset.classes,
        "counts": dataset.counts(),
        "split": dataset.split_note,
        "metric": metric,
        "cv": recipe.cv,
        "seed": recipe.seed,
        "best": {"pipeline": candidate.describe(), "extractor": candidate.extractor, "head": candidate.head,
                 "params": candidate.params, "cv_score": best.value, "trial": best.number,
                 "fold_scores": best.user_attrs.get("fold_scores")},
        "references": [r for r in board if r["reference"]],
        "trials": _trial_counts(study),
        "study": {"name": study.study_name, "storage": _redact(storage)},
        "extractor_key": keys[candidate.extractor].to_dict(),
        "test": {k: v for k, v in report.items() if k not in ("per_class", "confusion_matrix")},
        "versions": library_versions(),
    }
    weights = parse_weights(recipe.weights)
    bundle = ModelBundle(keys[candidate.extractor].to_dict(), "none" if weights is None else str(weights), recipe.seed,
                         candidate.head, head, dataset.classes, __version__, source=candidate.extractor)
    from automl.recipe import recipe_to_yaml

    run_dir = write_run(store.runs_dir, run_id, {
        "run.json": lambda p: p.write_text(json.dumps(record, indent=2, default=_json_default)),
        "recipe.yaml": lambda p: p.write_text(recipe_to_yaml(recipe)),
        "split.json": lambda p: p.write_text(json.dumps(dataset.split_record(), indent=1)),
        "metrics.json": lambda p: p.write_text(json.dumps(report, indent=2, default=_json_default)),
        "leaderboard.json": lambda p: p.write_text(json.dumps(board, indent=2, default=_json_default)),
        "predictions.csv": lambda p: _write_predictions(p, test_items, proba, dataset.classes),
        "model.joblib": bundle.save,
    })
    return FitResult(run_id, run_dir, record, board, list(embedded.values()) + [test_result], notes)


def _embed(items, name: str, key, store: Store, opts: dict, recipe, progress: bool) -> EmbedResult:
    return embed_items(items, key, store.embedding_cache,
                       lambda: build_extractor(name, **opts), batch_size=recipe.batch_size,
                       skip_bad=recipe.skip_bad, progress=progress)


def _rows(result: EmbedResult, kept: list[int]) -> np.ndarray:
    position = {i: row for row, i in enumerate(result.kept)}
    return result.embeddings[[position[i] for i in kept]]


def _fingerprint(items, kept: list[int]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for i in kept:
        h.update(f"{items[i].fingerprint}:{items[i].label};".encode())
    return h.hexdigest()


def _best_trial(study):
    import optuna

    try:
        return study.best_trial
    except ValueError:
        failed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL]
        reason = failed[-1].system_attrs.get("fail_reason", "") if failed else ""
        raise AutomlError(
            f"no search trial finished ({len(failed)} failed{': ' + reason.splitlines()[-1] if reason else ''}). "
            "Raise --trials or --timeout, or check the data."
        ) from None


def _trial_counts(study) -> dict:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def _redact(url: str) -> str:
    """Keep a database password out of run records."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _write_predictions(path: Path, items, proba: np.ndarray, classes: list[str]) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "fingerprint", "true", "predicted"] + [f"p({c})" for c in classes])
        for it, p in zip(items, proba):
            out.writerow([it.path, it.fingerprint, classes[it.label], classes[int(p.argmax())]]
                         + [f"{v:.6f}" for v in p])


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def dataset_notes(dataset: Dataset) -> list[str]:
    notes = []
    leaks = dataset.leaks()
    if leaks:
        notes.append(f"{len(leaks)} test image(s) also appear in train/val (identical content), e.g. "
                     f"{leaks[0][1].path} == {leaks[0][0].path}; run `automl inspect` for the list.")
    if dataset.bad_files:
        notes.append(f"skipped {len(dataset.bad_files)} undecodable file(s): "
                     + ", ".join(b.path for b in dataset.bad_files[:5]))
    return notes


def library_versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "automl": __version__}
    for pkg in ("numpy", "scikit-learn", "optuna", "keras", "tensorflow", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# --- predict -------------------------------------------------------------------------------------


def predict(run_ref: str, paths: list[str], store: Store, *, skip_bad: bool = False, batch_size: int | None = None,
            progress: bool = True) -> tuple[list[dict], list]:
    """Class and probabilities for each image, with the extractor and head of a saved run."""
    from automl.data import load_images
    from automl.evaluate import full_proba
    from automl.runs import ModelBundle, find_run

    run_dir = find_run(store.runs_dir, run_ref)
    bundle = ModelBundle.load(run_dir / "model.joblib")
    key = bundle.extractor_key()
    items, bad = load_images(paths, skip_bad=skip_bad)
    source = bundle.source or key.extractor
    result = embed_items(items, key, store.embedding_cache,
                         lambda: build_extractor(source, weights=bundle.weights, image_size=key.image_size,
                                                 precision=key.precision, seed=bundle.seed),
                         batch_size=batch_size, skip_bad=skip_bad, progress=progress)
    proba = full_proba(bundle.head, result.embeddings, len(bundle.classes)) if result.kept else np.zeros((0, 0))
    rows = []
    for i, p in zip(result.kept, proba):
        rows.append({"path": items[i].path, "class": bundle.classes[int(p.argmax())],
                     "probabilities": {c: float(v) for c, v in zip(bundle.classes, p)}})
    return rows, bad + result.bad_files
