"""``sampler: cluster``: fine-tune a generator per tight cluster of a class's training images (the
study's §5.1), instead of once on the class as a whole.

For each chosen class: embed its training images with one of our extractors (the features are cached
under the augmenter's ``work_dir``), k-means the L2-normalised features (``find_clusters``, a pure
function of the feature rows), take each cluster's ``top`` images nearest its centroid, keep the
clusters whose members are alike (mean pairwise cosine similarity at least ``min_similarity``) and
evenly so (the std of those similarities at most ``max_spread``), then fine-tune one generator per
kept cluster on its top images. The class's synthetic images are split over the kept clusters by
size (``allocate``); image k always comes from the same cluster, which its provenance record names
(``"cluster": <id>``), and ``<work_dir>/clusters.json`` lists every class's clusters for the report.

The spec is the augmenters' ``sampler`` parameter: ``cluster`` (every default) or
``cluster:k=4,top=20,extractor=inception-v3`` (any subset of the options, ``ClusterSampler``). It is
stored in its canonical form, every option written out, so the cache keys follow the options in use.
A spec that is wrong is refused naming the ``sampler`` parameter; a class whose clusters are all
dropped is refused naming the figures and the thresholds, never sampled some other way.

How an augmenter uses it (dcgan, pggan, sd-dreambooth, sd-lora and sd-textual-inversion do)::

    from automl.augment.clusters import preflight_sampler, write_summary
    from automl.augment.sd_common import check_sampler, sample_groups

    check():      p["sampler"] = check_sampler(self.name, p["sampler"])      # "sampler" in fit_params
    preflight():  preflight_sampler(p["sampler"])         # the extractor and a weights file, in seconds
    fit():        self.samplings_[c] = sample_groups(p["sampler"], train[c], label=c, work_dir=work_dir,
                                                     seed=seed, progress=progress)
                  for group in self.samplings_[c].groups:   # one (the class) unless sampler is cluster
                      train a generator on group.items, saved under a name with group.tag
                  write_summary(work_dir, classes, self.samplings_)
    generate():   return self.samplings_[label].gather(indices, lambda unit, ks: images of ks from the
                                                          generator kept under unit)
    provenance(): return self.samplings_[label].provenance(indices)     # None unless clustering

Only scikit-learn's k-means is used unless the spec asks for faiss (``kmeans=faiss``): switching on
whatever happens to be installed would give other clusters for the same recipe and seed elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from automl import seeds
from automl.errors import ConfigError

NAME = "cluster"  # the sampler's name in the ``sampler`` parameter
SUMMARY = "clusters.json"  # under work_dir: every clustered class, for the report
STATE = "clusters"  # under work_dir: one file per class and clustering, reused by a re-run
FEATURES = "features"  # under work_dir: the embedding cache of the clustering's extractor
KMEANS = ("sklearn", "faiss")

# Defaults, not tuned to any dataset: a few modes per class, each with the handful of images a
# DreamBooth-style fine-tune takes; the thresholds only drop clusters whose members are barely
# alike (pairwise cosine below 0.5 in the extractor's features) or unevenly so (std above 0.2).
K = 4
TOP = 20
MIN_SIMILARITY = 0.5
MAX_SPREAD = 0.2


# ---------------------------------------------------------------- the clustering itself


@dataclass(frozen=True)
class Cluster:
    """One k-means cluster of a class's feature rows."""

    id: int  # 0 is the largest (ties: the one holding the lowest row)
    members: tuple[int, ...]  # row indices, nearest the centroid first
    top: tuple[int, ...]  # the first ``top`` of them: what a fine-tune sees
    similarity: float | None  # mean pairwise cosine similarity of the members; None for a single member
    spread: float | None  # the std of those similarities
    kept: bool  # at least two members, similarity >= min_similarity, spread <= max_spread

    @property
    def size(self) -> int:
        return len(self.members)


