"""Domain pretraining: ``automl pretrain`` trains a Keras backbone on a labelled dataset and saves it,
without its head, as an extractor in the store.

The backbone is built as the extractors build it (``include_top=False``, average-pooled, from
ImageNet, random or file weights) with its ``preprocess_input`` as a ``Rescaling`` layer in front, so the
saved model takes 0..255 RGB floats — what ``file:`` extractors feed a Keras model. A temporary softmax
head, augmentation (random flip, rotation, zoom) and dropout are used for training only.

Training, with the usual care: a validation split (the data's ``val/``, else a stratified, seeded
fraction of train), a cosine learning-rate schedule over the epochs, early stopping on validation loss
(the best epoch's weights are the ones saved), a progress bar, and a checkpoint after every epoch
(weights, optimizer state, epoch, history) under ``store/extractors/.pretrain-NAME-<hash>/``: a killed
pretraining run again with the same data and settings resumes after its last finished epoch. With
pretrained weights (ImageNet or a file) the batch-norm layers stay frozen, the usual rule for fine-tuning
on little data; from random weights they train.

``--exclude DATA2`` drops (or, with ``exclude_mode="refuse"``, refuses) pretraining images that also
appear in DATA2's test split — all of DATA2 when it has no test split, since ``automl fit`` would hold
out a seeded fraction that depends on its flags. Images match by content fingerprint (identical file
bytes, or identical pixel arrays for ``.npz``) and by a hash of the decoded pixels, so the same image
stored losslessly in another format (a PNG and an ``.npz`` row) matches too; a re-encoded JPEG does not.

Synthetic pretraining (``augment=``, ``--augment NAME`` with the plan flags of ``fit``): the
augmenter makes (or reuses, from the same ``store/generated/`` cache as ``fit``) synthetic images of
the training images, and pretraining trains on real + synthetic or, with ``mix: synthetic-only``, on
synthetic images alone. Validation stays real, and no synthetic image made from a validation image
trains: the validation split is drawn *first* and the augmenter is handed the remaining training
images only. That is the one order that also holds for generators fitted on a whole class (DCGAN,
DreamBooth), whose images record no source: filtering by recorded source afterwards would still
leave images of a generator that learnt from the validation images. Belt and braces, a synthetic
image is left out (and counted) when a recorded source has a validation image's fingerprint (the
same file in train and val) or its pixels equal a validation image's, or when it matches an
``--exclude`` test set (refused with ``exclude_mode="refuse"``); one equal to a test image of DATA is
refused, or left out with ``skip_bad`` (``refuse_test_copies``, as ``fit``). The key of the generated
set therefore hashes the pretraining's training images, not ``fit``'s (train + val): a re-run of
the same pretraining reuses its images; ``fit`` on DATA makes its own. The selective filter, which
chooses per cross-validation fold with embedded real images, has no place here and is refused.

"Real, then fine-tuned on synthetic" is two commands: ``--weights NAME`` starts from a pretrained
extractor of the store (or a ``.keras`` file ``pretrain`` saved) instead of ImageNet, random or a
weights file, so the second ``pretrain --augment X --mix synthetic-only --weights REAL`` continues the
first. Each stage keeps its own record, checkpoint, early stopping and validation; the second's
record names the first (``started_from``, with the synthetic set the first saw, if any). On the
same DATA the two must hold out the same validation images (the same ``--seed``, ``--val-fraction``
and ``--exclude``), else the second would validate on images the first trained on: that is refused.

Output: ``store/extractors/NAME.keras`` and ``NAME.json`` (data fingerprint, settings, the test sets it
was checked against, the synthetic set it saw, metrics per epoch), written atomically; ``--extractors
NAME`` then resolves to it (``automl.extractors.resolve``). Keras and TensorFlow are imported only when
training starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from automl import progress as events
from automl import seeds
from automl._files import atomic_path, content_digest, remove_stale_temporaries, write_json
from automl.data import Dataset, Item, fingerprint_array, load_dataset, stratified_holdout
from automl.errors import ConfigError, DataError, WeightsUnavailableError
from automl.images import MemoryBudget
from automl.params import Interval, Options, check_param
from automl.extractors import (DEFAULT_IMAGE_SIZE, EXTRACTORS, Backbone, Weights, dtype_policy, import_keras,
                               pretrained_names, pretrained_path)
from automl.extractors.pretrained import NAME
from automl.extractors.spec import first_line
from automl.registry import canonical
from automl.store import Store

if TYPE_CHECKING:
    from automl.augment.plan import AugmentSpec

EXCLUDE_MODES = ("drop", "refuse")
CHECKPOINT_VERSION = 2  # 2: seed streams (automl.seeds) replaced seed + k and [seed, epoch]
# From random weights the moving statistics start at mean 0, variance 1; Keras's 0.99 leaves them far
# from the data's after the few hundred steps a small dataset gives, and validation (which uses them)
# then sees the majority class only. 0.9 catches up within a few dozen steps.
BN_MOMENTUM = 0.9
# Bytes of decoded full-size images the --exclude check's threads hold at once (a separate budget from
# automl.images.DECODE_BUDGET, which each decode takes inside this one, so neither waits on itself).
_NATIVE_PIXELS = MemoryBudget(1 << 29)


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything besides the data that determines a pretraining (the checkpoint's identity)."""

    extractor: str
    weights: str  # Weights.key(): "imagenet:<file>", "random:seed=<s>:keras=<version>" or "file:<content hash>"
    image_size: int
    epochs: int
    freeze_until: str | None
    seed: int
    batch_size: int
    learning_rate: float
    val_fraction: float
    patience: int
    augmentation: dict = field(default_factory=lambda: {"flip": "horizontal", "rotation": 0.05, "zoom": 0.1})
    schedule: str = "cosine"
    dropout: float = 0.2
    batch_norm: str = "frozen"  # "frozen" (pretrained weights) or "trained, momentum 0.9" (random weights)


