"""``sampler: cluster`` (automl/augment/clusters.py): the clustering on planted feature rows, the split
of a class's images over its clusters, the spec in the ``sampler`` parameter, and a DCGAN per kept
cluster end to end (tiny images, a tiny random-weight Keras model file as the extractor)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from automl.augment import AUGMENTERS, build_augmenter
from automl.augment.clusters import (ClusterSampler, allocate, find_clusters, read_summary, split_counts,
                                     summary_rows)
from automl.augment.generate import augment
from automl.augment.plan import AugmentSpec
from automl.data import load_dataset
from automl.errors import ConfigError, MissingDependencyError

TINY_GAN = {"epochs": 1, "batch_size": 4, "width": 4, "output_size": 16}


def planted(tight: int = 6, scattered: int = 10, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list, list]:
    """Rows: a tight bundle around one direction (the i-th a little farther out than the one before),
    and rows scattered at random; returns (features, tight rows, scattered rows), interleaved."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim)
    rows = [centre + 0.02 * (1 + i) * rng.normal(size=dim) * np.linalg.norm(centre) / np.sqrt(dim)
            for i in range(tight)]
    rows += [rng.normal(size=dim) for _ in range(scattered)]
    order = rng.permutation(len(rows))
    where = {int(old): new for new, old in enumerate(order)}
    return (np.stack([rows[i] for i in order]), [where[i] for i in range(tight)],
            [where[i] for i in range(tight, len(rows))])


# --- the clustering --------------------------------------------------------------------------------------


def test_picks_the_planted_tight_cluster_over_a_larger_scattered_one():
    x, tight, scattered = planted()
    found = find_clusters(x, k=2, top=3, seed=0)
    assert [c.size for c in found] == [10, 6]  # ids by size: the scattered rows are the larger cluster
    big, small = found
    assert sorted(big.members) == sorted(scattered) and sorted(small.members) == sorted(tight)
    assert [c for c in found if c.kept] == [small]  # the default thresholds keep the tight one only
    assert small.similarity > 0.95 and small.spread < 0.05
    assert big.similarity < 0.5 and big.spread > 0.05
    # Its top images are the ones nearest the centroid: the planted bundle's first rows.
    assert small.top == tuple(tight[:3]) and small.members[:3] == small.top


def test_thresholds_decide_what_is_kept():
    x, tight, scattered = planted()
    everything = find_clusters(x, k=2, min_similarity=-1.0, max_spread=1.0, seed=0)
    assert all(c.kept for c in everything)
    spread_only = find_clusters(x, k=2, min_similarity=-1.0, max_spread=0.05, seed=0)
    assert [sorted(c.members) for c in spread_only if c.kept] == [sorted(tight)]
    assert not any(c.kept for c in find_clusters(x, k=2, min_similarity=0.9999, seed=0))
    # A single image has no within-cluster similarity: never kept, whatever the thresholds.
    lone = find_clusters(np.eye(3), k=3, min_similarity=-1.0, max_spread=1.0, seed=0)
    assert [(c.size, c.similarity, c.kept) for c in lone] == [(1, None, False)] * 3


def test_clusters_are_deterministic_by_seed_and_k_is_capped_by_the_rows():
    x, _, _ = planted(seed=4)
    assert find_clusters(x, k=3, seed=7) == find_clusters(x, k=3, seed=7)
    assert len(find_clusters(x[:2], k=4, seed=0)) == 2
    same = np.repeat(x[:1], 5, axis=0)  # identical images: one cluster, however many were asked for
    (only,) = find_clusters(same, k=3, seed=0)
    assert only.size == 5 and only.similarity == pytest.approx(1.0) and only.kept
    with pytest.raises(ValueError, match="NaN"):
        find_clusters(np.full((3, 2), np.nan))


