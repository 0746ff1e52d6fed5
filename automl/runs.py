"""Run folders and model bundles in the store.

A run folder is assembled under a temporary name and renamed into place when complete
(``automl._files.atomic_folder``), so ``runs/`` never holds half a run. Run ids are short and sort
by time: ``YYMMDD-HHMMSS-xxxx``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from automl._files import atomic_folder
from automl.errors import StoreError


def new_run_id() -> str:
    return time.strftime("%y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def write_run(runs_dir: Path, run_id: str, files: dict[str, Callable[[Path], None]]) -> Path:
    """Create ``runs_dir/run_id`` with each file written by its callable, all or nothing."""
    final = Path(runs_dir) / run_id
    with atomic_folder(final, replace=_refuse_existing_run) as tmp:
        for name, write in files.items():
            write(tmp / name)
    return final


def _refuse_existing_run(folder: Path) -> bool:
    raise StoreError(f"{folder} exists already: a run id is never reused. Run the command again for a new id; "
                     "if that folder was copied in by hand, move it away.")


def list_runs(runs_dir: Path, *, broken: list | None = None) -> list["RunRecord"]:
    """Every run's record, oldest first (ids sort by time). A record that cannot be read raises
    ``StoreError``; with ``broken`` (a list) its error is appended there instead and the run left out."""
    records = []
    for folder in _run_folders(runs_dir):
        try:
            records.append(RunRecord.read(folder))
        except StoreError as exc:
            if broken is None:
                raise
            broken.append(exc)
    return records


def _run_folders(runs_dir: Path) -> list[Path]:
    if not runs_dir.is_dir():
        return []
    return [folder for folder in sorted(runs_dir.iterdir())
            if not folder.name.startswith(".") and (folder / "run.json").is_file()]


def find_run(runs_dir: Path, ref: str, *, run_dir: bool = False) -> Path:
    """A run of the store by id or unique id prefix, or by its folder inside ``runs_dir``.

    A folder anywhere else is taken only with ``run_dir=True`` (the CLI's ``--run-dir``): the user
    says they mean that folder. Either way nothing in it runs: ``ModelBundle.load`` rebuilds the
    model from data, and refuses what it cannot rebuild that way.
    """
    runs_dir = Path(runs_dir)
    path = Path(ref)
    if run_dir:
        if not (path / "run.json").is_file():
            raise StoreError(f"--run-dir {ref}: no run.json in that folder; a run folder holds run.json, "
                             f"{', '.join(BUNDLE_FILES)} and the files `automl fit` writes beside them.")
        return path
    if _looks_like_a_path(ref):
        if (path / "run.json").is_file() and path.parent.resolve() == runs_dir.resolve():
            return runs_dir / path.name
        raise StoreError(_outside_the_store(ref, path, runs_dir))
    # Folder names, not the ids inside run.json: a record naming another id never leads out of runs/.
    ids = [folder.name for folder in _run_folders(runs_dir)]
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return runs_dir / matches[0]
    if not matches:
        if (path / "run.json").is_file():  # a folder named like "myrun", given without a slash
            raise StoreError(_outside_the_store(ref, path, runs_dir))
        known = ", ".join(ids[-5:]) if ids else "none yet"
        raise StoreError(f"no run {ref!r} in {runs_dir} (latest: {known}); `automl runs` lists them.")
    raise StoreError(f"run id prefix {ref!r} matches {len(matches)} runs ({', '.join(matches)}); give more of it.")


def _looks_like_a_path(ref: str) -> bool:
    return "/" in ref or os.sep in ref or ref in (".", "..") or ref.startswith("~")


def _outside_the_store(ref: str, path: Path, runs_dir: Path) -> str:
    if not (path / "run.json").is_file():
        return f"{ref} holds no run.json, so it is not a run folder; give a run's id (`automl runs` lists them)."
    fix = f"copy it into {runs_dir} and give its id"
    if path.parent.name == "runs":
        fix = f"give its id with its own store: `--store {path.parent.parent} {path.name}`"
    return (f"run folder {ref} is outside the store's runs folder {runs_dir}; runs are loaded by id from the store. "
            f"To use it, {fix}; or, for a run folder from elsewhere (copied, downloaded), pass --run-dir "
            f"(Python: run_dir=True): its model is loaded by the same safe loader, its embeddings cached in --store.")


@dataclass(frozen=True)
class BestPipeline:
    """What the search chose: the pipeline as shown, its parts, its CV score and trial."""

    pipeline: str
    extractor: str
    head: str
    params: dict
    cv_score: float
    trial: int
    fold_scores: list | None = None


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What ``run.json`` holds: the pipeline writes it, the CLI, ``compare`` and reports read it.

    Field order is the file's key order. Runs written before a field existed read it as its default.
    """

    id: str
    created: str
    name: str | None = None
    data: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    split: str
    metric: str
    cv: int
    seed: int
    augment: dict | None = None  # the augmentation's own record (variant, mix, per-class counts, folders)
    baseline_run: str | None = None  # the original-data run an augmented run is compared with
    train_images: dict | None = None  # {"real", "synthetic", "fitted_on"}
    best: BestPipeline
    references: list[dict] = field(default_factory=list)  # the study's published setups, as ranked
    trials: dict[str, int] = field(default_factory=dict)  # trial count per state
    study: dict = field(default_factory=dict)  # {"name", "storage"} (password redacted)
    extractor_key: dict = field(default_factory=dict)  # the chosen extractor's cache key
    test: dict  # the headline test metrics (automl.evaluate's keys), scored once
    versions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunRecord":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}  # keys of a newer automl are ignored
        values["best"] = BestPipeline(**{k: v for k, v in data["best"].items()
                                         if k in {f.name for f in fields(BestPipeline)}})
        return cls(**values)

    @classmethod
    def read(cls, folder: Path) -> "RunRecord":
        path = Path(folder) / "run.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"cannot read the run record {path}: {exc}. Restore that file, or move the broken run "
                             "aside with `automl store check --repair`.") from exc