@dataclass
class PretrainResult:
    name: str
    model_path: Path
    record_path: Path
    record: dict


def pretrain(
    data: str | os.PathLike,
    *,
    extractor: str = "inception-v3",
    weights: str | os.PathLike | None = "imagenet",
    image_size: int = DEFAULT_IMAGE_SIZE,
    epochs: int = 10,
    freeze_until: str | None = None,
    name: str | None = None,
    exclude: Sequence[str | os.PathLike] = (),
    exclude_mode: str = "drop",
    augment: "AugmentSpec | dict | None" = None,
    store: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    val_fraction: float = 0.1,
    patience: int = 3,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PretrainResult:
    """Train ``extractor`` with a temporary head on ``data`` and save it as ``store/extractors/NAME.keras``.

    ``augment``: an augmentation plan (``AugmentSpec`` or its mapping, as a recipe's ``augment:``
    entry): train on real + synthetic images of the training split, or synthetic ones only.
    ``weights`` may also name a pretrained extractor of the store, to continue its training.
    Every input is checked before anything is written (the models are built before any image is
    generated); a run killed after some epochs resumes from its checkpoint when run again with the
    same data and settings.
    """
    backbone = EXTRACTORS.get(extractor)
    backbone.check_image_size(image_size)
    _check_settings(epochs=epochs, patience=patience, batch_size=batch_size, learning_rate=learning_rate,
                    val_fraction=val_fraction, exclude_mode=exclude_mode)
    spec = augment_spec(augment)
    for other in exclude:
        if not Path(other).exists():
            raise DataError(f"--exclude {other}: not found. Pass the dataset (folder or .npz) whose test split the "
                            "pretraining must not contain.")
    root = Store(store)
    start = _start_from(weights, root, backbone)
    weights = Weights("random") if start is not None else Weights.parse(weights)
    name = _check_name(name or default_name(backbone.name, data, spec), root, overwrite)
    if start is not None and start.path == (root.extractors_dir / f"{name}.keras").resolve():
        raise ConfigError(f"--name {name}: that is the extractor --weights starts from; saving over it would lose "
                          f"what it started from. Pass another --name, e.g. --name {name}-2.")
    pretrained = weights.pretrained or start is not None

    say = _noted(log)
    with events.stage("pretrain"):
        dataset = load_dataset(data, skip_bad=skip_bad)
        items = [it for it in dataset.items if it.split != "test"]
        if not items:
            raise DataError(f"{dataset.root}: no train images to pretrain on.")
        tests = _test_sets(exclude, skip_bad)
        excluded, items = _exclude(items, tests, exclude_mode, skip_bad, say)
        train, val, val_note = _validation_split(dataset, items, val_fraction, seed)
        if start is not None:
            _check_start_validation(start, dataset, val, say)
        if spec is not None:
            from automl.augment.generate import preflight

            # A bad plan (classes, ratio, mix), a missing package or unreachable weights: refused now.
            preflight(train, dataset.classes, spec, generated_dir=root.generated_dir, seed=seed)
        size = int(image_size)
        lr = float(learning_rate or (1e-4 if pretrained else 1e-3))
        settings = Settings(backbone.name, start.key() if start else weights.key(backbone.weights_file, seed), size,
                            int(epochs), freeze_until, int(seed), 0, lr, float(val_fraction), int(patience),
                            batch_norm="frozen" if pretrained else f"trained, momentum {BN_MOMENTUM}")

        keras = import_keras()
        # Built before any image is generated: a bad --freeze-until or start model fails in seconds.
        models = _build(keras, backbone, weights, settings, len(dataset.classes), start)
        synthetic, training = None, train
        if spec is not None:  # inside the "pretrain" stage: its bar says "generate NAME"
            synthetic, training = _synthesize(spec, dataset, train, val, root, tests, excluded, exclude_mode, seed,
                                              skip_bad, progress, say)
        settings = replace(settings, batch_size=min(batch_size or default_batch_size(size), len(training)))
        data_fp = _fingerprint(training, val)
        identity = hashlib.blake2b(json.dumps([data_fp, asdict(settings)], sort_keys=True).encode(),
                                   digest_size=8).hexdigest()
        shown = (f"{len(training)} train" if synthetic is None else
                 f"{len(training)} train ({synthetic['trained']['real']} real + {synthetic['trained']['synthetic']} "
                 "synthetic)")
        say(f"pretraining {backbone.name} on {dataset.root}: {shown} / {len(val)} val images "
            f"({val_note}), {len(dataset.classes)} classes, {size} px, batch {settings.batch_size}, up to {epochs} "
            "epochs" + (f", starting from {start.name}" if start else ""))

        checkpoint = root.extractors_dir / f".pretrain-{name}-{identity}"
        state = _resume(checkpoint, identity, models, say)
        history = _train(keras, models, settings, training, val, checkpoint, identity, state, progress, say)

        best = history["best_epoch"]
        if best is not None:
            models.extractor.load_weights(str(checkpoint / history["best_file"]))
        counts = {"train": len(training), "val": len(val)}
        if synthetic is not None:
            counts.update(synthetic["trained"])
        record = {
            "name": name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "extractor": backbone.name,
            "data": str(dataset.root),
            "layout": dataset.layout,
            "classes": dataset.classes,
            "data_fingerprint": data_fp,
            "validation_fingerprint": _validation_fingerprint(val),
            "counts": counts,
            "validation": val_note,
            "settings": asdict(settings) | {"weights_given": start.record_entry() if start else weights.record()},
            "excluded": excluded,
            "synthetic": synthetic,
            "started_from": start.summary() if start else None,
            "epochs": history["epochs"],
            "best_epoch": best,
            "stopped_early": history["stopped_early"],
            "resumed_after_epoch": state["epoch"] if state else None,
            "model": {"file": f"{name}.keras", "input": [size, size, 3], "dim": backbone.dim,
                      "takes": "RGB floats 0..255 (preprocessing inside the model)"},
        }
        model_path, record_path = _save(models.extractor, record, root, name)
        shutil.rmtree(checkpoint, ignore_errors=True)
        for stale in root.extractors_dir.glob(f".pretrain-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # checkpoints of earlier settings under this name
        return PretrainResult(name, model_path, record_path, record)


def _noted(log: Callable[[str], None]) -> Callable[..., None]:
    """``log``, each line also a progress note (with ``info``, for a service to show)."""
    def say(line: str, **info) -> None:
        events.note(line, **info)
        log(line)

    return say


def default_name(extractor: str, data: str | os.PathLike, spec: "AugmentSpec | None" = None) -> str:
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(data).stem.lower()).strip("-._") or "data"
    return f"{extractor}-{stem}{f'-{spec.type}' if spec is not None else ''}"[:80]


def default_batch_size(image_size: int) -> int:
    """32 at 75 px down to 16 at 299 px: training holds activations for the backward pass too."""
    return int(max(8, min(32, round(16 * (299 / image_size) ** 2))))


# Each setting's accepted values; errors name the CLI flag (--batch-size for batch_size).
_SETTINGS = {
    "epochs": [Interval(int, 1, closed="left")],
    "patience": [Interval(int, 1, closed="left")],
    "batch_size": [Interval(int, 2, closed="left"), None],
    "learning_rate": [Interval(float, 0, 1, closed="neither"), None],
    "val_fraction": [Interval(float, 0, 1, closed="neither")],
    "exclude_mode": [Options(EXCLUDE_MODES)],
}


def _check_settings(**values) -> None:
    for name, accepted in _SETTINGS.items():
        check_param("automl pretrain", "--" + name.replace("_", "-"), values[name], *accepted)


def _check_name(name: str, root: Store, overwrite: bool) -> str:
    key = canonical(name)
    if not NAME.match(key):
        raise ConfigError(f"--name {name!r}: a pretrained extractor's name is letters, digits, '.', '-' and '_' "
                          "(up to 80, starting with a letter or digit); e.g. --name inception-v3-chest.")
    if key in EXTRACTORS:
        raise ConfigError(f"--name {name!r} is a built-in extractor; choose another name, e.g. {key}-pretrained.")
    if (root.extractors_dir / f"{key}.keras").exists() and not overwrite:
        raise ConfigError(f"a pretrained extractor {key!r} exists already ({root.extractors_dir / (key + '.keras')}); "
                          "pass --overwrite to replace it, or another --name.")
    return key


# --- the synthetic set ---------------------------------------------------------------------------


def augment_spec(value: "AugmentSpec | dict | None") -> "AugmentSpec | None":
    """The augmentation plan, checked: its errors name the field (``ratio``, ``filter.selective``, ...)."""
    from pydantic import ValidationError

    from automl.augment.plan import AugmentSpec

    if value is None or isinstance(value, AugmentSpec):
        spec = value
    else:
        from automl.recipe.explain import RecipeError, explain

        try:
            spec = AugmentSpec.model_validate(value)
        except ValidationError as exc:
            # An augmenter's own parameter check has no field of the plan to name: it is in params.
            lines = [f"params: {line[2:]}" if line.startswith(": ") else line
                     for line in explain(exc, AugmentSpec.model_fields, flags=True)]
            raise RecipeError(lines, source="automl pretrain --augment") from None
    if spec is not None and spec.filter is not None and spec.filter.selective is not None:
        raise ConfigError("automl pretrain --augment: filter.selective: the selective filter (and its control) "
                          "chooses synthetic images per cross-validation fold with a classifier of embedded real "
                          "images, which pretraining does not have; found selective="
                          f"{spec.filter.selective:g}. Fix: leave it out, or use --filter drop_copies.")
    return spec


def _synthesize(spec: "AugmentSpec", dataset: Dataset, train: list[Item], val: list[Item], root: Store,
                tests: list["_TestSet"], excluded: list[dict], exclude_mode: str, seed: int, skip_bad: bool,
                progress: bool, log) -> tuple[dict, list[Item]]:
    """Make (or reuse) the plan's synthetic images of ``train`` (the training images left after the
    validation split), leave out any that could leak validation or test images, and return the
    record of the synthetic set and the images to train on (real ones first unless synthetic-only)."""
    from automl.augment import build_augmenter
    from automl.augment.generate import augment, find_test_copies, refuse_test_copies

    augmenter = build_augmenter(spec.type, spec.params)
    augmenter.skip_bad = skip_bad  # an augmenter that reads files of its own (folder) honours it
    root.ensure()
    synthetic = augment(train, dataset.classes, spec, generated_dir=root.generated_dir,
                        generators_dir=root.generators_dir, seed=seed, progress=progress, augmenter=augmenter)
    synthetic = refuse_test_copies(synthetic, dataset.split("test"), skip_bad=skip_bad, progress=progress)
    items, sources = synthetic.items, synthetic.sources
    # By construction no source is a validation image; a file present in both train and val shares
    # its fingerprint with the validation copy, and a folder augmenter's image may equal one.
    val_fps = {it.fingerprint for it in val}
    from_val = {i for i, src in enumerate(sources) if val_fps.intersection(src)}
    copies = {i for i, _ in find_test_copies(items, val)} - from_val
    if from_val or copies:
        log(f"left out {len(from_val) + len(copies)} synthetic image(s) that could leak validation images: "
            f"{len(from_val)} made from an image also in the validation split, {len(copies)} identical to a "
            "validation image")
    items = [it for i, it in enumerate(items) if i not in from_val | copies]
    matched, items = _exclude(items, tests, exclude_mode, skip_bad, log, what="synthetic", allow_empty=True)
    for entry, match in zip(excluded, matched):
        entry["synthetic_dropped"] = match["dropped"]
    real = synthetic.real if synthetic.train_on_real else []
    training = real + items
    if len({it.label for it in training}) < 2:
        raise DataError(f"{dataset.root}: after leaving out synthetic images that could leak validation or test "
                        f"images, the training images ({spec.mix}) hold fewer than 2 classes; nothing to pretrain.")
    record = dict(synthetic.record)
    record.pop("synthetic_per_class", None)  # counted again below, after what was left out here
    record.update({
        "key": Path(record["folder"]).name,
        "plan": spec.model_dump(mode="json", exclude_none=True),
        "made_from": "the pretraining's training images only, drawn after its validation split",
        "synthetic_per_class": {c: sum(dataset.classes[it.label] == c for it in items) for c in record["classes"]},
        "left_out": {"made_from_validation_image": len(from_val), "copy_of_validation_image": len(copies),
                     "copy_of_test_image": len(record.get("test_copies_left_out", [])),
                     "in_exclude_test_sets": sum(m["dropped"] for m in matched)},
        "trained": {"real": len(real), "synthetic": len(items)},
    })
    return record, training


def describe_synthetic(record: dict) -> list[str]:
    """Lines for the terminal: the synthetic set a pretrained extractor saw, and what it started from."""
    lines = []
    syn = record.get("synthetic")
    if syn:
        per_class = ", ".join(f"{c} {n}" for c, n in syn["synthetic_per_class"].items())
        left = sum(syn["left_out"].values())
        lines.append(f"synthetic set: {syn['variant']} ({syn['mix']}), {syn['trained']['synthetic']} images "
                     f"({per_class}) with {syn['trained']['real']} real; {syn['key']} in {Path(syn['folder']).parent} "
                     f"({syn['generated']} made, {syn['reused']} reused" + (f", {left} left out" if left else "")
                     + ")")
    start = record.get("started_from")
    if start:
        seen = start.get("synthetic")
        lines.append(f"started from: {start['name']} (pretrained on {start.get('data')}"
                     + (f", synthetic set {seen['variant']} {seen['key']}" if seen else ", real images only") + ")")
    return lines


# --- starting from a pretrained extractor -----------------------------------------------------------


@dataclass(frozen=True)
class _Start:
    """A pretrained extractor (``automl pretrain``'s ``.keras``) that a pretraining continues."""

    name: str
    path: Path
    digest: str
    record: dict | None  # its NAME.json, when there

    def key(self) -> str:
        return f"pretrained:{self.digest}"

    def record_entry(self) -> dict:
        return {"kind": "pretrained", "name": self.name, "path": str(self.path), "digest": self.digest}

    def summary(self) -> dict:
        rec = self.record or {}
        return self.record_entry() | {key: rec.get(key) for key in ("data", "data_fingerprint", "counts",
                                                                    "best_epoch", "synthetic", "started_from")}


def _start_from(weights, root: Store, backbone: Backbone) -> _Start | None:
    """``weights`` as a pretrained extractor to continue: its name in the store, or a ``.keras`` file
    (None for imagenet, none and weights files, which ``Weights.parse`` reads)."""
    if weights is None or isinstance(weights, Weights) or Weights.keyword(os.fspath(weights)):
        return None
    text = os.fspath(weights)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix != ".keras":
        return None
    found = path.resolve() if path.is_file() else pretrained_path(root, text)
    if found is None:
        names = pretrained_names(root)
        raise WeightsUnavailableError(
            f"--weights {text}: not imagenet, none, a weights file, nor a pretrained extractor in "
            f"{root.extractors_dir} ({', '.join(names) if names else 'none there'}). Pass one of those "
            "(a pretrained extractor continues its training).")
    side = found.with_suffix(".json")
    record = json.loads(side.read_text()) if side.is_file() else None
    made = (record or {}).get("extractor")
    if made is not None and made != backbone.name:
        raise ConfigError(f"--weights {text}: a pretrained {made}; --extractor {backbone.name} cannot start from it. "
                          f"Pass --extractor {made}.")
    return _Start(found.stem, found, content_digest(found), record)


def _validation_fingerprint(val: Sequence[Item]) -> str:
    return hashlib.blake2b(";".join(sorted(f"{it.fingerprint}:{it.label}" for it in val)).encode(),
                           digest_size=12).hexdigest()


def _check_start_validation(start: _Start, dataset: Dataset, val: list[Item], log) -> None:
    """On the same data, the start extractor held out these validation images too (else this stage
    would validate on images it trained on)."""
    rec = start.record or {}
    if not rec.get("data") or Path(rec["data"]).resolve() != Path(dataset.root).resolve():
        return
    theirs = rec.get("validation_fingerprint")
    if theirs is None:
        log(f"note: {start.name}'s record predates validation fingerprints; cannot check that it held out the same "
            "validation images")
    elif theirs != _validation_fingerprint(val):
        settings = rec.get("settings") or {}
        raise ConfigError(
            f"--weights {start.name} was pretrained on {dataset.root} with another validation split "
            f"({rec.get('validation')}); this run would validate on images it may have trained on. Pass the "
            f"--seed, --val-fraction and --exclude it was pretrained with (seed {settings.get('seed')}, val fraction "
            f"{settings.get('val_fraction')}).")


def _fingerprint(train: list[Item], val: list[Item]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part, items in (("train", train), ("val", val)):
        for it in items:
            h.update(f"{part}:{it.fingerprint}:{it.label};".encode())
    return h.hexdigest()


# --- excluding test sets -----------------------------------------------------------------------


def _pixel_hashes(items: Sequence[Item], skip_bad: bool) -> list[str | None]:
    def one(it: Item) -> str | None:
        try:
            # Native-size pixels outlive their decode (and DECODE_BUDGET's share) until hashed: the
            # array and fingerprint_array's copy of its bytes.
            with _NATIVE_PIXELS.hold(it.width * it.height * 6):
                return fingerprint_array(it.load(None))
        except DataError:
            if skip_bad:
                return None
            raise

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, items))


