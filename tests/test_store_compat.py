"""A store written by automl 0.1.0 keeps working: the embedding cache's keys and folder names are
the ones 0.1.0 wrote (recorded below from that version), so nothing is recomputed after an upgrade."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

import numpy as np
import pytest

from automl.data import load_dataset
from automl.extractors import extractor_key
from automl.pipeline import embed_dataset
from automl.store import Store
from conftest import class_folders

TFLITE = "models/mobilenet-v1-embedding/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"

# Recorded with automl 0.1.0 (commit 17b1e3f): ExtractorKey.to_dict() and slug() for each kind of weights.
GOLDEN = {
    "imagenet": (
        {"backend": "tensorflow", "decode_version": 1, "extractor": "inception-v3", "image_size": 299,
         "precision": "float32", "weights": "imagenet:inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"},
        "inception-v3-299px-float32-imagenet-010b588d4ae3"),
    "random": (
        {"backend": "tensorflow", "decode_version": 1, "extractor": "xception", "image_size": 75,
         "precision": "bfloat16", "weights": "random:seed=3:keras=3.15.1"},
        "xception-75px-bfloat16-random-fad25880ad94"),
    "weights-file": (
        {"backend": "torch", "decode_version": 1, "extractor": "inception-resnet-v2", "image_size": 150,
         "precision": "float16", "weights": "file:c4859e5b0a58be484d0d664179cbaf97"},
        "inception-resnet-v2-150px-float16-file-87dc773d6307"),
    "model-file": (
        {"backend": "tflite", "decode_version": 1,
         "extractor": "file:mobilenet_v1_1.0_224_quant_embedding_extractor.tflite?scale=0.5&mean=1.0:2.0:3.0&bgr=true",
         "image_size": 0, "precision": "native", "weights": "file:0efdcf931c0a2f5577817a9117b7dbc1"},
        "file-mobilenet_v1_1.0_224_quant_embedding_extractor.tflite-scale-0.5-mean-1.0-2.-native-native-file-d93fc8b88a2b"),
}


def _keys(tmp_path, shared) -> dict:
    weights = tmp_path / "my.weights.h5"
    weights.write_bytes(b"automl weights v1\n")
    return {
        "imagenet": extractor_key("inception-v3", weights="imagenet", image_size=299, precision="float32",
                                  backend="tensorflow"),
        "random": extractor_key("Xception", weights="none", image_size=75, precision="bfloat16", seed=3,
                                backend="tensorflow"),
        "weights-file": extractor_key("inception_resnet_v2", weights=str(weights), image_size=150,
                                      precision="float16", backend="torch"),
        "model-file": extractor_key(f"file:{shared / TFLITE}?scale=0.5&mean=1:2:3&bgr=true", backend="tensorflow"),
    }


@pytest.mark.parametrize("kind", list(GOLDEN))
def test_cache_keys_are_those_of_0_1_0(tmp_path, shared, kind):
    key = _keys(tmp_path, shared)[kind]
    expected, slug = GOLDEN[kind]
    if kind == "random":
        # Random weights name the Keras version that initialised them: another version, another key.
        version = metadata.version("keras")
        expected = {**expected, "weights": f"random:seed=3:keras={version}"}
        if version != "3.15.1":
            slug = slug.rsplit("-", 1)[0]
            assert key.slug().startswith(slug + "-")
            slug = key.slug()
    assert key.to_dict() == expected
    assert key.slug() == slug


def test_embeddings_written_by_0_1_0_are_read_not_recomputed(tmp_path, monkeypatch):
    # A store exactly as 0.1.0 laid it out: the stamp, one key folder named by its slug, one shard.
    data = class_folders(tmp_path / "data", {"a": 3, "b": 3})
    files = sorted(data.rglob("*.png"))
    fingerprints = [hashlib.blake2b(f.read_bytes(), digest_size=16).hexdigest() for f in files]
    vectors = np.random.default_rng(0).normal(size=(len(files), 2048)).astype(np.float32)
    root = tmp_path / "store"
    key, slug = GOLDEN["imagenet"]
    folder = root / "embeddings" / slug
    folder.mkdir(parents=True)
    (root / "store.json").write_text(json.dumps({"version": 1}))
    (folder / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True))
    np.savez(folder / "shard-0123456789abcdef0123456789abcdef.npz",
             fingerprints=np.array(fingerprints, dtype="S32"), embeddings=vectors)

    import automl.pipeline

    def no_build(*args, **kwargs):
        raise AssertionError("an extractor was built: the cache written by 0.1.0 was not used")

    monkeypatch.setattr(automl.pipeline, "build_extractor", no_build)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    dataset = load_dataset(data)
    result, = embed_dataset(dataset, Store(root), ["inception-v3"], weights="imagenet", image_size=299,
                            precision="float32", progress=False)
    assert (result.images, result.cache_hits, result.computed) == (6, 6, 0)
    order = [fingerprints.index(it.fingerprint) for it in dataset.items]
    np.testing.assert_array_equal(result.embeddings, vectors[order])
    assert sorted(p.name for p in (root / "embeddings").iterdir()) == [slug]  # no second folder
