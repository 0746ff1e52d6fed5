"""Embed items with one extractor through the cache: look up first, compute only what is missing.

Decoding runs in a thread pool a few batches ahead of the model (PIL and NumPy release the GIL), so
the model is not starved; each finished chunk goes to the cache at once, so a killed embed resumes.
Memory is bounded by bytes, not only by the pool's size: decodes in flight share
``automl.images.DECODE_BUDGET``, and what waits for the model is already resized to the model's input.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from automl import progress as events
from automl.cache import EmbeddingCache
from automl.data import BadFile, Item
from automl.errors import DataError
from automl.extractors import Extractor, ExtractorKey

# A shard is written every FLUSH_EVERY images or FLUSH_SECONDS, whichever comes first: the most a killed
# embed loses. Small shards cost little (the cache merges them, automl.cache.COMPACT_AT).
FLUSH_EVERY = 64
FLUSH_SECONDS = 30.0


def default_batch_size(image_size: int) -> int:
    """16 at 299 px: as fast as 32 on CPU, and embedding 2,000 images with the largest extractor
    peaks at 1.6 GiB RSS (docs/benchmarks.md); smaller images get proportionally larger batches."""
    return int(max(1, min(64, round(16 * (299 / image_size) ** 2))))


@dataclass
class EmbedResult:
    key: ExtractorKey
    embeddings: np.ndarray  # (len(kept), dim) float32, in item order
    kept: list[int]  # indices into the items given; all of them unless bad files were skipped
    images: int
    cache_hits: int
    computed: int
    seconds: float  # wall time of the computation, after the model was built and warmed up
    build_seconds: float = 0.0  # building the model and tracing its graph (one warm-up batch)
    bad_files: list[BadFile] = field(default_factory=list)

    @property
    def images_per_s(self) -> float | None:
        return self.computed / self.seconds if self.computed and self.seconds > 0 else None


def embed_items(
    items: Sequence[Item],
    key: ExtractorKey,
    open_cache: Callable[[ExtractorKey], EmbeddingCache],
    build: Callable[[], Extractor],
    *,
    batch_size: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    workers: int = 4,
    flush_every: int = FLUSH_EVERY,
    flush_seconds: float = FLUSH_SECONDS,
) -> EmbedResult:
    """Embeddings for ``items``: cached rows are read, missing ones computed with ``build()``.

    ``key`` is the predicted identity of what ``build`` makes; the model is built only when some
    image is missing from the cache. If the built model turns out different (say, a GPU driver is
    present but the backend cannot use it, so the precision differs), its own key is used.
    """
    cache = open_cache(key)
    found = cache.lookup(it.fingerprint for it in items)
    todo, hits = _plan(items, found)
    bad: list[BadFile] = []
    seconds = build_seconds = 0.0
    computed = 0
    if todo:
        bar = events.bar(total=len(todo), desc=f"{key.extractor}: building model", unit="img", disable=not progress,
                         leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            extractor = build()
            if extractor.key != key:
                key, cache = extractor.key, open_cache(extractor.key)
                found = cache.lookup(it.fingerprint for it in items)
                todo, hits = _plan(items, found)
                bar.reset(total=len(todo))
            size = extractor.image_size
            batch_size = batch_size or default_batch_size(size)
            # The first call of a shape traces the graph (seconds for these models); doing it here
            # keeps images/s the steady-state speed, which is what a user plans with.
            first = padded_size(min(len(todo), batch_size), batch_size)
            extractor.predict(extractor.preprocess(np.zeros((first, size, size, 3), np.uint8)))
            build_seconds = time.perf_counter() - t0
            bar.set_description(f"embed {key.extractor} ({key.precision}, {size} px)")
            t0 = time.perf_counter()
            computed, bad = _compute(todo, extractor, cache, found, batch_size, skip_bad, bar, workers,
                                     flush_every, flush_seconds)
            seconds = time.perf_counter() - t0
        finally:
            bar.close()
    # Bad files never reach ``found`` (identical bytes fail identically), so they drop out here.
    kept = [i for i, it in enumerate(items) if it.fingerprint in found]
    dim = len(next(iter(found.values()))) if found else 0
    matrix = np.stack([found[items[i].fingerprint] for i in kept]) if kept else np.zeros((0, dim), np.float32)
    return EmbedResult(key, matrix.astype(np.float32, copy=False), kept, len(items), hits, computed, seconds,
                       build_seconds, bad)


def padded_size(n: int, batch_size: int) -> int:
    """The batch shape ``n`` images are run at: the next power of two, at most ``batch_size``.

    Every new shape costs a graph trace, every padded row wasted compute; powers of two bound both
    (at most log2(batch) shapes, less than 2x waste on one short final batch).
    """
    return min(batch_size, 1 << max(0, n - 1).bit_length())


def embed_batch(extractor: Extractor, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """The embeddings of one batch of decoded images (at most ``batch_size``), run at its padded shape
    (``padded_size``)."""
    x = extractor.preprocess(pixels)
    shape = padded_size(len(x), batch_size)
    if len(x) < shape:
        x = np.concatenate([x, np.zeros((shape - len(x),) + x.shape[1:], x.dtype)])
    return extractor.predict(x)[: len(pixels)]


def _plan(items: Sequence[Item], found: dict) -> tuple[list[Item], int]:
    """The items to compute (one per missing fingerprint) and how many items the cache answers."""
    todo: dict[str, Item] = {}
    hits = 0
    for it in items:
        if it.fingerprint in found:
            hits += 1
        elif it.fingerprint not in todo:
            todo[it.fingerprint] = it
    return list(todo.values()), hits


def _compute(todo: list[Item], extractor: Extractor, cache: EmbeddingCache, found: dict, batch_size: int,
             skip_bad: bool, bar: events.Bar, workers: int, flush_every: int,
             flush_seconds: float) -> tuple[int, list[BadFile]]:
    size = extractor.image_size
    bad: list[BadFile] = []
    pending_fps: list[str] = []
    pending_rows: list[np.ndarray] = []
    computed = 0
    flushed = time.monotonic()

    def flush():
        nonlocal flushed
        if pending_fps:
            cache.add(pending_fps, np.concatenate(pending_rows))
            pending_fps.clear()
            pending_rows.clear()
        flushed = time.monotonic()

    def load(it: Item) -> np.ndarray | BadFile:
        try:
            return it.load(size)
        except DataError as exc:
            if not skip_bad:
                raise
            return BadFile(it.path, str(exc))

    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            queue: deque[tuple[list[Item], list[Future]]] = deque()
            ahead = 2  # batches decoded ahead of the model
            upcoming = iter(batches)
            while True:
                while len(queue) <= ahead and (batch := next(upcoming, None)) is not None:
                    queue.append((batch, [pool.submit(load, it) for it in batch]))
                if not queue:
                    break
                batch_items, futures = queue.popleft()
                decoded = [f.result() for f in futures]
                ok = [(it, arr) for it, arr in zip(batch_items, decoded) if not isinstance(arr, BadFile)]
                bad.extend(arr for arr in decoded if isinstance(arr, BadFile))
                if ok:
                    rows = embed_batch(extractor, np.stack([arr for _, arr in ok]), batch_size)
                    for (it, _), row in zip(ok, rows):
                        found[it.fingerprint] = row
                    pending_fps.extend(it.fingerprint for it, _ in ok)
                    pending_rows.append(rows)
                    computed += len(ok)
                    if len(pending_fps) >= flush_every or time.monotonic() - flushed >= flush_seconds:
                        flush()
                bar.update(len(batch_items))
    finally:
        # Whatever finished is kept, also when a bad file or Ctrl-C stops the run.
        flush()
    return computed, bad