@dataclass
class _TestSet:
    """An ``--exclude`` dataset's test split (all of it when it has none), as what images match by."""

    data: str
    checked: str
    size: int
    content: set
    pixels: set


def _test_sets(others, skip_bad: bool) -> list[_TestSet]:
    sets = []
    for other in others:
        ds = load_dataset(other, skip_bad=skip_bad)
        test = ds.split("test")
        checked = "test split" if test else "all images (no test split given)"
        test = test or ds.items
        sets.append(_TestSet(str(ds.root), checked, len(test), {it.fingerprint for it in test},
                             set(_pixel_hashes(test, skip_bad)) - {None}))
    return sets


def _exclude(items: list[Item], sets: list[_TestSet], mode: str, skip_bad: bool, log, what: str = "pretraining",
             allow_empty: bool = False) -> tuple[list[dict], list[Item]]:
    """``items`` without those in an ``--exclude`` test set (or refused); ``what``: the images' kind."""
    if not sets:
        return [], items
    mine = _pixel_hashes(items, skip_bad)
    records, drop = [], set()
    for ts in sets:
        hits = [i for i, (it, px) in enumerate(zip(items, mine)) if it.fingerprint in ts.content or px in ts.pixels]
        if hits and mode == "refuse":
            shown = ", ".join(items[i].path for i in hits[:5])
            raise DataError(f"{len(hits)} {what} image(s) also appear in the test split of {ts.data} "
                            f"(e.g. {shown}); remove them, or pass --exclude-mode drop to leave them out.")
        log(f"--exclude {ts.data} ({ts.checked}, {ts.size} images): {len(hits)} {what} image(s) match"
            + ("; dropped" if hits else ""))
        records.append({"data": ts.data, "checked": ts.checked, "images_checked": ts.size, "dropped": len(hits),
                        "match": "content fingerprint or decoded-pixel hash"})
        drop.update(hits)
    kept = [it for i, it in enumerate(items) if i not in drop]
    if not kept and not allow_empty:
        raise DataError(f"every {what} image appears in an --exclude test set; nothing is left to train on.")
    return records, kept