BUNDLE_FILES = ("model.json", "model.npz")
LEGACY_BUNDLE = "model.joblib"  # automl 0.1's pickle: never loaded
BUNDLE_VERSION = 1
_BUNDLE_FIELDS = {"extractor": dict, "weights": (dict, str), "seed": int, "head_name": str, "classes": list,
                  "automl_version": str, "source": str}


@dataclass
class ModelBundle:
    """What `predict` needs: how to rebuild the extractor exactly, the fitted head, the class names.

    Saved as data only: ``model.json`` (these fields, and the head as the tree of
    ``automl.heads._state``) and ``model.npz`` (the head's arrays, read with ``allow_pickle=False``).
    Loading builds nothing but the head's class and the types it lists in ``state_types``.
    """

    extractor: dict  # ExtractorKey.to_dict()
    weights: dict | str  # Weights.record(); older bundles hold the --weights string ("imagenet", "none", a path)
    seed: int
    head_name: str
    head: object
    classes: list[str]
    automl_version: str
    source: str = ""  # the extractor's canonical name (ExtractorSpec.name); older bundles may hold ""

    def files(self) -> dict[str, Callable[[Path], None]]:
        """The writers of the bundle's files, by name, for ``write_run`` (or ``save``)."""
        from automl.heads._state import to_state

        tree, arrays = to_state(self.head)
        record = {"bundle_version": BUNDLE_VERSION, **{name: getattr(self, name) for name in _BUNDLE_FIELDS},
                  "head": tree}

        def write_arrays(path: Path) -> None:
            with open(path, "wb") as f:
                np.savez(f, **arrays)  # stored, not compressed: what load accepts

        return {"model.json": lambda p: p.write_text(json.dumps(record, indent=1, allow_nan=False)),
                "model.npz": write_arrays}

    def save(self, folder: Path) -> None:
        for name, write in self.files().items():
            write(Path(folder) / name)

    @classmethod
    def load(cls, folder: Path) -> "ModelBundle":
        """The bundle of a run folder; ``StoreError`` naming the file for anything but a bundle this
        version of automl wrote (a pickled 0.1 bundle included: it is never opened)."""
        folder = Path(folder)
        path = folder / "model.json"
        if not path.is_file():
            raise StoreError(_no_bundle(folder))
        try:
            record = json.loads(path.read_text(), parse_constant=_no_constant)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, found {type(record).__name__}")
            _check_record(record)
            head_cls = _head_class(record["head_name"])
        except (OSError, ValueError, RecursionError) as exc:
            raise StoreError(f"cannot read the model bundle {path}: {exc}. {_refit(folder)}") from exc
        arrays = _read_arrays(folder / "model.npz", folder)
        from automl.heads._state import from_state

        try:
            head = from_state(head_cls, record["head"], arrays)
        except (ValueError, TypeError, RecursionError) as exc:
            raise StoreError(f"refused the model bundle {path}: {exc}. {_refit(folder)}") from exc
        _check_predicts(head, path, folder)
        return cls(**{name: record[name] for name in _BUNDLE_FIELDS}, head=head)

    def extractor_key(self):
        """Rebuild the extractor's key here, now; refuse if it is not the one the head was fitted on."""
        from automl.extractors import ExtractorKey

        try:
            saved = ExtractorKey(**self.extractor)
        except TypeError as exc:  # a key field this automl does not know, or one missing
            raise StoreError(f"the model bundle's extractor key {self.extractor} is not one this automl reads "
                             f"({exc}); fit the run again with this version.") from exc
        return self._spec(saved).refitted_key(saved, self._weights(), self.seed)

    def build_extractor(self):
        """The extractor the head was fitted on (``extractor_key`` checks that it still is)."""
        key = self.extractor_key()
        return self._spec(key).build(weights=self._weights(), image_size=key.image_size, precision=key.precision,
                                     seed=self.seed)

    def _spec(self, saved):
        from automl.extractors import resolve

        return resolve(self.source or saved.extractor)

    def _weights(self):
        from automl.extractors import Weights

        return Weights.from_record(self.weights)


