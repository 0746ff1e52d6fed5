"""The embedding cache: reuse, incremental adds, resumption after a kill, concurrent writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import automl.pipeline as pipeline
from automl.cache import EmbeddingCache
from automl.data import load_dataset
from automl.embed import embed_items
from automl.errors import DataError, StoreError
from automl.extractors import Extractor, ExtractorKey
from automl.store import Store
from conftest import ROOT, class_folders, write_image

KEY = ExtractorKey("fake", "random:seed=0", 16, "float32", "none")


class FakeModel:
    """Mean colour per image: cheap, deterministic, and tells images apart."""

    def __init__(self, delay=0.0, interrupt_after=None, hang_after=None):
        self.delay, self.interrupt_after, self.hang_after, self.batches = delay, interrupt_after, hang_after, 0

    def predict_on_batch(self, x):
        self.batches += 1
        if self.interrupt_after is not None and self.batches > self.interrupt_after:
            raise KeyboardInterrupt
        if self.hang_after is not None and self.batches > self.hang_after:
            time.sleep(600)  # stands still until killed
        time.sleep(self.delay)
        return x.mean(axis=(1, 2))


def fake_builder(counter, key=KEY, **model_kwargs):
    def build():
        counter["builds"] = counter.get("builds", 0) + 1
        extractor = Extractor(key, 3, FakeModel(**model_kwargs), preprocess=lambda x: x)
        counter["extractor"] = extractor
        return extractor
    return build


def expected(items):
    return np.stack([it.load(16).astype(np.float32).mean(axis=(0, 1)) for it in items])


def _embed(items, store, counter, **kwargs):
    build_kwargs = {k: kwargs.pop(k) for k in ("delay", "interrupt_after", "hang_after", "key") if k in kwargs}
    return embed_items(items, build_kwargs.get("key", KEY), store.embedding_cache,
                       fake_builder(counter, **build_kwargs), progress=False, **kwargs)


def test_second_embed_builds_no_model_and_adding_images_embeds_only_those(tmp_path):
    data = class_folders(tmp_path / "data", {"a": 7, "b": 6})
    store = Store(tmp_path / "store")
    items = load_dataset(data).items
    counter = {}
    first = _embed(items, store, counter, batch_size=4)
    assert (first.computed, first.cache_hits, counter["builds"]) == (13, 0, 1)
    np.testing.assert_allclose(first.embeddings, expected(items), rtol=1e-6)

    counter.clear()
    second = _embed(items, store, counter, batch_size=4)
    assert counter.get("builds", 0) == 0  # no model, so no inference
    assert (second.computed, second.cache_hits) == (0, 13)
    np.testing.assert_array_equal(second.embeddings, first.embeddings)

    for i in range(3):
        write_image(data / "b" / f"new_{i}.png", seed=500 + i)
    grown = load_dataset(data).items
    third = _embed(grown, store, counter, batch_size=4)
    # One warm-up call that traces the graph, one batch of the 3 new images.
    assert (third.computed, third.cache_hits, counter["extractor"].calls) == (3, 13, 2)
    np.testing.assert_allclose(third.embeddings, expected(grown), rtol=1e-6)


def test_padded_batch_shapes():
    from automl.embed import padded_size

    assert [padded_size(n, 16) for n in (1, 2, 3, 5, 9, 16)] == [1, 2, 4, 8, 16, 16]
    assert padded_size(40, 64) == 64 and padded_size(17, 64) == 32


def test_identical_images_are_embedded_once(tmp_path):
    data = class_folders(tmp_path / "data", {"a": 2, "b": 2})
    (data / "b" / "copy.png").write_bytes((data / "a" / "img_000.png").read_bytes())
    result = _embed(load_dataset(data).items, Store(tmp_path / "s"), {})
    assert (result.images, result.computed, len(result.embeddings)) == (5, 4, 5)


def test_ctrl_c_keeps_finished_batches(tmp_path):
    items = load_dataset(class_folders(tmp_path / "data", {"a": 6, "b": 6})).items
    store = Store(tmp_path / "s")
    with pytest.raises(KeyboardInterrupt):
        # Ctrl-C after the warm-up call and three batches of two.
        _embed(items, store, {}, batch_size=2, flush_every=100, interrupt_after=4)
    resumed = _embed(items, store, {}, batch_size=2)
    assert (resumed.cache_hits, resumed.computed) == (6, 6)
    np.testing.assert_allclose(resumed.embeddings, expected(items), rtol=1e-6)


def test_killed_embed_resumes(tmp_path):
    """SIGKILL a separate process mid-embed; the next run reuses every shard it finished."""
    data = class_folders(tmp_path / "data", {"a": 15, "b": 15})
    store_dir = tmp_path / "store"
    script = textwrap.dedent(f"""
        import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        from test_embed import _embed
        from automl.data import load_dataset
        from automl.store import Store
        _embed(load_dataset({str(data)!r}).items, Store({str(store_dir)!r}), {{}},
               batch_size=2, flush_every=2, delay=0.3)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.time() + 120
    while len(list(store_dir.rglob("shard-*.npz"))) < 2:
        assert proc.poll() is None, "the embedding process ended before it could be killed"
        assert time.time() < deadline, "no shard appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    items = load_dataset(data).items
    counter = {}
    resumed = _embed(items, Store(store_dir), counter, batch_size=4)
    assert 4 <= resumed.cache_hits < 30
    assert resumed.computed == 30 - resumed.cache_hits
    np.testing.assert_allclose(resumed.embeddings, expected(items), rtol=1e-6)
    assert not list(store_dir.rglob(".tmp-*")), "the killed writer's temporaries are cleaned up"


