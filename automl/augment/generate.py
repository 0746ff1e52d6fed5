"""Run an augmentation plan: fit the augmenter on the training split, make the planned images, cache them.

Every synthetic image is a PNG in ``<generated>/<key>/<class index>/NNNNNN.png`` beside a JSON record
of its class, augmenter, parameters, seed and source image(s); the key hashes (augmenter,
parameters, the training images' fingerprints and labels, seed, ``KEY_VERSION``). Image ``k`` of a
class is always the same image, so a re-run generates nothing new, a larger ratio only adds images,
and a killed run keeps every image whose record was written (the record is written after its image,
each atomically). Fitted generators live in ``<generators>/<key>/``, keyed by the parameters that
change the fit, and are reused the same way.

The augmenter is handed training items only: ``augment`` takes the training split, never the test
split, and refuses items from any other split.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from automl import progress as events
from automl import seeds
from automl._files import atomic_write, write_json
from automl.augment.base import Augmenter, build_augmenter
from automl.augment.plan import AugmentSpec, plan_counts, reduce_real
from automl.data import Item, fingerprint_array, fingerprint_bytes
from automl.errors import DataError, StoreError

CHUNK = 8  # images per generate() call: the most a killed run loses per class
# Part of every generated-image and generator key: bumped whenever the same key would make other images.
# 2: seeds come from named streams (automl.seeds), no longer from ad-hoc salts.
KEY_VERSION = 2
TRAIN_SPLITS = ("train", "val")  # val joins training in fit; cross-validation replaces it


@dataclass
class Synthetic:
    """The training set an augmentation plan yields."""

    real: list[Item]  # the real training images kept (all of them unless real_fraction < 1)
    items: list[Item]  # synthetic images, split "synthetic"
    sources: list[tuple[str, ...]]  # per synthetic item: fingerprints of the real image(s) it was made from
    record: dict = field(default_factory=dict)  # what a run records about the augmentation
    planned: tuple = ()  # per class index, the plan's count (a filter keeps at most that)
    filter: object = None  # the plan's automl.augment.filters.FilterSpec, or None

    @property
    def train_on_real(self) -> bool:
        return self.record.get("mix", "real+synthetic") == "real+synthetic"


def key_of(name: str, params: dict, train: Sequence[Item], seed: int) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([name, params, seed, KEY_VERSION], sort_keys=True, default=str).encode())
    for fp, label in sorted((it.fingerprint, it.label) for it in train):
        h.update(f"{fp}:{label};".encode())
    return f"{name}-{h.hexdigest()}"


def augment(train: Sequence[Item], classes: Sequence[str], spec: AugmentSpec, *, generated_dir: Path,
            generators_dir: Path, seed: int = 0, progress: bool = True,
            augmenter: Augmenter | None = None) -> Synthetic:
    """Make (or reuse) the synthetic images ``spec`` plans for the training items ``train``."""
    outside = [it for it in train if it.split not in TRAIN_SPLITS]
    if outside:
        raise DataError(f"augmenters see the training split only; got {len(outside)} image(s) from split "
                        f"{outside[0].split!r} (e.g. {outside[0].path}).")
    augmenter = augmenter or build_augmenter(spec.type, spec.params)
    real, counts = plan(train, classes, spec, seed)
    planned, counts = counts, made_counts(spec, counts)
    sizes = np.bincount([it.label for it in real], minlength=len(classes)).tolist()

    out_dir = Path(generated_dir) / key_of(augmenter.name, augmenter.key_params(), real, seed)
    work_dir = Path(generators_dir) / key_of(augmenter.name, augmenter.fit_signature(), real, seed)
    by_class = {c: [it for it in real if it.label == c] for c in range(len(classes))}
    missing = _missing(out_dir, counts)
    todo = sum(len(m) for m in missing.values())
    t0 = time.perf_counter()
    fit_seconds = 0.0
    if todo:
        _write_key(out_dir, augmenter, real, seed)
        work_dir.mkdir(parents=True, exist_ok=True)
        augmenter.fit(by_class, list(classes), [c for c, m in missing.items() if m], work_dir, seed, progress)
        fit_seconds = time.perf_counter() - t0
        bar = events.bar(total=todo, desc=f"generate {augmenter.name}", unit="img", disable=not progress,
                         dynamic_ncols=True)
        try:
            for c, indices in missing.items():
                bar.set_postfix_str(f"class {classes[c]}", info={"class": classes[c]})
                order = _source_order(by_class[c], c, seed) if augmenter.uses_sources else None
                for start in range(0, len(indices), CHUNK):
                    chunk = indices[start:start + CHUNK]
                    sources = [order[k % len(order)] if order else None for k in chunk]
                    images = augmenter.generate(c, chunk, sources, seed)
                    if len(images) != len(chunk):
                        raise RuntimeError(f"augmenter {augmenter.name} returned {len(images)} images for "
                                           f"{len(chunk)} indices")
                    for k, image, made in zip(chunk, images, _provenance(augmenter, c, chunk, sources)):
                        _save(out_dir / str(c), k, image, classes[c], c, augmenter, seed, made)
                        bar.update(1)
        finally:
            bar.close()
            augmenter.close()
    gen_seconds = time.perf_counter() - t0 - fit_seconds

    items, sources, records = [], [], []
    for c, n in counts.items():
        for k in range(n):
            rec = json.loads((out_dir / str(c) / f"{k:06d}.json").read_text())
            path = out_dir / str(c) / rec["file"]
            items.append(Item(str(path), c, "synthetic", rec["fingerprint"], rec["width"], rec["height"], "RGB"))
            sources.append(tuple(s["fingerprint"] for s in rec["sources"]))
            records.append(rec)
    _note_nearest_real(out_dir, real, items, sources, records)
    items, sources, filtered = _filter(spec, items, sources, records, planned, classes)
    record = {
        "variant": spec.describe(),
        "augmenter": augmenter.name,
        "params": augmenter.params,
        "classes": [classes[c] for c in counts],
        "ratio": spec.ratio,
        "mix": spec.mix,
        "real_fraction": spec.real_fraction,
        "real_per_class": dict(zip(classes, sizes)),
        "synthetic_per_class": {classes[c]: sum(it.label == c for it in items) for c in counts},
        **({"filter": filtered} if filtered else {}),
        "generated": todo,
        "reused": sum(counts.values()) - todo,
        "fit_seconds": round(fit_seconds, 2),
        "generate_seconds": round(gen_seconds, 2),
        "folder": str(out_dir),
        "generator_folder": str(work_dir),
        "seed": seed,
    }
    return Synthetic(real, items, sources, record, tuple(planned.get(c, 0) for c in range(len(classes))), spec.filter)


def made_counts(spec: AugmentSpec, planned: dict[int, int]) -> dict[int, int]:
    """Images to make per class: the plan's, or its ``filter.pool`` multiple for a filter to choose from."""
    if spec.filter is None:
        return dict(planned)
    return {c: spec.filter.pool_size(n) for c, n in planned.items()}


