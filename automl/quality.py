"""Are a variant's synthetic images any good, and are they copies? Numbers from two feature matrices.

Real training images vs one augmentation variant's synthetic images, per class and overall, in the
feature space of one extractor (FID from different extractors is not comparable, so every output
names the extractor):

- **FID** (Heusel et al. 2017): the Fréchet distance of the two sets' Gaussian fits,
  ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)``. The square root's trace is computed exactly
  without forming it: with ``S1 = F1'F1`` and ``S2 = F2'F2`` (``F``: an image set's centred rows
  over sqrt(n - 1)), ``Tr (S1 S2)^1/2`` is the sum of the singular values of ``F1 F2'`` — an
  (images x images) matrix, not (features x features), real and non-negative by construction, so
  there is no imaginary part to discard and nothing to regularise even when the covariances are
  singular (fewer images than features, the usual case here). 0 for identical sets (to rounding).
- **KID** (Bińkowski et al. 2018): the unbiased estimator of MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over ``KID_SUBSETS`` random subsets of
  ``min(KID_SUBSET_SIZE, n_real, n_synthetic)`` images of each set — subsets sized for small sets;
  when both sets are that size, the one "subset" is the whole of both. Unbiased: it can be
  slightly negative, and is about 0 for two samples of one distribution; one set passed as both
  gives exactly ``-2 (mean k(x, x) - mean of all k(x, y)) / (n - 1)``, a small negative number
  (each image's pairing with itself counts only in the cross term).
- Both with a seeded bootstrap interval (``LEVEL``, ``BOOTSTRAP`` resamples of each set's images):
  the percentile interval shifted by the bootstrap's own bias estimate (mean of the resamples
  minus the estimate), because a resample repeats images and FID's small-sample bias then grows:
  uncorrected, the interval of two identical sets would lie entirely above their FID of 0. FID's
  lower bound is clipped at 0. KID's resamples leave out the pairs of one image with its own repeat
  (those pairs are not two images), so they stay unbiased.
- **Precision / recall** (Kynkäänniemi et al. 2019), k = ``PR_K`` = 3 as in the paper: the share of
  synthetic images inside the real images' manifold (the union of balls around each real image
  reaching its k-th nearest real neighbour), and the share of real images inside the synthetic
  manifold. **Density / coverage** (Naeem et al. 2020), k = ``DC_K`` = 5 as the paper recommends:
  density counts how many real balls hold each synthetic image, over k (about 1 when the
  distributions match, above 1 when synthetic images crowd where real ones are dense); coverage is
  the share of real images whose ball holds a synthetic image. Euclidean distances on the raw
  features; a set of at most k images uses k = n - 1, and the output records the k used.

Copies: each synthetic image's nearest real training image in pixel space (normalised correlation —
Pearson's r over the pixels — of the grayscale images at ``PIXEL_SIZE`` = 32 px, the larger of the
real image's and its mirror image's, so a flipped copy is still a copy) and in each extractor's
feature space (cosine of the raw features), searched over the real training images of every class
except the image(s) it was made from (``Synthetic.sources``, by fingerprint, so a byte-identical
twin of the source is left out with it): a transform of its own source is what ``conventional`` or
``sd-img2img`` is for; a copy of another training image is not. A synthetic image is a near-copy
when that pixel correlation is at least ``PIXEL_COPY`` = 0.95. Why there, measured on BreastMNIST's
624 training images (``bench/bench_quality.py --calibrate``; docs/benchmarks.md): a copy scores 1;
under Gaussian noise of 5 grey levels at least 0.995 (10 levels: 0.983), re-encoded as JPEG at
quality 75 at least 0.992, shifted by one pixel 0.969 (median); each image's nearest other image has
a median of 0.911, and the histogram of those nearest correlations is nearly empty between 0.95 and
0.98 (13 of 624 images; 16 more in [0.94, 0.95)), with the data's own near-duplicates above it (210
images have another at 0.98 or more: the same scan stored twice, 1.5-3 grey levels apart on average
in the pairs looked at). The count of real images with a near-copy among the real ones is reported
beside each synthetic count, because a synthetic image made from one of those twins is likely a
near-copy of the other. The feature cosine is reported, not thresholded: it does not separate
copies from distinct images (with the shared MobileNet, noise of 5 grey levels leaves a copy a
cosine of 0.35-0.55 and its mirror image 0.87-0.95, while distinct BreastMNIST images reach 0.96),
and its scale changes with the extractor (random weights put every image near a cosine of 1).

Seeds: every random choice draws from a named stream of the run's seed (``automl.seeds``):
``quality:<extractor>:<class>:bootstrap`` (the resamples, and the sample above ``MAX_ROWS``) and
``quality:<extractor>:<class>:kid`` (KID's subsets), ``<class>`` being a class name or ``all``.

This module sees arrays and items only; ``automl.pipeline`` hands it the features the fit or
``automl quality`` already computed.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import numpy as np

from automl import seeds

PR_K = 3
DC_K = 5
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
BOOTSTRAP = 100  # resamples per interval; each FID resample costs an eigendecomposition (docs/benchmarks.md)
LEVEL = 0.95
MAX_ROWS = 3000  # per set: above it, a seeded sample of this many rows is measured (and the output says so)
# Inside a fit (quality.json): the run's extractor only, and at most this many rows a set, so an augmented
# fit of tens of thousands of images pays seconds for it, not the minutes 100 eigendecompositions of a
# 3,000-row set take per class; `automl quality` measures up to MAX_ROWS.
FIT_MAX_ROWS = 1000
PIXEL_SIZE = 32
PIXEL_COPY = 0.95
ALL = "all"  # the overall row: every synthetic image vs the real images of the classes that have them


# --- the metrics on two feature matrices -------------------------------------------------------------


class _Pair:
    """Two feature sets (real ``x``, synthetic ``y``) and the Gram matrices every metric reads,
    computed once on the rows centred at the real mean (all the metrics but KID are invariant to
    that shift; KID's raw dot products are put back exactly)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
            raise ValueError(f"expected two (images, features) matrices of one width; got {x.shape} and {y.shape}")
        self.n1, self.n2, self.d = len(x), len(y), x.shape[1]
        shift = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        xc, yc = x - shift, y - shift
        self.g11, self.g22, self.g12 = xc @ xc.T, yc @ yc.T, xc @ yc.T
        self._raw = (xc @ shift, yc @ shift, float(shift @ shift))

    def raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The uncentred Gram matrices x.x', y.y', x.y'."""
        a, b, c = self._raw
        return (self.g11 + a[:, None] + a[None, :] + c, self.g22 + b[:, None] + b[None, :] + c,
                self.g12 + a[:, None] + b[None, :] + c)

    def squared_distances(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n1, n2 = np.diag(self.g11), np.diag(self.g22)
        return tuple(np.maximum(d, 0.0) for d in (n1[:, None] + n1[None, :] - 2 * self.g11,
                                                  n2[:, None] + n2[None, :] - 2 * self.g22,
                                                  n1[:, None] + n2[None, :] - 2 * self.g12))


def _fid(pair: _Pair, w1: np.ndarray, w2: np.ndarray, exact: bool = True) -> float:
    """FID of the sets weighted by image multiplicities ``w1``, ``w2`` (ones: the sets as they are)."""
    n1, n2 = w1.sum(), w2.sum()
    g1w, g2w = pair.g11 @ w1, pair.g22 @ w2
    mm1, mm2 = w1 @ g1w / n1**2, w2 @ g2w / n2**2  # |mu|^2
    cross_rows, cross_cols = pair.g12 @ w2 / n2, w1 @ pair.g12 / n1  # x_i.mu2, mu1.y_j
    m12 = w1 @ cross_rows / n1  # mu1.mu2
    tr1 = (w1 @ np.diag(pair.g11) - n1 * mm1) / (n1 - 1)
    tr2 = (w2 @ np.diag(pair.g22) - n2 * mm2) / (n2 - 1)
    r1, r2 = np.flatnonzero(w1), np.flatnonzero(w2)
    c = pair.g12[np.ix_(r1, r2)] - cross_rows[r1, None] - cross_cols[None, r2] + m12
    c *= np.sqrt(w1[r1])[:, None] * np.sqrt(w2[r2])[None, :] / math.sqrt((n1 - 1) * (n2 - 1))
    if exact:
        root = float(np.linalg.svd(c, compute_uv=False).sum())
    else:  # resamples: the eigenvalues of the smaller Gram matrix, a few times faster than an SVD
        m = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
        root = float(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0, None)).sum())
    return float(mm1 + mm2 - 2 * m12 + tr1 + tr2 - 2 * root)


