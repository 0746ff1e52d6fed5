"""The one orchestrator: wires datasets, extractors, the store, the search and the evaluation.

Components never import this module; it imports them.
"""

from __future__ import annotations

import csv
import hashlib
import os
import platform
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from automl import __version__
from automl import progress as events
from automl._files import write_json
from automl.data import Dataset
from automl.embed import EmbedResult, embed_items
from automl.errors import AutomlError, ConfigError
from automl.extractors import DEFAULT_IMAGE_SIZE, EXTRACTORS, Weights, build_extractor, resolve
from automl.report import dataset_notes
from automl.runs import BestPipeline, ModelBundle, RunRecord, new_run_id, write_run
from automl.storage import redact
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
    """Embed every image of every split with each extractor (names as ``resolve`` takes them, the
    store's pretrained ones too), reusing the store's cache."""
    # Resolve every name and option before any work, so a typo fails fast and writes nothing.
    chosen = Extractors.resolve(extractors or EXTRACTORS.names(), store, weights=weights, image_size=image_size,
                                precision=precision, seed=seed)
    return [chosen.embed(dataset.items, name, store, batch_size=batch_size, skip_bad=skip_bad, progress=progress)
            for name in chosen.specs]


@dataclass
class Extractors:
    """The extractors of a fit or an embed, resolved once: spec and cache key per name, and the
    settings every one of them is built with (the weights parsed once)."""

    specs: dict  # canonical name -> ExtractorSpec
    keys: dict  # canonical name -> ExtractorKey
    settings: dict  # weights (a Weights), image_size, precision, seed

    @classmethod
    def resolve(cls, names, store: Store, *, weights, image_size: int, precision: str, seed: int) -> "Extractors":
        specs = {spec.name: spec for spec in (resolve(n, store) for n in names)}
        settings = dict(weights=Weights.parse(weights), image_size=image_size, precision=precision, seed=seed)
        return cls(specs, {n: spec.key(**settings) for n, spec in specs.items()}, settings)

    @classmethod
    def of(cls, recipe, store: Store) -> "Extractors":
        """The recipe's extractors with its weights, image size, precision and seed."""
        return cls.resolve(recipe.extractors, store, weights=recipe.weights, image_size=recipe.image_size,
                           precision=recipe.precision, seed=recipe.seed)

    def embed(self, items, name: str, store: Store, *, batch_size: int | None, skip_bad: bool,
              progress: bool) -> EmbedResult:
        spec = self.specs[name]
        return embed_items(items, self.keys[name], store.embedding_cache,
                           lambda: build_extractor(spec, **self.settings), batch_size=batch_size,
                           skip_bad=skip_bad, progress=progress)


# --- fit -----------------------------------------------------------------------------------------


@dataclass
class FitResult:
    run_id: str
    run_dir: Path
    record: RunRecord  # what run.json holds
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
    variants = fit_variant(recipe)
    results = fit_variants(recipe, variants, progress=progress)
    if not variants:
        return results[0]
    results[1].baseline = results[0]
    return results[1]


def fit_variant(recipe) -> list:
    """The recipe's augmentation variant as a list of at most one; ``ConfigError`` for several."""
    variants = list(recipe.augment or [])
    if len(variants) > 1:
        raise ConfigError(f"fit takes one augmentation variant; the recipe has {len(variants)} "
                          f"({', '.join(v.describe() for v in variants)}). Use `automl compare` to compare several.")
    return variants


def _split_dataset(recipe) -> Dataset:
    """The recipe's dataset, its test split held out (given, or a stratified, seeded share)."""
    from automl.data import load_dataset, split_test

    return split_test(load_dataset(recipe.data, skip_bad=recipe.skip_bad), test_fraction=recipe.test_fraction,
                      seed=recipe.seed)


