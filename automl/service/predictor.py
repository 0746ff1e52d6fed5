"""Warm models for ``POST /models/{run_id}/predict``: a run's extractor and head loaded once and kept
between requests (the ``MAX_WARM`` most recently used), so a request pays for decoding and one
forward pass, not for building a network.

Images of a request are decoded as the loader decodes any file (size and pixel limits included) and
never enter the embedding cache: predictions leave nothing in the store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

MAX_WARM = 4


class WarmModel:
    def __init__(self, run_dir: Path):
        from automl.runs import ModelBundle

        self.run_dir = Path(run_dir)
        self.bundle = ModelBundle.load(self.run_dir)
        self.key = self.bundle.extractor_key()
        self.extractor = None
        self.lock = threading.Lock()  # one forward pass at a time per model

    def _built(self):
        if self.extractor is None:
            self.extractor = self.bundle.build_extractor()
        return self.extractor

    def predict(self, items) -> np.ndarray:
        """Calibrated probabilities, one row per item (``automl.data.Item``), in order."""
        from automl.embed import default_batch_size, embed_batch
        from automl.evaluate import full_proba

        with self.lock:
            extractor = self._built()
            size = extractor.image_size
            batch = default_batch_size(size)
            rows = [embed_batch(extractor, np.stack([it.load(size) for it in items[start:start + batch]]), batch)
                    for start in range(0, len(items), batch)]
            embeddings = np.concatenate(rows).astype(np.float32, copy=False)
        return full_proba(self.bundle.head, embeddings, len(self.bundle.classes))


class WarmModels:
    """The most recently used ``capacity`` models, by run folder."""

    def __init__(self, capacity: int = MAX_WARM):
        self.capacity = capacity
        self._models: OrderedDict[Path, WarmModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: Path) -> WarmModel:
        run_dir = Path(run_dir).resolve()
        with self._lock:
            model = self._models.pop(run_dir, None)
            if model is None:
                model = WarmModel(run_dir)
            self._models[run_dir] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return model

    def __len__(self) -> int:
        return len(self._models)
