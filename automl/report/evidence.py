"""What an HTML report reads: the run folder, the trials of the run's search, the dataset's images,
the synthetic images with their sources, and bootstrap intervals over the test images.

A report is rendered from the run folder, at the end of ``fit`` and again by ``automl report``, so
both show the same page. ``fit`` hands over what it already holds (the loaded dataset, the open
study) to save reading them again; ``automl report`` reopens them, and a report whose dataset or
study cannot be opened any more still renders, saying what is missing and why.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from automl.errors import AutomlError
from automl.evaluate import METRIC_TABLE, metric_by_name
from automl.runs import RunRecord
from automl.seeds import rng as stream_rng

BOOTSTRAP_DRAWS = 1000  # resamples of the test images behind each metric's interval
IMPORTANCE_MIN_TRIALS = 10  # complete trials before parameter importances mean anything (fANOVA)
_CELLS = 2_000_000  # bootstrap weights held at once (draws x test images): 16 MB of float64


@dataclass
class Predictions:
    """``predictions.csv``: the test images, their true class index and the probability of each class."""

    paths: list[str]
    y: np.ndarray  # (n,) class indices
    proba: np.ndarray  # (n, K)

    @property
    def pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1) if len(self.y) else np.zeros(0, dtype=int)


@dataclass
class RunEvidence:
    """Everything a run report shows; ``notes`` say what could not be read and why."""

    folder: Path
    record: RunRecord
    metrics: dict  # metrics.json
    leaderboard: list[dict]
    recipe_yaml: str
    predictions: Predictions
    trials: list | None = None  # the run's search: Optuna FrozenTrials, in number order
    dataset: object = None  # automl.data.Dataset with the run's split, or None
    baseline: RunRecord | None = None  # an augmented run's original-data run
    notes: dict[str, str] = field(default_factory=dict)  # section -> why something is missing
    _by_path: dict | None = field(default=None, init=False, repr=False)

    def item(self, path: str):
        """The dataset's item at ``path`` (its pixels load through the same checks as a fit's), or None."""
        if self.dataset is None:
            return None
        if self._by_path is None:
            self._by_path = {it.path: it for it in self.dataset.items}
        return self._by_path.get(path)


def gather_run(folder: Path, *, dataset=None, study=None) -> RunEvidence:
    """The evidence of the run in ``folder``. ``dataset`` (the fit's ``Dataset``, its test split held
    out) and ``study`` (the fit's Optuna study) are reused when given, else read again."""
    folder = Path(folder)
    record = RunRecord.read(folder)
    ev = RunEvidence(folder, record, _read_json(folder / "metrics.json"), _read_json(folder / "leaderboard.json"),
                     _read_text(folder / "recipe.yaml"), read_predictions(folder / "predictions.csv", record.classes))
    ev.trials, note = run_trials(record, study)
    if note:
        ev.notes["search"] = note
    ev.dataset, note = run_dataset(record, folder, dataset)
    if note:
        ev.notes["dataset"] = note
    if record.baseline_run:
        try:
            ev.baseline = RunRecord.read(folder.parent / record.baseline_run)
        except AutomlError as exc:
            ev.notes["baseline"] = str(exc)
    return ev


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AutomlError(f"cannot read {path}: {exc}. The run folder is incomplete; fit the run again "
                          "(`automl run RUN_FOLDER/recipe.yaml`).") from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def read_predictions(path: Path, classes: list[str]) -> Predictions:
    """``predictions.csv`` as arrays (file names that are not UTF-8 keep their bytes: surrogateescape)."""
    index = {c: i for i, c in enumerate(classes)}
    columns = [f"p({c})" for c in classes]
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.DictReader(f))
        paths = [r["path"] for r in rows]
        y = np.array([index[r["true"]] for r in rows], dtype=int)
        proba = np.array([[float(r[c]) for c in columns] for r in rows], dtype=float).reshape(len(rows), len(classes))
    except (OSError, KeyError, ValueError) as exc:
        raise AutomlError(f"cannot read the test predictions {path}: {exc!r}. The run folder is incomplete; fit "
                          "the run again (`automl run RUN_FOLDER/recipe.yaml`).") from exc
    return Predictions(paths, y, proba)