def fit_variants(recipe, variants: Sequence, *, progress: bool = True) -> list[FitResult]:
    """The original-data baseline, then one run per augmentation variant: the same test split, folds
    drawn over the same real images, the same search budget and seed."""
    dataset = _split_dataset(recipe)
    store = Store(recipe.store)
    notes = dataset_notes(dataset)
    extractors = _preflight_stage(recipe, dataset, store, variants)
    baseline = _fit_one(recipe.model_copy(update={"augment": None}), dataset, store, extractors, None, list(notes),
                        progress)
    out = [baseline]
    for spec in variants:
        out.append(_fit_one(recipe.model_copy(update={"augment": [spec]}), dataset, store, extractors, spec,
                            list(notes), progress, baseline_id=baseline.run_id))
    return out


def quality(recipe, *, progress: bool = True) -> list[dict]:
    """``automl quality``: each of the recipe's augmentation variants' synthetic images for the training
    split (made, or reused from the store, exactly as a fit's augment stage makes them) against the real
    training images, in the features of the recipe's first extractor (through the embedding cache); one
    ``automl.quality.measure`` record per variant. Nothing is searched and no run is saved."""
    from automl.augment.generate import preflight
    from automl.quality import measure

    variants = list(recipe.augment or [])
    if not variants:
        raise ConfigError("quality measures an augmentation variant's images: pass --augment NAME (or a recipe "
                          "with `augment:`); `automl augmenters` lists them.")
    recipe = recipe.model_copy(update={"extractors": recipe.extractors[:1]})
    dataset = _split_dataset(recipe)
    store = Store(recipe.store)
    train = [it for it in dataset.items if it.split != "test"]
    extractors = Extractors.of(recipe, store)
    for spec in variants:  # a bad plan or a missing package fails before any work
        preflight(train, dataset.classes, spec, generated_dir=store.generated_dir, seed=recipe.seed)
        if spec.filter is not None and spec.filter.selective is not None:
            _selective_extractor(spec.filter, extractors)
    out = []
    for spec in variants:
        with events.stage("generating"):
            items, synthetic = _augment_stage(recipe, dataset, store, spec, progress)
        with events.stage("embedding"):
            data = _embed_stage(items, synthetic, extractors, store, recipe, progress)
        out.append(measure(data.items, *data.measured(list(data.features)), synthetic, dataset.classes,
                           keys={n: k.to_dict() for n, k in extractors.keys.items()}, seed=recipe.seed))
    return out


def _preflight_stage(recipe, dataset: Dataset, store: Store, variants: Sequence) -> "Extractors":
    """Every check that needs no embeddings, before any embedding or generation, so a fit that cannot
    finish fails in seconds with the fix instead of after the work: the folds against the smallest
    class, the extractors and weights, the storage URL (scheme, driver, SQLite folder and file, server),
    each augmentation plan, then the store (created, or refused when not writable). Nothing is written
    before the last of these; on a refusal the store holds nothing new but its stamp. Returns the
    extractors, resolved here once for the baseline and every variant."""
    from automl.search import check_cv
    from automl.storage import check_storage

    train = [it for it in dataset.items if it.split != "test"]
    check_cv([it.label for it in train], recipe.cv, dataset.classes)  # cv_splits checks the embedded rows again
    extractors = Extractors.of(recipe, store)
    if recipe.storage:
        check_storage(recipe.storage)
    if variants:
        from automl.augment.generate import preflight

        for spec in variants:  # a bad plan, a missing package or unreachable weights fail before any work
            preflight(train, dataset.classes, spec, generated_dir=store.generated_dir, seed=recipe.seed)
            if spec.filter is not None and spec.filter.selective is not None:
                _selective_extractor(spec.filter, extractors)
    store.ensure()
    _check_writable(store.root, store.runs_dir, store.embeddings_dir)
    if not recipe.storage:
        check_storage(store.optuna_url)  # the store's own study file: there, or a sound database
    return extractors