def _note_nearest_real(out_dir: Path, real: Sequence[Item], items: list[Item], sources: list[tuple],
                       records: list[dict]) -> None:
    """Write into each image's provenance record its nearest real training image in pixel space
    other than its source(s) (``automl.quality.find_copies``) and whether it is a near-copy; once per
    image (a re-run reads them back: the key pins the real images)."""
    from automl.quality import PIXEL_COPY, find_copies

    todo = [i for i, rec in enumerate(records) if "nearest_real" not in rec]
    if not todo or not real:
        return
    found = find_copies(real, [items[i] for i in todo], [sources[i] for i in todo], {})
    by_path = {it.path: it for it in real}
    for i, copy in zip(todo, found):
        near = copy["pixel"]
        records[i]["nearest_real"] = None if near is None else {
            "path": near["nearest"], "fingerprint": by_path[near["nearest"]].fingerprint,
            "similarity": near["similarity"], "near_copy": bool(near["similarity"] >= PIXEL_COPY)}
        write_json(Path(items[i].path).parent / f"{records[i]['index']:06d}.json", records[i], indent=1, default=str)


def _filter(spec: AugmentSpec, items: list[Item], sources: list[tuple], records: list[dict],
            planned: dict[int, int], classes: Sequence[str]) -> tuple[list[Item], list[tuple], dict]:
    """The plan's filter, as far as it is the same for every fold: near-copies dropped, then (without
    the selective filter, which chooses per fold: ``automl.augment.filters.Selective``) the first of
    the rest up to the plan's count per class. Returns the items, their sources, and what to record."""
    f = spec.filter
    if f is None:
        return items, sources, {}
    copy = [bool((rec.get("nearest_real") or {}).get("near_copy")) for rec in records]
    keep = [i for i in range(len(items)) if not (f.drop_copies and copy[i])]
    if f.selective is None:
        taken: Counter = Counter()
        first = []
        for i in keep:
            taken[items[i].label] += 1
            if taken[items[i].label] <= planned[items[i].label]:
                first.append(i)
        keep = first
    made = Counter(it.label for it in items)
    dropped = Counter(items[i].label for i in range(len(items)) if f.drop_copies and copy[i])
    candidates = Counter(items[i].label for i in keep)
    return [items[i] for i in keep], [sources[i] for i in keep], {
        "spec": f.model_dump(), "variant": f.describe(),
        "planned_per_class": {classes[c]: n for c, n in planned.items()},
        "made_per_class": {classes[c]: made[c] for c in planned},
        "near_copies_dropped": {classes[c]: dropped[c] for c in planned},
        "candidates_per_class": {classes[c]: candidates[c] for c in planned},
        "kept": kept_indices([items[i] for i in keep], classes),
    }


