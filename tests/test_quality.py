"""Synthetic-image quality (automl.quality): FID, KID, precision/recall, density/coverage and the
near-copy check, on known cases; `automl quality` end to end; quality.json in an augmented run and
its table in the run report.

The reference implementations below are the textbook formulas, written here with scipy and plain
loops, independent of the module's shortcuts (FID from the singular values of an images x images
matrix; KID's resamples from weighted kernel sums)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg

import fakes  # noqa: F401 - registers the test augmenters
from automl import quality as q
from automl.data import load_dataset, load_images
from conftest import class_folders, run_cli

MOBILENET = "models/mobilenet-v1-embedding/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


def reference_fid(x: np.ndarray, y: np.ndarray) -> float:
    """FID as Heusel et al. and pytorch-fid write it: covariances, scipy's sqrtm, its real part."""
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(root):
        assert np.abs(root.imag).max() < 1e-5  # only rounding: a real root exists for PSD products
        root = root.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def reference_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, one pair at a time (O(n^2) loops)."""
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def _sets(n1, n2, d, seed=0, shift=0.3, scale=1.2):
    rng = np.random.default_rng(seed)
    # Features like a CNN's: positive, with a common offset that dwarfs their spread.
    x = rng.normal(size=(n1, d)) + 5
    y = rng.normal(size=(n2, d)) * scale + 5 + shift
    return x, y


# --- FID and KID ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n1, n2, d", [(200, 150, 16), (30, 45, 64), (60, 60, 8)],
                         ids=["more-images-than-features", "fewer-images-than-features", "equal-sizes"])
def test_fid_and_kid_match_the_textbook_formulas(n1, n2, d):
    x, y = _sets(n1, n2, d)
    assert q.fid(x, y) == pytest.approx(reference_fid(x, y), abs=1e-4)
    # KID: the mean of the plain unbiased MMD over the very same subsets.
    subsets = q.kid_subsets(n1, n2, size=min(n1, n2, 20), count=5, rng=np.random.default_rng(7))
    expected = np.mean([reference_mmd(x[a], y[b]) for a, b in subsets])
    assert q.kid(x, y, seed=7, size=min(n1, n2, 20), count=5) == pytest.approx(expected, abs=1e-4)
    if n1 == n2:  # subsets as large as both sets: one subset, the whole of both
        assert len(q.kid_subsets(n1, n2)) == 1
        assert q.kid(x, y) == pytest.approx(reference_mmd(x, y), abs=1e-4)


def test_identical_sets_give_fid_and_kid_about_zero():
    """FID(X, X) is 0 up to rounding: Tr (S S)^1/2 = Tr S exactly. KID(X, X) is not quite 0: the
    unbiased estimator leaves out each image's pairing with itself within a set but not across the
    two, so one set passed as both gives exactly -2 (mean k(x, x) - mean k(x, y)) / (n - 1) — small,
    O(1/n), and far below the KID of a set that differs."""
    x, y = _sets(80, 80, 32)
    d = x.shape[1]
    assert abs(q.fid(x, x)) < 1e-8 * np.trace(np.cov(x, rowvar=False))
    k = (x @ x.T / d + 1) ** 3
    expected = -2 * (np.diag(k).mean() - k.mean()) / (len(x) - 1)
    assert q.kid(x, x) == pytest.approx(expected, rel=1e-9)
    assert abs(q.kid(x, x)) < 0.1 * q.kid(x, y)  # 6 % here, at n = 80
    # Two independent samples of one distribution: KID's interval holds 0; FID is small next to a shift.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(150, 16)) + 5, rng.normal(size=(150, 16)) + 5
    same = q.compare_sets(a, b, rng=np.random.default_rng(0))
    differs = q.compare_sets(a, b + 0.5, rng=np.random.default_rng(0))
    assert same["kid_interval"][0] <= 0 <= same["kid_interval"][1]
    assert differs["kid_interval"][0] > 0 and same["fid"] < differs["fid_interval"][0]
    assert same["fid_interval"][0] <= same["fid"] <= same["fid_interval"][1]


def test_intervals_are_seeded_and_bracket_the_estimate():
    x, y = _sets(60, 50, 24)
    one = q.compare_sets(x, y, rng=np.random.default_rng(3))
    assert one == q.compare_sets(x, y, rng=np.random.default_rng(3))
    assert one != q.compare_sets(x, y, rng=np.random.default_rng(4))
    for key in ("fid", "kid"):
        lo, hi = one[f"{key}_interval"]
        assert lo < one[key] < hi
    # Too few images: nothing is invented.
    few = q.compare_sets(x[:1], y, rng=np.random.default_rng(0))
    assert few["fid"] is None and few["precision"] is None and "fewer than 2" in few["note"]


# --- precision, recall, density, coverage -----------------------------------------------------------


def test_manifold_metrics_on_points_counted_by_hand():
    """Real points at x = 0..9 on a line, k = 1: every real ball has radius 1.
    Synthetic: (0.5, 0) inside the balls of 0 and 1; (5, 0.9) inside 5's ball only (4 and 6 are
    sqrt(1.81) away); (20, 0) and (5, 1.1) inside none. Precision 2/4. Their own k=1 radii:
    (0.5, 0): 4.59 to (5, 0.9), which covers reals 0..5 (5 is 4.5 away); (20, 0): 15.03, which
    covers 5..9; so recall 10/10. Density (2 + 1) / (1 x 4); coverage: reals 0, 1 and 5, 3/10."""
    real = np.stack([np.arange(10.0), np.zeros(10)], axis=1)
    fake = np.array([[0.5, 0], [20, 0], [5, 0.9], [5, 1.1]])
    assert q.precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert q.density_coverage(real, fake, k=1) == (0.75, 0.3)
    # k = 2: the two end points' radius grows to 2, the others' stays 1: (0.5, 0) is in 0's and 1's
    # balls, (5, 0.9) in 5's, (20, 0) is 11 from 9: density (2 + 1) / (2 x 4), coverage unchanged.
    assert q.density_coverage(real, fake, k=2) == (0.375, 0.3)
    # Identical sets: everything inside; density (k + 1) / k, as each ball holds its centre and k others.
    assert q.precision_recall(real, real, k=3) == (1.0, 1.0)
    assert q.density_coverage(real, real, k=5)[1] == 1.0


# --- noise vs conventional augmentation, in a real extractor's features ------------------------------


def test_noise_scores_far_worse_than_conventional_augmentations(shared):
    """40 BreastMNIST training images of one class; 40 conventional augmentations of them (flips,
    rotation, crop, AutoAugment) and 40 noise images of the same size, all in the features of the
    real ImageNet-pretrained MobileNet (random-weight networks do not tell noise from scans reliably).
    Measured: FID about 230 vs 910, KID 0.29 vs 5.3, precision 0.33 vs 0."""
    from automl.augment import build_augmenter
    from automl.extractors import build_extractor
    from automl.images import decode_array

    real = [it for it in load_dataset(shared / "data" / "breastmnist.npz").split("train") if it.label == 0][:40]
    conventional = build_augmenter("conventional").generate(0, list(range(40)), real, seed=0)
    rng = np.random.default_rng(0)
    noise = [np.repeat(rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), 3, axis=2) for _ in range(40)]
    extractor = build_extractor(f"file:{shared / MOBILENET}")

    def embed(images):
        return extractor(np.stack([decode_array(a, extractor.image_size) for a in images]))

    x = embed([it.load(None) for it in real])
    good = q.compare_sets(x, embed(conventional), rng=np.random.default_rng(0))
    bad = q.compare_sets(x, embed(noise), rng=np.random.default_rng(0))
    assert good["fid_interval"][1] < bad["fid_interval"][0] and bad["fid"] > 2 * good["fid"]
    assert good["kid_interval"][1] < bad["kid_interval"][0] and bad["kid"] > 5 * good["kid"]
    for key in ("precision", "recall", "density", "coverage"):
        assert good[key] > 0.1 and bad[key] == 0.0, key


# --- copies ----------------------------------------------------------------------------------------


def _png(path, pixels):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def copies_case(tmp_path):
    """Six real noise images (distinct: pixel r about 0 between them) and five synthetic ones."""
    rng = np.random.default_rng(0)
    real_pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    for i, pixels in enumerate(real_pixels):
        _png(tmp_path / "real" / ("a" if i < 3 else "b") / f"r{i}.png", pixels)
    real = load_dataset(tmp_path / "real").items
    by_name = {it.path.rsplit("/", 1)[1]: it for it in real}
    noisy = np.clip(real_pixels[1] + rng.normal(0, 8, (32, 32, 3)), 0, 255).astype(np.uint8)
    synthetic = {
        "exact": (real_pixels[0], ()),  # a copy of r0, made from no image (a DCGAN's, say)
        "noisy": (noisy, ()),  # r1 under noise of 8 grey levels
        "mirror": (real_pixels[4][:, ::-1].copy(), ()),  # r4 flipped left-right
        "own-source": (real_pixels[2], (by_name["r2.png"].fingerprint,)),  # r2, made from r2: allowed
        "unrelated": (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), ()),
    }
    files = []
    for name, (pixels, _) in synthetic.items():
        files.append(tmp_path / "synthetic" / f"{name}.png")
        _png(files[-1], pixels)
    made = [replace(it, label=0, split="synthetic") for it in load_images(files)[0]]  # class a
    return real, by_name, made, [s for _, s in synthetic.values()]


def test_the_copy_check_flags_copies_not_unrelated_images_and_skips_the_source(copies_case):
    real, by_name, synthetic, sources = copies_case
    found = {rec["path"].rsplit("/", 1)[1][:-4]: rec for rec in q.find_copies(real, synthetic, sources, {})}
    assert found["exact"]["pixel"]["nearest"] == by_name["r0.png"].path
    assert found["exact"]["pixel"]["similarity"] == pytest.approx(1.0)
    assert found["noisy"]["pixel"]["nearest"] == by_name["r1.png"].path
    assert q.PIXEL_COPY <= found["noisy"]["pixel"]["similarity"] < 0.999
    assert found["mirror"]["pixel"]["nearest"] == by_name["r4.png"].path
    assert [n for n, rec in found.items() if rec["near_copy"]] == ["exact", "noisy", "mirror"]
    # The copy of its own source is judged against the other images only: far from all of them.
    assert found["own-source"]["pixel"]["nearest"] != by_name["r2.png"].path
    assert found["own-source"]["pixel"]["similarity"] < 0.3 and found["unrelated"]["pixel"]["similarity"] < 0.3
    # Feature space too: the same search, by cosine, with the same source left out.
    features = {"f": (np.eye(6), np.eye(6)[[0, 1, 4, 2, 3]] + 0.01)}
    by_feature = q.find_copies(real, synthetic, sources, features)
    assert [rec["f"]["nearest"] for rec in by_feature][:3] == [by_name[f"r{i}.png"].path for i in (0, 1, 4)]
    assert by_feature[3]["f"]["nearest"] != by_name["r2.png"].path


def test_measure_writes_a_record_per_class_with_copy_counts(copies_case):
    real, by_name, synthetic, sources = copies_case
    rng = np.random.default_rng(0)
    items = real + synthetic
    features = {"x": rng.normal(size=(len(items), 8)), "y": rng.normal(size=(len(items), 4))}
    variant = SimpleNamespace(real=real, sources=sources, record={"variant": "test-shift x1 all", "augmenter": "t"})
    keys = {"x": {"extractor": "x", "weights": "random:seed=0", "image_size": 75, "precision": "float32"}}
    record = q.measure(items, list(range(len(items))), features, variant, ["a", "b"], keys=keys, seed=0)
    assert [e["name"] for e in record["extractors"]] == ["x", "y"]
    assert record["extractors"][0]["description"] == "x (weights random:seed=0, 75 px, float32)"
    row, = record["extractors"][0]["rows"]  # only class a has synthetic images: no "all" row
    assert (row["class"], row["n_real"], row["n_synthetic"], row["near_copies"]) == ("a", 3, 5, 3)
    assert record["copies"]["per_class"] == {"a": {"synthetic": 5, "near_copies": 3, "real": 3,
                                                   "real_with_a_near_copy": 0}}
    assert json.loads(json.dumps(record)) == record  # plain JSON
    assert record["extractors"] == q.measure(items, list(range(len(items))), features, variant, ["a", "b"],
                                             keys=keys, seed=0)["extractors"]  # seeded
    text = q.quality_text(record)
    assert "in the features of x (weights random:seed=0, 75 px, float32)" in text
    assert "a: 3 of 5 synthetic images are near-copies" in text and "r0.png" in text


# --- automl quality, and quality.json in every augmented run ------------------------------------------


def test_cli_quality_prints_the_table_in_the_named_extractors_features(shared, tmp_path, capsys):
    data = class_folders(tmp_path / "data", {"big": 10, "small": 6}, size=(32, 32))
    model = f"file:{shared / MOBILENET}"
    args = ("quality", data, "--augment", "test-shift", "--classes", "all", "-e", model, "--store", tmp_path / "store",
            "--no-progress")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "test-shift x1 all vs the real training images, in the features of " \
           "file:mobilenet_v1_1.0_224_quant_embedding_extractor.tflite (weights file:" in out
    assert all(f"\n{c} " in out for c in ("big", "small", "all")) and "FID [95 % interval]" in out
    # test-shift rolls its source by a pixel or two and adds noise: a near-copy of its source, which is
    # left out, and of nothing else (the other images are independent noise).
    assert "small: 0 of 5 synthetic images are near-copies; 0 of 5 real images have a near-copy" in out
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    record, = json.loads(out)
    assert [r["class"] for r in record["extractors"][0]["rows"]] == ["big", "small", "all"]
    assert record["extractors"][0]["key"]["extractor"] == "file:mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
    everything = record["extractors"][0]["rows"][-1]
    assert len(record["copies"]["images"]) == everything["n_synthetic"] == everything["n_real"]  # ratio 1
    assert not any(c["near_copy"] for c in record["copies"]["images"])


@pytest.mark.parametrize("args, message", [
    (("--augment", "no-such-augmenter"), "unknown augmenter 'no-such-augmenter'; valid names: conventional"),
    ((), "give the augmentation variant to measure: --augment NAME"),
])
def test_cli_quality_refuses_bad_input_naming_the_flag(tmp_path, capsys, args, message):
    data = class_folders(tmp_path / "data", {"big": 6, "small": 4})
    code, out, err = run_cli(capsys, "quality", data, *args, "--store", tmp_path / "store")
    said = " ".join(err.replace("│", " ").split())  # the message as typer boxes it, unwrapped
    assert code == 2 and "Invalid value for --augment" in said and message in said, err
    assert not (tmp_path / "store").exists()


def test_an_augmented_fit_saves_quality_json_and_its_report_shows_it(shared, tmp_path):
    import automl

    data = class_folders(tmp_path / "data", {"big": 10, "small": 6}, size=(32, 32))
    run = automl.fit(data, augment="test-shift", extractors=f"file:{shared / MOBILENET}", heads="logreg-elasticnet",
                     trials=2, cv=2, store=str(tmp_path / "store"))
    record = json.loads((run.folder / "quality.json").read_text())
    assert record["variant"] == "test-shift x1 minority" and record["settings"]["pixel_copy"] == q.PIXEL_COPY
    extractor, = record["extractors"]
    assert extractor["key"] == run.record.extractor_key
    row, = extractor["rows"]
    assert (row["class"], row["n_synthetic"]) == ("small", run.record.train_images["synthetic"])
    assert not (run.baseline.folder / "quality.json").exists()  # the original-data run has no synthetic images
    page = (run.folder / "report.html").read_text()
    assert "<h3>Synthetic image quality</h3>" in page and "FID [95 % interval]" in page
    assert "in the features of file:mobilenet_v1_1.0_224_quant_embedding_extractor.tflite" in page
    assert "small: 0 of 5 synthetic images are near-copies" in page


def test_the_run_report_shows_near_copies_beside_what_they_copy_and_says_when_quality_is_missing(tmp_path):
    """A run folder as fit writes it (tests/test_report_html.py), first without quality.json (a run of
    an earlier version), then with one measured over its images, one synthetic image being a copy of
    a real training image other than its source."""
    import shutil

    from test_report_html import assert_self_contained, make_run

    from automl.report.pages import run_page

    folder, dataset, study = make_run(tmp_path, {"a": (6, 3), "b": (6, 3)}, augment=True)
    page = run_page(folder, dataset=dataset, study=study)
    assert "this run has no quality.json" in page and "automl quality" in page
    assert_self_contained(page)

    generated = Path(json.loads((folder / "run.json").read_text())["augment"]["folder"])
    real = [it for it in dataset.items if it.split == "train"]
    made, sources = [], []
    for png in sorted(generated.glob("*/*.png")):
        rec = json.loads(png.with_suffix(".json").read_text())
        made.append(replace(load_images([png])[0][0], label=rec["label"], split="synthetic"))
        sources.append(tuple(s["fingerprint"] for s in rec["sources"]))
    copied = next(it for it in real if it.label == 0 and it.fingerprint not in sources[0])
    shutil.copyfile(copied.path, made[0].path)  # synthetic image 0 of class a: a copy of another image
    features = {"xception": np.random.default_rng(0).normal(size=(len(real) + len(made), 6))}
    variant = SimpleNamespace(real=real, sources=sources, record={"variant": "test-shift x1 all"})
    record = q.measure(real + made, list(range(len(real) + len(made))), features, variant, dataset.classes,
                       keys={"xception": {"extractor": "xception", "weights": "random:seed=0", "image_size": 71,
                                          "precision": "float32"}})
    (folder / "quality.json").write_text(json.dumps(record))
    page = run_page(folder, dataset=dataset, study=study)
    assert_self_contained(page)
    assert "in the features of xception (weights random:seed=0, 71 px, float32)" in page
    assert "a: 1 of 2 synthetic images are near-copies" in page and "all: 1 of 4 synthetic" in page
    assert "Near-copies (outlined) beside the real image each copies" in page
    assert f"real: {Path(copied.path).name}" in page and "r = 1.000" in page