# --- validation split --------------------------------------------------------------------------


def _validation_split(dataset: Dataset, items: list[Item], fraction: float, seed: int):
    val = [it for it in items if it.split == "val"]
    train = [it for it in items if it.split != "val"]
    if val:
        note = "the data's val split"
    else:
        labels = [it.label for it in train]
        held = stratified_holdout(labels, fraction, seeds.derive(seed, "pretrain", "val"))
        if held is None:
            counts = {c: labels.count(c) for c in set(labels)}
            raise DataError(f"{dataset.root}: cannot hold out a stratified {fraction:g} validation split (class "
                            f"sizes {({dataset.classes[c]: n for c, n in sorted(counts.items())})}); every class "
                            "needs at least 2 images. Add images, a val/ split, or raise --val-fraction.")
        train, val = ([it for i, it in enumerate(train) if i not in held],
                      [it for i, it in enumerate(train) if i in held])
        note = f"stratified {fraction:g} of train (seed {seed})"
    if len({it.label for it in train}) < 2:
        raise DataError(f"{dataset.root}: pretraining needs at least 2 classes in the training images.")
    return train, val, note


# --- the models --------------------------------------------------------------------------------


@dataclass
class _Models:
    train: object  # augmentation -> extractor -> dropout -> softmax head, compiled
    extractor: object  # rescaling -> backbone: what is saved


