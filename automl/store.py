"""The store: one folder that holds everything automl makes, reusable across runs.

Layout (created lazily; see docs/store.md)::

    store/
      store.json                  format version
      embeddings/<extractor-key>/ key.json + shard-*.npz   (automl.cache; unreadable shards: .damaged/)
      runs/<run-id>/              recipe, split, metrics, model bundle       (automl fit)
      comparisons/<id>/           comparison.json + table.txt                 (automl compare)
      reviews/<sheet-id>/         key.json: which image of a sheet is real    (automl review make)
      optuna.db                   Optuna studies (SQLite)                     (automl fit)
      generated/<augmenter-key>/  synthetic images + provenance               (--augment)
      generators/<key>/           fine-tuned generators and adapters          (sd-*)
      extractors/<name>.keras     pretrained extractors                       (automl pretrain)
      datasets/<id>/              dataset.json + data/ or data.npz            (uploads: automl.service.uploads)
      jobs/<job-id>/              job.json + events.jsonl                     (automl serve, automl worker)
      queue.db                    the embedded job queue (Huey, SQLite)       (automl serve, automl worker)

Root: ``--store DIR``, else ``$AUTOML_STORE``, else ``./store``. ``automl store check`` verifies it
(``automl.store_check``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from automl._files import atomic_write_text, store_root
from automl.cache import EmbeddingCache
from automl.errors import StoreError

STORE_VERSION = 1


class Store:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = store_root(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {self.root} is a file; pass --store with a folder.")

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def comparisons_dir(self) -> Path:
        return self.root / "comparisons"

    @property
    def reviews_dir(self) -> Path:
        return self.root / "reviews"

    @property
    def generated_dir(self) -> Path:
        return self.root / "generated"

    @property
    def generators_dir(self) -> Path:
        return self.root / "generators"

    @property
    def extractors_dir(self) -> Path:
        return self.root / "extractors"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{(self.root / 'optuna.db').resolve()}"

    def embedding_cache(self, key) -> EmbeddingCache:
        """The cache folder for an ``ExtractorKey``. Reading writes nothing; the first write stamps
        the store with its format version."""
        self.check()
        return EmbeddingCache(self.embeddings_dir / key.slug(), key.to_dict(), on_first_write=self.ensure)

    def check(self) -> None:
        """Refuse a store written in another format; a store not yet created is fine."""
        stamp = self.root / "store.json"
        if stamp.exists():
            try:
                version = json.loads(stamp.read_text()).get("version")
            except ValueError as exc:
                raise StoreError(f"{stamp} is not valid JSON ({exc}); restore it or use another --store.") from exc
            if version != STORE_VERSION:
                raise StoreError(
                    f"{self.root} is a store of format {version}; this automl reads format "
                    f"{STORE_VERSION}. Use another --store folder or a matching automl version."
                )

    def ensure(self) -> None:
        """Create the store (stamped with its format version) if it does not exist yet."""
        self.check()
        stamp = self.root / "store.json"
        if stamp.exists():
            return
        try:
            atomic_write_text(stamp, json.dumps({"version": STORE_VERSION}))
        except OSError as exc:
            raise StoreError(f"cannot write to store {self.root}: {exc}. Pass --store with a writable folder.") from exc