def test_two_processes_filling_one_store(tmp_path):
    data = class_folders(tmp_path / "data", {"a": 10, "b": 10})
    store_dir = tmp_path / "store"
    script = textwrap.dedent(f"""
        import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        from test_embed import _embed
        from automl.data import load_dataset
        from automl.store import Store
        r = _embed(load_dataset({str(data)!r}).items, Store({str(store_dir)!r}), {{}},
                   batch_size=2, flush_every=2, delay=0.05)
        print(r.computed)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    items = load_dataset(data).items
    counter = {}
    again = _embed(items, Store(store_dir), counter)
    assert (again.cache_hits, again.computed, counter.get("builds", 0)) == (20, 0, 0)
    np.testing.assert_allclose(again.embeddings, expected(items), rtol=1e-6)


def test_bad_file_at_decode_time(tmp_path):
    data = class_folders(tmp_path / "data", {"a": 3, "b": 3}, size=(64, 64), suffix=".jpg")
    broken = data / "b" / "img_002.jpg"
    raw = broken.read_bytes()
    broken.write_bytes(raw[: len(raw) // 2])
    items = load_dataset(data).items
    store = Store(tmp_path / "s")
    with pytest.raises(DataError, match="img_002.jpg"):
        _embed(items, store, {}, batch_size=1)
    result = _embed(items, store, {}, batch_size=1, skip_bad=True)
    assert [b.path for b in result.bad_files] == [str(broken)]
    assert len(result.kept) == 5 and str(broken) not in [items[i].path for i in result.kept]
    assert result.cache_hits == 5  # finished before the failure and kept


def test_built_model_with_another_key_uses_its_own_cache(tmp_path):
    items = load_dataset(class_folders(tmp_path / "data", {"a": 2, "b": 2})).items
    store = Store(tmp_path / "s")
    actual = ExtractorKey("fake", "random:seed=0", 16, "bfloat16", "none")
    result = embed_items(items, KEY, store.embedding_cache, fake_builder({}, key=actual), progress=False)
    assert result.key == actual
    assert store.embedding_cache(actual).lookup(it.fingerprint for it in items).keys() == \
        {it.fingerprint for it in items}
    assert not store.embedding_cache(KEY).lookup(it.fingerprint for it in items)


def test_unreadable_shard_is_recomputed_with_a_warning(tmp_path):
    items = load_dataset(class_folders(tmp_path / "data", {"a": 2, "b": 2})).items
    store = Store(tmp_path / "s")
    _embed(items, store, {})
    shard, = store.embedding_cache(KEY).folder.glob("shard-*.npz")
    shard.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring unreadable embedding shard"):
        result = _embed(items, store, {})
    assert result.computed == 4


def test_cache_folder_key_mismatch_is_refused(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", {"a": 1})
    cache.add(["0" * 32], np.zeros((1, 2)))
    with pytest.raises(StoreError, match="edited by hand"):
        EmbeddingCache(tmp_path / "c", {"a": 2}).add(["1" * 32], np.zeros((1, 2)))


def test_store_of_another_format_is_refused(tmp_path):
    (tmp_path / "store.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(StoreError, match="format 99"):
        Store(tmp_path).embedding_cache(KEY)


def test_pipeline_embeds_every_split_with_a_real_extractor(tmp_path, monkeypatch):
    data = tmp_path / "data"
    class_folders(data / "train", {"a": 3, "b": 3}, seed=1)
    class_folders(data / "test", {"a": 2, "b": 2}, seed=2)
    builds = []
    real_build = pipeline.build_extractor
    monkeypatch.setattr(pipeline, "build_extractor", lambda *a, **k: builds.append(a) or real_build(*a, **k))
    ds = load_dataset(data)
    store = Store(tmp_path / "s")
    kwargs = dict(weights="none", image_size=75, precision="float32", progress=False)
    first, = pipeline.embed_dataset(ds, store, ["inception-v3"], **kwargs)
    assert first.embeddings.shape == (10, 2048) and first.computed == 10 and len(builds) == 1
    second, = pipeline.embed_dataset(ds, store, ["inception-v3"], **kwargs)
    assert second.cache_hits == 10 and len(builds) == 1
    np.testing.assert_array_equal(first.embeddings, second.embeddings)


def test_temporaries_of_dead_writers_are_removed(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", {"a": 1})
    cache.add(["0" * 32], np.zeros((1, 2)))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / "c" / f".tmp-{dead}-abc-shard-x.npz"
    live = tmp_path / "c" / f".tmp-{os.getpid()}-abc-shard-y.npz"
    stale.write_bytes(b"half")
    live.write_bytes(b"in progress")
    cache.add(["1" * 32], np.zeros((1, 2)))
    assert not stale.exists() and live.exists()
    assert len(cache) == 2


# --- a store that heals: damaged shards, the flush policy, compaction --------------------------------


def _wrong_keys(path):
    np.savez(path, fps=np.array(["0" * 32], dtype="S32"), embeddings=np.zeros((1, 3), np.float32))


def _wrong_dtype(path):
    np.savez(path, fingerprints=np.array(["0" * 32], dtype="S32"), embeddings=np.zeros((1, 3), np.float64))


def _row_mismatch(path):
    np.savez(path, fingerprints=np.array(["0" * 32] * 2, dtype="S32"), embeddings=np.zeros((1, 3), np.float32))


def _wrong_dim(path):
    # Readable on its own; only the other shards (3 dimensions, more rows) show it is wrong.
    np.savez(path, fingerprints=np.array(["0" * 32], dtype="S32"), embeddings=np.zeros((1, 5), np.float32))


def _lying_header(path):
    # A header that claims a billion rows (the data holds one) must not make the reader allocate them.
    import io
    import zipfile

    def member(array, shape):
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": array.dtype.str, "fortran_order": False,
                                                      "shape": shape})
        return buffer.getvalue() + array.tobytes()

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fingerprints.npy", member(np.array(["0" * 32], dtype="S32"), (1,)))
        archive.writestr("embeddings.npy", member(np.zeros((1, 3), np.float32), (10**9, 3)))


DAMAGE = {
    "zero-byte": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(b"garbage"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "flipped-byte": lambda p: p.write_bytes(p.read_bytes()[:150] + bytes([p.read_bytes()[150] ^ 0xFF])
                                            + p.read_bytes()[151:]),
    "npy-not-npz": lambda p: np.save(open(p, "wb"), np.zeros(3)),
    "wrong-keys": _wrong_keys,
    "wrong-dtype": _wrong_dtype,
    "row-mismatch": _row_mismatch,
    "lying-header": _lying_header,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_shard_is_moved_aside_and_its_rows_recomputed(tmp_path, damage):
    items = load_dataset(class_folders(tmp_path / "data", {"a": 3, "b": 3})).items
    store = Store(tmp_path / "s")
    _embed(items[:2], store, {})
    _embed(items[2:], store, {})
    cache = store.embedding_cache(KEY)
    first, second = sorted(cache.folder.glob("shard-*.npz"), key=lambda p: p.stat().st_mtime_ns)
    DAMAGE[damage](first)
    with pytest.warns(UserWarning, match="ignoring unreadable embedding shard") as caught:
        result = _embed(items, store, {})
    message = " ".join(str(w.message) for w in caught)
    assert str(first) in message and ".damaged" in message
    assert (result.computed, result.cache_hits) == (2, 4)
    np.testing.assert_allclose(result.embeddings, expected(items), rtol=1e-6)
    assert not first.exists() and (cache.folder / ".damaged" / first.name).is_file()  # kept, out of the way
    assert second.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # healed: nothing left to warn about
        assert len(cache) == 6
        assert _embed(items, store, {}).cache_hits == 6


def test_a_shard_of_another_dimension_is_moved_aside(tmp_path):
    items = load_dataset(class_folders(tmp_path / "data", {"a": 3, "b": 3})).items
    store = Store(tmp_path / "s")
    _embed(items, store, {})
    cache = store.embedding_cache(KEY)
    odd = cache.folder / "shard-odd.npz"
    _wrong_dim(odd)
    with pytest.warns(UserWarning, match=r"shard-odd.npz.*5 dimensions.*have 3"):
        found = cache.lookup(it.fingerprint for it in items)
    assert len(found) == 6 and not odd.exists() and (cache.folder / ".damaged" / odd.name).exists()


def test_len_skips_and_moves_a_damaged_shard(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", {"a": 1})
    cache.add(["0" * 32, "1" * 32], np.zeros((2, 2)))
    cache.add(["2" * 32], np.zeros((1, 2)))
    broken = cache.shards()[0]
    broken.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.warns(UserWarning, match=str(broken.name)):
        assert len(cache) in (1, 2)
    assert not broken.exists() and len(cache.shards()) == 1


def test_a_damaged_shard_that_cannot_be_moved_is_skipped_all_the_same(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "c", {"a": 1})
    cache.add(["0" * 32], np.zeros((1, 2)))
    cache.add(["1" * 32], np.ones((1, 2)))
    broken = cache.shards()[0]
    broken.write_bytes(b"garbage")

    def read_only(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr("automl.cache.os.replace", read_only)  # a read-only store
    with pytest.warns(UserWarning, match="could not move it aside.*Permission denied"):
        assert len(cache.lookup(["0" * 32, "1" * 32])) == 1
    assert broken.exists()


def test_a_shard_every_flush_every_images_or_flush_seconds(tmp_path):
    items = load_dataset(class_folders(tmp_path / "data", {"a": 5, "b": 5})).items
    store = Store(tmp_path / "s")
    _embed(items, store, {}, batch_size=2, flush_every=4)  # 4 + 4 + 2 (the rest, at the end)
    assert sorted(len(np.load(s)["fingerprints"]) for s in store.embedding_cache(KEY).shards()) == [2, 4, 4]
    other = Store(tmp_path / "t")
    _embed(items, other, {}, batch_size=2, flush_every=100, flush_seconds=0)  # every batch is overdue
    assert len(other.embedding_cache(KEY).shards()) == 5


def test_many_small_shards_are_merged_into_one(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", {"a": 1}, compact_at=4)
    rows = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    fps = [f"{i:032x}" for i in range(6)]
    for i in range(4):
        cache.add(fps[i:i + 1], rows[i:i + 1])
    assert len(cache.shards()) == 4
    cache.add(fps[3:6], rows[3:6])  # the fifth shard: over the limit; fps[3] is in two shards
    merged, = cache.shards()
    assert len(cache) == 6  # each fingerprint once
    found = cache.lookup(fps)
    np.testing.assert_array_equal(np.stack([found[fp] for fp in fps]), rows)
    assert not list(cache.folder.glob(".tmp-*"))


def test_default_flush_keeps_the_shards_of_a_killed_150_image_embed(tmp_path):
    """The default policy writes a shard per 64 images: SIGKILL at 80 of 150 keeps the first 64."""
    data = class_folders(tmp_path / "data", {"a": 75, "b": 75}, size=(8, 8))
    store_dir = tmp_path / "store"
    script = textwrap.dedent(f"""
        import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        from test_embed import _embed
        from automl.data import load_dataset
        from automl.store import Store
        # the warm-up call, then 10 batches of 8; the 11th stands still until the kill
        _embed(load_dataset({str(data)!r}).items, Store({str(store_dir)!r}), {{}}, batch_size=8, hang_after=11)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not list(store_dir.rglob("shard-*.npz")):
            assert proc.poll() is None, "the embedding process ended before it could be killed"
            assert time.time() < deadline, "no shard was written while 80 of 150 images were embedded"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    items = load_dataset(data).items
    resumed = _embed(items, Store(store_dir), {}, batch_size=16)
    assert (resumed.cache_hits, resumed.computed) == (64, 86)
    np.testing.assert_allclose(resumed.embeddings, expected(items), rtol=1e-6)


def test_compaction_merges_in_bounded_groups(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "c", {"a": 1}, compact_at=10**6)
    rows = np.random.default_rng(1).normal(size=(9, 1024)).astype(np.float32)
    fps = [f"{i:032x}" for i in range(9)]
    for i in range(9):
        cache.add(fps[i:i + 1], rows[i:i + 1])
    one = cache.shards()[0].stat().st_size
    monkeypatch.setattr("automl.cache.COMPACT_BYTES", 3 * one)  # a group closes at three shards' bytes
    merged = cache.compact()
    assert len(merged) == 3 and sorted(cache.shards()) == sorted(merged)
    assert cache.compact() == []  # merged shards are no longer small
    found = cache.lookup(fps)
    np.testing.assert_array_equal(np.stack([found[fp] for fp in fps]), rows)


def test_decode_ahead_stays_within_the_decode_budget(tmp_path, monkeypatch):
    import automl.images as images

    data = class_folders(tmp_path / "data", {"a": 6, "b": 6}, size=(400, 300))
    items = load_dataset(data).items
    one = images.decode_cost(400, 300, "RGB")
    budget = images.MemoryBudget(one * 2)  # two images at once, though four threads decode
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    result = _embed(items, Store(tmp_path / "s"), {}, batch_size=4, workers=4)
    assert one <= budget.peak <= budget.limit and budget.used == 0  # every decode took its share
    assert np.allclose(result.embeddings, expected(items), atol=1e-5)