def _build(keras, backbone: Backbone, weights: Weights, settings: Settings, n_classes: int,
           start: _Start | None = None) -> _Models:
    """The models; ``start``: a pretrained extractor whose weights replace ``weights``' (random) ones."""
    size, seed = settings.image_size, settings.seed
    pretrained = weights.pretrained or start is not None
    module = getattr(keras.applications, backbone.module)
    probe = np.linspace(0, 255, 12, dtype=np.float32).reshape(1, 2, 2, 3)
    if not np.allclose(module.preprocess_input(probe.copy()), probe / 127.5 - 1, atol=1e-5):
        raise ConfigError(f"{backbone.name}: its preprocess_input is not x / 127.5 - 1, which pretraining builds into "
                          "the saved model; this backbone cannot be pretrained yet.")
    # float32 whatever the global policy: mixed precision training would need loss scaling.
    with dtype_policy(keras, "float32"):
        net = backbone.keras_model(keras, weights, size, seed)
        _freeze(net, backbone.name, settings.freeze_until, pretrained=pretrained)
        inputs = keras.Input((size, size, 3), name="pixels")
        features = net(keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inputs))
        extractor = keras.Model(inputs, features, name=f"{backbone.name}-pretrained")
        if start is not None:
            try:  # the same model as pretraining saves: its weights load into it by structure
                extractor.load_weights(str(start.path))
            except Exception as exc:  # Keras raises many types for a mismatched file
                raise ConfigError(f"--weights {start.name}: cannot load {start.path} into {backbone.name} as "
                                  f"`automl pretrain` builds it: {first_line(exc)}. Pass an extractor pretrain "
                                  "saved for this backbone.") from exc
        aug = settings.augmentation
        x = keras.layers.RandomFlip(aug["flip"], seed=seeds.derive(seed, "pretrain", "flip"))(inputs)
        x = keras.layers.RandomRotation(aug["rotation"], fill_mode="reflect",
                                        seed=seeds.derive(seed, "pretrain", "rotation"))(x)
        x = keras.layers.RandomZoom(aug["zoom"], fill_mode="reflect", seed=seeds.derive(seed, "pretrain", "zoom"))(x)
        x = extractor(x)
        x = keras.layers.Dropout(settings.dropout, seed=seeds.derive(seed, "pretrain", "dropout"))(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(x)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=False)
    return _Models(model, extractor)