def generated_folder(record: dict, run_id: str, run_dir: Path, prefix: str = "") -> Path:
    """The generated-images folder a run's augmentation ``record`` names; ``StoreError`` (its message
    led by ``prefix``) when it is gone, with how to make the images again."""
    root = Path(record.get("folder") or "")
    if not record.get("folder") or not root.is_dir():
        raise StoreError(f"{prefix}the synthetic images of run {run_id} were in {root}, which is not there any more; "
                         f"fit the run again (`automl run {Path(run_dir) / 'recipe.yaml'}`) to make them again.")
    return root


def trained_indices(record: dict, name: str) -> list[int]:
    """The image numbers of class ``name`` that trained, read from a run's augmentation ``record``: a
    filter's ``kept`` (image numbers, checked), else the first ``synthetic_per_class`` ones."""
    kept = (record.get("filter") or {}).get("kept")
    if isinstance(kept, dict) and isinstance(kept.get(name), list):
        return [k for k in kept[name] if isinstance(k, int) and not isinstance(k, bool) and k >= 0]
    return list(range(int((record.get("synthetic_per_class") or {}).get(name, 0))))


def kept_indices(items: Sequence[Item], classes: Sequence[str]) -> dict[str, list[int]]:
    """Per class, the image numbers (``NNNNNN.png``) of the synthetic ``items``: which of a filtered
    plan's images trained, for the report."""
    out: dict[str, list[int]] = {}
    for it in items:
        out.setdefault(classes[it.label], []).append(int(Path(it.path).stem))
    return {name: sorted(ks) for name, ks in out.items()}


def plan(train: Sequence[Item], classes: Sequence[str], spec: AugmentSpec, seed: int) -> tuple[list[Item], dict[int, int]]:
    """The real images kept and the synthetic images to make per class; cheap, so a fit checks every
    variant's plan before any work."""
    labels = [it.label for it in train]
    original = np.bincount(labels, minlength=len(classes)).tolist()
    real = [train[i] for i in reduce_real(labels, spec.real_fraction, seed)]
    sizes = np.bincount([it.label for it in real], minlength=len(classes)).tolist()
    return real, plan_counts(spec, sizes, classes, original)


def preflight(train: Sequence[Item], classes: Sequence[str], spec: AugmentSpec, *, generated_dir: Path,
              seed: int = 0) -> None:
    """Fail now, not after the baseline's search, when ``spec`` cannot run: a bad plan, a missing
    package, or (when images remain to be made) an augmenter that cannot reach its weights."""
    augmenter = build_augmenter(spec.type, spec.params)
    real, counts = plan(train, classes, spec, seed)
    made = made_counts(spec, counts)
    sizes = Counter(it.label for it in real)
    augmenter.check_plan({classes[c]: n for c, n in made.items()}, {classes[c]: sizes[c] for c in made})
    out_dir = Path(generated_dir) / key_of(augmenter.name, augmenter.key_params(), real, seed)
    if any(_missing(out_dir, made).values()):
        augmenter.preflight()