def _check_writable(*folders: Path) -> None:
    """Each folder, where it exists, is a folder that takes a new file (probed by writing one: permission
    bits say nothing for root or read-only mounts)."""
    from automl._files import temporary_sibling
    from automl.errors import StoreError

    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"the store's {folder.name} folder {folder} is a file; move it away or pass another "
                             "--store.")
        if not folder.is_dir():
            continue
        probe = temporary_sibling(folder / "write-probe")
        try:
            probe.write_bytes(b"")
        except OSError as exc:
            raise StoreError(f"cannot write to the store folder {folder}: {exc.strerror or exc}. Make it writable "
                             "or pass --store with a writable folder.") from None
        finally:
            probe.unlink(missing_ok=True)


def _fit_one(recipe, dataset: Dataset, store: Store, extractors: Extractors, spec, notes: list[str], progress: bool,
             baseline_id: str | None = None) -> FitResult:
    """One run, as named stages: augment (train split only), embed, search, refit, evaluate, save.
    ``extractors``: the recipe's, resolved once by the preflight (the variants share them). Each stage
    but the save is a ``progress.stage`` ("generating" only with a variant): a listener sees them
    start and end, and may cancel at any of their steps; the save is all or nothing."""
    from automl.search import candidate_of, leaderboard

    with events.stage("generating") if spec is not None else nullcontext():
        train, synthetic = _augment_stage(recipe, dataset, store, spec, progress)
    with events.stage("embedding"):
        data = _embed_stage(train, synthetic, extractors, store, recipe, progress)
    with events.stage("search"):
        began = time.time()
        study, storage = _search_stage(data, extractors, store, recipe, notes, progress)
        best = _best_trial(study)
    election = _election(recipe, dataset, store, storage, study, began)
    vote = election.vote(echo=progress) if election is not None else None
    if vote is not None and not vote.won:  # another process that searched this study wrote its run
        from automl.shared_study import written_by

        run_dir = store.runs_dir / vote.run_id
        return FitResult(vote.run_id, run_dir, RunRecord.read(run_dir), data.embedded, notes + [written_by(vote)])
    candidate = candidate_of(best)
    with election.writing() if election is not None else nullcontext():
        with events.stage("refit"):
            head = _refit_stage(candidate, data, recipe, notes)
        with events.stage("evaluate"):
            evaluation = _evaluate_stage(head, candidate, dataset, extractors, store, recipe, progress)
        board = leaderboard(study)  # read once: the record's references and leaderboard.json agree
        record = _run_record(recipe, dataset, data, study, storage, best, candidate, extractors, evaluation, board,
                             baseline_id)
        run_dir = _save_stage(record, recipe, dataset, data, head, candidate, extractors, evaluation, board, store)
        if election is not None:
            election.done(record.id)
    _report_stage(run_dir, dataset, study, notes)
    return FitResult(record.id, run_dir, record, data.embedded + [evaluation.embedded], notes)


def _election(recipe, dataset: Dataset, store: Store, storage: str, study, began: float):
    """The vote on who writes this study's run, among the commands that searched it (with a trial
    budget; ``automl.shared_study``); None without one, where every command writes its own."""
    if recipe.trials is None:
        return None
    from automl.search import open_storage
    from automl.shared_study import RunElection, run_key

    test = sorted(f"{it.fingerprint}:{it.label}" for it in dataset.items if it.split == "test")
    key = run_key(study.study_name, recipe.trials, test, recipe.name, recipe.seed)
    return RunElection(open_storage(storage), key, began=began,
                       exists=lambda run_id: (store.runs_dir / run_id / "run.json").is_file())


def _augment_stage(recipe, dataset: Dataset, store: Store, spec, progress: bool):
    """The training split (val folded in: cross-validation replaces it), plus synthetic images for ``spec``.
    Augmenters see the training split only; the test split is touched once, at the end, but for one look
    here: a synthetic image whose decoded pixels equal a test image's is refused, or left out with
    ``skip_bad`` (``automl.augment.generate.refuse_test_copies``), whichever augmenter made it."""
    train = [it for it in dataset.items if it.split != "test"]
    if spec is None:
        return train, None
    from automl.augment import build_augmenter
    from automl.augment.generate import augment, refuse_test_copies

    store.ensure()
    augmenter = build_augmenter(spec.type, spec.params)
    augmenter.skip_bad = recipe.skip_bad  # an augmenter that reads files of its own (folder) honours it
    synthetic = augment(train, dataset.classes, spec, generated_dir=store.generated_dir,
                        generators_dir=store.generators_dir, seed=recipe.seed, progress=progress, augmenter=augmenter)
    synthetic = refuse_test_copies(synthetic, dataset.split("test"), skip_bad=recipe.skip_bad, progress=progress)
    return synthetic.real + synthetic.items, synthetic