# --- the search ----------------------------------------------------------------------------------


def run_trials(record: RunRecord, study=None) -> tuple[list | None, str | None]:
    """The trials of the run's study that had started when the run was saved (a study is shared by
    fits of the same data, so later fits may have added to it), or None and why."""
    if study is None:
        study, note = _open_study(record.study)
        if study is None:
            return None, note
    saved = _local_time(record.created)
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.datetime_start is not None and (saved is None or t.datetime_start <= saved)]
    return sorted(trials, key=lambda t: t.number), None


def _local_time(created: str) -> datetime | None:
    """``run.json``'s ``created`` as the naive local time Optuna stamps trials with (plus a second:
    ``created`` is rounded down to one)."""
    try:
        return datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").astimezone().replace(tzinfo=None) + timedelta(
            seconds=1)
    except (TypeError, ValueError):
        return None


def _open_study(study: dict) -> tuple[object, str | None]:
    name, url = study.get("name"), study.get("storage")
    if not name or not url:
        return None, "run.json names no study, so the optimisation history, importances and trial times are left out."
    if "***" in url:
        return None, (f"the study's storage {url} needs a password, which run.json does not keep; the optimisation "
                      "history, importances and trial times are left out.")
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None, (f"the study's database {url[len('sqlite:///'):]} is not there any more, so the optimisation "
                      "history, importances and trial times are left out.")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=name, storage=url), None
    except Exception as exc:  # any storage failure: the page says why, and renders the rest
        return None, (f"could not open the study {name!r} at {url} ({type(exc).__name__}: {exc}); the optimisation "
                      "history, importances and trial times are left out.")


def importances(trials: list, metric: str, head: str, seed: int) -> tuple[dict[str, dict[str, float]], list[str]]:
    """fANOVA importances (Optuna's default evaluator, seeded; about 0.1 s for 12 to 100 trials): over
    the choices every trial made (extractor, head) and over the parameters of ``head`` (the best
    pipeline's), each only with at least ``IMPORTANCE_MIN_TRIALS`` complete trials. Returns
    {title: {parameter: importance}} and notes saying what was left out and why."""
    import optuna

    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    out, notes = {}, []
    if len(done) < IMPORTANCE_MIN_TRIALS:
        return out, [f"parameter importances need at least {IMPORTANCE_MIN_TRIALS} complete trials; this search has "
                     f"{len(done)}."]
    direction = metric_by_name(metric).direction
    groups = [("extractor and head (all trials)", done)]
    same_head = [t for t in done if t.params.get("head") == head]
    if len(same_head) >= IMPORTANCE_MIN_TRIALS:
        groups.append((f"{head} parameters ({len(same_head)} trials)", same_head))
    else:
        notes.append(f"the best head, {head}, has {len(same_head)} complete trial(s); its own parameters' importances "
                     f"need {IMPORTANCE_MIN_TRIALS}.")
    for title, group in groups:
        params = _varied_params(group)
        if not params:
            notes.append(f"{title}: every trial made the same choice, so there is nothing to rank.")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study = optuna.create_study(direction=direction)
                study.add_trials(group)
                evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=seed % 2**32)
                values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)
        except Exception as exc:  # fANOVA on degenerate scores (all equal, say): the page says so
            notes.append(f"{title}: the importances could not be computed ({type(exc).__name__}: {exc}).")
            continue
        out[title] = {k: float(v) for k, v in values.items()}
    return out, notes


