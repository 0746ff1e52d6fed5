"""The contract every extractor keeps, parametrized over the registry: a new backbone (one file in
automl/extractors/backbones/) is tested here without a line of its own. Plus ``resolve`` for model
files and the store's pretrained extractors, and the cache key's exact form (existing stores keep
their embeddings only while it stays as it is)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from automl.errors import ConfigError
from automl.extractors import (EXTRACTORS, ExtractorKey, ModelFile, UnknownExtractorError, Weights, build_extractor,
                               resolve)
from automl.store import Store
from conftest import ROOT

NAMES = EXTRACTORS.names()
RANDOM = Weights.parse("none")


def _images(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


@pytest.mark.slow  # about a minute for the three built-in backbones on 2 CPU cores
@pytest.mark.parametrize("name", NAMES)
def test_backbone_builds_at_its_smallest_size_and_is_deterministic(name):
    backbone = EXTRACTORS.get(name)
    size = backbone.min_size
    settings = dict(weights=RANDOM, image_size=size, precision="float32", seed=5)
    extractor = backbone.build(**settings)
    out = extractor(_images(size))
    assert out.dtype == np.float32 and out.shape == (2, backbone.dim) == (2, extractor.dim)
    assert np.isfinite(out).all() and np.abs(out).sum() > 0
    assert extractor.key == backbone.key(**settings, backend=extractor.key.backend, gpu=False)
    np.testing.assert_array_equal(backbone.build(**settings)(_images(size)), out)


@pytest.mark.parametrize("name", NAMES)
def test_backbone_names_its_embeddings_without_a_framework(name):
    backbone = EXTRACTORS.get(name)
    assert resolve(name.upper().replace("-", "_")) is backbone  # every spelling, one spec
    assert backbone.name == name and backbone.dim > 0 and backbone.min_size > 0
    key = backbone.key(weights=Weights.parse("imagenet"), image_size=backbone.min_size, precision="float32",
                       backend="tensorflow")
    assert key == backbone.key(weights=Weights.parse("ImageNet"), image_size=backbone.min_size,
                               precision="float32", backend="tensorflow")
    assert key.weights == f"imagenet:{backbone.weights_file}" and ExtractorKey(**key.to_dict()) == key
    assert re.fullmatch(rf"{name}-{backbone.min_size}px-float32-imagenet-[0-9a-f]{{12}}", key.slug())
    random = backbone.key(weights=RANDOM, image_size=backbone.min_size, precision="float32", seed=3)
    assert re.fullmatch(r"random:seed=3:keras=[\w.]+", random.weights) and random.slug() != key.slug()
    with pytest.raises(ConfigError, match=f"{name} must be an integer >= {backbone.min_size}"):
        backbone.key(weights=RANDOM, image_size=backbone.min_size - 1)


def test_keys_and_slugs_are_those_existing_stores_hold():
    # Written by the code before the extractors package; a store's folders are named by these.
    key = ExtractorKey("inception-v3", "imagenet:inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", 150,
                       "float32", "tensorflow")
    assert key.to_dict() == {"extractor": "inception-v3",
                             "weights": "imagenet:inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             "image_size": 150, "precision": "float32", "backend": "tensorflow", "decode_version": 1}
    assert key.slug() == "inception-v3-150px-float32-imagenet-b12e65380827"
    assert ExtractorKey("file:m.tflite?scale=0.5", "file:0123", 0, "native", "tflite").slug().startswith(
        "file-m.tflite-scale-0.5-native-native-file-")


def test_keys_load_no_framework():
    code = ("import sys\nfrom automl.extractors import EXTRACTORS, extractor_key\n"
            "for n in EXTRACTORS.names():\n    extractor_key(n, weights='none', image_size=299)\n"
            "print([m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_resolve_model_files_by_name_and_mapping(tmp_path):
    spec = resolve("file:models/m.keras?scale=0.5&mean=1&bgr=true", base_dir=tmp_path)
    path = (tmp_path / "models" / "m.keras").resolve()
    assert isinstance(spec, ModelFile) and spec.path == path
    assert spec.name == f"file:{path}?scale=0.5&mean=1.0&bgr=true"
    assert resolve({"file": "models/m.keras", "scale": 0.5, "mean": [1], "bgr": True}, base_dir=tmp_path) == spec
    assert resolve(spec.name) == spec  # the canonical name reads back as itself
    with pytest.raises(ConfigError, match="model file not found"):
        spec.key(weights=RANDOM)  # a model file need not exist to be named, only to be used
    with pytest.raises(ConfigError, match="scale: expected a number > 0; found '-2'"):
        resolve("file:m.keras?scale=-2")


def test_resolve_pretrained_names_from_the_store(tmp_path):
    store = Store(tmp_path / "store")
    store.extractors_dir.mkdir(parents=True)
    (store.extractors_dir / "chest-v3.keras").write_bytes(b"only its existence matters here")
    spec = resolve("Chest_V3", store)
    assert spec == ModelFile((store.extractors_dir / "chest-v3.keras").resolve())
    assert spec.name == f"file:{(store.extractors_dir / 'chest-v3.keras').resolve()}"
    with pytest.raises(UnknownExtractorError) as info:
        resolve("chest-v4", store)
    assert info.value.valid == NAMES + ["chest-v3"]
    message = str(info.value)
    assert "unknown extractor 'chest-v4'; valid names: " in message and str(store.extractors_dir) in message
    with pytest.raises(UnknownExtractorError, match="file:PATH"):
        resolve("chest-v3")  # no store, no store names


def test_build_takes_a_spec_and_a_weights_value_as_they_are(tmp_path):
    spec = EXTRACTORS.get(NAMES[0])
    assert resolve(spec) is spec and Weights.parse(RANDOM) is RANDOM
    with pytest.raises(ConfigError, match="unknown extractor 'resnet-50'"):
        build_extractor("resnet-50")