@dataclass
class SearchData:
    """The search's input: one feature matrix per extractor, labels, fold groups and synthetic rows."""

    items: list  # the training items (real, then synthetic), indexed by ``kept``
    kept: list[int]  # items every extractor embedded (an undecodable one is left out everywhere)
    features: dict[str, np.ndarray]
    y: np.ndarray
    groups: np.ndarray  # identical images share a group, so no fold validates on a copy of a training image
    synthetic_rows: object  # automl.search.SyntheticRows, or None
    synthetic: object  # automl.augment.generate.Synthetic, or None
    embedded: list[EmbedResult]
    final_synthetic: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the final model's

    def fit_rows(self) -> np.ndarray:
        """The rows the final model is fitted on: all (the synthetic ones its filter keeps), or those
        synthetic ones alone (synthetic-only)."""
        rows = self.synthetic_rows
        if rows is None:
            return np.arange(len(self.y))
        return np.union1d(self.real_rows() if rows.train_real else [], self.final_synthetic).astype(np.int64)

    def real_rows(self) -> np.ndarray:
        rows = self.synthetic_rows
        return np.arange(len(self.y)) if rows is None else np.flatnonzero(~rows.mask(len(self.y)))

    def measured(self, names: Sequence[str]) -> tuple[list[int], dict[str, np.ndarray]]:
        """What ``automl.quality.measure`` compares: the real rows and the synthetic rows the final model
        trains on (a filter's choice), as item indices and the ``names`` extractors' rows."""
        rows = np.union1d(self.real_rows(), self.final_synthetic).astype(np.int64)
        return [self.kept[r] for r in rows], {n: self.features[n][rows] for n in names}

    def n_synthetic(self) -> int:
        return 0 if self.synthetic_rows is None else len(self.synthetic_rows.rows)


def _embed_stage(train: list, synthetic, extractors: Extractors, store: Store, recipe, progress: bool) -> SearchData:
    from automl.search import SyntheticRows

    embedded = {n: _embed(extractors, train, n, store, recipe, progress) for n in extractors.specs}
    kept = sorted(set.intersection(*(set(r.kept) for r in embedded.values())))
    features = {n: _rows(r, kept) for n, r in embedded.items()}
    y = np.array([train[i].label for i in kept])
    group_of: dict[str, int] = {}
    groups = np.array([group_of.setdefault(train[i].fingerprint, len(group_of)) for i in kept])
    rows = None
    if synthetic is not None:
        n_real = len(synthetic.real)
        syn_rows = [row for row, i in enumerate(kept) if i >= n_real]
        sources = [synthetic.sources[kept[row] - n_real] for row in syn_rows]
        select = _selective(synthetic, extractors, features, y, recipe.seed)
        rows = SyntheticRows(tuple(syn_rows), tuple(tuple(group_of[fp] for fp in fps if fp in group_of)
                                                    for fps in sources),
                             train_real=synthetic.train_on_real, select=select)
        data = SearchData(train, kept, features, y, groups, rows, synthetic, list(embedded.values()),
                          np.asarray(syn_rows, dtype=np.int64))
        if select is not None:  # the final model's filter learns from every real training image
            data.final_synthetic = select(data.real_rows(), syn_rows, None)
            _record_selection(synthetic, [train[kept[r]] for r in data.final_synthetic])
        return data
    return SearchData(train, kept, features, y, groups, rows, synthetic, list(embedded.values()))


