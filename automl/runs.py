"""Run folders and model bundles in the store.

A run folder is assembled under a temporary name and renamed into place when complete
(``automl._files.atomic_folder``), so ``runs/`` never holds half a run. Run ids are short and sort
by time: ``YYMMDD-HHMMSS-xxxx``.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from automl._files import atomic_folder
from automl.errors import ConfigError, StoreError, WeightsUnavailableError


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


def list_runs(runs_dir: Path) -> list[dict]:
    if not runs_dir.is_dir():
        return []
    runs = []
    for folder in sorted(runs_dir.iterdir()):
        record = folder / "run.json"
        if folder.name.startswith(".") or not record.is_file():
            continue
        runs.append(json.loads(record.read_text()))
    return runs


def find_run(runs_dir: Path, ref: str) -> Path:
    """A run by id, unique id prefix, or path to its folder."""
    path = Path(ref)
    if (path / "run.json").is_file():
        return path
    ids = [r["id"] for r in list_runs(runs_dir)]
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return runs_dir / matches[0]
    if not matches:
        known = ", ".join(ids[-5:]) if ids else "none yet"
        raise StoreError(f"no run {ref!r} in {runs_dir} (latest: {known}); `automl runs` lists them.")
    raise StoreError(f"run id prefix {ref!r} matches {len(matches)} runs ({', '.join(matches)}); give more of it.")


@dataclass
class ModelBundle:
    """What `predict` needs: how to rebuild the extractor exactly, the fitted head, the class names."""

    extractor: dict  # ExtractorKey.to_dict()
    weights: str  # the --weights value: "imagenet", "none" or an absolute path
    seed: int
    head_name: str
    head: object
    classes: list[str]
    automl_version: str
    source: str = ""  # the extractor as named in the run: a registered name or file:/abs/path

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
        from automl.extract import ExtractorKey, extractor_key

        saved = ExtractorKey(**self.extractor)
        if self.source.startswith("file:"):
            from automl.file_extractors import split_file_name

            path = Path(split_file_name(self.source)[0])  # without its ?preprocessing options
            if not path.exists():
                raise WeightsUnavailableError(
                    f"the model was fitted on embeddings from the model file {path}, which no longer exists; "
                    "restore it (its content hash must match) to predict with this run.")
            now = extractor_key(self.source)
            if now != saved:
                raise ConfigError(
                    f"the model file {path} has changed since this run was fitted (content hash "
                    f"{saved.weights.split(':', 1)[1]}, now {now.weights.split(':', 1)[1]}); its embeddings would "
                    "not match the head. Restore the original file, or fit a new run with this one.")
            return now
        if self.weights not in ("none", "imagenet") and not Path(self.weights).is_file():
            raise WeightsUnavailableError(
                f"the model was fitted on embeddings from {saved.extractor} with weights file {self.weights}, which "
                "no longer exists; restore the file (its content hash must match) to predict with this run."
            )
        now = extractor_key(saved.extractor, weights=self.weights, image_size=saved.image_size,
                            precision=saved.precision, seed=self.seed)
        if now != saved:
            diffs = ", ".join(f"{k}: fitted with {getattr(saved, k)!r}, now {getattr(now, k)!r}"
                              for k in saved.to_dict() if getattr(saved, k) != getattr(now, k))
            raise ConfigError(
                f"cannot rebuild the extractor this model was fitted on ({diffs}). Predicting with another "
                "extractor would give meaningless scores: restore the original weights file, Keras version or "
                "KERAS_BACKEND, or fit a new run."
            )
        return now
