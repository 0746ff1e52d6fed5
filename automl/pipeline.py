"""The one orchestrator: wires datasets, extractors, the store and (later) search and evaluation.

Components never import this module; it imports them.
"""

from __future__ import annotations

import os
from typing import Sequence

from automl.data import Dataset
from automl.embed import EmbedResult, embed_items
from automl.extract import DEFAULT_IMAGE_SIZE, EXTRACTORS, build_extractor, extractor_key
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
    names = [EXTRACTORS.get(n).name for n in (extractors or EXTRACTORS.names())]
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