def _selective(synthetic, extractors: Extractors, features: dict, y: np.ndarray, seed: int):
    """The plan's selective filter over the search's rows (``automl.augment.filters.Selective``), or None."""
    f = synthetic.filter
    if f is None or f.selective is None:
        return None
    from automl.augment.filters import Selective

    name = _selective_extractor(f, extractors)
    return Selective(f.selective, f.control, features[name], y, tuple(synthetic.planned), seed)


def _selective_extractor(f, extractors: Extractors) -> str:
    """The extractor whose features the selective filter sees: ``filter.extractor``, or the first."""
    from automl.registry import canonical

    if f.extractor is None:
        return next(iter(extractors.specs))
    for name in extractors.specs:
        if canonical(name) == canonical(f.extractor):
            return name
    raise ConfigError(f"augment filter extractor {f.extractor!r} is not one of the recipe's extractors "
                      f"({', '.join(extractors.specs)}); the selective filter reuses their embeddings. Fix: name "
                      "one of them, or add it to the extractors.")


def _record_selection(synthetic, kept: list) -> None:
    """What the final model's filter kept (``kept``: its synthetic items), per class, in the
    augmentation record."""
    from automl.augment.generate import kept_indices

    classes = list(synthetic.record["real_per_class"])
    indices = kept_indices(kept, classes)
    filtered = synthetic.record["filter"]
    filtered["kept_per_class"] = {c: len(indices.get(c, [])) for c in synthetic.record["synthetic_per_class"]}
    filtered["kept"] = indices
    synthetic.record["synthetic_per_class"] = dict(filtered["kept_per_class"])