def test_the_count_is_split_by_size_and_image_k_never_moves():
    assert split_counts([6, 3, 1], 10) == [6, 3, 1]  # exactly proportional at the total
    assert split_counts([6, 3, 1], 20) == [12, 6, 2]
    assert split_counts([6, 3, 1], 5) == [3, 2, 0]  # largest remainders: 3.0, 1.5, 0.5 -> the 3-cluster's
    assert split_counts([1], 4) == [4]
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(1, 40, rng.integers(1, 7)).tolist()
        total = sum(sizes)
        order = allocate(sizes, 2 * total + 3)
        counts = np.zeros(len(sizes), int)
        for n, j in enumerate(order, 1):
            counts[j] += 1
            share = n * np.array(sizes) / total
            assert (np.floor(share) <= counts).all() and (counts <= np.ceil(share)).all(), (sizes, n)
        assert allocate(sizes, 7) == order[:7]  # a larger count only adds images
    with pytest.raises(ValueError):
        allocate([3, 0], 2)


@pytest.mark.skipif(importlib.util.find_spec("faiss") is not None, reason="faiss is installed here")
def test_faiss_is_used_only_when_asked_and_says_how_to_install_it():
    x, _, _ = planted()
    with pytest.raises(MissingDependencyError, match="faiss"):
        find_clusters(x, k=2, kmeans="faiss")


# --- the spec in the sampler parameter ---------------------------------------------------------------------


def test_the_spec_is_stored_whole_so_two_spellings_share_a_cache_key():
    full = ("cluster:k=4,top=20,min_similarity=0.5,max_spread=0.2,extractor=inception-v3,weights=imagenet,size=299,"
            "kmeans=sklearn")
    assert ClusterSampler.parse("cluster").text() == full
    for name in ("dcgan", "sd-dreambooth", "sd-lora", "sd-textual-inversion"):
        cls = AUGMENTERS.get(name)  # the class itself: build_augmenter would import torch and diffusers
        assert cls(sampler="cluster").params["sampler"] == full
        assert cls(sampler="cluster:k=4, weights=imagenet").params["sampler"] == full
    other = ClusterSampler.parse("cluster:extractor=Inception_V3,weights=None,size=75,top=5")
    assert (other.extractor, other.weights, other.size, other.top) == ("inception-v3", "none", 75, 5)
    assert ClusterSampler.parse(other.text()) == other
    # A model file's own options, and a comma in its path, stay the extractor's.
    spec = ClusterSampler.parse("cluster:extractor=file:/m/a,b.keras?mean=127.5:127.5:127.5&std=64,k=2")
    assert spec.k == 2 and spec.extractor.startswith("file:/m/a,b.keras?") and "std=64" in spec.extractor
    assert AUGMENTERS.get("dcgan")(sampler="random:5").params["sampler"] == "random:5"  # others as written


@pytest.mark.parametrize("name", ["dcgan", "sd-dreambooth", "sd-lora", "sd-textual-inversion"])
@pytest.mark.parametrize("spec, match", [
    ("cluster:3", r"'3' is not an option; give key=value pairs among k, top, min_similarity"),
    ("cluster:kk=3", r"'kk=3' is not an option"),
    ("cluster:k=0", r"option 'k' must be an int in the range \[1, inf\); got 0"),
    ("cluster:k=two", r"option 'k' must be an int; got 'two'"),
    ("cluster:k=2,k=3", r"option 'k' is given twice"),
    ("cluster:min_similarity=1.5", r"option 'min_similarity' must be a float in the range \[-1.0, 1.0\]"),
    ("cluster:max_spread=-0.1", r"option 'max_spread'"),
    ("cluster:extractor=clip", r"option 'extractor': unknown extractor 'clip'; valid names: .*inception-v3"),
    ("cluster:size=32", r"option 'size' must be at least 75 for inception-v3"),
    ("cluster:kmeans=scipy", r"option 'kmeans' must be a str among \{'sklearn', 'faiss'\}"),
    ("clusters:k=3", r"unknown sampler 'clusters'; valid: all, cluster, random"),
])
def test_bad_sampler_specs_are_refused_naming_the_parameter(name, spec, match):
    with pytest.raises(ConfigError, match=match) as built:
        build_augmenter(name, {"sampler": spec})
    assert f"The 'sampler' parameter of augmenter {name!r}" in str(built.value)
    assert f"Got {spec!r} instead" in str(built.value)
    with pytest.raises(ValueError, match=match):  # the same error when a recipe is validated
        AugmentSpec(type=name, params={"sampler": spec})


def test_multi_class_dreambooth_has_no_per_class_clusters():
    with pytest.raises(ConfigError, match=r"'sampler' parameter of augmenter 'sd-lora' must be all or random:N in "
                                          r"multi-class mode .* Fix: mode: single-class"):
        build_augmenter("sd-lora", {"sampler": "cluster", "mode": "multi-class"})