def _missing(out_dir: Path, counts: dict[int, int]) -> dict[int, list[int]]:
    """Per class, the indices whose record (written after its image) is not there yet."""
    return {c: [k for k in range(n) if not (out_dir / str(c) / f"{k:06d}.json").is_file()]
            for c, n in counts.items()}


def _source_order(members: list[Item], label: int, seed: int) -> list[Item]:
    """The class's images in a seeded order that does not depend on the dataset's listing order."""
    members = sorted(members, key=lambda it: it.fingerprint)
    rng = seeds.rng(seed, "augment", label, "order")
    return [members[i] for i in rng.permutation(len(members))]


def _write_key(out_dir: Path, augmenter: Augmenter, real: Sequence[Item], seed: int) -> None:
    meta = out_dir / "key.json"
    if meta.exists():
        return
    write_json(meta, {
        "augmenter": augmenter.name, "params": augmenter.params, "seed": seed, "train_images": len(real),
        "key_version": KEY_VERSION,
    }, sort_keys=True, default=str)


def _provenance(augmenter: Augmenter, label: int, indices: Sequence[int], sources: Sequence) -> list[dict]:
    """Per index, ``{"sources": [Item, ...], ...}``: the augmenter's own (``Augmenter.provenance``), or
    the source the framework handed it (none when it takes none)."""
    own = augmenter.provenance(label, indices)
    if own is None:
        return [{"sources": [] if source is None else [source]} for source in sources]
    if len(own) != len(indices) or not all(isinstance(p, dict) and "sources" in p for p in own):
        raise RuntimeError(f"augmenter {augmenter.name}'s provenance gave {len(own)} entries for {len(indices)} "
                           "indices; expected one dict with 'sources' per index")
    outside = [it for p in own for it in p["sources"] if it.split not in TRAIN_SPLITS]
    if outside:
        raise RuntimeError(f"augmenter {augmenter.name} named {outside[0].path} (split {outside[0].split!r}) as a "
                           "source; sources are training images only")
    return own


def _save(folder: Path, k: int, image: np.ndarray, class_name: str, label: int, augmenter: Augmenter, seed: int,
          made: dict) -> None:
    """Image ``k`` as a PNG, then its record; ``made``: its sources (training Items) and whatever else
    the augmenter's ``provenance`` adds to the record."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise RuntimeError(f"augmenter {augmenter.name} returned an image of shape {image.shape} and dtype "
                           f"{image.dtype}; expected uint8 (H, W, 3)")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    data = buffer.getvalue()
    name = f"{k:06d}.png"
    record = {
        "file": name, "index": k, "class": class_name, "label": label, "augmenter": augmenter.name,
        "params": augmenter.params, "seed": seed, "fingerprint": fingerprint_bytes(data),
        "width": int(image.shape[1]), "height": int(image.shape[0]),
        "sources": [{"path": source.path, "fingerprint": source.fingerprint} for source in made["sources"]],
    }
    extra = {key: value for key, value in made.items() if key != "sources"}
    clash = sorted(set(extra) & set(record))
    if clash:
        raise RuntimeError(f"augmenter {augmenter.name}'s provenance sets {', '.join(clash)}, which the framework "
                           "records itself")
    atomic_write(folder / name, lambda f: f.write(data))
    write_json(folder / f"{k:06d}.json", {**record, **extra}, indent=1, default=str)


def sample_grid(items: Sequence[Item], classes: Sequence[str], path: Path, per_class: int = 8, size: int = 64) -> None:
    """A PNG with up to ``per_class`` synthetic images per row, one row per class that has them."""
    from PIL import Image

    rows = {}
    for it in items:
        rows.setdefault(it.label, [])
        if len(rows[it.label]) < per_class:
            rows[it.label].append(it)
    if not rows:
        return
    grid = Image.new("RGB", (per_class * size, len(rows) * size))
    for r, (label, members) in enumerate(sorted(rows.items())):
        for col, it in enumerate(members):
            grid.paste(Image.fromarray(it.load(size)), (col * size, r * size))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


_PIXELS: dict[str, str] = {}  # file fingerprint -> decoded-pixel digest (refuse_test_copies)
_MEMO_LIMIT = 200_000


# --- synthetic copies of test images (the pipeline's check, on every augmenter's output) ----------------


def pixel_digest(item) -> str:
    """A digest of an item's decoded pixels (full size, RGB), so a PNG re-encode of a JPEG matches it."""
    digest = _PIXELS.get(item.fingerprint)
    if digest is None:
        if len(_PIXELS) > _MEMO_LIMIT:
            _PIXELS.clear()
        digest = _PIXELS[item.fingerprint] = fingerprint_array(item.load(None))
    return digest