def find_clusters(features: np.ndarray, *, k: int = K, top: int = TOP, min_similarity: float = MIN_SIMILARITY,
                  max_spread: float = MAX_SPREAD, seed: int = 0, kmeans: str = "sklearn") -> list[Cluster]:
    """k-means (``k`` clusters, fewer when there are fewer rows) of ``features`` (n, d) after L2
    normalisation, so that distances follow cosine similarity; per cluster its members ordered by
    cosine similarity to the (normalised) centroid, the ``top`` nearest, the mean and std of its
    members' pairwise cosine similarities, and whether the thresholds keep it. A single-member
    cluster has no within-cluster similarity and is never kept. ``seed`` seeds k-means (callers
    derive it from a named stream); the same rows and seed give the same clusters."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0 or x.shape[1] == 0:
        raise ValueError(f"find_clusters needs a non-empty 2-D array of feature rows; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("find_clusters got NaN or infinite features")
    if k < 1 or top < 1:
        raise ValueError(f"find_clusters needs k >= 1 and top >= 1; got k={k}, top={top}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)  # an all-zero row stays zero: alike to nothing
    labels = _kmeans(unit, min(k, len(unit)), seed, kmeans)
    groups = [np.flatnonzero(labels == j) for j in np.unique(labels)]
    groups.sort(key=lambda rows: (-len(rows), rows[0]))
    out = []
    for cid, rows in enumerate(groups):
        centroid = unit[rows].mean(axis=0)
        length = np.linalg.norm(centroid)
        closeness = unit[rows] @ (centroid / length) if length > 0 else np.zeros(len(rows))
        ordered = tuple(int(r) for r in rows[np.argsort(-closeness, kind="stable")])
        similarity = spread = None
        if len(rows) > 1:
            sims = unit[rows] @ unit[rows].T
            pairs = sims[np.triu_indices(len(rows), 1)]
            similarity, spread = float(pairs.mean()), float(pairs.std())
        kept = similarity is not None and similarity >= min_similarity and spread <= max_spread
        out.append(Cluster(cid, ordered, ordered[:top], similarity, spread, kept))
    return out


def _kmeans(unit: np.ndarray, k: int, seed: int, backend: str) -> np.ndarray:
    """Cluster labels, one per row."""
    if backend == "faiss":
        from automl._imports import require

        faiss = require("faiss", "sampler cluster with kmeans=faiss")
        data = np.ascontiguousarray(unit, dtype=np.float32)
        model = faiss.Kmeans(data.shape[1], k, niter=300, nredo=10, seed=int(seed) % 2**31, verbose=False)
        model.train(data)
        _, labels = model.index.search(data, 1)
        return labels.ravel()
    if backend != "sklearn":
        raise ValueError(f"k-means backend must be one of {KMEANS}; got {backend!r}")
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Fewer distinct rows than k (identical images): the empty clusters simply do not appear.
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=10, random_state=int(seed) % 2**31).fit_predict(unit)


def allocate(sizes: Sequence[int], n: int) -> list[int]:
    """For images 0..n-1, the position (in ``sizes``) of the group each comes from, so that every
    prefix of n images is split by size within quota: each group gets its share n·size/total rounded
    down or up (largest remainder's guarantee), exactly its share when n is a multiple of the total.
    Unlike largest remainder applied to one count, image k never moves when n grows (Balinski and
    Young's quota method: among the groups still under their upper quota, the one whose next image
    is due soonest; ties to the lower position), so a larger ratio only adds images."""
    if not sizes or any(int(s) < 1 for s in sizes):
        raise ValueError(f"allocate needs positive group sizes; got {list(sizes)}")
    total = sum(sizes)
    counts = [0] * len(sizes)
    out = []
    for step in range(1, n + 1):
        open_ = [j for j, s in enumerate(sizes) if counts[j] * total < step * s]
        j = min(open_, key=lambda j: (Fraction(counts[j] + 1, sizes[j]), j))
        counts[j] += 1
        out.append(j)
    return out


def split_counts(sizes: Sequence[int], n: int) -> list[int]:
    """How many of n images each group gets under ``allocate``."""
    counts = [0] * len(sizes)
    for j in allocate(sizes, n):
        counts[j] += 1
    return counts


# ---------------------------------------------------------------- the spec in the sampler parameter


@dataclass(frozen=True)
class ClusterSampler:
    """``sampler: cluster[:option=value,...]``, parsed once (``parse``) and written back whole (``text``)."""

    k: int = K  # k-means clusters per class (fewer when the class has fewer images)
    top: int = TOP  # images per cluster a fine-tune sees: the nearest its centroid
    min_similarity: float = MIN_SIMILARITY  # keep a cluster whose mean pairwise cosine similarity is at least this
    max_spread: float = MAX_SPREAD  # ... and whose std of pairwise similarities is at most this
    extractor: str = "inception-v3"  # a built-in backbone or file:PATH (automl.extractors.resolve)
    weights: str = "imagenet"  # a backbone's weights: imagenet (the Keras cache), none (random, seeded) or a file
    size: int = 299  # a backbone's input side (a model file has its own)
    kmeans: str = "sklearn"  # or faiss (when installed)

    @classmethod
    def parse(cls, text: str, owner: str = "") -> "ClusterSampler":
        """``cluster`` or ``cluster:k=4,top=20,...``; ``owner`` (e.g. "augmenter 'dcgan'") words the errors."""
        kind, _, arg = str(text).partition(":")
        if kind.strip() != NAME:
            raise _error(owner, text, f"it names the {kind!r} sampler, not {NAME!r}")
        names = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        if arg.strip():
            # Split only at a comma that starts another option: one in a model file's path stays there.
            for part in re.split(r",(?=\s*(?:" + "|".join(names) + r")\s*=)", arg):
                key, eq, value = part.partition("=")
                key, value = key.strip(), value.strip()
                if not eq or key not in names:
                    raise _error(owner, text, f"{part.strip()!r} is not an option; give key=value pairs among "
                                 f"{', '.join(names)} (e.g. cluster:k=4,top=20)")
                if key in values:
                    raise _error(owner, text, f"option {key!r} is given twice")
                values[key] = value
        return cls(**{key: _convert(owner, text, key, value) for key, value in values.items()}).checked(owner, text)

    def checked(self, owner: str = "", text: str | None = None) -> "ClusterSampler":
        """This spec with its names in canonical form (the extractor's, the weights' keyword), after
        checking every option."""
        from automl.extractors import Backbone, Weights, resolve
        from automl.params import Interval, Options

        text = self.text() if text is None else text
        ranges = {"k": Interval(int, 1, closed="left"), "top": Interval(int, 1, closed="left"),
                  "min_similarity": Interval(float, -1.0, 1.0), "max_spread": Interval(float, 0.0, 1.0),
                  "size": Interval(int, 1, closed="left"), "kmeans": Options(KMEANS)}
        for key, accepted in ranges.items():
            if not accepted.accepts(getattr(self, key)):
                raise _error(owner, text, f"option {key!r} must be {accepted.describe()}; got {getattr(self, key)!r}")
        try:
            spec = resolve(self.extractor)
        except ConfigError as exc:
            raise _error(owner, text, f"option 'extractor': {str(exc).rstrip('.')}") from None
        if isinstance(spec, Backbone) and self.size < spec.min_size:
            raise _error(owner, text, f"option 'size' must be at least {spec.min_size} for {spec.name} (the Keras "
                         f"minimum); got {self.size}")
        if not self.weights:
            raise _error(owner, text, "option 'weights' must be imagenet, none or the path of a weights file")
        weights = Weights.keyword(self.weights) or str(Path(self.weights).expanduser().absolute())
        return ClusterSampler(self.k, self.top, float(self.min_similarity), float(self.max_spread), spec.name,
                              weights, self.size, self.kmeans)

    def text(self) -> str:
        """The canonical spec: every option, in a fixed order."""
        return f"{NAME}:" + ",".join(f"{key}={value}" for key, value in asdict(self).items())

    # ------------------------------------------------------------ embedding

    def extractor_key(self, seed: int):
        """The embedding cache key of the clustering's features (checks a weights file exists)."""
        from automl.extractors import Weights, resolve

        return resolve(self.extractor).key(weights=Weights.parse(self.weights), image_size=self.size,
                                           precision="float32", seed=seed)

    def preflight(self, seed: int = 0) -> None:
        """Fail in seconds, before a fit's baseline, on what ``embed`` would fail on later."""
        self.extractor_key(seed)

    def embed(self, items: Sequence, work_dir: Path, seed: int, progress: bool = True) -> tuple[np.ndarray, Any]:
        """(features of ``items`` in order, the extractor key), cached under ``work_dir/features``.
        float32 on every machine: the clusters must not depend on a GPU's mixed precision."""
        from automl.cache import EmbeddingCache
        from automl.embed import embed_items
        from automl.extractors import Weights, resolve

        spec, weights = resolve(self.extractor), Weights.parse(self.weights)
        key = self.extractor_key(seed)
        result = embed_items(
            list(items), key, lambda k: EmbeddingCache(Path(work_dir) / FEATURES / k.slug(), k.to_dict()),
            lambda: spec.build(weights=weights, image_size=self.size, precision="float32", seed=seed),
            progress=progress)
        return result.embeddings, result.key

    # ------------------------------------------------------------ one class

    def groups(self, items: Sequence, *, label: int, work_dir: Path, seed: int, class_name: str = "",
               progress: bool = True) -> "Grouping":
        """The kept clusters of one class's training ``items`` as fine-tune groups: read from
        ``work_dir/clusters/`` when this clustering was done before, else embedded and clustered."""
        from automl._files import write_json

        items = sorted(items, key=lambda it: it.fingerprint)
        if not items:
            raise ConfigError(f"sampler {NAME}: class {class_name or label!r} has no training images to cluster.")
        key = self.extractor_key(seed)
        digest = _digest(self.text(), key.to_dict(), [it.fingerprint for it in items], seed, label)
        path = Path(work_dir) / STATE / f"class-{label}-{digest}.json"
        state = _read_state(path)
        if state is None:
            features, key = self.embed(items, work_dir, seed, progress)
            found = find_clusters(features, k=self.k, top=self.top, min_similarity=self.min_similarity,
                                  max_spread=self.max_spread, seed=seeds.derive(seed, "augment", label, "clusters"),
                                  kmeans=self.kmeans)
            state = {"label": label, "class": class_name, "sampler": self.text(), "extractor": key.to_dict(),
                     "images": len(items),
                     "clusters": [{**_figures(c), "members": [items[i].fingerprint for i in c.members],
                                   "top": [items[i].fingerprint for i in c.top]} for c in found]}
            write_json(path, state, indent=1)
        by_fp = {it.fingerprint: it for it in items}
        clusters = state["clusters"]
        kept = [c for c in clusters if c["kept"]]
        if not kept:
            shown = "; ".join(f"cluster {c['id']}: {c['size']} image(s), similarity {_fmt(c['similarity'])}, "
                              f"spread {_fmt(c['spread'])}" for c in clusters)
            raise ConfigError(
                f"sampler {NAME} kept none of the {len(clusters)} cluster(s) of class {class_name or label!r} "
                f"({shown}); it keeps clusters of at least 2 images with similarity >= {self.min_similarity} and "
                f"spread <= {self.max_spread}. Fix: lower min_similarity, raise max_spread or change k in the "
                f"sampler parameter ({self.text()}), or use sampler: all.")
        groups = [Group(c["id"], tuple(by_fp[fp] for fp in c["top"]),
                        f"cluster-{c['id']}-{_digest(c['top'])[:10]}") for c in kept]
        summary = {"class": class_name, "extractor": state["extractor"]["extractor"], "images": state["images"],
                   "clusters": [{k: c[k] for k in ("id", "size", "top_images", "similarity", "spread", "kept")}
                                for c in clusters]}
        return Grouping(label, groups, [c["size"] for c in kept], summary)


def is_cluster(spec: str) -> bool:
    return str(spec).partition(":")[0].strip() == NAME


def preflight_sampler(spec: str, seed: int = 0) -> None:
    """An augmenter's ``preflight`` for its sampler: a cluster sampler's extractor and weights file
    are checked (in seconds, loading no framework); other samplers need nothing."""
    if is_cluster(spec):
        ClusterSampler.parse(spec).preflight(seed)


def _convert(owner: str, text: str, key: str, value: str) -> Any:
    kind = type(getattr(ClusterSampler, key))
    try:
        return int(value) if kind is int else float(value) if kind is float else value
    except ValueError:
        raise _error(owner, text, f"option {key!r} must be {'an int' if kind is int else 'a float'}; "
                     f"got {value!r}") from None


def _error(owner: str, text: str, why: str) -> ConfigError:
    whose = f" of {owner}" if owner else ""
    return ConfigError(f"The 'sampler' parameter{whose} is not a valid cluster sampler: {why}. Got {text!r} instead.")


def _figures(c: Cluster) -> dict:
    rounded = (lambda v: None if v is None else round(v, 6))
    return {"id": c.id, "size": c.size, "top_images": len(c.top), "similarity": rounded(c.similarity),
            "spread": rounded(c.spread), "kept": c.kept}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _digest(*parts) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _read_state(path: Path) -> dict | None:
    """A clustering saved by an earlier fit (written atomically, so whole or absent)."""
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        if isinstance(state.get("clusters"), list):
            return state
    except (OSError, ValueError):
        pass
    warnings.warn(f"ignoring unreadable clustering {path}; clustering again", stacklevel=3)
    return None


# ---------------------------------------------------------------- what an augmenter fine-tunes on


@dataclass(frozen=True)
class Group:
    """The images one fine-tune sees: a kept cluster's top images, or (any other sampler) the class's."""

    cluster: int | None  # None: the class as a whole
    items: tuple  # training Items
    tag: str  # "" for the class; "cluster-<id>-<digest of its images>" to name the fine-tune's folder


class Grouping:
    """One class's fine-tune groups and which of them image k comes from (``allocate`` by ``weights``)."""

    def __init__(self, label: int, groups: Sequence[Group], weights: Sequence[int], summary: dict | None = None):
        self.label = label
        self.groups = list(groups)
        self.weights = list(weights)
        self.summary = summary  # for clusters.json; None when not clustering
        self._order: list[int] = []

    @classmethod
    def whole(cls, label: int, items: Sequence) -> "Grouping":
        return cls(label, [Group(None, tuple(items), "")], [1])

    @property
    def clustered(self) -> bool:
        return self.summary is not None

    def group_of(self, k: int) -> Group:
        return self.groups[self._position(k)]

    def _position(self, k: int) -> int:
        if k >= len(self._order):
            self._order = allocate(self.weights, max(k + 1, 2 * len(self._order)))
        return self._order[k]

    def split(self, indices: Sequence[int]) -> list[tuple[Group, list[int]]]:
        """``indices`` grouped by the group each comes from: (group, positions in ``indices``), groups
        in the order they first appear."""
        out: dict[int, list[int]] = {}
        for i, k in enumerate(indices):
            out.setdefault(self._position(k), []).append(i)
        return [(self.groups[j], positions) for j, positions in out.items()]

    def unit(self, group: Group):
        """The key an augmenter keeps ``group``'s generator under: the class's label, or (label, cluster id)."""
        return self.label if group.cluster is None else (self.label, group.cluster)

    def units(self) -> list:
        return [self.unit(g) for g in self.groups]

    def gather(self, indices: Sequence[int], make: Callable, first: Callable | None = None) -> list:
        """One output per index of ``indices``, made group by group: ``make(unit, the group's indices)``
        returns their outputs in order; ``first(unit)`` true puts that group first (its generator is
        the one already loaded)."""
        out: list = [None] * len(indices)
        parts = self.split(indices)
        if first is not None:
            parts.sort(key=lambda part: not first(self.unit(part[0])))
        for group, positions in parts:
            for i, made in zip(positions, make(self.unit(group), [indices[i] for i in positions])):
                out[i] = made
        return out

    def provenance(self, indices: Sequence[int]) -> list[dict] | None:
        """Per index, the cluster it came from (``Augmenter.provenance``); None when not clustering.
        No sources: a cluster's generator, like a class's, is made from many images."""
        if not self.clustered:
            return None
        return [{"sources": [], "cluster": self.group_of(k).cluster} for k in indices]


def write_summary(work_dir: Path, classes: Sequence[str], groupings: Mapping[int, Grouping]) -> None:
    """``<work_dir>/clusters.json``: per clustered class, its clusters' sizes, figures and whether each
    was kept; classes clustered by an earlier fit stay. Nothing when no class was clustered."""
    from automl._files import write_json

    fresh = {classes[label]: g.summary for label, g in groupings.items() if g.clustered}
    if not fresh:
        return
    path = Path(work_dir) / SUMMARY
    saved = (read_summary(work_dir) or {}).get("classes", {})
    write_json(path, {"classes": dict(sorted({**saved, **fresh}.items()))}, indent=1)


def read_summary(work_dir: str | Path | None) -> dict | None:
    """What ``write_summary`` wrote into a generator folder (the augmentation record's
    ``generator_folder``), or None."""
    if not work_dir:
        return None
    try:
        summary = json.loads((Path(work_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("classes"), dict) else None


SUMMARY_COLUMNS = ["class", "cluster", "images", "fine-tuned on", "similarity", "spread", "kept"]


def summary_rows(summary: dict) -> list[list]:
    """The report's table of ``read_summary``: one row per cluster (``SUMMARY_COLUMNS``)."""
    return [[name, c["id"], c["size"], c["top_images"] if c["kept"] else "", _fmt(c["similarity"]),
             _fmt(c["spread"]), "yes" if c["kept"] else "no"]
            for name, entry in summary["classes"].items() for c in entry.get("clusters", [])]