def fid(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Fréchet distance of the Gaussian fits of two feature matrices (rows: images); needs >= 2 rows each."""
    pair = _Pair(real, synthetic)
    _need(pair, 2, "FID")
    return max(_fid(pair, np.ones(pair.n1), np.ones(pair.n2)), 0.0)


def _mmd(k11: np.ndarray, k22: np.ndarray, k12: np.ndarray) -> float:
    """The unbiased MMD^2 estimate from the three kernel matrices."""
    m, n = len(k11), len(k22)
    return float((k11.sum() - np.trace(k11)) / (m * (m - 1)) + (k22.sum() - np.trace(k22)) / (n * (n - 1))
                 - 2 * k12.mean())


def kid_subsets(n1: int, n2: int, *, size: int | None = None, count: int = KID_SUBSETS,
                rng: np.random.Generator | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (real rows, synthetic rows) of each subset KID averages over: ``size`` (default
    ``min(KID_SUBSET_SIZE, n1, n2)``) rows of each set, drawn without replacement; one subset when
    that is both sets whole."""
    size = min(KID_SUBSET_SIZE, n1, n2) if size is None else size
    if size == n1 == n2:
        return [(np.arange(n1), np.arange(n2))]
    rng = rng or np.random.default_rng(0)
    return [(np.sort(rng.choice(n1, size, replace=False)), np.sort(rng.choice(n2, size, replace=False)))
            for _ in range(count)]


def _kernels(pair: _Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple((g / pair.d + 1.0) ** 3 for g in pair.raw())


def _kid(kernels, subsets) -> float:
    k11, k22, k12 = kernels
    return float(np.mean([_mmd(k11[np.ix_(a, a)], k22[np.ix_(b, b)], k12[np.ix_(a, b)]) for a, b in subsets]))


def kid(real: np.ndarray, synthetic: np.ndarray, *, seed: int = 0, size: int | None = None,
        count: int = KID_SUBSETS) -> float:
    """KID: the unbiased MMD^2 with the cubic polynomial kernel, averaged over ``kid_subsets``."""
    pair = _Pair(real, synthetic)
    _need(pair, 2, "KID")
    return _kid(_kernels(pair), kid_subsets(pair.n1, pair.n2, size=size, count=count,
                                            rng=np.random.default_rng(seed)))


def _kid_resampled(kernels, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """KID of each resample (rows of ``w1``, ``w2``: image multiplicities), over all pairs of distinct
    images: an image paired with its own repeat is left out, which keeps the estimate unbiased."""
    k11, k22, k12 = kernels

    def within(k, w):  # NaN for a resample of one distinct image: no pair to average
        pairs = (w @ k * w).sum(axis=1) - (w * w) @ np.diag(k)
        count = w.sum(axis=1) ** 2 - (w * w).sum(axis=1)
        return np.divide(pairs, count, out=np.full(len(w), np.nan), where=count > 0)

    cross = (w1 @ k12 * w2).sum(axis=1) / (w1.sum(axis=1) * w2.sum(axis=1))
    return within(k11, w1) + within(k22, w2) - 2 * cross


def _manifold(pair: _Pair, k_pr: int, k_dc: int) -> dict:
    d11, d22, d12 = pair.squared_distances()
    np.fill_diagonal(d11, np.inf)
    np.fill_diagonal(d22, np.inf)

    def radii(d, k):  # squared distance of each point to its k-th nearest neighbour in its own set
        return np.partition(d, k - 1, axis=1)[:, k - 1]

    k1, k2, kd = min(k_pr, pair.n1 - 1), min(k_pr, pair.n2 - 1), min(k_dc, pair.n1 - 1)
    real_r, fake_r, real_rd = radii(d11, k1), radii(d22, k2), radii(d11, kd)
    inside = d12 <= real_rd[:, None]  # (real i, synthetic j): j inside i's density/coverage ball
    return {
        "precision": float((d12 <= real_r[:, None]).any(axis=0).mean()),
        "recall": float((d12 <= fake_r[None, :]).any(axis=1).mean()),
        "density": float(inside.sum() / (kd * pair.n2)),
        "coverage": float(inside.any(axis=1).mean()),
        "k": {"precision": int(k1), "recall": int(k2), "density_coverage": int(kd)},
    }


def precision_recall(real: np.ndarray, synthetic: np.ndarray, k: int = PR_K) -> tuple[float, float]:
    """Kynkäänniemi et al.'s improved precision and recall with k-nearest-neighbour balls."""
    pair = _Pair(real, synthetic)
    _need(pair, 2, "precision and recall")
    out = _manifold(pair, k, k)
    return out["precision"], out["recall"]


def density_coverage(real: np.ndarray, synthetic: np.ndarray, k: int = DC_K) -> tuple[float, float]:
    """Naeem et al.'s density and coverage with k-nearest-neighbour balls around the real images."""
    pair = _Pair(real, synthetic)
    _need(pair, 2, "density and coverage")
    out = _manifold(pair, k, k)
    return out["density"], out["coverage"]


def _need(pair: _Pair, n: int, what: str) -> None:
    if pair.n1 < n or pair.n2 < n:
        raise ValueError(f"{what} needs at least {n} real and {n} synthetic images; got {pair.n1} and {pair.n2}")


def _interval(point: float, draws: np.ndarray, floor: float | None = None) -> list[float] | None:
    """The percentile interval of ``draws``, shifted by their bias (mean of the draws - ``point``);
    draws that are undefined (NaN) are left out, and None when fewer than 10 remain."""
    draws = draws[np.isfinite(draws)]
    if len(draws) < 10:
        return None
    tail = (1 - LEVEL) / 2
    bias = float(np.mean(draws)) - point
    lo, hi = (float(q) - bias for q in np.quantile(draws, [tail, 1 - tail]))
    if floor is not None:
        lo, hi = max(lo, floor), max(hi, floor)
    return [lo, hi]


def compare_sets(real: np.ndarray, synthetic: np.ndarray, *, rng: np.random.Generator,
                 kid_rng: np.random.Generator | None = None, bootstrap: int = BOOTSTRAP,
                 max_rows: int = MAX_ROWS) -> dict:
    """Every number of one row of the table: sizes, FID and KID with intervals, precision, recall,
    density and coverage. Sets of fewer than 2 images give None for what they cannot define."""
    out = {"n_real": int(len(real)), "n_synthetic": int(len(synthetic))}
    empty = {"fid": None, "fid_interval": None, "kid": None, "kid_interval": None, "precision": None,
             "recall": None, "density": None, "coverage": None, "k": None}
    if len(real) < 2 or len(synthetic) < 2:
        return {**out, **empty, "note": "fewer than 2 real or synthetic images: nothing to measure"}
    sampled = {}
    if len(real) > max_rows:
        real = real[np.sort(rng.choice(len(real), max_rows, replace=False))]
        sampled["real"] = max_rows
    if len(synthetic) > max_rows:
        synthetic = synthetic[np.sort(rng.choice(len(synthetic), max_rows, replace=False))]
        sampled["synthetic"] = max_rows
    pair = _Pair(real, synthetic)
    point_fid = max(_fid(pair, np.ones(pair.n1), np.ones(pair.n2)), 0.0)
    kernels = _kernels(pair)
    point_kid = _kid(kernels, kid_subsets(pair.n1, pair.n2, rng=kid_rng or rng))
    w1 = rng.multinomial(pair.n1, np.full(pair.n1, 1 / pair.n1), size=bootstrap).astype(np.float64)
    w2 = rng.multinomial(pair.n2, np.full(pair.n2, 1 / pair.n2), size=bootstrap).astype(np.float64)
    fids = np.array([_fid(pair, a, b, exact=False) for a, b in zip(w1, w2)])
    kids = _kid_resampled(kernels, w1, w2)
    out.update(fid=point_fid, fid_interval=_interval(point_fid, fids, floor=0.0), kid=point_kid,
               kid_interval=_interval(point_kid, kids), **_manifold(pair, PR_K, DC_K))
    if sampled:
        out["sampled"] = sampled
    return out


# --- copies -------------------------------------------------------------------------------------------


def pixel_vectors(items: Sequence, size: int = PIXEL_SIZE) -> np.ndarray:
    """Each item's grayscale pixels at ``size`` x ``size``, centred and scaled to unit length, so a
    dot product of two rows is their normalised correlation (a flat image is all zeros: r = 0)."""
    def one(item) -> np.ndarray:
        gray = (item.load(size).astype(np.float64) @ np.array([0.299, 0.587, 0.114])).ravel()
        gray -= gray.mean()
        norm = np.linalg.norm(gray)
        return gray / norm if norm > 1e-9 else gray

    if not items:
        return np.zeros((0, size * size))
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:  # Pillow decodes outside the GIL
        return np.stack(list(pool.map(one, items)))


def pixel_similarity(synthetic: np.ndarray, real: np.ndarray, size: int = PIXEL_SIZE) -> np.ndarray:
    """(synthetic x real) pixel correlations of ``pixel_vectors`` rows; each pair scores the larger of the
    image and its mirror image, so a flipped copy is still a copy."""
    mirrored = real.reshape(len(real), size, size)[:, :, ::-1].reshape(len(real), -1)
    return np.maximum(synthetic @ real.T, synthetic @ mirrored.T)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def nearest_other(similarity: np.ndarray, real_fingerprints: Sequence[str],
                  sources: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``similarity`` (synthetic x real), the most similar real column whose fingerprint
    is not among that row's ``sources``, and that similarity (column -1 and -inf when none is left)."""
    sim = np.array(similarity, dtype=np.float64, copy=True)
    column: dict[str, list[int]] = {}
    for j, fp in enumerate(real_fingerprints):
        column.setdefault(fp, []).append(j)
    for i, fps in enumerate(sources):
        for fp in fps:
            sim[i, column.get(fp, [])] = -np.inf
    if sim.shape[1] == 0:
        return np.full(len(sim), -1), np.full(len(sim), -np.inf)
    best = sim.argmax(axis=1)
    value = sim[np.arange(len(sim)), best]
    return np.where(np.isfinite(value), best, -1), value


def find_copies(real_items: Sequence, synthetic_items: Sequence, sources: Sequence[Sequence[str]],
                features: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                real_pixels: np.ndarray | None = None, block: int = 1024) -> list[dict]:
    """Per synthetic image: its nearest real training image other than its source(s) in pixel space
    and in each extractor's feature space (``features``: name -> (real rows, synthetic rows)), with the
    similarities, and ``near_copy``: pixel correlation >= ``PIXEL_COPY``. Synthetic images are
    compared ``block`` at a time, so memory stays at ``block`` x real images whatever the set sizes."""
    real_pixels = pixel_vectors(real_items) if real_pixels is None else real_pixels
    synthetic_pixels = pixel_vectors(synthetic_items)
    fps = [it.fingerprint for it in real_items]
    units = {name: (_unit(real), _unit(synthetic)) for name, (real, synthetic) in features.items()}
    found: dict[str, list] = {space: [] for space in ["pixel", *features]}
    for start in range(0, len(synthetic_items), block):
        rows, near = slice(start, start + block), sources[start:start + block]
        found["pixel"].append(nearest_other(pixel_similarity(synthetic_pixels[rows], real_pixels), fps, near))
        for name, (real, synthetic) in units.items():
            found[name].append(nearest_other(synthetic[rows] @ real.T, fps, near))
    found = {space: (np.concatenate([b for b, _ in parts]), np.concatenate([v for _, v in parts]))
             for space, parts in found.items() if parts}
    out = []
    for i, item in enumerate(synthetic_items):
        rec = {"path": item.path, "label": item.label, "sources": list(sources[i])}
        for space, (best, sim) in found.items():
            rec[space] = None if best[i] < 0 else {
                "nearest": real_items[best[i]].path, "label": real_items[best[i]].label,
                "similarity": round(float(sim[i]), 6)}
        rec["near_copy"] = bool(rec["pixel"] is not None and rec["pixel"]["similarity"] >= PIXEL_COPY)
        out.append(rec)
    return out


def real_near_copies(real_items: Sequence, real_pixels: np.ndarray, block: int = 1024) -> np.ndarray:
    """Per real image, whether another real training image passes the same near-copy test: the
    dataset's own near-duplicates, the baseline a synthetic set's count reads against."""
    out = np.zeros(len(real_items), dtype=bool)
    for start in range(0, len(real_items), block):
        rows = np.arange(start, min(start + block, len(real_items)))
        sim = pixel_similarity(real_pixels[rows], real_pixels)
        sim[np.arange(len(rows)), rows] = -np.inf  # itself (an identical copy under another name counts)
        out[rows] = sim.max(axis=1, initial=-np.inf) >= PIXEL_COPY
    return out


# --- a variant, measured ------------------------------------------------------------------------------


def describe_extractor(key: Mapping) -> str:
    """An extractor key (``ExtractorKey.to_dict()``) as one line: name, weights, input size, precision."""
    size = f"{key.get('image_size')} px" if key.get("image_size") else "its own input size"
    return f"{key.get('extractor')} (weights {key.get('weights')}, {size}, {key.get('precision')})"


def measure(items: Sequence, kept: Sequence[int], features: Mapping[str, np.ndarray], synthetic,
            classes: Sequence[str], *, keys: Mapping[str, Mapping], seed: int = 0,
            bootstrap: int = BOOTSTRAP, max_rows: int = MAX_ROWS) -> dict:
    """The quality record of one variant: what ``quality.json`` holds and ``automl quality`` prints.

    ``items``: the real training items, then the synthetic ones (as ``automl.pipeline.SearchData``
    holds them); ``kept``: the indices into ``items`` every extractor embedded; ``features``: extractor
    name -> one row per kept item; ``synthetic``: the ``automl.augment.generate.Synthetic`` (its
    ``real`` come first in ``items``, ``sources`` per synthetic item); ``keys``: extractor name -> its
    cache key as a dict, so the record names exactly which features the numbers come from.
    """
    t0 = time.perf_counter()
    n_real = len(synthetic.real)
    real_rows = [r for r, i in enumerate(kept) if i < n_real]
    syn_rows = [r for r, i in enumerate(kept) if i >= n_real]
    real_items = [items[kept[r]] for r in real_rows]
    syn_items = [items[kept[r]] for r in syn_rows]
    sources = [synthetic.sources[kept[r] - n_real] for r in syn_rows]
    real_y = np.array([it.label for it in real_items], dtype=int)
    syn_y = np.array([it.label for it in syn_items], dtype=int)
    labels = sorted(set(syn_y.tolist()))
    groups = [(classes[c], real_y == c, syn_y == c) for c in labels]
    if len(labels) > 1:  # with one class, "all" would repeat its row
        overall = ALL if ALL not in classes else f"({ALL})"  # a class may be called "all"
        groups.append((overall, np.isin(real_y, labels), np.ones(len(syn_y), bool)))

    real_pixels = pixel_vectors(real_items)
    copies = find_copies(real_items, syn_items, sources,
                         {name: (f[real_rows], f[syn_rows]) for name, f in features.items()}, real_pixels=real_pixels)
    flagged = np.array([c["near_copy"] for c in copies], dtype=bool)
    real_flagged = real_near_copies(real_items, real_pixels)
    extractors = []
    for name, f in features.items():
        rows = []
        for group, real_mask, syn_mask in groups:
            row = compare_sets(f[real_rows][real_mask], f[syn_rows][syn_mask], bootstrap=bootstrap, max_rows=max_rows,
                               rng=seeds.rng(seed, "quality", name, group, "bootstrap"),
                               kid_rng=seeds.rng(seed, "quality", name, group, "kid"))
            rows.append({"class": group, **row, "near_copies": int(flagged[syn_mask].sum())})
        extractors.append({"name": name, "key": dict(keys.get(name, {})),
                           "description": describe_extractor(keys.get(name, {"extractor": name})), "rows": rows})
    for c in copies:
        c["class"] = classes[c.pop("label")]
        for space in ["pixel", *features]:
            if c.get(space):
                c[space]["class"] = classes[c[space].pop("label")]
    record = getattr(synthetic, "record", None) or {}
    per_class = {}
    for group, real_mask, syn_mask in groups:
        per_class[group] = {"synthetic": int(syn_mask.sum()), "near_copies": int(flagged[syn_mask].sum()),
                            "real": int(real_mask.sum()), "real_with_a_near_copy": int(real_flagged[real_mask].sum())}
    return {
        "version": 1,
        "variant": record.get("variant"),
        "augmenter": record.get("augmenter"),
        "extractors": extractors,
        "copies": {"per_class": per_class, "images": copies},
        "settings": {"bootstrap": bootstrap, "level": LEVEL, "interval": "percentile, shifted by the bootstrap's bias",
                     "kid_kernel": "(x.y/d + 1)^3", "kid_subset_size": KID_SUBSET_SIZE, "kid_subsets": KID_SUBSETS,
                     "precision_recall_k": PR_K, "density_coverage_k": DC_K, "max_rows": max_rows,
                     "pixel_size": PIXEL_SIZE, "pixel_copy": PIXEL_COPY, "feature_similarity": "cosine",
                     "overall": "every synthetic image vs the real images of the classes that have synthetic ones",
                     "seed": seed},
        "seconds": round(time.perf_counter() - t0, 3),
    }


# --- the table ----------------------------------------------------------------------------------------

COLUMNS = ("class", "n real", "n synthetic", "FID [95 % interval]", "KID [95 % interval]", "precision", "recall",
           "density", "coverage", "near-copies")


def table_rows(extractor: dict) -> list[list[str]]:
    """One extractor's rows as text cells, in ``COLUMNS`` order (the terminal and the HTML page)."""
    out = []
    for row in extractor["rows"]:
        out.append([row["class"], str(row["n_real"]), str(row["n_synthetic"]),
                    _with_interval(row["fid"], row["fid_interval"]), _with_interval(row["kid"], row["kid_interval"]),
                    *(_cell(row[k], "{:.3f}") for k in ("precision", "recall", "density", "coverage")),
                    str(row["near_copies"])])
    return out


def _cell(value, form: str) -> str:
    return "n/a" if value is None else form.format(value)


def _with_interval(value, interval) -> str:
    """Three significant digits: FID is in the extractor's units (hundreds for ImageNet features, 1e-5 for
    random weights), and KID's values are small."""
    if value is None:
        return "n/a"
    text = f"{value:.3g}"
    return text if interval is None else f"{text} [{interval[0]:.3g}, {interval[1]:.3g}]"


def explanation(record: dict) -> list[str]:
    """The lines under the table: what the numbers mean and how they were measured."""
    s = record["settings"]
    return [
        f"FID, KID: lower is closer to the real images (KID about 0 for one distribution; it is unbiased, so "
        f"it can dip below 0). [{s['level'] * 100:.0f} % bootstrap intervals, {s['bootstrap']} resamples.] FID grows as "
        "sets shrink: compare variants at equal set sizes and with one extractor, never across extractors.",
        f"precision: share of synthetic images inside the real images' k-NN manifold; recall: share of real "
        f"images inside the synthetic one (k={s['precision_recall_k']}). density: about 1 when synthetic images "
        f"fall where real ones are; coverage: share of real images with a synthetic one nearby "
        f"(k={s['density_coverage_k']}).",
        f"near-copies: synthetic images whose nearest real training image other than their own source has a "
        f"pixel correlation >= {s['pixel_copy']} ({s['pixel_size']} px grayscale, mirror images included).",
    ]


def copies_lines(record: dict) -> list[str]:
    """Per class, the near-copies among the synthetic images beside the real images' own near-duplicates."""
    return [f"{group}: {c['near_copies']} of {c['synthetic']} synthetic images are near-copies; "
            f"{c['real_with_a_near_copy']} of {c['real']} real images have a near-copy among the real ones"
            for group, c in record["copies"]["per_class"].items()]


def quality_text(record: dict, *, shown: int = 10) -> str:
    """The quality record as the terminal shows it: one table per extractor, what the numbers mean,
    then the near-copies."""
    lines = []
    title = record.get("variant") or record.get("augmenter") or "synthetic images"
    for extractor in record["extractors"]:
        lines.append(f"{title} vs the real training images, in the features of {extractor['description']}")
        rows = [list(COLUMNS)] + table_rows(extractor)
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        for n, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        for row in extractor["rows"]:
            if row.get("sampled"):
                lines.append(f"  {row['class']}: measured on a seeded sample of {record['settings']['max_rows']} "
                             f"images of the {' and '.join(row['sampled'])} set")
        lines.append("")
    lines += explanation(record)
    lines += ["", "Near-copies (each synthetic image vs its nearest real training image other than its source):"]
    lines += [f"  {line}" for line in copies_lines(record)]
    flagged = [c for c in record["copies"]["images"] if c["near_copy"]]
    for c in flagged[:shown]:
        lines.append(f"  {c['path']} ({c['class']}) ~ {c['pixel']['nearest']} ({c['pixel']['class']}): "
                     f"r = {c['pixel']['similarity']:.3f}")
    if len(flagged) > shown:
        lines.append(f"  ... and {len(flagged) - shown} more (--json lists every synthetic image)")
    return "\n".join(lines)

