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
from automl.errors import AutomlError, ConfigError
from automl.extract import (DEFAULT_IMAGE_SIZE, EXTRACTORS, build_extractor, canonical_extractor, extractor_key,
                            parse_weights)
from automl.report import dataset_notes
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
    baseline: "FitResult | None" = None  # with --augment: the original-data run it is compared with


def fit(recipe, *, progress: bool = True) -> FitResult:
    """Split, embed the training images, search, refit the best, evaluate the test split once, save.

    ``recipe`` is an ``automl.recipe.Recipe``. With one ``augment`` variant, the original-data
    baseline is fitted first with the same split, budget and seed, and the augmented run is returned
    with ``baseline`` set. An interrupted fit leaves no run behind; rerunning it reuses the cached
    embeddings, generated images and fitted generators, and resumes the Optuna study.
    """
    variants = list(recipe.augment or [])
    if len(variants) > 1:
        raise ConfigError(f"fit takes one augmentation variant; the recipe has {len(variants)} "
                          f"({', '.join(v.describe() for v in variants)}). Use `automl compare` to compare several.")
    results = fit_variants(recipe, variants, progress=progress)
    if not variants:
        return results[0]
    results[1].baseline = results[0]
    return results[1]


def fit_variants(recipe, variants: Sequence, *, progress: bool = True) -> list[FitResult]:
    """The original-data baseline, then one run per augmentation variant: the same test split, folds
    drawn over the same real images, the same search budget and seed."""
    from automl.data import load_dataset, split_test

    dataset = split_test(load_dataset(recipe.data, skip_bad=recipe.skip_bad),
                         test_fraction=recipe.test_fraction, seed=recipe.seed)
    store = Store(recipe.store)
    notes = dataset_notes(dataset)
    if variants:
        from automl.augment.generate import preflight

        train = [it for it in dataset.items if it.split != "test"]
        for spec in variants:  # a bad plan, a missing package or unreachable weights fail before any work
            preflight(train, dataset.classes, spec, generated_dir=store.generated_dir, seed=recipe.seed)
    baseline = _fit_one(recipe.model_copy(update={"augment": None}), dataset, store, None, list(notes), progress)
    out = [baseline]
    for spec in variants:
        out.append(_fit_one(recipe.model_copy(update={"augment": [spec]}), dataset, store, spec, list(notes),
                            progress, baseline_id=baseline.run_id))
    return out


def _fit_one(recipe, dataset: Dataset, store: Store, spec, notes: list[str], progress: bool,
             baseline_id: str | None = None) -> FitResult:
    from automl.evaluate import evaluation_report, full_proba
    from automl.runs import ModelBundle, new_run_id, write_run
    from automl.search import SyntheticRows, candidate_of, leaderboard, run_search, study_name

    # The recipe has validated every name and value (metric, heads, extractors) already.
    metric, heads = recipe.metric, list(recipe.heads)
    names = [canonical_extractor(n) for n in recipe.extractors]
    opts = dict(weights=recipe.weights, image_size=recipe.image_size, precision=recipe.precision, seed=recipe.seed)
    keys = {n: extractor_key(n, **opts) for n in names}

    # The training split (val folded in: cross-validation replaces it) is all the search and any
    # augmenter see; the test split is touched once, at the end.
    train = [it for it in dataset.items if it.split != "test"]
    test = dataset.split("test")
    synthetic = None
    if spec is not None:
        from automl.augment.generate import augment

        store.ensure()
        synthetic = augment(train, dataset.classes, spec, generated_dir=store.generated_dir,
                            generators_dir=store.generators_dir, seed=recipe.seed, progress=progress)
        train = synthetic.real + synthetic.items
    embedded = {n: _embed(train, n, keys[n], store, opts, recipe, progress) for n in names}
    kept = sorted(set.intersection(*(set(r.kept) for r in embedded.values())))
    features = {n: _rows(r, kept) for n, r in embedded.items()}
    y = np.array([train[i].label for i in kept])
    # Identical images share a group, so no fold validates on a copy of one of its training images.
    group_of: dict[str, int] = {}
    groups = np.array([group_of.setdefault(train[i].fingerprint, len(group_of)) for i in kept])
    rows = None
    if synthetic is not None:
        n_real = len(synthetic.real)
        syn_rows = [row for row, i in enumerate(kept) if i >= n_real]
        sources = [synthetic.sources[kept[row] - n_real] for row in syn_rows]
        rows = SyntheticRows(tuple(syn_rows), tuple(tuple(group_of[fp] for fp in fps if fp in group_of)
                                                    for fps in sources),
                             train_real=synthetic.train_on_real)

    store.ensure()  # SQLite needs the folder
    storage = recipe.storage or store.optuna_url
    name = study_name(_fingerprint(train, kept, synthetic), [keys[n].slug() for n in names], heads, metric,
                      recipe.cv, recipe.seed)
    study = run_search(features, y, heads=heads, metric=metric, cv=recipe.cv, seed=recipe.seed, storage=storage,
                       name=name, n_trials=recipe.trials, timeout=recipe.timeout, groups=groups, synthetic=rows,
                       progress=progress)
    best = _best_trial(study)
    candidate = candidate_of(best)
    fit_rows = np.arange(len(y)) if rows is None or rows.train_real else np.array(rows.rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head = candidate.build(recipe.seed).fit(features[candidate.extractor][fit_rows], y[fit_rows])
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
        "augment": None if synthetic is None else synthetic.record,
        "baseline_run": baseline_id,
        "train_images": {"real": int(len(y) - (0 if rows is None else len(rows.rows))),
                         "synthetic": 0 if rows is None else len(rows.rows), "fitted_on": int(len(fit_rows))},
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

    files = {
        "run.json": lambda p: p.write_text(json.dumps(record, indent=2, default=_json_default)),
        "recipe.yaml": lambda p: p.write_text(recipe_to_yaml(recipe)),
        "split.json": lambda p: p.write_text(json.dumps(dataset.split_record(), indent=1)),
        "metrics.json": lambda p: p.write_text(json.dumps(report, indent=2, default=_json_default)),
        "leaderboard.json": lambda p: p.write_text(json.dumps(board, indent=2, default=_json_default)),
        "predictions.csv": lambda p: _write_predictions(p, test_items, proba, dataset.classes),
        "model.joblib": bundle.save,
    }
    if synthetic is not None:
        from automl.augment.generate import sample_grid

        files["samples.png"] = lambda p: sample_grid(synthetic.items, dataset.classes, p)
    run_dir = write_run(store.runs_dir, run_id, files)
    return FitResult(run_id, run_dir, record, board, list(embedded.values()) + [test_result], notes)


def _embed(items, name: str, key, store: Store, opts: dict, recipe, progress: bool) -> EmbedResult:
    return embed_items(items, key, store.embedding_cache,
                       lambda: build_extractor(name, **opts), batch_size=recipe.batch_size,
                       skip_bad=recipe.skip_bad, progress=progress)


def _rows(result: EmbedResult, kept: list[int]) -> np.ndarray:
    position = {i: row for row, i in enumerate(result.kept)}
    return result.embeddings[[position[i] for i in kept]]


def _fingerprint(items, kept: list[int], synthetic=None) -> str:
    """What the search's data is: every row's image and label, which rows are synthetic and how they
    mix, and the fold scheme (v2: identical images grouped), so a changed scheme never resumes an old study."""
    h = hashlib.blake2b(digest_size=12)
    h.update(b"folds:v2;")
    if synthetic is not None:
        h.update(f"mix:{synthetic.record['mix']};real:{len(synthetic.real)};".encode())
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