def _freeze(net, name: str, until: str | None, pretrained: bool) -> None:
    names = [layer.name for layer in net.layers]
    if until is not None and until not in names:
        blocks = [n for n in names if re.fullmatch(r"(mixed\d+|block\d+_out|block\d+_pool|conv_7b_ac)", n)]
        shown = ", ".join(blocks or names[-10:])
        raise ConfigError(f"--freeze-until {until!r}: no layer of that name in {name}; its block ends are {shown} "
                          f"({len(names)} layers in all, e.g. {names[1]}, {names[len(names) // 2]}).")
    frozen = names.index(until) + 1 if until is not None else 0
    for i, layer in enumerate(net.layers):
        is_bn = layer.__class__.__name__ == "BatchNormalization"
        # With pretrained weights batch norm keeps its statistics (inference mode); from scratch it learns them.
        layer.trainable = i >= frozen and not (pretrained and is_bn)
        if is_bn and not pretrained:
            layer.momentum = BN_MOMENTUM


# --- training ----------------------------------------------------------------------------------


def _resume(checkpoint: Path, identity: str, models: _Models, log) -> dict | None:
    state_file = checkpoint / "state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    if state.get("identity") != identity or state.get("version") != CHECKPOINT_VERSION:
        return None
    model = models.train
    model.optimizer.build(model.trainable_variables)  # so the checkpoint's optimizer slots have a place
    model.load_weights(str(checkpoint / state["last_file"]))
    log(f"resuming from the checkpoint after epoch {state['epoch']} ({checkpoint})")
    return state


