"""Run folders and model bundles in the store.

A run folder is assembled under a temporary name and renamed into place when complete
(``automl._files.atomic_folder``), so ``runs/`` never holds half a run. Run ids are short and sort
by time: ``YYMMDD-HHMMSS-xxxx``.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

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


def find_run(runs_dir: Path, ref: str) -> Path:
    """A run by id, unique id prefix, or path to its folder."""
    path = Path(ref)
    if (path / "run.json").is_file():
        return path
    ids = [folder.name for folder in _run_folders(runs_dir)]  # by folder: one broken record hides no other run
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return runs_dir / matches[0]
    if not matches:
        known = ", ".join(ids[-5:]) if ids else "none yet"
        raise StoreError(f"no run {ref!r} in {runs_dir} (latest: {known}); `automl runs` lists them.")
    raise StoreError(f"run id prefix {ref!r} matches {len(matches)} runs ({', '.join(matches)}); give more of it.")


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


@dataclass
class ModelBundle:
    """What `predict` needs: how to rebuild the extractor exactly, the fitted head, the class names."""

    extractor: dict  # ExtractorKey.to_dict()
    weights: dict | str  # Weights.record(); older bundles hold the --weights string ("imagenet", "none", a path)
    seed: int
    head_name: str
    head: object
    classes: list[str]
    automl_version: str
    source: str = ""  # the extractor's canonical name (ExtractorSpec.name); older bundles may hold ""

    def save(self, path: Path) -> None:
        import joblib

        joblib.dump(asdict(self) | {"head": self.head}, path)

    @classmethod
    def load(cls, path: Path) -> "ModelBundle":
        import joblib

        try:
            data = joblib.load(path)
        except (OSError, EOFError, ValueError) as exc:
            raise StoreError(f"cannot read model bundle {path}: {exc}") from exc
        return cls(**data)

    def extractor_key(self):
        """Rebuild the extractor's key here, now; refuse if it is not the one the head was fitted on."""
        from automl.extractors import ExtractorKey

        saved = ExtractorKey(**self.extractor)
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