def test_a_missing_weights_file_fails_in_preflight(tmp_path):
    from automl.errors import WeightsUnavailableError

    augmenter = build_augmenter("dcgan", {"sampler": f"cluster:weights={tmp_path / 'gone.h5'}"})
    with pytest.raises(WeightsUnavailableError, match="gone.h5"):
        augmenter.preflight()


# --- a DCGAN per kept cluster, end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor_file(tmp_path_factory) -> Path:
    """A tiny Keras model with random (seeded) weights: an extractor that loads in a second or two."""
    from automl.extractors import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    path = tmp_path_factory.mktemp("extractor") / "tiny.keras"
    keras.Model(inputs, x).save(path)
    return path


@pytest.fixture
def planted_data(tmp_path):
    """Class "a" (10 noise images) and the minority class "b": 5 near-copies of one smooth image
    (a tight cluster) and 3 noise images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(10):
        _png(root / "a" / f"a_{i}.png", rng.integers(0, 256, (16, 16, 3)))
    ramp = np.linspace(30, 220, 16)[None, :, None] * np.ones((16, 1, 3))
    for i in range(5):
        _png(root / "b" / f"tight_{i}.png", ramp + rng.normal(0, 2, ramp.shape))
    for i in range(3):
        _png(root / "b" / f"noise_{i}.png", rng.integers(0, 256, (16, 16, 3)))
    return load_dataset(root)


def _png(path: Path, pixels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def one_torch_thread():
    """The networks here are tiny: one thread is faster, and far faster when other jobs share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_dcgan_per_kept_cluster_records_the_cluster_and_reuses_everything(planted_data, tmp_path, extractor_file,
                                                                         monkeypatch, one_torch_thread):
    import automl.augment.clusters as clusters_module

    store = tmp_path / "store"
    # Thresholds that keep both clusters, so both get a DCGAN and images.
    params = {**TINY_GAN, "sampler": f"cluster:k=2,top=4,extractor=file:{extractor_file},min_similarity=-1,"
                                     "max_spread=1"}

    def run(ratio, augmenter=None):
        return augment(planted_data.items, planted_data.classes,
                       AugmentSpec(type="dcgan", ratio=ratio, params=params), generated_dir=store / "generated",
                       generators_dir=store / "generators", seed=0, progress=False, augmenter=augmenter)

    first = run(1.0)
    work = Path(first.record["generator_folder"])
    summary = read_summary(work)
    (entry,) = summary["classes"].values()
    assert list(summary["classes"]) == ["b"] and entry["images"] == 8
    assert [(c["id"], c["size"], c["top_images"], c["kept"]) for c in entry["clusters"]] == [(0, 5, 4, True),
                                                                                            (1, 3, 3, True)]
    (state,) = (work / "clusters").glob("class-1-*.json")
    tight = {it.fingerprint for it in planted_data.items if Path(it.path).name.startswith("tight")}
    assert set(json.loads(state.read_text())["clusters"][0]["members"]) == tight  # the planted near-copies

    records = [json.loads(Path(it.path).with_suffix(".json").read_text()) for it in first.items]
    assert len(records) == 8 and all(r["sources"] == [] for r in records)
    assert [r["cluster"] for r in records] == [[0, 1][j] for j in allocate([5, 3], 8)]
    folders = sorted(p.name for p in work.glob("class-1-cluster-*"))
    assert len(folders) == 2 and all((work / f / "generator.pt").is_file() for f in folders)
    rows = summary_rows(summary)  # the report's table: the planted near-copies are the tighter cluster
    assert [row[:4] + row[6:] for row in rows] == [["b", 0, 5, 4, "yes"], ["b", 1, 3, 3, "yes"]]
    assert float(rows[0][4]) > float(rows[1][4])

    # A re-run with a larger ratio: the clustering, the features and both DCGANs are reused, images
    # 0..7 stay what they were, and the new ones carry their clusters too.
    monkeypatch.setattr(clusters_module.ClusterSampler, "embed",
                        lambda *a, **k: pytest.fail("the features were computed again"))
    augmenter = build_augmenter("dcgan", params)
    more = run(2.0, augmenter)
    assert augmenter.trained_ == {(1, 0): "reused", (1, 1): "reused"}
    assert more.record["generated"] == 8 and more.record["reused"] == 8
    assert [it.fingerprint for it in more.items[:8]] == [it.fingerprint for it in first.items]
    again = [json.loads(Path(it.path).with_suffix(".json").read_text())["cluster"] for it in more.items]
    assert again == [[0, 1][j] for j in allocate([5, 3], 16)] and again.count(0) == 10

    # The report's augmentation section shows the clusters.
    from automl.report.pages import _augmentation_section

    ev = SimpleNamespace(record=SimpleNamespace(augment=more.record, classes=planted_data.classes), baseline=None,
                         notes={}, folder=tmp_path / "run", item=lambda path: None)
    html = _augmentation_section(ev, tmp_path / "run")
    assert "Clusters of each class" in html and "<td>yes</td>" in html


