"""The augmenter contract (automl/augment/base.py), checked for every registered augmenter: a new one
is tested here for free, through the framework's cached generation, with its smallest valid
parameters (``SMALL``; an augmenter not listed there runs with its defaults).

What every augmenter must give: the planned number of images, of the size it promises, labelled
with the class asked for, each with its provenance record; image k the same whatever the batching
and when made alone; and nothing but training images seen. The Stable Diffusion augmenters run on
the tiny seeded model of tests/sd_fixture.py (CPU, offline). A missing package fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: never reach for the network

import numpy as np
import pytest

import fakes  # noqa: F401 - the framework's own test augmenters keep the contract too
from automl.augment import AUGMENTERS, Augmenter, build_augmenter
from automl.augment.generate import TRAIN_SPLITS, augment
from automl.augment.plan import AugmentSpec
from automl.augment.sd_common import SDAugmenter
from automl.data import load_dataset
from automl.errors import ConfigError, DataError
from automl.registry import canonical
from conftest import ROOT, class_folders, write_image
from sd_fixture import TINY_PX, tiny_sd_variations

_SD_TRAIN = {"resolution": TINY_PX, "steps": 2, "train_steps": 2, "num_class_images": 2, "prior_steps": 1}
# name -> (fastest valid parameters, the side of the square images they give; None: the source's size)
SMALL = {
    "conventional": ({"size": 16}, 16),
    "dcgan": ({"epochs": 1, "batch_size": 2, "width": 4, "output_size": 16}, 16),
    "pggan": ({"max_size": 8, "images_per_phase": 4, "batch_size": 2, "width": 4, "output_size": 16}, 16),
    "sd-img2img": ({"resolution": TINY_PX, "steps": 2, "strength": 0.5}, TINY_PX),
    "sd-dreambooth": (_SD_TRAIN, TINY_PX),
    "sd-lora": (_SD_TRAIN, TINY_PX),
    "sd-textual-inversion": ({"resolution": TINY_PX, "steps": 2, "train_steps": 2}, TINY_PX),
    "sd-variations": ({"resolution": TINY_PX, "steps": 2}, TINY_PX),  # on its own tiny model, below
    "test-blobs": ({"size": 16}, 16),
    "folder": ({}, 16),  # its images: the `synthetic_folder` below
}
# Fine-tuning a diffusion model, even a tiny one, costs seconds per step on a CPU.
SLOW = {"sd-dreambooth", "sd-lora", "sd-textual-inversion"}
SEED = 3
NAMES = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in AUGMENTERS.names()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # Class "b" is the minority: the plan makes images for it only.
    return load_dataset(class_folders(tmp_path_factory.mktemp("contract") / "data", {"a": 4, "b": 2}, size=(24, 24)))


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory) -> Path:
    """Images made elsewhere, for the ``folder`` augmenter: more of class b than the plan takes."""
    root = tmp_path_factory.mktemp("synthetic-folder")
    for i in range(6):
        write_image(root / "b" / f"syn_{i}.png", size=(16, 16), seed=500 + i)
    return root


def params_for(name: str, request) -> dict:
    params = dict(SMALL.get(name, ({}, None))[0])
    if name == "folder":
        params["path"] = str(request.getfixturevalue("synthetic_folder"))
    if name == "sd-variations":  # an image-variation model: an image encoder in place of the text encoder
        params["model"] = str(tiny_sd_variations(request.getfixturevalue("tmp_path_factory")))
    elif issubclass(AUGMENTERS.get(name), SDAugmenter):
        params["model"] = str(request.getfixturevalue("tiny_sd"))
    return params


class Spy:
    """An augmenter built from ``params`` whose fit and generate note every item they are handed."""

    def __init__(self, name: str, params: dict):
        self.augmenter = build_augmenter(name, params)  # a missing package fails here, naming it
        self.seen: list = []
        fit, generate = self.augmenter.fit, self.augmenter.generate

        def spy_fit(train, classes, chosen, work_dir, seed, progress=True):
            self.seen += [it for items in (train or {}).values() for it in items]
            return fit(train, classes, chosen, work_dir, seed, progress)

        def spy_generate(label, indices, sources, seed):
            self.seen += [s for s in sources if s is not None]
            return generate(label, indices, sources, seed)

        self.augmenter.fit, self.augmenter.generate = spy_fit, spy_generate


@pytest.fixture(scope="module", params=NAMES)
def made(request, data, tmp_path_factory):
    """One augmenter's images, made three ways: 2 then 2 more in one store, all 4 at once in another
    (the fit is shared: its folder is keyed the same)."""
    import torch

    name = request.param
    params = params_for(name, request)
    root = tmp_path_factory.mktemp(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and fair to other jobs on the cores
    try:
        def run(generated: str, ratio: float):
            spy = Spy(name, params)
            spec = AugmentSpec(type=name, ratio=ratio, params=params)
            syn = augment(data.items, data.classes, spec, generated_dir=root / generated,
                          generators_dir=root / "generators", seed=SEED, progress=False, augmenter=spy.augmenter)
            return syn, spy.seen

        first, seen_first = run("in-two-goes", 1.0)
        more, seen_more = run("in-two-goes", 2.0)
        at_once, seen_at_once = run("at-once", 2.0)
    finally:
        torch.set_num_threads(threads)
    return {"name": name, "params": params, "first": first, "more": more, "at_once": at_once,
            "seen": seen_first + seen_more + seen_at_once, "root": root}


def pixels(items) -> list[np.ndarray]:
    return [np.asarray(it.load()) for it in items]


def record_of(item) -> dict:
    return json.loads(Path(item.path).with_suffix(".json").read_text())


def test_count_size_label_and_provenance(made, data):
    name, syn = made["name"], made["at_once"]
    b = data.classes.index("b")
    real_b = {it.fingerprint: it for it in data.items if it.label == b}
    assert [made["first"].record["generated"], made["more"].record["generated"]] == [2, 2]
    assert made["more"].record["reused"] == 2
    assert len(syn.items) == 4 and syn.record["synthetic_per_class"] == {"b": 4}
    cls = AUGMENTERS.get(name)
    side = SMALL.get(name, ({}, None))[1]
    for k, (item, image, sources) in enumerate(zip(syn.items, pixels(syn.items), syn.sources)):
        assert item.label == b and item.split == "synthetic"
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        record = record_of(item)
        assert (record["index"], record["label"], record["class"]) == (k, b, "b")
        assert record["augmenter"] == name and record["seed"] == SEED
        assert record["params"] == json.loads(json.dumps(build_augmenter(name, made["params"]).params, default=str))
        assert record["fingerprint"] == item.fingerprint
        assert (record["height"], record["width"]) == image.shape[:2] == (item.height, item.width)
        if cls.uses_sources:  # made from one training image of its own class, and says which
            assert len(sources) == 1 and sources[0] in real_b
            assert [s["fingerprint"] for s in record["sources"]] == list(sources)
        else:  # none, or those its own provenance names (folder: any number, of any class): training images
            assert set(sources) <= {it.fingerprint for it in data.items}
            assert [s["fingerprint"] for s in record["sources"]] == list(sources)
            if cls.provenance is Augmenter.provenance:
                assert sources == ()
        if side is not None:
            assert image.shape[:2] == (side, side)
        elif cls.uses_sources:
            assert image.shape[:2] == real_b[sources[0]].load().shape[:2]
    assert len({im.tobytes() for im in pixels(syn.items)}) > 1, "every image is the same"


def test_image_k_is_the_same_whatever_the_batching(made):
    in_two_goes, at_once = pixels(made["more"].items), pixels(made["at_once"].items)
    assert len(in_two_goes) == len(at_once) == 4
    for k, (a, b) in enumerate(zip(in_two_goes, at_once)):
        assert np.array_equal(a, b), f"image {k} differs when made 2 + 2 and 4 at once"
    assert made["more"].sources == made["at_once"].sources


def test_image_k_made_alone_or_out_of_order(made, data):
    import torch

    name, syn = made["name"], made["at_once"]
    b = data.classes.index("b")
    by_fp = {it.fingerprint: it for it in data.items}
    sources = [by_fp[s[0]] if s else None for s in syn.sources]
    images = pixels(syn.items)
    augmenter = build_augmenter(name, made["params"])
    train = {c: [it for it in data.items if it.label == c] for c in range(len(data.classes))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The fit folder the framework used, so a fitting augmenter reloads instead of training again.
        augmenter.fit(train, data.classes, [b], Path(syn.record["generator_folder"]), SEED, False)
        alone = augmenter.generate(b, [3], [sources[3]], SEED)
        reversed_order = augmenter.generate(b, [2, 0], [sources[2], sources[0]], SEED)
    finally:
        augmenter.close()
        torch.set_num_threads(threads)
    assert np.array_equal(alone[0], images[3])
    assert np.array_equal(reversed_order[0], images[2]) and np.array_equal(reversed_order[1], images[0])


def test_sees_the_training_split_only(made, data, tmp_path):
    train_fps = {it.fingerprint for it in data.items}
    assert made["seen"], "the augmenter was handed no training image"
    assert all(it.split in TRAIN_SPLITS and it.fingerprint in train_fps for it in made["seen"])
    # A test image handed in is refused before anything is fitted or written.
    name = made["name"]
    spy = Spy(name, made["params"])
    test_image = replace(data.items[0], split="test")
    with pytest.raises(DataError, match="training split only"):
        augment([*data.items, test_image], data.classes, AugmentSpec(type=name, params=made["params"]),
                generated_dir=tmp_path / "generated", generators_dir=tmp_path / "generators", seed=SEED,
                progress=False, augmenter=spy.augmenter)
    assert spy.seen == [] and not (tmp_path / "generated").exists() and not (tmp_path / "generators").exists()


@pytest.mark.parametrize("name", AUGMENTERS.names())
def test_declares_its_parameters(name):
    cls = AUGMENTERS.get(name)
    assert cls.name == name == canonical(name)
    assert set(cls.constraints) <= set(cls.defaults) and set(cls.fit_params) <= set(cls.defaults)
    if cls.__module__.startswith("automl."):
        assert cls.__module__.startswith("automl.augment."), "an augmenter lives in its own file of automl.augment"
    assert cls().params == cls.defaults  # the defaults are valid and kept as they are
    with pytest.raises(ConfigError, match=f"augmenter '{name}' has no parameter 'no_such'; valid parameters: "):
        cls(no_such=1)


def test_a_new_augmenter_file_is_found_without_a_list(tmp_path):
    # One more file in the package's folder (here: on its path) is found at the first lookup, and
    # looking augmenters up imports no deep-learning package.
    (tmp_path / "tiny_augmenter.py").write_text(
        "from automl.augment.base import Augmenter, register\n\n"
        "@register\nclass Tiny(Augmenter):\n    name = 'tiny-augmenter'\n")
    script = ("import sys, automl.augment as augment\n"
              f"augment.__path__.append({str(tmp_path)!r})\n"
              "print(augment.AUGMENTERS.get('tiny_augmenter').__name__)\n"
              "print([m for m in ('torch', 'torchvision', 'diffusers', 'transformers') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Tiny", "[]"]
