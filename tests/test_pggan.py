"""The ``pggan`` augmenter (growth, fade-in, resumption, the class-conditional network) and transfer from
a related dataset (``pretrain_data``) for ``pggan`` and ``dcgan``; CPU, tiny networks (4 -> 8 -> 16 px)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from automl.augment import build_augmenter
from automl.augment.generate import augment
from automl.augment.plan import AugmentSpec
from automl.data import load_dataset
from automl.errors import ConfigError, DataError
from conftest import ROOT, class_folders

# 5 phases (4 stabilise; 8 fade, stabilise; 16 fade, stabilise) of 4 steps of 8 images.
TINY = {"max_size": 16, "images_per_phase": 32, "batch_size": 8, "width": 8, "output_size": 24}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster


@pytest.fixture
def small(tmp_path):
    return load_dataset(class_folders(tmp_path / "data", {"big": 5, "small": 3}, size=(20, 16)))


@pytest.fixture
def related(tmp_path):
    """A related dataset with train/ and test/: pretraining reads its train split only."""
    root = tmp_path / "related"
    class_folders(root / "train", {"x": 4, "y": 3}, seed=7, size=(24, 24))
    class_folders(root / "test", {"x": 2, "y": 2}, seed=8, size=(24, 24))
    return root


def by_class(dataset) -> dict:
    return {c: [it for it in dataset.items if it.label == c] for c in range(len(dataset.classes))}


def fit(params, dataset, work, chosen=(1,), hook=None, seed=0):
    augmenter = build_augmenter("pggan", params)
    augmenter.step_hook = hook
    augmenter.fit(by_class(dataset), dataset.classes, list(chosen), work, seed, progress=False)
    return augmenter


def states_equal(a: dict, b: dict) -> bool:
    import torch

    return set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def snapshot(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_cheap_to_import():
    code = "import sys, automl.augment.pggan; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_grows_through_resolutions_and_fades_in(small, tmp_path):
    import torch

    calls = []

    def hook(info):
        if info["step"] == 0:  # the generator's own output at this phase's size and alpha
            with torch.no_grad():
                info["out"] = tuple(info["generator"](torch.zeros(1, info["generator"].latent), None, info["size"],
                                                      info["alpha"]).shape)
        calls.append({k: v for k, v in info.items() if k not in ("generator", "discriminator", "ema")})

    augmenter = fit(TINY, small, tmp_path / "work", hook=hook)
    assert augmenter.trained_ == {1: "trained"}
    phases = [(c["phase"], c["kind"], c["size"]) for c in calls if c["step"] == 0]
    assert phases == [(0, "stabilise", 4), (1, "fade", 8), (2, "stabilise", 8), (3, "fade", 16), (4, "stabilise", 16)]
    for c in calls:
        assert c["real_shape"] == (8, 3, c["size"], c["size"]) and c["steps"] == 4
        if "out" in c:
            assert c["out"] == (1, 3, c["size"], c["size"])
    for size in (8, 16):  # alpha: 0 at the fade's first step, rising, then 1 while the level stabilises
        fade = [c["alpha"] for c in calls if c["kind"] == "fade" and c["size"] == size]
        assert fade[0] == 0.0 and fade == sorted(fade) and len(set(fade)) == 4 and fade[-1] < 1.0
        assert {c["alpha"] for c in calls if c["kind"] == "stabilise" and c["size"] == size} == {1.0}

    folder = tmp_path / "work" / "class-1"
    training = json.loads((folder / "training.json").read_text())
    assert [(h["kind"], h["size"], h["images"]) for h in training["history"]] == [
        ("stabilise", 4, 32), ("fade", 8, 32), ("stabilise", 8, 32), ("fade", 16, 32), ("stabilise", 16, 32)]
    assert all(np.isfinite([h["loss_d"], h["loss_g"], h["images_per_second"]]).all() for h in training["history"])
    assert training["resumed_from"] is None and not (folder / "checkpoint.pt").exists()
    assert (folder / "samples.png").is_file() and not (tmp_path / "work" / "class-0").exists()
    assert augmenter.generators_[1](torch.zeros(1, 8)).shape == (1, 3, 16, 16)  # finished: at max_size
    images = augmenter.generate(1, [0, 1, 2], [None] * 3, 0)
    assert all(im.shape == (24, 24, 3) and im.dtype == np.uint8 for im in images)
    assert len({im.tobytes() for im in images}) == 3
    with pytest.raises(RuntimeError, match="no generator for class 0"):
        augmenter.generate(0, [0], [None], 0)


class Killed(Exception):
    pass


def test_a_killed_fit_continues_its_phase_and_ends_as_if_never_stopped(small, tmp_path, monkeypatch):
    import torch

    import automl.augment.pggan as pggan

    straight = fit(TINY, small, tmp_path / "a")
    monkeypatch.setattr(pggan, "CHECKPOINT_STEPS", 2)

    def kill_at(phase, step, seen):
        def hook(info):
            seen.append((info["phase"], info["step"]))
            if (info["phase"], info["step"]) == (phase, step):
                raise Killed
        return hook

    folder = tmp_path / "b" / "class-1"
    # Killed at a phase boundary, then in the middle of a later phase (after the checkpoint of step 2).
    for phase, step, resumes_at in [(2, 0, None), (3, 3, (2, 0))]:
        seen = []
        with pytest.raises(Killed):
            fit(TINY, small, tmp_path / "b", hook=kill_at(phase, step, seen))
        assert seen[0] == (resumes_at or (0, 0))
        assert (folder / "checkpoint.pt").is_file() and not (folder / "generator.pt").exists()
        assert not list(folder.glob(".tmp-*"))
    saved = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert (saved["phase"], saved["step"]) == (3, 2)

    stale = folder / ".tmp-999999999-0-generator.pt"  # what a writer killed mid-write leaves (no such pid)
    stale.write_bytes(b"half")
    seen = []
    resumed = fit(TINY, small, tmp_path / "b", hook=kill_at(-1, -1, seen))
    assert resumed.trained_ == {1: "resumed"} and seen[0] == (3, 2) and len(seen) == 6  # steps 2, 3; then phase 4
    assert not stale.exists() and not (folder / "checkpoint.pt").exists()
    assert json.loads((folder / "training.json").read_text())["resumed_from"] == {"phase": 3, "step": 2}
    # The same batches, noise and optimiser state: the same weights as training straight through.
    assert states_equal(straight.generators_[1].state_dict(), resumed.generators_[1].state_dict())
    assert all(np.array_equal(a, b) for a, b in zip(straight.generate(1, range(3), [None] * 3, 0),
                                                     resumed.generate(1, range(3), [None] * 3, 0)))

    # A finished generator is reused; a damaged one is not trusted (trained again, with a warning);
    # a checkpoint of other settings is discarded.
    assert fit(TINY, small, tmp_path / "b").trained_ == {1: "reused"}
    (folder / "generator.pt").write_bytes(b"not a checkpoint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fit(TINY, small, tmp_path / "b").trained_ == {1: "trained"}
    assert any("unreadable" in str(w.message) for w in caught)
    with pytest.raises(Killed):
        fit(TINY, small, tmp_path / "c", hook=kill_at(1, 0, []))
    with pytest.warns(UserWarning, match="belongs to other settings"):
        assert fit({**TINY, "lr": 2e-3}, small, tmp_path / "c").trained_ == {1: "trained"}


def test_conditional_trains_one_network_for_every_class(small, tmp_path):
    augmenter = fit({**TINY, "conditional": True}, small, tmp_path / "work", chosen=(0, 1))
    assert augmenter.trained_ == {"conditional": "trained"}
    assert augmenter.generators_[0] is augmenter.generators_[1]
    folder = tmp_path / "work" / "conditional"
    assert json.loads((folder / "training.json").read_text())["images"] == 8  # every class's images
    assert (folder / "samples.png").is_file() and not (tmp_path / "work" / "class-1").exists()
    a, b = augmenter.generate(0, [0], [None], 0), augmenter.generate(1, [0], [None], 0)
    assert a[0].shape == b[0].shape == (24, 24, 3)
    assert fit({**TINY, "conditional": True}, small, tmp_path / "work", chosen=(1,)).trained_ == {
        "conditional": "reused"}


# --- transfer --------------------------------------------------------------------------------------------


def test_pggan_fine_tunes_from_the_pretrained_networks_and_reuses_them(small, related, tmp_path):
    import torch

    from automl.augment.pggan import state_digest

    params = {**TINY, "pretrain_data": str(related), "finetune_images": 16}
    first_step = {}

    def hook(info):
        if info["step"] == 0 and info["phase"] == 0 and info["stream"] != "pretrain":
            first_step[info["stream"]] = {name: snapshot(info[name]) for name in ("generator", "discriminator", "ema")}
        first_step.setdefault(("schedule", info["stream"]), set()).add((info["kind"], info["size"], info["steps"]))

    work = tmp_path / "generators" / "key-1"
    augmenter = fit(params, small, work, hook=hook)
    assert augmenter.trained_ == {"pretrain": "trained", 1: "trained"}
    (pretrained,) = tmp_path.glob("generators/pggan-pretrain-*")  # in the store's generators folder, beside the fit
    saved = torch.load(pretrained / "generator.pt", weights_only=True)
    assert saved["finished"] and saved["config"]["images"] == 7  # related/train only: its test split is unseen
    assert len(first_step[("schedule", "pretrain")]) == 5  # grown 4 -> 16
    assert first_step[("schedule", 1)] == {("finetune", 16, 2)}  # then fine-tuned at 16 px only
    # The fine-tune's first step starts from the pretrained weights, every network of them.
    start = first_step[1]
    assert states_equal(start["generator"], saved["train_generator"])
    assert states_equal(start["discriminator"], saved["discriminator"])
    assert states_equal(start["ema"], saved["generator"])
    training = json.loads((work / "class-1" / "training.json").read_text())
    assert training["pretrained"] == pretrained.name
    assert training["initial_generator_sha256"] == training["pretrained_generator_sha256"] == state_digest(
        saved["train_generator"])
    assert not states_equal(augmenter.generators_[1].state_dict(), saved["generator"])  # and then it learned

    # Another class (another fit folder too) reuses the pretrained networks; a fit with nothing to train
    # does not even load them.
    other = fit(params, small, tmp_path / "generators" / "key-2", chosen=(0, 1))
    assert other.trained_ == {"pretrain": "reused", 0: "trained", 1: "trained"}
    assert fit(params, small, work).trained_ == {1: "reused"}
    # Other pretraining settings are other networks.
    fit({**params, "images_per_phase": 16}, small, tmp_path / "generators" / "key-3")
    assert len(list(tmp_path.glob("generators/pggan-pretrain-*"))) == 2


def test_a_conditional_fine_tune_starts_as_the_unconditional_pretrained_network(small, related, tmp_path):
    params = {**TINY, "pretrain_data": str(related), "finetune_images": 8, "conditional": True,
              "images_per_phase": 16}
    start = {}

    def hook(info):
        if info["stream"] == "all" and info["step"] == 0:
            start.update({name: snapshot(info[name]) for name in ("generator", "discriminator", "ema")})

    fit(params, small, tmp_path / "generators" / "key", chosen=(0, 1), hook=hook)
    import torch

    (pretrained,) = tmp_path.glob("generators/pggan-pretrain-*")
    saved = torch.load(pretrained / "generator.pt", weights_only=True)["train_generator"]
    # The class embedding starts at 0 (in the moving average too): the pretrained network exactly.
    assert not start["generator"]["embed.weight"].any() and not start["ema"]["embed.weight"].any()
    assert not start["discriminator"]["embed.weight"].any()
    assert states_equal({k: v for k, v in start["generator"].items() if k != "embed.weight"}, saved)


def test_dcgan_fine_tunes_from_the_pretrained_pair_and_reuses_it(small, related, tmp_path):
    import torch

    from automl.augment.pggan import state_digest

    params = {"epochs": 2, "batch_size": 4, "width": 4, "output_size": 16, "pretrain_data": str(related),
              "pretrain_epochs": 2}
    # The framework's own path: the pretrained pair sits in the store's generators folder beside the fit.
    spec = AugmentSpec(type="dcgan", ratio=1.0, params=params)
    augmenter = build_augmenter("dcgan", params)
    out = augment(small.items, small.classes, spec, generated_dir=tmp_path / "generated",
                  generators_dir=tmp_path / "generators", seed=0, progress=False, augmenter=augmenter)
    assert augmenter.trained_ == {"pretrain": "trained", 1: "trained"} and len(out.items) == 3
    (pretrained,) = tmp_path.glob("generators/dcgan-pretrain-*")
    saved = torch.load(pretrained / "generator.pt", weights_only=True)
    assert saved["finished"] and {"generator", "discriminator"} <= set(saved)
    assert saved["config"]["images"] == 7 and saved["config"]["epochs"] == 2
    work = Path(out.record["generator_folder"])
    assert work.parent == pretrained.parent
    training = json.loads((work / "class-1" / "training.json").read_text())
    assert training["pretrained"] == pretrained.name
    # The fine-tune's generator as it began (its digest, taken from the network): the pretrained one.
    assert training["initial_generator_sha256"] == state_digest(saved["generator"])
    fine_tuned = torch.load(work / "class-1" / "generator.pt", weights_only=True)["generator"]
    assert state_digest(fine_tuned) != training["initial_generator_sha256"]  # and then it learned

    # A re-run with a larger ratio reuses the class's generator (and so never needs the pretrained pair);
    # another class reuses the pretrained pair.
    again = build_augmenter("dcgan", params)
    more = augment(small.items, small.classes, AugmentSpec(type="dcgan", ratio=2.0, params=params),
                   generated_dir=tmp_path / "generated", generators_dir=tmp_path / "generators", seed=0,
                   progress=False, augmenter=again)
    assert again.trained_ == {1: "reused"} and more.record["reused"] == 3 and more.record["generated"] == 3
    both = build_augmenter("dcgan", params)
    both.fit(by_class(small), small.classes, [0, 1], work, 0, progress=False)
    assert both.trained_ == {"pretrain": "reused", 0: "trained", 1: "reused"}


def test_dcgan_without_pretrain_data_keeps_its_fit_key():
    # Generators fitted before pretrain_data existed are still found.
    signature = build_augmenter("dcgan", {}).fit_signature()
    assert "pretrain_data" not in signature and "pretrain_epochs" not in signature
    assert build_augmenter("dcgan", {"pretrain_data": "x"}).fit_signature()["pretrain_data"] == "x"


@pytest.mark.parametrize("kind", ["pggan", "dcgan"])
def test_a_pretrain_dataset_holding_this_data_and_more_is_refused(kind, small, tmp_path):
    from automl.augment.pggan import pretrain_images

    train = by_class(small)
    # This very folder (its fit would hold out test images from it) holds the training images and others.
    superset = class_folders(tmp_path / "superset", {"big": 5, "small": 3, "extra": 2}, size=(20, 16))
    augmenter = build_augmenter(kind, {"pretrain_data": str(superset)})
    with pytest.raises(DataError, match="may be this data's test images"):
        pretrain_images(augmenter, {c: items[:-1] for c, items in train.items()})  # one image per class held out
    # Exactly its training images (pooling its own classes): nothing unseen, accepted.
    mine = build_augmenter(kind, {"pretrain_data": str(small.root)})
    assert len(pretrain_images(mine, train)) == 8
    # Missing: refused by preflight, before any baseline, naming the parameter.
    missing = build_augmenter(kind, {"pretrain_data": str(tmp_path / "nope")})
    with pytest.raises(DataError, match="pretrain_data.*not found"):
        missing.preflight()


@pytest.mark.parametrize("params, fragments", [
    ({"max_size": 48}, ["'max_size' parameter of augmenter 'pggan' must be an int among {8, 16, 32, 64, 128, 256, "
                        "512}. Got 48"]),
    ({"images_per_phase": 0}, ["'images_per_phase' parameter", "range [1, inf). Got 0"]),
    ({"batch_size": 1}, ["'batch_size' parameter", "Got 1"]),
    ({"conditional": "yes"}, ["parameter 'conditional' must be bool"]),
    ({"conditional": True, "sampler": "random:2"}, ["'sampler' parameter", "must be 'all' with conditional: true"]),
    ({"finetune_images": 100}, ["'finetune_images' parameter", "must be 0 without pretrain_data", "set pretrain_data"]),
    ({"latent": 512}, ["no parameter 'latent'", "valid parameters: batch_size, conditional, drift, finetune_images"]),
])
def test_bad_parameters_name_the_parameter_and_the_fix(params, fragments):
    with pytest.raises(ConfigError) as built:
        build_augmenter("pggan", params)
    with pytest.raises(ValueError) as validated:  # the same error when a recipe is validated
        AugmentSpec(type="pggan", params=params)
    for fragment in fragments:
        assert fragment in str(built.value) and fragment in str(validated.value)


# --- samplers ----------------------------------------------------------------------------------------------


def test_a_sampler_chooses_what_a_class_network_sees(small, tmp_path):
    augmenter = fit({**TINY, "sampler": "random:2"}, small, tmp_path / "work", chosen=(0,))
    assert json.loads((tmp_path / "work" / "class-0" / "training.json").read_text())["images"] == 2
    assert augmenter.provenance(0, [0, 1]) is None  # not clustering: the framework's (no) sources


def test_the_cluster_sampler_trains_a_network_per_kept_cluster(small, tmp_path, monkeypatch):
    from automl.augment import clusters

    def embed(self, items, work_dir, seed, progress=True):  # two tight groups: the first 3 images, the other 2
        rows = np.array([[1.0, 0.0, 0.01 * i] if i < 3 else [0.0, 1.0, 0.01 * i] for i in range(len(items))])
        return rows, self.extractor_key(seed)

    monkeypatch.setattr(clusters.ClusterSampler, "embed", embed)
    params = {**TINY, "sampler": "cluster:k=2,top=3,weights=none,size=75"}
    augmenter = fit(params, small, tmp_path / "work", chosen=(0,))
    assert augmenter.trained_ == {(0, 0): "trained", (0, 1): "trained"}
    folders = sorted(p.name for p in (tmp_path / "work").glob("class-0-cluster-*"))
    assert len(folders) == 2 and (tmp_path / "work" / "clusters.json").is_file()
    images = augmenter.generate(0, list(range(5)), [None] * 5, 0)
    assert all(im.shape == (24, 24, 3) for im in images)
    made = augmenter.provenance(0, list(range(5)))
    assert {m["cluster"] for m in made} == {0, 1} and all(m["sources"] == [] for m in made)
    assert fit(params, small, tmp_path / "work", chosen=(0,)).trained_ == {(0, 0): "reused", (0, 1): "reused"}