def test_a_class_whose_clusters_are_all_dropped_is_refused(planted_data, tmp_path, extractor_file, one_torch_thread):
    params = {**TINY_GAN, "sampler": f"cluster:k=2,extractor=file:{extractor_file},min_similarity=1.0,max_spread=0"}
    with pytest.raises(ConfigError, match=r"kept none of the 2 cluster\(s\) of class 'b' \(cluster 0: 5 image\(s\), "
                                          r"similarity .*Fix: lower min_similarity"):
        augment(planted_data.items, planted_data.classes, AugmentSpec(type="dcgan", params=params),
                generated_dir=tmp_path / "generated", generators_dir=tmp_path / "generators", progress=False)


# --- Stable Diffusion: a fine-tune per kept cluster (tiny seeded model; seconds per step on a CPU) ----------


@pytest.mark.slow
def test_sd_fine_tunes_per_cluster_and_reuses_them(tiny_sd, tmp_path, extractor_file, monkeypatch):
    import automl.augment.sd_dreambooth as db
    import automl.augment.sd_textual_inversion as ti
    from sd_fixture import TINY_PX

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    ramp = np.linspace(30, 220, 24)[None, :, None] * np.ones((24, 1, 3))
    for i in range(6):
        _png(root / "a" / f"a_{i}.png", rng.integers(0, 256, (24, 24, 3)))
    for i in range(2):  # class b: two near-copies and two noise images, two clusters of two
        _png(root / "b" / f"tight_{i}.png", ramp + rng.normal(0, 2, ramp.shape))
        _png(root / "b" / f"noise_{i}.png", rng.integers(0, 256, (24, 24, 3)))
    data = load_dataset(root)
    sampler = f"cluster:k=2,extractor=file:{extractor_file},min_similarity=-1,max_spread=1"
    cases = {"sd-lora": {"steps": 2, "train_steps": 2, "num_class_images": 2, "prior_steps": 1},
             "sd-textual-inversion": {"steps": 2, "train_steps": 2}}
    for name, params in cases.items():
        params = {**params, "model": str(tiny_sd), "resolution": TINY_PX, "sampler": sampler}

        def run(**more):
            return augment(data.items, data.classes, AugmentSpec(type=name, params={**params, **more}),
                           generated_dir=tmp_path / name / "generated", generators_dir=tmp_path / name / "generators",
                           seed=0, progress=False)

        first = run()
        work = Path(first.record["generator_folder"])
        tunes = sorted(work.glob("class-1-cluster-*"))
        assert len(tunes) == 2 and all((t / "complete.json").is_file() for t in tunes), name
        clusters = [json.loads(Path(it.path).with_suffix(".json").read_text())["cluster"] for it in first.items]
        assert clusters == [[0, 1][j] for j in allocate([2, 2], 4)], name
        assert [c["kept"] for c in read_summary(work)["classes"]["b"]["clusters"]] == [True, True]
        # A generation-only change reuses every fine-tune.
        monkeypatch.setattr(db, "train_model", lambda *a, **k: pytest.fail(f"{name} trained again"))
        monkeypatch.setattr(ti, "train_model", lambda *a, **k: pytest.fail(f"{name} trained again"))
        again = run(guidance_scale=2.0)
        assert again.record["generated"] == 4 and again.record["generator_folder"] == str(work)
        monkeypatch.undo()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