def _train(keras, models: _Models, settings: Settings, train: list[Item], val: list[Item], checkpoint: Path,
           identity: str, state: dict | None, progress: bool, log) -> dict:
    model = models.train
    history = state["history"] if state else {"epochs": [], "best_epoch": None, "best_file": None,
                                              "best_val_loss": None, "wait": 0, "stopped_early": False}
    start = state["epoch"] if state else 0
    y_train = np.array([it.label for it in train])
    batch, size = settings.batch_size, settings.image_size
    for epoch in range(start, settings.epochs):
        if history["stopped_early"]:
            break
        t0 = time.perf_counter()
        lr = settings.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / settings.epochs))
        model.optimizer.learning_rate = lr
        order = seeds.rng(settings.seed, "pretrain", "epoch", epoch).permutation(len(train))
        steps = len(train) // batch  # drop the short last batch: one batch shape, one traced graph
        losses, accuracies = [], []  # train_on_batch reports each batch alone: averaged here
        bar = events.bar(total=steps, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch",
                         disable=not progress, leave=False, dynamic_ncols=True)
        try:
            for idx, x in _batches([train[i] for i in order[:steps * batch]], batch, size):
                logs = model.train_on_batch(x, y_train[order[idx]], return_dict=True)
                losses.append(float(logs["loss"]))
                accuracies.append(float(logs["accuracy"]))
                bar.set_postfix_str(f"loss={np.mean(losses):.4f}", info={"loss": float(np.mean(losses))})
                bar.update(1)
        finally:
            bar.close()
        val_loss, val_acc = _evaluate(models.train, val, batch, size)
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies)),
               "val_loss": val_loss, "val_accuracy": val_acc, "learning_rate": lr,
               "seconds": round(time.perf_counter() - t0, 2)}
        history["epochs"].append(row)
        improved = history["best_val_loss"] is None or val_loss < history["best_val_loss"] - 1e-6
        checkpoint.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(checkpoint)
        if improved:
            history.update(best_val_loss=val_loss, best_epoch=epoch + 1, wait=0,
                           best_file=_save_weights(models.extractor, checkpoint, f"best-{epoch + 1}"))
        else:
            history["wait"] += 1
            history["stopped_early"] = history["wait"] >= settings.patience
        last = _save_weights(model, checkpoint, f"last-{epoch + 1}")
        # state.json is the commit point: the files it names are complete before it is written.
        write_json(checkpoint / "state.json",
                   {"version": CHECKPOINT_VERSION, "identity": identity, "epoch": epoch + 1, "last_file": last,
                    "history": history}, indent=1)
        for old in checkpoint.glob("*.weights.h5"):
            if old.name not in (last, history["best_file"]):
                old.unlink(missing_ok=True)
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {row['loss']:.4f} acc {row['accuracy']:.3f}  val_loss "
            f"{val_loss:.4f} val_acc {val_acc:.3f}  lr {lr:.2e}  {row['seconds']:.0f} s"
            + ("  (best)" if improved else "") + ("  early stop" if history["stopped_early"] else ""),
            **row, best=improved, stopped_early=history["stopped_early"])
    return history