def _search_stage(data: SearchData, extractors: Extractors, store: Store, recipe, notes: list[str], progress: bool):
    from automl.search import LARGE_N, heads_for, run_search, study_name

    store.ensure()  # SQLite needs the folder
    storage = recipe.storage or store.optuna_url
    n_real = len(data.y) - data.n_synthetic()
    heads = heads_for(recipe.heads, n_real, explicit="heads" in recipe.model_fields_set)
    added = [h for h in heads if h not in recipe.heads]
    if added:
        notes.append(f"{n_real} real training images (more than {LARGE_N:,}): the search also tried "
                     f"{', '.join(added)}, which scales linearly with the image count; the leaderboard shows "
                     "what won. Name the heads (--heads) to search only those.")
    name = study_name(_fingerprint(data.items, data.kept, data.synthetic), [k.slug() for k in extractors.keys.values()],
                      heads, recipe.metric, recipe.cv, recipe.seed)
    search = dict(features=data.features, y=data.y, heads=heads, metric=recipe.metric, cv=recipe.cv,
                  seed=recipe.seed, storage=storage, name=name, n_trials=recipe.trials, timeout=recipe.timeout,
                  groups=data.groups, synthetic=data.synthetic_rows)
    if recipe.workers == 1:
        return run_search(**search, progress=progress), storage
    from automl.search import usable_cpus
    from automl.shared_study import SearchProcesses

    search["n_jobs"] = max(1, usable_cpus() // recipe.workers)  # the machine's cores, shared out
    with SearchProcesses(recipe.workers - 1, search) as others:
        study = run_search(**search, progress=progress)
        notes += others.wait()
    return study, storage


def _refit_stage(candidate, data: SearchData, recipe, notes: list[str]):
    """The best pipeline refitted on the whole training split; its warnings become notes for the user."""
    rows = data.fit_rows()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head = candidate.build(recipe.seed).fit(data.features[candidate.extractor][rows], data.y[rows])
    notes += [f"refitting {candidate.describe()}: {w.message}" for w in caught
              if issubclass(w.category, (UserWarning, RuntimeWarning))]
    return head


@dataclass
class Evaluation:
    """The one look at the test split: embedded with the chosen extractor only, scored once."""

    embedded: EmbedResult
    items: list
    proba: np.ndarray
    report: dict  # automl.evaluate.evaluation_report


def _evaluate_stage(head, candidate, dataset: Dataset, extractors: Extractors, store: Store, recipe,
                    progress: bool) -> Evaluation:
    from automl.evaluate import evaluation_report, full_proba

    test = dataset.split("test")
    embedded = _embed(extractors, test, candidate.extractor, store, recipe, progress)
    items = [test[i] for i in embedded.kept]
    proba = full_proba(head, embedded.embeddings, len(dataset.classes))
    report = evaluation_report(np.array([it.label for it in items]), proba, dataset.classes)
    return Evaluation(embedded, items, proba, report)


def _run_record(recipe, dataset: Dataset, data: SearchData, study, storage: str, best, candidate,
                extractors: Extractors, evaluation: Evaluation, board: list[dict],
                baseline_id: str | None) -> RunRecord:
    return RunRecord(
        id=new_run_id(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), name=recipe.name, data=str(dataset.root),
        layout=dataset.layout, classes=dataset.classes, counts=dataset.counts(), split=dataset.split_note,
        metric=recipe.metric, cv=recipe.cv, seed=recipe.seed,
        augment=None if data.synthetic is None else data.synthetic.record, baseline_run=baseline_id,
        train_images={"real": int(len(data.y) - data.n_synthetic()), "synthetic": int(len(data.final_synthetic)),
                      "fitted_on": int(len(data.fit_rows()))},
        best=BestPipeline(candidate.describe(), candidate.extractor, candidate.head, candidate.params, best.value,
                          best.number, best.user_attrs.get("fold_scores")),
        references=[r for r in board if r["reference"]], trials=_trial_counts(study),
        study={"name": study.study_name, "storage": redact(storage)},
        extractor_key=extractors.keys[candidate.extractor].to_dict(),
        test={k: v for k, v in evaluation.report.items() if k not in ("per_class", "confusion_matrix")},
        versions=library_versions())


def _save_stage(record: RunRecord, recipe, dataset: Dataset, data: SearchData, head, candidate,
                extractors: Extractors, evaluation: Evaluation, board: list[dict], store: Store) -> Path:
    """The run folder, written all or nothing: record, recipe, split, metrics, leaderboard, predictions, model;
    with a variant, its sample grid and ``quality.json`` (``automl.quality``, from the search's features)."""
    from automl.recipe import recipe_to_yaml

    bundle = ModelBundle(extractors.keys[candidate.extractor].to_dict(), extractors.settings["weights"].record(),
                         recipe.seed, candidate.head, head, dataset.classes, __version__, source=candidate.extractor)
    files = {
        "run.json": lambda p: write_json(p, record.to_dict()),
        "recipe.yaml": lambda p: p.write_text(recipe_to_yaml(recipe)),
        "split.json": lambda p: write_json(p, dataset.split_record(), indent=1),
        "metrics.json": lambda p: write_json(p, evaluation.report),
        "leaderboard.json": lambda p: write_json(p, board),
        "predictions.csv": lambda p: _write_predictions(p, evaluation.items, evaluation.proba, dataset.classes),
        **bundle.files(),  # model.json + model.npz: data only, loaded without running code
    }
    if data.synthetic is not None:
        from automl.augment.generate import sample_grid
        from automl.quality import FIT_MAX_ROWS, measure

        trained = [data.items[data.kept[r]] for r in data.final_synthetic]  # what the filter kept, if any
        files["samples.png"] = lambda p: sample_grid(trained, dataset.classes, p)
        chosen = candidate.extractor  # the run's extractor: FID from different extractors is not comparable
        quality = measure(data.items, *data.measured([chosen]), data.synthetic, dataset.classes,
                          keys={chosen: extractors.keys[chosen].to_dict()}, seed=recipe.seed, max_rows=FIT_MAX_ROWS)
        files["quality.json"] = lambda p: write_json(p, quality)
    return write_run(store.runs_dir, record.id, files)


def _report_stage(run_dir: Path, dataset: Dataset, study, notes: list[str]) -> None:
    """The run's HTML report (``report.html``), written once the run is saved: a report that fails to
    render costs the page, never the run, and the user is told how to render it again."""
    from automl.report.pages import write_run_report

    try:
        write_run_report(run_dir, dataset=dataset, study=study)
    except Exception as exc:  # the run is saved whatever went wrong here; the note names it
        notes.append(f"run {run_dir.name} is saved, but its HTML report failed ({type(exc).__name__}: {exc}); "
                     f"`automl report {run_dir.name}` renders it again.")


def _embed(extractors: Extractors, items, name: str, store: Store, recipe, progress: bool) -> EmbedResult:
    return extractors.embed(items, name, store, batch_size=recipe.batch_size, skip_bad=recipe.skip_bad,
                            progress=progress)


def _rows(result: EmbedResult, kept: list[int]) -> np.ndarray:
    position = {i: row for row, i in enumerate(result.kept)}
    return result.embeddings[[position[i] for i in kept]]


def _fingerprint(items, kept: list[int], synthetic=None) -> str:
    """What the search's data is: every row's image and label, which rows are synthetic and how they
    mix, and the fold scheme (v2: identical images grouped; v3: folds, sampler and heads seeded from named
    streams; v4: the sampler seeded per trial from the study's history, reference setups claimed by
    slot; v5: folds scored from decision values, in stages with data rungs), so a changed scheme never
    resumes an old study."""
    h = hashlib.blake2b(digest_size=12)
    h.update(b"folds:v5;")
    if synthetic is not None:
        h.update(f"mix:{synthetic.record['mix']};real:{len(synthetic.real)};".encode())
        if synthetic.filter is not None and synthetic.filter.selective is not None:  # chooses per fold
            h.update(f"filter:{synthetic.filter.model_dump_json()};".encode())
    for i in kept:
        h.update(f"{items[i].fingerprint}:{items[i].label};".encode())
    return h.hexdigest()


def _best_trial(study):
    from automl.search import best_trial, failure_reason

    best = best_trial(study)
    if best is not None:
        return best
    failed = [t for t in study.get_trials(deepcopy=False) if failure_reason(t)]
    reason = failure_reason(failed[-1]) if failed else ""
    raise AutomlError(
        f"no search trial finished ({len(failed)} failed{': ' + reason.splitlines()[-1] if reason else ''}). "
        "Raise --trials or --timeout, or check the data."
    )


def _trial_counts(study) -> dict:
    from automl.search import trial_counts

    return trial_counts(study)


def _write_predictions(path: Path, items, proba: np.ndarray, classes: list[str]) -> None:
    # UTF-8, but a file name that is not UTF-8 keeps its bytes as they are on disk (surrogateescape):
    # read it back with errors="surrogateescape" and the path opens the same file.
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        out = csv.writer(f)
        out.writerow(["path", "fingerprint", "true", "predicted"] + [f"p({c})" for c in classes])
        for it, p in zip(items, proba):
            out.writerow([it.path, it.fingerprint, classes[it.label], classes[int(p.argmax())]]
                         + [f"{v:.6f}" for v in p])


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


def predict(run_dir: Path, paths: Sequence[str], store: Store, *, skip_bad: bool = False,
            batch_size: int | None = None, progress: bool = True) -> tuple[list[dict], list]:
    """Class and probabilities for each image, with the extractor and head saved in ``run_dir``."""
    from automl.data import load_images
    from automl.evaluate import full_proba

    bundle = ModelBundle.load(Path(run_dir))
    key = bundle.extractor_key()
    items, bad = load_images(list(paths), skip_bad=skip_bad)
    result = embed_items(items, key, store.embedding_cache, bundle.build_extractor, batch_size=batch_size,
                         skip_bad=skip_bad, progress=progress)
    proba = full_proba(bundle.head, result.embeddings, len(bundle.classes)) if result.kept else np.zeros((0, 0))
    rows = []
    for i, p in zip(result.kept, proba):
        rows.append({"path": items[i].path, "class": bundle.classes[int(p.argmax())],
                     "probabilities": {c: float(v) for c, v in zip(bundle.classes, p)}})
    return rows, bad + result.bad_files
