"""``sd-variations`` (Stable Diffusion image variations: one output per source image, no prompt) on a
tiny seeded image-variation model (tests/sd_fixture.py), CPU, offline."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: never reach for the network

from types import SimpleNamespace

import numpy as np
import pytest

from automl.augment import build_augmenter
from automl.augment.generate import augment, preflight
from automl.augment.plan import AugmentSpec
from automl.augment.sd_variations import VARIATION_MODEL, encoder_input
from automl.data import load_dataset
from automl.errors import ConfigError, WeightsUnavailableError
from conftest import class_folders, run_cli
from sd_fixture import TINY_PX, tiny_sd_variations

NAME = "sd-variations"
FAST = {"resolution": TINY_PX, "steps": 2}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and fair to other jobs on the cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_sd_variations(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = class_folders(tmp_path_factory.mktemp("variations-data") / "data", {"benign": 4, "malignant": 2},
                         size=(24, 24))
    return load_dataset(root)


def spec(params, ratio=1.5):
    return AugmentSpec(type=NAME, ratio=ratio, classes="minority", params=params)


def run(data, tmp_path, params, ratio=1.5):
    return augment(data.items, data.classes, spec(params, ratio), generated_dir=tmp_path / "generated",
                   generators_dir=tmp_path / "generators", seed=0, progress=False)


def pixels(items):
    return [np.asarray(it.load()) for it in items]


def test_listed_by_automl_augmenters(capsys):
    code, out, _ = run_cli(capsys, "augmenters")
    assert code == 0
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{NAME}: "))
    assert "image variations" in lines[start]
    params = []
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        params.append(line.strip())
    assert f"model = {VARIATION_MODEL!r}" in params and "guidance_scale = 3.0" in params
    assert not any(p.startswith(("prompt", "negative_prompt", "strength")) for p in params)


@pytest.mark.parametrize("params, match", [
    ({"prompt": "an image of a {class}"}, r"has no parameter 'prompt'; valid parameters: batch_size, device, "),
    ({"negative_prompt": "blurry"}, r"no parameter 'negative_prompt'"),
    ({"strength": 0.5}, r"no parameter 'strength'"),
    ({"resolution": 500}, r"multiple of 8"),
    ({"guidance_scale": -1.0}, r"'guidance_scale' parameter"),
    ({"steps": 0}, r"'steps' parameter"),
    ({"model": " "}, rf"The default is '{VARIATION_MODEL}'"),
])
def test_bad_params_are_named(params, match):
    with pytest.raises(ConfigError, match=match):
        build_augmenter(NAME, params)


def test_one_variation_per_source_with_provenance_whatever_the_batching(model, data, tmp_path):
    params = {**FAST, "model": str(model)}
    syn = run(data, tmp_path, params)
    malignant = data.classes.index("malignant")
    real = {it.fingerprint: it for it in data.items if it.label == malignant}
    assert syn.record["generated"] == 3 and len(syn.items) == 3
    assert all(it.label == malignant and it.split == "synthetic" for it in syn.items)
    assert all(len(s) == 1 and s[0] in real for s in syn.sources)  # the source is the output's leakage group
    assert {s[0] for s in syn.sources} == set(real)  # every source used before one is used again
    images = pixels(syn.items)
    assert all(im.shape == (TINY_PX, TINY_PX, 3) and im.dtype == np.uint8 for im in images)
    for k, (item, (source,)) in enumerate(zip(syn.items, syn.sources)):
        record = json.loads(open(item.path.replace(".png", ".json")).read())
        assert (record["augmenter"], record["index"], record["class"]) == (NAME, k, "malignant")
        assert [s["fingerprint"] for s in record["sources"]] == [source]
        assert record["sources"][0]["path"] == real[source].path
        assert "prompt" not in record["params"]
        assert not np.array_equal(images[k], real[source].load(TINY_PX))
    assert not np.array_equal(images[0], images[2])  # one source, two seeds: two variations

    sources = [real[s[0]] for s in syn.sources]
    aug = build_augmenter(NAME, params)
    batched = build_augmenter(NAME, {**params, "batch_size": 3})
    try:
        aug.fit(None, data.classes, [malignant], tmp_path / "w", 0, False)
        alone = aug.generate(malignant, [2], sources[2:], 0)
        reversed_order = aug.generate(malignant, [1, 0], [sources[1], sources[0]], 0)
        # Conditioned on its source: image 0's seed with image 1's source is another image.
        other_source = aug.generate(malignant, [0], [sources[1]], 0)
        batched.fit(None, data.classes, [malignant], tmp_path / "w", 0, False)
        together = batched.generate(malignant, [0, 1, 2], sources, 0)
    finally:
        aug.close()
        batched.close()
    assert np.array_equal(alone[0], images[2])
    assert np.array_equal(reversed_order[0], images[1]) and np.array_equal(reversed_order[1], images[0])
    assert not np.array_equal(other_source[0], images[0])
    for k in range(3):  # batched kernels: equal up to rounding
        assert np.abs(together[k].astype(int) - images[k]).max() <= 1

    # Generation-only parameters are not part of the cached images' key: a re-run generates nothing.
    again = run(data, tmp_path, params)
    assert again.record["generated"] == 0 and again.record["reused"] == 3


def test_a_text_to_image_model_is_refused_in_preflight(data, tmp_path):
    folder = tmp_path / "sd15"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    train = [it for it in data.items if it.split != "test"]
    params = {**FAST, "model": str(folder)}
    match = (r"'sd-variations' needs an image-variation model \(a diffusers StableDiffusionImageVariationPipeline "
             r"folder.*is a StableDiffusionPipeline.*sd-img2img")
    with pytest.raises(ConfigError, match=match):
        build_augmenter(NAME, params).preflight()
    with pytest.raises(ConfigError, match=match):  # the framework's check before a fit's baseline
        preflight(train, data.classes, spec(params), generated_dir=tmp_path / "generated", seed=0)
    with pytest.raises(ConfigError, match=match):  # and fit itself, before anything is made
        run(data, tmp_path, params)
    assert not list((tmp_path / "generated").rglob("*.png"))


def test_preflight_passes_for_an_image_variation_model(model, data, tmp_path):
    train = [it for it in data.items if it.split != "test"]
    build_augmenter(NAME, {"model": str(model)}).preflight()
    preflight(train, data.classes, spec({**FAST, "model": str(model)}), generated_dir=tmp_path / "generated", seed=0)
    assert not (tmp_path / "generated").exists()


def test_missing_model_offline_error_names_model_cache_and_local_folder(data, tmp_path):
    from huggingface_hub import constants

    missing = "no-such-org/no-such-variations"
    with pytest.raises(WeightsUnavailableError) as err:
        build_augmenter(NAME, {"model": missing}).preflight()
    text = str(err.value)
    assert f"{missing!r}" in text and str(constants.HF_HUB_CACHE) in text and "HF_HUB_OFFLINE" in text
    assert f"huggingface-cli download {missing}" in text and "local diffusers folder" in text
    with pytest.raises(WeightsUnavailableError, match=rf"does not exist.*such as '{VARIATION_MODEL}'"):
        build_augmenter(NAME, {"model": str(tmp_path / "nowhere")}).preflight()
    train = [it for it in data.items if it.split != "test"]
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        preflight(train, data.classes, spec({"model": missing}), generated_dir=tmp_path / "generated", seed=0)
    with pytest.raises(WeightsUnavailableError):
        run(data, tmp_path, {**FAST, "model": missing})
    assert not list((tmp_path / "generated").rglob("*.png"))


def test_the_source_reaches_the_encoder_resized_without_antialiasing():
    # The default model was trained on sources resized without antialiasing; its card says it matters.
    import torch
    import torch.nn.functional as F

    pipe = SimpleNamespace(image_encoder=SimpleNamespace(config=SimpleNamespace(image_size=8)),
                           feature_extractor=SimpleNamespace(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]))
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    x = encoder_input(pipe, image)
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    raw = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    plain = (F.interpolate(raw, size=(8, 8), mode="bicubic", antialias=False)[0] - mean) / std
    smoothed = (F.interpolate(raw, size=(8, 8), mode="bicubic", antialias=True)[0] - mean) / std
    assert torch.allclose(x, plain, atol=1e-5) and not torch.allclose(x, smoothed, atol=1e-2)


def test_default_parameters_keep_their_store_key():
    # The generated images' key of the default parameters, as first released: a change of wording or
    # of parameter order must not orphan images users have made.
    from automl.augment.generate import key_of

    train = [SimpleNamespace(fingerprint=f"{i:016x}", label=i % 2) for i in range(4)]
    augmenter = build_augmenter(NAME)
    assert key_of(NAME, augmenter.params, train, 0) == "sd-variations-66d359cd3f31bf2a"
