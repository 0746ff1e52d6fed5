from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from automl.errors import ConfigError, WeightsUnavailableError
from automl._files import file_digest
from automl.extractors import (EXTRACTORS, Weights, build_extractor, extractor_key, keras_backend, resolve_precision)
from automl.runs import ModelBundle
from conftest import ROOT, class_folders

EXPECTED_DIM = {"inception-resnet-v2": 1536, "xception": 2048, "inception-v3": 2048}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 75, 75, 3), dtype=np.uint8)


def test_registry_holds_the_three_backbones():
    assert EXTRACTORS.names() == sorted(EXPECTED_DIM)


@pytest.mark.parametrize("name", EXTRACTORS.names())
def test_extractor_random_weights_dimension_and_determinism(name, images):
    spec = EXTRACTORS.get(name)
    size = 75  # every extractor's minimum or above (xception's is 71)
    first = build_extractor(name, weights="none", image_size=size, precision="float32", seed=3)
    out = first(images[:, :size, :size])
    assert out.shape == (3, EXPECTED_DIM[name]) == (3, spec.dim)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out).sum() > 0
    again = build_extractor(name, weights="none", image_size=size, precision="float32", seed=3)
    np.testing.assert_array_equal(again(images[:, :size, :size]), out)
    other = build_extractor(name, weights="none", image_size=size, precision="float32", seed=4)
    assert not np.allclose(other(images[:, :size, :size]), out)
    assert first.calls == 1


def test_minimum_size_is_enforced():
    spec = EXTRACTORS.get("xception")
    assert spec.min_size == 71
    build_extractor("xception", weights="none", image_size=71, precision="float32")
    with pytest.raises(ConfigError, match="xception must be an integer >= 71"):
        extractor_key("xception", weights="none", image_size=70)
    with pytest.raises(ConfigError, match=">= 75"):
        extractor_key("inception-v3", weights="none", image_size=74)


def test_unknown_extractor_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown extractor 'resnet50'; valid names: inception-resnet-v2, "
                                          "inception-v3, xception"):
        extractor_key("resnet50")
    assert extractor_key("Inception_V3", weights="none", image_size=75).extractor == "inception-v3"


def test_bfloat16_matches_float32_closely(images):
    f32 = build_extractor("inception-v3", weights="none", image_size=75, precision="float32", seed=0)
    bf16 = build_extractor("inception-v3", weights="none", image_size=75, precision="bfloat16", seed=0)
    assert bf16.key.precision == "bfloat16" and bf16.key != f32.key
    a, b = f32(images), bf16(images)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98


def test_weights_from_a_local_file(tmp_path, images):
    source = build_extractor("inception-v3", weights="none", image_size=75, precision="float32", seed=7)
    path = tmp_path / "mine.weights.h5"
    source.model.save_weights(path)
    loaded = build_extractor("inception-v3", weights=str(path), image_size=75, precision="float32", seed=0)
    np.testing.assert_allclose(loaded(images), source(images), rtol=1e-5, atol=1e-5)
    assert loaded.key.weights.startswith("file:")
    # The identity is the content: another file with other weights gets another key.
    build_extractor("inception-v3", weights="none", image_size=75, precision="float32", seed=8) \
        .model.save_weights(tmp_path / "other.weights.h5")
    assert extractor_key("inception-v3", weights=tmp_path / "other.weights.h5", image_size=75) != \
        extractor_key("inception-v3", weights=path, image_size=75)


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_file_of_another_model_is_refused(tmp_path):
    path = tmp_path / "x.weights.h5"
    build_extractor("xception", weights="none", image_size=75, precision="float32").model.save_weights(path)
    with pytest.raises(WeightsUnavailableError, match=r"cannot load weights file .*x\.weights\.h5 into inception-v3"):
        build_extractor("inception-v3", weights=str(path), image_size=75)


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=r"weights file not found: .*nothere\.h5.*--weights none"):
        extractor_key("inception-v3", weights=tmp_path / "nothere.h5")


