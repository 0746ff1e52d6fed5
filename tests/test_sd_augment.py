"""The Stable Diffusion augmenters on a tiny seeded SD model (tests/sd_fixture.py), CPU, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: never reach for the network

import numpy as np
import pytest

from automl.augment import AUGMENTERS, build_augmenter
from automl.augment.generate import augment
from automl.augment.plan import AugmentSpec
from automl.augment.sd_common import SAMPLERS, check_sampler, register_sampler, resolve_model, sample_items
from automl.augment.sd_train import save_atomic
from automl.data import load_dataset
from automl.errors import ConfigError, WeightsUnavailableError
from conftest import ROOT, class_folders
from sd_fixture import TINY_PX

SD = ("sd-img2img", "sd-dreambooth", "sd-lora", "sd-textual-inversion")
# Few steps everywhere: the tiny model learns nothing, the tests check the plumbing.
FAST = {"resolution": TINY_PX, "steps": 4}
TRAIN = {**FAST, "steps": 2, "train_steps": 2, "num_class_images": 2, "prior_steps": 1}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = class_folders(tmp_path_factory.mktemp("sd-data") / "data", {"benign": 4, "malignant": 2}, size=(24, 24))
    return load_dataset(root)


def run(data, tmp_path, name, params, *, classes="minority", ratio=1.0, seed=0):
    spec = AugmentSpec(type=name, ratio=ratio, classes=classes, params=params)
    return augment(data.items, data.classes, spec, generated_dir=tmp_path / "generated",
                   generators_dir=tmp_path / "generators", seed=seed, progress=False)


def pixels(items):
    return [np.asarray(it.load()) for it in items]


def test_registered_and_light_to_import():
    assert set(SD) <= set(AUGMENTERS.names())
    code = ("import sys, automl, automl.augment; from automl.augment import AUGMENTERS; AUGMENTERS.get('sd-lora'); "
            "print([m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name, params, match", [
    ("sd-img2img", {"strength": 0.0}, r"'strength' parameter .* range \(0, 1\]"),
    ("sd-img2img", {"strength": 1.5}, r"'strength'"),
    ("sd-img2img", {"strength": 0.1, "steps": 5}, r"runs no denoising step"),
    ("sd-img2img", {"prompt": "a {klass}"}, r"not a valid prompt template"),
    ("sd-img2img", {"resolution": 500}, r"multiple of 8"),
    ("sd-img2img", {"device": "gpu"}, r"'device' parameter"),
    ("sd-img2img", {"precision": "fp8"}, r"'precision' parameter"),
    ("sd-img2img", {"strength": "0.1"}, r"must be float"),
    ("sd-img2img", {"stength": 0.1}, r"no parameter 'stength'; valid parameters: .*strength"),
    ("sd-dreambooth", {"mode": "multi"}, r"'mode' parameter .* among \{'single-class', 'multi-class'\}"),
    ("sd-dreambooth", {"instance_prompt": "image of a {class}"}, r"must contain \{token\}"),
    ("sd-dreambooth", {"identifiers": []}, r"'identifiers'"),
    ("sd-dreambooth", {"identifiers": ["two words"]}, r"'identifiers'"),
    ("sd-dreambooth", {"learning_rate": 0.0}, r"'learning_rate'"),
    ("sd-dreambooth", {"num_class_images": 0}, r"'num_class_images'"),
    ("sd-dreambooth", {"sampler": "clusters:3"}, r"unknown sampler 'clusters'; valid: all, cluster, random"),
    ("sd-dreambooth", {"sampler": "random:x"}, r"random needs a positive count"),
    ("sd-dreambooth", {"memory_savers": "yes"}, r"'memory_savers'"),
    ("sd-lora", {"rank": 0}, r"'rank'"),
    ("sd-textual-inversion", {"training_prompts": ["no token here"]}, r"containing \{token\}"),
    ("sd-textual-inversion", {"placeholder": "{class}"}, r"'placeholder'"),
])
def test_bad_params_are_named(name, params, match):
    with pytest.raises(ConfigError, match=match):
        build_augmenter(name, params)


# The generated-image and fine-tune keys of each augmenter's default parameters at key version 2 (the
# seed streams of automl.seeds changed every image, so version 2 replaced the 0.1.0 keys once): a change
# of wording (the precision words) or of parameter order must not move them again.
STORED_KEYS = {
    "conventional": ("conventional-ad429b8788a0819e", "conventional-d7facd0cc5e12f0b"),
    "dcgan": ("dcgan-b659d04e84fba8ad", "dcgan-b8002f23e29a735e"),
    "sd-img2img": ("sd-img2img-a780f64054057117", "sd-img2img-5fe3ac474d3a12ca"),
    "sd-dreambooth": ("sd-dreambooth-750aa39c5f3e0809", "sd-dreambooth-8e896dd4f33c9557"),
    "sd-lora": ("sd-lora-fb49d56f0308d422", "sd-lora-c833770e184eeb73"),
    "sd-textual-inversion": ("sd-textual-inversion-6ed71d56412e7dde", "sd-textual-inversion-fc0339c076a21b43"),
}


def test_default_parameters_keep_their_store_keys():
    from types import SimpleNamespace

    from automl.augment.generate import key_of

    train = [SimpleNamespace(fingerprint=f"{i:016x}", label=i % 2) for i in range(4)]
    for name, (images_key, fit_key) in STORED_KEYS.items():
        augmenter = build_augmenter(name)
        assert key_of(name, augmenter.key_params(), train, 0) == images_key, name
        assert key_of(name, augmenter.fit_signature(), train, 0) == fit_key, name


@pytest.mark.parametrize("old, new", [("fp32", "float32"), ("fp16", "float16"), ("bf16", "bfloat16")])
def test_precision_speaks_the_extractors_words_and_keeps_the_old_ones(old, new):
    # One spelling is stored, so both name the same cached images and fine-tune.
    for name in SD:
        assert build_augmenter(name, {"precision": old}).params["precision"] == new
        assert build_augmenter(name, {"precision": new}).params == build_augmenter(name, {"precision": old}).params


def test_missing_weights_offline_error(tmp_path, monkeypatch, data):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_model("no-such-org/no-such-model")
    text = str(err.value)
    assert "'no-such-org/no-such-model'" in text and "HF_HUB_OFFLINE" in text and "HF_HOME" in text
    assert "local diffusers folder" in text
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsUnavailableError, match="no model_index.json"):
        resolve_model(str(tmp_path / "empty"))
    # Through the framework: nothing generated, the error reaches the caller.
    with pytest.raises(WeightsUnavailableError):
        run(data, tmp_path, "sd-dreambooth", {"model": "no-such-org/no-such-model"})
    assert not list((tmp_path / "generated").rglob("*.png"))


def test_img2img_generates_with_provenance_and_is_deterministic(tiny_sd, data, tmp_path):
    params = {**FAST, "model": str(tiny_sd), "strength": 0.5}
    syn = run(data, tmp_path, "sd-img2img", params, ratio=1.5)
    malignant = data.classes.index("malignant")
    real = {it.fingerprint: it for it in data.items if it.label == malignant}
    assert len(syn.items) == 3 and all(it.label == malignant for it in syn.items)
    assert all(len(s) == 1 and s[0] in real for s in syn.sources)
    images = pixels(syn.items)
    assert all(im.shape == (TINY_PX, TINY_PX, 3) for im in images)
    for im, (source,) in zip(images, syn.sources):
        assert not np.array_equal(im, real[source].load(TINY_PX))
    record = json.loads(open(syn.items[0].path.replace(".png", ".json")).read())
    assert record["augmenter"] == "sd-img2img" and record["sources"][0]["fingerprint"] == syn.sources[0][0]

    # Image k is the same whether made alone or in a batch, on a re-run from scratch too.
    aug = build_augmenter("sd-img2img", params)
    aug.fit(None, data.classes, [malignant], tmp_path / "w", 0, False)
    sources = [real[s[0]] for s in syn.sources]
    alone = aug.generate(malignant, [2], sources[2:], 0)
    batched = build_augmenter("sd-img2img", {**params, "batch_size": 3})
    batched.fit(None, data.classes, [malignant], tmp_path / "w", 0, False)
    together = batched.generate(malignant, [0, 1, 2], sources, 0)
    assert np.array_equal(alone[0], images[2])
    assert np.abs(together[2].astype(int) - images[2]).max() <= 1  # batched kernels: equal up to rounding
    assert not np.array_equal(together[0], together[1])
    aug.close()
    batched.close()


def _fine_tunes(tmp_path):
    return sorted(p for p in (tmp_path / "generators").glob("*/*") if (p / "complete.json").is_file())


def test_dreambooth_single_class_prior_text_encoder_cache(tiny_sd, data, tmp_path, monkeypatch):
    import automl.augment.sd_dreambooth as db

    params = {**TRAIN, "model": str(tiny_sd), "train_text_encoder": True, "memory_savers": "on"}
    syn = run(data, tmp_path, "sd-dreambooth", params, classes="all", ratio=0.5)
    assert [it.label for it in syn.items] == [0, 0, 1]
    tunes = _fine_tunes(tmp_path)
    assert [p.name.split("-")[:2] for p in tunes] == [["class", "0"], ["class", "1"]]
    for folder in tunes:
        meta = json.loads((folder / "complete.json").read_text())
        assert (folder / "unet").is_dir() and (folder / "text_encoder").is_dir()
        assert meta["class_images"] == 2 and meta["training"]["steps"] == 2
        assert meta["training"]["gradient_checkpointing"] is True
        assert "sks" in next(iter(meta["prompts"].values()))
    assert len(list((tmp_path / "generators").rglob("prior-images/*/*.png"))) == 4
    stamps = [(p / "complete.json").stat().st_mtime_ns for p in tunes]

    # A generation-only change reuses both fine-tunes: training must not run again.
    def no_training(*a, **k):
        raise AssertionError("the fine-tune was trained again instead of loaded")

    monkeypatch.setattr(db, "train_model", no_training)
    monkeypatch.setattr(db, "class_images", no_training)
    again = run(data, tmp_path, "sd-dreambooth", {**params, "guidance_scale": 3.0}, classes="all", ratio=0.5)
    assert again.record["generated"] == 3 and again.record["generator_folder"] == syn.record["generator_folder"]
    assert [(p / "complete.json").stat().st_mtime_ns for p in _fine_tunes(tmp_path)] == stamps
    assert not all(np.array_equal(a, b) for a, b in zip(pixels(syn.items), pixels(again.items)))


def test_dreambooth_multi_class_one_fine_tune(tiny_sd, data, tmp_path):
    params = {**TRAIN, "model": str(tiny_sd), "mode": "multi-class", "train_text_encoder": True}
    syn = run(data, tmp_path, "sd-dreambooth", params, classes="all", ratio=0.5)
    assert len(syn.items) == 3
    (folder,) = _fine_tunes(tmp_path)
    prompts = json.loads((folder / "complete.json").read_text())["prompts"]
    assert prompts == {"0": "image of a sks benign", "1": "image of a zwx malignant"}
    # Resuming with one class left reuses the model that covers it.
    aug = build_augmenter("sd-dreambooth", params)
    by_class = {c: [it for it in data.items if it.label == c] for c in range(2)}
    aug.fit(by_class, data.classes, [1], folder.parent, 0, False)
    assert aug.models_[1] == folder and len(_fine_tunes(tmp_path)) == 1
    aug.close()


def test_lora_with_a_registered_sampler_saves_adapters_only_and_reloads(tiny_sd, data, tmp_path, monkeypatch):
    import automl.augment.sd_dreambooth as db

    monkeypatch.setitem(SAMPLERS, "first", None)  # undone after the test

    @register_sampler("first")  # the hook a cluster-based sampler plugs into
    def first(items, arg, seed):
        return items[:1]

    params = {**TRAIN, "model": str(tiny_sd), "train_text_encoder": True, "sampler": "first"}
    syn = run(data, tmp_path, "sd-lora", params)
    assert len(syn.items) == 2
    (folder,) = _fine_tunes(tmp_path)
    meta = json.loads((folder / "complete.json").read_text())
    assert meta["instance_images"] == 1 and meta["class_images"] == 2
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    assert (folder / "text_encoder_lora.safetensors").is_file() and not (folder / "unet").exists()
    monkeypatch.setattr(db, "train_model", lambda *a, **k: pytest.fail("LoRA trained again"))
    aug = build_augmenter("sd-lora", params)
    aug.fit({1: [it for it in data.items if it.label == 1]}, data.classes, [1], folder.parent, 0, False)
    pipe = aug.pipeline(folder)
    assert any("lora_" in k for k in pipe.text_encoder.state_dict())
    assert any("lora" in k for k in pipe.unet.state_dict())
    again = aug.generate(1, [1], [None], 0)
    assert np.array_equal(again[0], pixels(syn.items)[1])
    aug.close()


def test_textual_inversion_learns_an_embedding(tiny_sd, data, tmp_path, monkeypatch):
    import automl.augment.sd_textual_inversion as ti
    from safetensors.torch import load_file

    params = {**FAST, "model": str(tiny_sd), "train_steps": 3, "learning_rate": 0.05}
    syn = run(data, tmp_path, "sd-textual-inversion", params)
    assert len(syn.items) == 2
    (folder,) = _fine_tunes(tmp_path)
    vector = load_file(str(folder / "learned_embeds.safetensors"))["<malignant>"]
    from automl.augment.sd_train import load_components

    parts = load_components(tiny_sd)
    ids = parts["tokenizer"]("malignant", add_special_tokens=False).input_ids
    start = parts["text_encoder"].get_input_embeddings().weight[ids].mean(0)
    assert vector.shape == start.shape and not np.allclose(vector.numpy(), start.detach().numpy())
    monkeypatch.setattr(ti, "train_model", lambda *a, **k: pytest.fail("textual inversion trained again"))
    again = run(data, tmp_path, "sd-textual-inversion", {**params, "guidance_scale": 2.0})
    assert again.record["generated"] == 2


def test_partial_save_is_never_taken_as_finished(tmp_path):
    final = tmp_path / "class-0-abc"

    def crash(folder):
        (folder / "weights").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_atomic(final, crash, {})
    assert not final.exists() and not list(tmp_path.iterdir())
    stale = tmp_path / ".tmp-999999999-abcdef-class-0-abc"  # a killed process's leftovers (automl._files naming)
    stale.mkdir()
    save_atomic(final, lambda folder: (folder / "weights").write_text("whole"), {"ok": 1})
    assert (final / "weights").read_text() == "whole" and (final / "complete.json").is_file()
    assert not stale.exists()


def test_samplers_choose_the_fine_tune_images(data):
    items = [it for it in data.items if it.label == 0]
    assert sample_items("all", items, 0) == sorted(items, key=lambda it: it.fingerprint)
    two = sample_items("random:2", items, 0)
    assert len(two) == 2 and two == sample_items("random:2", list(reversed(items)), 0)
    assert sample_items("random:99", items, 0) == sample_items("all", items, 0)
    with pytest.raises(ConfigError, match="'all' takes no argument"):
        check_sampler("sd-lora", "all:3")


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fine_tune_in_mixed_precision(tiny_sd, data, tmp_path):
    params = {**TRAIN, "model": str(tiny_sd), "device": "cuda", "train_text_encoder": True}
    syn = run(data, tmp_path, "sd-lora", params)
    (folder,) = _fine_tunes(tmp_path)
    info = json.loads((folder / "complete.json").read_text())["training"]
    assert info["device"] == "cuda" and info["autocast"] != "None" and info["gradient_checkpointing"]
    assert len(syn.items) == 2


def test_lora_on_an_sdxl_base(data, tmp_path):
    from sd_fixture import build_tiny_sdxl

    model = build_tiny_sdxl(tmp_path / "sdxl")
    params = {**TRAIN, "model": str(model), "train_text_encoder": True}
    syn = run(data, tmp_path, "sd-lora", params)
    assert len(syn.items) == 2 and pixels(syn.items)[0].shape == (TINY_PX, TINY_PX, 3)
    (folder,) = _fine_tunes(tmp_path)
    assert {p.name for p in folder.glob("*_lora.safetensors")} == {"text_encoder_lora.safetensors",
                                                                    "text_encoder_2_lora.safetensors"}
    with pytest.raises(ConfigError, match="SDXL"):
        run(data, tmp_path, "sd-textual-inversion", {**FAST, "model": str(model)})
