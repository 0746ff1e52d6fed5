"""The Python API: ``fit``, ``compare``, ``load_run`` and a saved ``Run`` — what a notebook or a
service calls. The CLI calls these same functions.

    import automl

    run = automl.fit("data/chongqing", extractors="xception", heads="svc-rbf", trials=20)
    run.metrics["auroc"], run.leaderboard[0]["pipeline"]
    automl.load_run(run.id).predict(["scan-001.png"])

Keyword arguments are recipe keys (``recipes/README.md``; ``image_size``, not ``--image-size``) and are
validated like a recipe file: an unknown key or a bad value raises ``automl.errors.RecipeError`` naming
it. Progress bars are off unless ``progress=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from automl.errors import DataError
from automl.runs import RunRecord, find_run
from automl.store import Store


class Run:
    """A saved run: its record, leaderboard and test metrics, and ``predict`` with its model.

    A run returned by ``fit`` also has ``notes`` (warnings worth showing), ``embeddings`` (what each
    extractor embedded or read from the cache) and, with augmentation, ``baseline`` (the original-data
    run it is compared with).
    """

    def __init__(self, folder: str | os.PathLike, record: RunRecord | None = None, *, store: Store | None = None):
        self.folder = Path(folder)
        self.record = record or RunRecord.read(self.folder)
        # A run folder lives in <store>/runs/<id>; predictions reuse that store's embedding cache.
        self.store = store or Store(self.folder.parent.parent)
        self.notes: list[str] = []
        self.embeddings: list = []
        self.baseline: Run | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def metrics(self) -> dict:
        """The one evaluation on the test split: headline metrics, per-class report, confusion matrix."""
        return self._read("metrics.json")

    @property
    def leaderboard(self) -> list[dict]:
        """The search's best trials (rank, CV score, pipeline), plus the study's reference setups."""
        return self._read("leaderboard.json")

    @property
    def report(self) -> Path | None:
        """The run's HTML report (``report.html``), or None where none was written (``automl report``
        writes it)."""
        page = self.folder / "report.html"
        return page if page.is_file() else None

    def predict(self, images: Sequence[str | os.PathLike], *, skip_bad: bool = False, batch_size: int | None = None,
                progress: bool = False) -> list[dict]:
        """``{"path", "class", "probabilities"}`` per image (files, or folders searched recursively).
        Undecodable files raise ``DataError``, or are left out with ``skip_bad`` (see ``predict_with_skipped``)."""
        return self.predict_with_skipped(images, skip_bad=skip_bad, batch_size=batch_size, progress=progress)[0]

    def predict_with_skipped(self, images: Sequence[str | os.PathLike], *, skip_bad: bool = False,
                             batch_size: int | None = None, progress: bool = False) -> tuple[list[dict], list]:
        """``predict``, and the files left out (``BadFile``: path and reason)."""
        from automl.pipeline import predict

        return predict(self.folder, [os.fspath(p) for p in images], self.store, skip_bad=skip_bad,
                       batch_size=batch_size, progress=progress)

    def _read(self, name: str):
        path = self.folder / name
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}. The run folder is incomplete; fit it again.") from exc

    def __repr__(self) -> str:
        return f"Run({self.id!r}, best={self.record.best.pipeline!r})"


def recipe_of(data: str | os.PathLike | None = None, recipe: Any = None, **keys: Any):
    """A validated ``Recipe`` from a recipe (a ``Recipe`` or a YAML path) and/or recipe keys; keys win."""
    from automl.recipe import Recipe, load_recipe

    if data is not None:
        keys["data"] = data
    if recipe is None:
        return Recipe.from_flags(**keys)
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    return base.with_overrides(**keys) if keys else base


def fit(data: str | os.PathLike | None = None, *, recipe: Any = None, progress: bool = False, **keys: Any) -> Run:
    """Split, embed, search, refit, evaluate the test split once, save; the saved ``Run``.

    With one augmentation variant (``augment="conventional"``), the original-data baseline is fitted
    too, with the same split, budget and seed, and returned as ``run.baseline``.
    """
    from automl.pipeline import fit as fit_recipe

    return _as_run(fit_recipe(recipe_of(data, recipe, **keys), progress=progress))


def compare(data: str | os.PathLike | None = None, *, recipe: Any = None, progress: bool = False, **keys: Any):
    """The baseline and every ``augment`` variant over ``repeats`` seeds: the saved ``Comparison``
    (``.record`` per-variant medians, intervals, paired tests and verdicts; ``.text`` the tables)."""
    from automl.comparison import compare as compare_recipe

    return compare_recipe(recipe_of(data, recipe, **keys), progress=progress)


def load_run(ref: str | os.PathLike, *, store: str | os.PathLike | None = None, run_dir: bool = False) -> Run:
    """A saved run of ``store`` (default ``$AUTOML_STORE`` or ./store) by id, unique id prefix, or its
    folder inside the store's ``runs/``. ``run_dir=True`` takes ``ref`` as a run folder anywhere (a
    copied or downloaded run); its model loads as safely (data only), its predictions use ``store``'s
    embedding cache."""
    root = Store(store)
    return Run(find_run(root.runs_dir, os.fspath(ref), run_dir=run_dir), store=root)


def _as_run(result) -> Run:
    run = Run(result.run_dir, result.record)
    run.notes, run.embeddings = result.notes, result.embeddings
    if result.baseline is not None:
        run.baseline = _as_run(result.baseline)
    return run