def test_weights_are_parsed_once_and_keep_their_forms(tmp_path):
    from importlib import metadata

    for text in ("none", "None", " random ", None):
        assert Weights.parse(text) == Weights("random") and str(Weights.parse(text)) == "none"
    assert Weights.parse("ImageNet") == Weights("imagenet") and str(Weights("imagenet")) == "imagenet"
    assert [Weights.keyword(t) for t in ("RANDOM", "imagenet", "w.h5")] == ["none", "imagenet", None]
    path = tmp_path / "w.h5"
    path.write_bytes(b"weights")
    weights = Weights.parse(str(path))
    assert (weights.kind, weights.path, weights.digest) == ("file", path.resolve(), file_digest(path))
    # The cache key's forms, unchanged since the first stores.
    assert weights.key("x_notop.h5", seed=1) == f"file:{file_digest(path)}"
    assert Weights("imagenet").key("x_notop.h5", seed=1) == "imagenet:x_notop.h5"
    assert Weights("random").key("x_notop.h5", seed=1) == f"random:seed=1:keras={metadata.version('keras')}"
    for value in (weights, Weights("random"), Weights("imagenet")):
        assert Weights.from_record(value.record()) == value
        assert Weights.from_record(str(value)) == value  # the strings older model bundles hold
    path.unlink()
    assert Weights.from_record(weights.record()).missing
    with pytest.raises(ConfigError, match="recorded weights choice"):
        Weights.from_record({"kind": "pickle"})


def test_bundles_holding_the_old_weights_strings_rebuild_their_key():
    key = extractor_key("inception-v3", weights="none", image_size=75, precision="float32", seed=2)
    for weights in ("none", Weights.parse("none").record()):
        bundle = ModelBundle(key.to_dict(), weights, 2, "svc-rbf", None, ["a", "b"], "0", source="inception-v3")
        assert bundle.extractor_key() == key
    bundle.seed = 3
    with pytest.raises(ConfigError, match="cannot rebuild the extractor.*weights: fitted with 'random:seed=2"):
        bundle.extractor_key()


def test_precision_resolution():
    assert resolve_precision("auto", "torch") == "float32"
    assert resolve_precision("auto", "tensorflow", gpu=True) == "float16"
    assert resolve_precision("float32", "tensorflow", gpu=True) == "float32"
    with pytest.raises(ConfigError, match="precision must be one of auto, float32, bfloat16, float16; got 'fp8'"):
        resolve_precision("fp8", "tensorflow")


def test_keras_backend_follows_the_user(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert keras_backend() == "jax"
    monkeypatch.delenv("KERAS_BACKEND")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert keras_backend() == "tensorflow"
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    assert keras_backend() == "torch"


def _cli_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERAS_", "AUTOML_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_HOME=str(tmp_path / "keras-home"), **extra)
    return env


def test_imagenet_weights_offline_fail_with_file_cache_and_options(tmp_path):
    """With no cached weights and no network, the error names the file, the cache and the options,
    exits non-zero, and writes nothing into the store."""
    data = class_folders(tmp_path / "data", {"a": 2, "b": 2})
    store = tmp_path / "store"
    # A proxy on a closed local port: the download fails at once, as it does offline.
    env = _cli_env(tmp_path, HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-m", "automl", "embed", str(data), "-e", "inception-v3",
                           "--image-size", "75", "--store", str(store), "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    message = proc.stderr
    assert "cannot load ImageNet weights for inception-v3" in message
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras-home" / "models") in message
    assert "--weights PATH" in message and "--weights none" in message
    assert not store.exists(), "nothing may be written for a failed embed"


@pytest.mark.slow
def test_torch_backend_is_honoured(tmp_path):
    data = class_folders(tmp_path / "data", {"a": 2, "b": 2})
    env = _cli_env(tmp_path, KERAS_BACKEND="torch")
    proc = subprocess.run([sys.executable, "-m", "automl", "embed", str(data), "-e", "inception-v3", "--weights",
                           "none", "--image-size", "75", "--store", str(tmp_path / "s"), "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    keys = list((tmp_path / "s" / "embeddings").glob("*/key.json"))
    assert len(keys) == 1
    text = keys[0].read_text()
    assert '"backend": "torch"' in text and '"precision": "float32"' in text