def _varied_params(trials: list) -> list[str]:
    """The parameters every trial of ``trials`` has, and that take more than one value among them."""
    common = set.intersection(*(set(t.params) for t in trials))
    return sorted(p for p in common if len({json.dumps(t.params[p], default=str) for t in trials}) > 1)


# --- the dataset and its images ------------------------------------------------------------------


def run_dataset(record: RunRecord, folder: Path, dataset=None) -> tuple[object, str | None]:
    """The run's dataset with the run's split (``split.json``), or None and why. Read again (headers
    and fingerprints, no pixels) when not handed over; an image whose content changed since the run
    is left out, so the page never shows an image the run did not see."""
    if dataset is not None:
        return dataset, None
    from automl.data import load_dataset

    try:
        split = json.loads((folder / "split.json").read_text())
        saved = {it["path"]: (it["split"], it["fingerprint"]) for it in split["items"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"cannot read {folder / 'split.json'} ({exc}); the dataset's images are left out."
    try:
        loaded = load_dataset(record.data, skip_bad=True)
    except AutomlError as exc:
        return None, f"the dataset could not be read again ({exc}); its sizes and images are left out."
    items = [replace(it, split=saved[it.path][0]) for it in loaded.items
             if it.path in saved and saved[it.path][1] == it.fingerprint]
    changed = len(saved) - len(items)
    note = None
    if changed:
        note = (f"{changed} of the run's {len(saved)} images are missing from {record.data} or changed since the run; "
                "they are left out of this page.")
    return replace(loaded, items=items, split_note=record.split), note


def synthetic_samples(record: RunRecord, per_class: int = 4) -> tuple[dict[str, list[dict]], str | None]:
    """Per augmented class, the first ``per_class`` synthetic images' records (``file`` made absolute,
    ``sources``: the real images each was made from) that trained (a filter's ``kept``), read from the
    generated-images folder."""
    from automl.augment.generate import trained_indices

    aug = record.augment or {}
    root = Path(aug.get("folder", ""))
    if not aug.get("folder") or not root.is_dir():
        return {}, f"the synthetic images' folder {root} is not there any more; the grid is left out."
    out = {}
    for name, count in aug.get("synthetic_per_class", {}).items():
        if name not in record.classes:
            continue
        label = record.classes.index(name)
        samples = []
        for k in trained_indices(aug, name)[:per_class]:
            path = root / str(label) / f"{k:06d}.json"
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                break
            samples.append({**rec, "file": str(root / str(label) / rec["file"])})
        out[name] = samples
    return out, None


def explain_maps(folder: Path) -> tuple[list[dict], str | None]:
    """The maps `automl explain` wrote into the run's ``explain/`` (its manifest's entries whose PNG is
    there), and a note on what was left out; ([], None) when there are none."""
    from automl.attribution import FOLDER, read_manifest

    return read_manifest(Path(folder) / FOLDER)


def run_quality(folder: Path) -> tuple[dict | None, str | None]:
    """``quality.json`` of an augmented run (``automl.quality``: FID, KID, precision/recall,
    density/coverage and near-copies), and a note when it is missing or unreadable."""
    path = Path(folder) / "quality.json"
    if not path.is_file():
        return None, ("this run has no quality.json (fitted before automl measured synthetic images); "
                      "`automl quality` with the run's data and augmentation flags measures them.")
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("extractors"), list):
            raise ValueError("not a quality record")
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}; `automl quality` measures the synthetic images again."
    return record, None


def load_png(path: str, size: int) -> np.ndarray:
    """A PNG automl wrote (a synthetic image), decoded by the same checks as any image."""
    from automl.images import decode

    with open(path, "rb") as f:
        return decode(f, size)


_NPZ_PATH = re.compile(r"^(?P<file>.+\.npz):(?P<split>\w+)\[(?P<index>\d+)\]$")


def short_name(path: str) -> str:
    """A dataset path as a caption: the file name, or ``split[index]`` of an .npz."""
    match = _NPZ_PATH.match(path)
    if match:
        return f"{match['split']}[{match['index']}]"
    return Path(path).name