def _save_weights(model, folder: Path, stem: str) -> str:
    name = f"{stem}.weights.h5"
    with atomic_path(folder / name) as tmp:  # Keras wants a file name ending in .weights.h5
        model.save_weights(str(tmp))
    return name


def _batches(items: list[Item], batch: int, size: int):
    """(positions, uint8 images as float32) per batch, decoded in threads one batch ahead."""
    chunks = [list(range(i, i + batch)) for i in range(0, len(items) - batch + 1, batch)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=4) as pool:
        def submit(chunk):
            return pool.map(lambda i: items[i].load(size), chunk)

        ahead = submit(chunks[0])
        for n, chunk in enumerate(chunks):
            images = list(ahead)
            if n + 1 < len(chunks):
                ahead = submit(chunks[n + 1])
            yield np.array(chunk), np.stack(images).astype(np.float32)


def _evaluate(model, items: list[Item], batch: int, size: int) -> tuple[float, float]:
    """Validation loss and accuracy; the short last batch is padded so the graph is traced once."""
    probs = []
    for start in range(0, len(items), batch):
        events.checkpoint()
        chunk = items[start:start + batch]
        x = np.stack([it.load(size) for it in chunk]).astype(np.float32)
        if len(x) < batch:
            x = np.concatenate([x, np.zeros((batch - len(x),) + x.shape[1:], np.float32)])
        probs.append(np.asarray(model.predict_on_batch(x), dtype=np.float64)[:len(chunk)])
    p = np.concatenate(probs)
    y = np.array([it.label for it in items])
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))
    return loss, float(np.mean(p.argmax(axis=1) == y))


# --- saving ------------------------------------------------------------------------------------


def _save(extractor, record: dict, root: Store, name: str) -> tuple[Path, Path]:
    from automl.pipeline import library_versions

    folder = root.extractors_dir
    root.ensure()
    remove_stale_temporaries(folder)
    model_path, record_path = folder / f"{name}.keras", folder / f"{name}.json"
    with atomic_path(model_path) as tmp:
        extractor.save(str(tmp))
        record["model"]["content_hash"] = content_digest(tmp)
        record["versions"] = library_versions()
    write_json(record_path, record)
    return model_path, record_path
