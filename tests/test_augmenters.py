"""The conventional and DCGAN augmenters, through the framework's cached generation (CPU, tiny settings)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from automl.augment import AUGMENTERS, build_augmenter
from automl.augment.generate import augment
from automl.augment.plan import AugmentSpec
from automl.data import load_dataset
from automl.errors import ConfigError
from conftest import ROOT, class_folders

# A few steps of a narrow network: enough to exercise training, checkpoints and reuse in seconds.
TINY_GAN = {"epochs": 2, "batch_size": 4, "width": 4, "output_size": 40}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster


@pytest.fixture
def small(tmp_path):
    return load_dataset(class_folders(tmp_path / "data", {"big": 6, "small": 3}, size=(20, 16)))


def run(dataset, store, kind, ratio=1.0, seed=0, **params):
    spec = AugmentSpec(type=kind, ratio=ratio, params=params)
    return augment(dataset.items, dataset.classes, spec, generated_dir=store / "generated",
                   generators_dir=store / "generators", seed=seed, progress=False)


def record_of(item) -> dict:
    from pathlib import Path

    return json.loads(Path(item.path).with_suffix(".json").read_text())


def test_both_are_registered_and_import_no_torch():
    assert {"conventional", "dcgan"} <= set(AUGMENTERS.names())
    code = ("import sys, automl, automl.augment.conventional, automl.augment.dcgan; "
            "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- conventional ------------------------------------------------------------------------------------


def test_conventional_transforms_sources_with_provenance_and_reuses_them(small, tmp_path):
    store = tmp_path / "store"
    first = run(small, store, "conventional")
    real = {it.fingerprint: it for it in small.items if it.label == 1}
    assert [it.label for it in first.items] == [1, 1, 1]  # the minority class only, doubled
    for it, sources in zip(first.items, first.sources):
        pixels = it.load(None)
        assert pixels.shape == (16, 20, 3)  # the source's own size (size: 0)
        assert len(sources) == 1 and sources[0] in real
        source = real[sources[0]]
        assert np.abs(pixels.astype(int) - source.load(None)).mean() > 5  # transformed, not a copy
        record = record_of(it)
        assert record["augmenter"] == "conventional" and record["class"] == "small" and record["label"] == 1
        assert record["params"] == AUGMENTERS.get("conventional").defaults and record["seed"] == 0
        assert record["sources"] == [{"path": source.path, "fingerprint": source.fingerprint}]
        assert record["fingerprint"] == it.fingerprint and (record["width"], record["height"]) == (20, 16)
    assert len(set(first.sources)) == 3  # every source used once before any twice

    again = run(small, store, "conventional")
    assert again.record["generated"] == 0 and again.record["reused"] == 3
    files = [open(it.path, "rb").read() for it in first.items]

    more = run(small, store, "conventional", ratio=3.0)  # a larger ratio only adds images
    assert more.record["generated"] == 6 and more.record["reused"] == 3
    assert [open(it.path, "rb").read() for it in more.items[:3]] == files

    other = run(small, store, "conventional", seed=1)
    assert {it.fingerprint for it in other.items}.isdisjoint(it.fingerprint for it in first.items)


def test_conventional_size_and_single_transforms(small, tmp_path):
    out = run(small, tmp_path / "s1", "conventional", size=24)
    assert {it.load(None).shape for it in out.items} == {(24, 24, 3)}
    # One transform alone still changes every image: a vertical flip of random pixels.
    flips = run(small, tmp_path / "s2", "conventional", ratio=3.0, hflip=False, vflip=True, rotation=0.0,
                crop_scale=1.0, autoaugment=False)
    for it, (fp,) in zip(flips.items, flips.sources):
        source = next(s for s in small.items if s.fingerprint == fp).load(None)
        assert np.array_equal(it.load(None), source) or np.array_equal(it.load(None), source[::-1])
    assert any(not np.array_equal(it.load(None), next(s for s in small.items if s.fingerprint == fp).load(None))
               for it, (fp,) in zip(flips.items, flips.sources))


def test_conventional_images_do_not_depend_on_batching_nor_touch_global_random_state(small):
    import torch

    augmenter = build_augmenter("conventional")
    sources = [it for it in small.items if it.label == 1] * 2
    indices = list(range(6))
    before = torch.get_rng_state()
    whole = augmenter.generate(1, indices, sources, 0)
    assert torch.equal(torch.get_rng_state(), before)
    pieces = augmenter.generate(1, indices[4:], sources[4:], 0) + augmenter.generate(1, indices[:4], sources[:4], 0)
    pieces = pieces[2:] + pieces[:2]
    assert all(np.array_equal(a, b) for a, b in zip(whole, pieces))
    assert all(a.dtype == np.uint8 and a.shape == (16, 20, 3) for a in whole)
    # Same source, other index: another image.
    assert not np.array_equal(whole[0], whole[3])


# --- dcgan ---------------------------------------------------------------------------------------------


def test_dcgan_trains_generates_and_reuses_its_generator(small, tmp_path):
    store = tmp_path / "store"
    first = run(small, store, "dcgan", **TINY_GAN)
    assert [it.label for it in first.items] == [1, 1, 1] and first.sources == [(), (), ()]
    assert {it.load(None).shape for it in first.items} == {(40, 40, 3)}
    work = tmp_path / first.record["generator_folder"]
    assert not (work / "class-0").exists()  # only the chosen (minority) class is trained
    folder = work / "class-1"
    training = json.loads((folder / "training.json").read_text())
    assert training["side"] == 32  # 20x16 images: tiny, so 32x32 networks
    assert training["epochs_done"] == 2 and training["steps"] == 2 * 1  # 3 images, batch 4 -> 1 step per epoch
    assert all(np.isfinite([h["loss_d"], h["loss_g"]]).all() for h in training["history"])
    assert (folder / "samples.png").is_file() and not (folder / "checkpoint.pt").exists()
    record = record_of(first.items[0])
    assert record["augmenter"] == "dcgan" and record["sources"] == [] and record["params"]["epochs"] == 2

    mtime = (folder / "generator.pt").stat().st_mtime_ns
    augmenter = build_augmenter("dcgan", TINY_GAN)
    more = augment(small.items, small.classes, AugmentSpec(type="dcgan", ratio=3.0, params=TINY_GAN),
                   generated_dir=store / "generated", generators_dir=store / "generators", progress=False,
                   augmenter=augmenter)
    assert augmenter.trained_ == {1: "reused"} and (folder / "generator.pt").stat().st_mtime_ns == mtime
    assert more.record["generated"] == 6 and more.record["reused"] == 3
    assert [it.fingerprint for it in more.items[:3]] == [it.fingerprint for it in first.items]
    assert len({it.fingerprint for it in more.items}) == 9

    # Batching does not change image k.
    augmenter = build_augmenter("dcgan", TINY_GAN)
    augmenter.fit({1: [it for it in small.items if it.label == 1]}, small.classes, [1], work, 0, progress=False)
    whole = augmenter.generate(1, list(range(5)), [None] * 5, 0)
    pieces = augmenter.generate(1, [3, 4], [None] * 2, 0) + augmenter.generate(1, [0, 1, 2], [None] * 3, 0)
    assert all(np.array_equal(a, b) for a, b in zip(whole, pieces[2:] + pieces[:2]))
    augmenter.close()
    with pytest.raises(RuntimeError, match="no generator for class 1"):
        augmenter.generate(1, [0], [None], 0)


def test_dcgan_picks_64_for_larger_images_and_median_output_size(tmp_path):
    data = load_dataset(class_folders(tmp_path / "data", {"a": 3, "b": 2}, size=(40, 40)))
    out = run(data, tmp_path / "store", "dcgan", epochs=1, batch_size=2, width=4, output_size=0)
    assert {it.load(None).shape for it in out.items} == {(40, 40, 3)}
    training = json.loads((tmp_path / out.record["generator_folder"] / "class-1" / "training.json").read_text())
    assert training["side"] == 64


def test_dcgan_resumes_a_killed_fit_and_never_trusts_a_partial(small, tmp_path, monkeypatch):
    import torch

    import automl.augment.dcgan as dcgan

    items = {1: [it for it in small.items if it.label == 1]}
    params = {**TINY_GAN, "epochs": 3}

    def fit(work):
        augmenter = build_augmenter("dcgan", params)
        augmenter.fit(items, small.classes, [1], work, 0, progress=False)
        return augmenter

    uninterrupted = fit(tmp_path / "a")
    assert uninterrupted.trained_ == {1: "trained"}

    # Killed right after the checkpoint of epoch 1: a checkpoint, no generator.
    saved = dcgan._save_checkpoint

    def killed(path, state):
        saved(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(dcgan, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(dcgan, "_save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b")
    folder = tmp_path / "b" / "class-1"
    assert (folder / "checkpoint.pt").is_file() and not (folder / "generator.pt").exists()
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not list(folder.glob(".tmp-*"))

    monkeypatch.setattr(dcgan, "_save_checkpoint", saved)
    stale = folder / ".tmp-999999999-0-generator.pt"  # what a writer killed mid-write leaves (no such pid)
    stale.write_bytes(b"half")
    resumed = fit(tmp_path / "b")
    assert not stale.exists()
    assert resumed.trained_ == {1: "resumed"}
    assert json.loads((folder / "training.json").read_text())["resumed_from_epoch"] == 1
    assert not (folder / "checkpoint.pt").exists()
    # Resuming restores the random state too: the same generator as training straight through.
    a = uninterrupted.generators_[1].state_dict()
    b = resumed.generators_[1].state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)

    # A damaged generator file is not a finished generator: it is trained again, with a warning.
    (folder / "generator.pt").write_bytes(b"not a checkpoint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = fit(tmp_path / "b")
    assert again.trained_ == {1: "trained"} and any("unreadable" in str(w.message) for w in caught)
    # A generator of other settings is not reused either.
    params["epochs"] = 4
    assert fit(tmp_path / "b").trained_ == {1: "trained"}


# --- parameters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, params, fragments", [
    ("conventional", {"rotate": 10}, ["no parameter 'rotate'; valid parameters: autoaugment, crop_scale, hflip, "
                                      "rotation, size, vflip"]),
    ("conventional", {"rotation": 200.0}, ["The 'rotation' parameter of augmenter 'conventional' must be a float in "
                                           "the range [0.0, 180.0]. Got 200.0"]),
    ("conventional", {"crop_scale": 0.0}, ["'crop_scale' parameter", "range (0.0, 1.0]"]),
    ("conventional", {"size": 4}, ["'size' parameter", "range [8, 4096]. Got 4"]),
    ("conventional", {"hflip": "yes"}, ["parameter 'hflip' must be bool"]),
    ("conventional", {"hflip": False, "rotation": 0, "crop_scale": 1, "autoaugment": False},
     ["every transform is off", "Turn at least one on"]),
    ("dcgan", {"latent": 50}, ["no parameter 'latent'",
                               "valid parameters: batch_size, beta1, epochs, lr, output_size, pretrain_data, "
                               "pretrain_epochs, sampler, size, width"]),
    ("dcgan", {"size": 48}, ["'size' parameter of augmenter 'dcgan' must be an int among {0, 32, 64}. Got 48"]),
    ("dcgan", {"epochs": 0}, ["'epochs' parameter", "range [1, inf). Got 0"]),
    ("dcgan", {"epochs": 2.5}, ["parameter 'epochs' must be int"]),
    ("dcgan", {"lr": 0}, ["'lr' parameter", "range (0.0, 1.0]"]),
    ("dcgan", {"beta1": 1.0}, ["'beta1' parameter", "range [0.0, 1.0)"]),
    ("dcgan", {"output_size": 2}, ["'output_size' parameter", "Got 2"]),
])
def test_bad_parameters_name_the_parameter_and_the_fix(kind, params, fragments):
    with pytest.raises(ConfigError) as built:
        build_augmenter(kind, params)
    with pytest.raises(ValueError) as validated:  # the same error when a recipe is validated
        AugmentSpec(type=kind, params=params)
    for fragment in fragments:
        assert fragment in str(built.value) and fragment in str(validated.value)