def find_test_copies(synthetic: Sequence[Item], test: Sequence[Item]) -> list[tuple[int, Item]]:
    """(position in ``synthetic``, test item) for each synthetic image whose decoded pixels equal a test
    image's. Only images of a size the other side has are decoded (either orientation: EXIF may turn a
    test image), and each image's digest is kept for the process, so a fit decodes the test split once."""
    def sizes(items) -> set:
        return {(it.width, it.height) for it in items} | {(it.height, it.width) for it in items}

    synthetic_sizes = sizes(synthetic)
    test = [it for it in test if (it.width, it.height) in synthetic_sizes]
    test_sizes = sizes(test)
    rows = [i for i, it in enumerate(synthetic) if (it.width, it.height) in test_sizes]
    if not rows:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(test) + len(rows))) as pool:  # Pillow decodes outside the GIL
        by_digest = {}
        for it, digest in zip(test, pool.map(pixel_digest, test)):
            by_digest.setdefault(digest, it)
        digests = list(pool.map(pixel_digest, [synthetic[i] for i in rows]))
    return [(i, by_digest[d]) for i, d in zip(rows, digests) if d in by_digest]


def refuse_test_copies(synthetic, test: Sequence[Item], *, skip_bad: bool, progress: bool = True):
    """``synthetic`` (an ``automl.augment.generate.Synthetic``) without copies of test images: refused
    with the list, or with ``skip_bad`` left out (said, and recorded as ``test_copies_left_out``)."""
    copies = find_test_copies(synthetic.items, test)
    if not copies:
        return synthetic
    shown = "\n".join(f"  {_origin(synthetic.items[i])} = test image {t.path}" for i, t in copies[:10])
    more = f"\n  ... and {len(copies) - 10} more" if len(copies) > 10 else ""
    if not skip_bad:
        raise DataError(f"{len(copies)} synthetic image(s) are copies of test images (identical decoded pixels): "
                        f"training on them would score the test split on images the model has seen.\n{shown}{more}\n"
                        "Fix: remove them from what the augmenter reads (for `folder`, its folder), or pass "
                        "--skip-bad to leave them out (they are listed).")
    events.note(f"left out {len(copies)} synthetic image(s) identical to test images (--skip-bad):\n{shown}{more}",
                echo=progress)
    drop = {i for i, _ in copies}
    keep = [i for i in range(len(synthetic.items)) if i not in drop]
    items = [synthetic.items[i] for i in keep]
    record = dict(synthetic.record)
    counts, names = Counter(it.label for it in items), list(record.get("real_per_class") or [])
    if "synthetic_per_class" in record:
        record["synthetic_per_class"] = {name: counts[names.index(name)] if name in names else n
                                         for name, n in record["synthetic_per_class"].items()}
    record["test_copies_left_out"] = [_origin(synthetic.items[i]) for i, _ in copies]
    if "filter" in record:
        record["filter"] = {**record["filter"], "kept": kept_indices(items, names)}
    return replace(synthetic, items=items, sources=[synthetic.sources[i] for i in keep], record=record)


def _origin(item: Item) -> str:
    """Where a synthetic image came from, for the user: its ``origin`` (``folder``'s file) or its path."""
    try:
        return json.loads(Path(item.path).with_suffix(".json").read_text()).get("origin") or item.path
    except (OSError, ValueError):
        return item.path