# --- bootstrap intervals over the test images ----------------------------------------------------


def bootstrap_intervals(y: np.ndarray, proba: np.ndarray, seed: int, *, draws: int = BOOTSTRAP_DRAWS,
                        level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """A percentile interval per metric of ``automl.evaluate``'s table (by key), from ``draws``
    resamples of the test images with replacement. A resample is a vector of multiplicities, so every
    metric is computed for all draws at once (vectorised; the table's definitions, which
    ``tests/test_report_html.py`` checks on the identity resample). None where no draw is defined
    (AUROC with a class that has no test image)."""
    n, k = proba.shape if proba.ndim == 2 else (0, 0)
    if n == 0:
        return {m.key: None for m in METRIC_TABLE}
    rng = stream_rng(seed, "report", "bootstrap")
    chunk = max(1, _CELLS // n)
    values: dict[str, list[np.ndarray]] = {m.key: [] for m in METRIC_TABLE}
    for start in range(0, draws, chunk):
        weights = _multiplicities(rng, n, min(chunk, draws - start))
        for key, v in weighted_metrics(weights, y, proba).items():
            values[key].append(v)
    out = {}
    tail = (1 - level) / 2 * 100
    for key, parts in values.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        out[key] = None if len(v) == 0 else (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
    return out


def _multiplicities(rng, n: int, draws: int) -> np.ndarray:
    """(draws, n): how often each test image is drawn in each resample of n draws with replacement."""
    picks = rng.integers(0, n, size=(draws, n))
    flat = (np.arange(draws)[:, None] * n + picks).ravel()
    return np.bincount(flat, minlength=draws * n).reshape(draws, n).astype(float)


def weighted_metrics(weights: np.ndarray, y: np.ndarray, proba: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of the table for each row of ``weights`` (multiplicities of the test images)."""
    n, k = proba.shape
    pred = proba.argmax(axis=1)
    onehot = np.zeros((n, k * k))
    onehot[np.arange(n), y * k + pred] = 1.0
    cm = (weights @ onehot).reshape(-1, k, k)  # (draws, true, predicted)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
    total = weights.sum(axis=1)
    clipped = np.clip(proba, 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    eps = np.finfo(clipped.dtype).eps
    loss = -np.log(np.clip(clipped, eps, 1 - eps)[np.arange(n), y])
    if k == 2:
        auroc = weighted_auroc(weights, proba[:, 1], y == 1)
    else:
        auroc = np.mean([weighted_auroc(weights, proba[:, c], y == c) for c in range(k)], axis=0)
    out = {
        "accuracy": tp.sum(axis=1) / total,
        "balanced_accuracy": (recall * present).sum(axis=1) / present.sum(axis=1),
        "precision_macro": precision.mean(axis=1),
        "recall_macro": recall.mean(axis=1),
        "f1_macro": f1.mean(axis=1),
        "auroc": auroc,
        "log_loss": weights @ loss / total,
    }
    return {m.key: out[m.key] for m in METRIC_TABLE}


def weighted_auroc(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` for ``positive`` under each row of multiplicities: the chance that a drawn
    positive outscores a drawn negative, ties counting half (Mann-Whitney); NaN where a row draws no
    positive or no negative."""
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]
    starts, group = np.flatnonzero(new), np.cumsum(new) - 1
    w = weights[:, order]
    pos = positive[order].astype(float)
    neg_w = w * (1.0 - pos)
    neg_groups = np.add.reduceat(neg_w, starts, axis=1)
    credit = np.cumsum(neg_groups, axis=1) - 0.5 * neg_groups  # negatives below, ties half
    pos_w = w * pos
    wp, wn = pos_w.sum(axis=1), neg_w.sum(axis=1)
    num = (pos_w * credit[:, group]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((wp > 0) & (wn > 0), num / (wp * wn), np.nan)