def _check_record(record: dict) -> None:
    version = record.get("bundle_version")
    if version != BUNDLE_VERSION:
        raise ValueError(f"bundle_version {version!r}; this automl reads version {BUNDLE_VERSION} "
                         "(a newer automl wrote it? then predict with that version)")
    for name, kind in _BUNDLE_FIELDS.items():
        if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
            raise ValueError(f"field {name!r} must be {_kinds(kind)}, found {record.get(name)!r:.60}")
    if not all(isinstance(c, str) for c in record["classes"]):
        raise ValueError("field 'classes' must be a list of class names (strings)")
    if "head" not in record:
        raise ValueError("no field 'head'")


def _check_predicts(head, path: Path, folder: Path) -> None:
    """One row through the rebuilt head: attributes of the right types but the wrong roles (a bundle
    edited by hand) fail here, named, not in the middle of a prediction."""
    n = getattr(head, "n_features_in_", None)
    try:
        if type(n) is not int or not 0 < n <= 2**20:
            raise ValueError(f"n_features_in_ is {n!r}, expected an int in [1, {2**20}]")
        proba = head.predict_proba(np.zeros((1, n)))
        if np.shape(proba) != (1, len(head.classes_)) or not np.isfinite(proba).all():
            raise ValueError(f"predict_proba gave {proba!r:.80} for one row of zeros")
    except Exception as exc:  # a probe: whatever the rebuilt head raises means it is not usable
        raise StoreError(f"refused the model bundle {path}: the rebuilt head cannot predict ({type(exc).__name__}: "
                         f"{exc}). {_refit(folder)}") from exc


def _kinds(kind) -> str:
    return " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))


def _head_class(name: str):
    from automl.errors import ConfigError
    from automl.heads import get_head

    try:
        return get_head(name)
    except ConfigError as exc:
        raise ValueError(f"field 'head_name': {exc}") from None


def _read_arrays(path: Path, folder: Path) -> dict[str, np.ndarray]:
    """The arrays of ``model.npz``: stored .npy members only (no pickles, no compressed bombs)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or not re.fullmatch(r"a\d+\.npy", info.filename):
                    raise ValueError(f"member {info.filename!r} is not one automl writes (a0.npy, a1.npy, ..., "
                                     "stored uncompressed)")
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise StoreError(f"the model bundle's arrays {path} are missing. {_refit(folder)}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise StoreError(f"cannot read the model bundle's arrays {path}: {exc}. {_refit(folder)}") from exc


def _no_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def _no_bundle(folder: Path) -> str:
    if (folder / LEGACY_BUNDLE).is_file():
        return (f"{folder / LEGACY_BUNDLE} was saved by automl 0.1 as a pickle, a format that runs code when it is "
                f"loaded, so automl does not load it. "
                f"{_refit(folder, 'Fit the run again to save its model in a form that loads no code')}")
    return (f"no model bundle in {folder} (expected {' and '.join(BUNDLE_FILES)}). "
            f"{_refit(folder, 'The run folder is incomplete; fit the run again')}")


def _refit(folder: Path, lead: str = "It was damaged or changed after automl wrote it; fit the run again") -> str:
    return (f"{lead}: `automl run {folder / 'recipe.yaml'}` (cached embeddings are reused), "
            "then use the new run's id.")
