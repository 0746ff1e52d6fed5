"""A blinded review: can an expert tell a run's synthetic images from its real ones?

``automl review make RUN --per-class N`` (``make``) picks, for every class the run has synthetic images
of, N real training images and N of the run's synthetic images (seeded), shuffles them together and gives
each a neutral random id. It writes two files for the reader into ``--out``:

- ``sheet.html``: one self-contained page (every image a PNG ``data:`` URI, no script, no URL), each
  image with its id and class. Real and synthetic images are decoded by the same code and re-encoded as
  PNGs of one size (``size`` x ``size``), so neither the file format, the pixel size nor any name tells
  them apart; the ids are drawn at random after the shuffle, so they say nothing of order or kind.
- ``answers.csv``: ``sheet, id, class, answer``, one row per image, ``answer`` empty for the reader to
  fill with ``real`` or ``synthetic``.

The key (id -> real or synthetic, the image's path and fingerprint, its class) is written only into the
store, ``store/reviews/<sheet id>/key.json``, never beside the sheet. Real images are the run's training
images (train and val of ``split.json``) whose content is still what the run saw; a real image a picked
synthetic image was made from is taken only when the class has no other, so the sheet does not pair an
image with its own transformation.

``automl review score A.csv [B.csv ...]`` (``score``) reads each filled CSV (one reader each: the file
name's stem, or its ``reader`` column), looks the sheet's key up in the store, and reports per reader,
overall and per class, the accuracy at telling real from synthetic, the sensitivity (synthetic images
called synthetic: "synthetic" is the positive class) and the specificity (real images called real), each
with a 95 % Wilson score interval; and between every pair of readers, Cohen's kappa on the images both
answered. CSVs are read with the ``csv`` module as text: nothing in them runs.

Seeds: streams of ``automl.seeds`` under the given seed: ``review:<label>:real`` and
``review:<label>:synthetic`` (which images), ``review:order`` (the shuffle), ``review:ids`` (the ids).
The same run, seed and N give the same sheet (its own sheet id aside); a larger N adds images.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Sequence

from automl import seeds
from automl.errors import ConfigError, DataError, StoreError

KEY = "key.json"
SHEET = "sheet.html"
ANSWERS = "answers.csv"
COLUMNS = ("sheet", "id", "class", "answer")
SIZE = 256  # pixels a side every image of a sheet is shown at
LEVEL = 0.95
Z = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval
KEY_VERSION = 1
_ANSWERS = {"real": "real", "r": "real", "synthetic": "synthetic", "s": "synthetic"}
_SHEET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # a plain folder name: a CSV never leads out of reviews/


# --- make ------------------------------------------------------------------------------------------------


@dataclass
class Sheet:
    """What ``make`` wrote: the sheet's id, its folder (``sheet.html``, ``answers.csv``), the key's path
    in the store, and per class how many real and synthetic images the sheet holds."""

    id: str
    run: str
    folder: Path
    key: Path
    counts: dict[str, dict[str, int]]
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return sum(c["real"] + c["synthetic"] for c in self.counts.values())


def make(run, store=None, *, per_class: int, seed: int = 0, out: str | os.PathLike | None = None,
         size: int = SIZE) -> Sheet:
    """Write a blinded review sheet of run ``run`` (its folder, an ``automl.api.Run``, or the ``RunRecord``
    of a run of ``store``) into ``out`` (default ``./review-<sheet id>``) and its key into ``store`` (an
    ``automl.store.Store``, a folder, or None for the default store). Nothing is written when anything fails."""
    from automl._files import atomic_folder, atomic_write_text, write_json
    from automl.runs import RunRecord, new_run_id
    from automl.store import Store

    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"The 'per_class' parameter of review make must be an int >= 1. Got {per_class!r} instead.")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 1024:
        raise ConfigError(f"The 'size' parameter of review make must be an int in [16, 1024]. Got {size!r} instead.")
    store = store if isinstance(store, Store) else Store(store)
    folder = store.runs_dir / run.id if isinstance(run, RunRecord) else Path(getattr(run, "folder", run))
    record = RunRecord.read(folder)
    sheet_id = new_run_id()
    out = Path(out) if out is not None else Path(f"review-{sheet_id}")
    _check_out(out)
    picks, counts, notes = _pick(record, folder, per_class, seed)
    order = seeds.rng(seed, "review", "order").permutation(len(picks))
    picks = [picks[i] for i in order]
    ids = _ids(len(picks), seed)
    images = [_png(p["item"], size) for p in picks]  # decoded before anything is written
    key = {
        "version": KEY_VERSION, "sheet": sheet_id, "run": record.id, "run_folder": str(folder),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": seed, "per_class": per_class, "size": size,
        "classes": list(counts), "counts": counts, "notes": notes,
        "images": [{"id": i, "class": p["class"], "kind": p["kind"], "path": p["item"].path,
                    "fingerprint": p["item"].fingerprint, **({"index": p["index"]} if "index" in p else {})}
                   for i, p in zip(ids, picks)],
    }
    rows = [(i, p["class"], png) for i, p, png in zip(ids, picks, images)]
    store.ensure()
    try:
        with atomic_folder(store.reviews_dir / sheet_id, replace=_refuse_existing) as tmp:
            write_json(tmp / KEY, key)
            # Inside the block: a sheet that cannot be written leaves no key behind, and the reverse.
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / SHEET, sheet_html(sheet_id, rows, size))
            atomic_write_text(out / ANSWERS, _answers_csv(sheet_id, rows))
    except BaseException as exc:
        for name in (SHEET, ANSWERS):  # _check_out made sure neither was there before
            (out / name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StoreError(f"cannot write the review sheet to {exc.filename or out}: {exc.strerror or exc}. Pass "
                             "--out with a writable folder (and --store with a writable store).") from exc
        raise
    return Sheet(sheet_id, record.id, out, store.reviews_dir / sheet_id / KEY, counts, notes)


def _refuse_existing(folder: Path) -> bool:
    raise StoreError(f"{folder} exists already: a sheet id is never reused. Run `automl review make` again.")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for {SHEET} and {ANSWERS}.")
    taken = [name for name in (SHEET, ANSWERS) if (out / name).exists()]
    if taken:
        raise ConfigError(f"--out {out} already holds {' and '.join(taken)} (another sheet, perhaps filled in); "
                          "give a new folder.")


def _pick(record, folder: Path, per_class: int, seed: int) -> tuple[list[dict], dict, list[str]]:
    """Per class with synthetic images: up to ``per_class`` synthetic and real images, each as
    {"item", "class", "kind"}; the counts per class, and notes on whatever fell short."""
    aug = record.augment or {}
    planned = {name: int(n) for name, n in (aug.get("synthetic_per_class") or {}).items()
               if name in record.classes and int(n) > 0}
    if not planned:
        raise ConfigError(f"run {record.id} has no synthetic images (it was fitted on real images only), so there is "
                          "nothing to review; fit with --augment NAME (e.g. `automl fit DATA --augment conventional`), "
                          "then make the sheet from the augmented run (`automl runs` lists it).")
    from automl.augment.generate import generated_folder, trained_indices

    root = generated_folder(aug, record.id, folder)
    training = _training_entries(record, folder)
    picks, counts, notes = [], {}, []
    for name in planned:
        label = record.classes.index(name)
        indices = trained_indices(aug, name)  # a filtered plan: the images made that trained
        synthetic, skipped = _synthetic_images(root, label, indices, per_class, seed)
        if skipped:
            notes.append(f"class {name}: {skipped} synthetic image(s) in {root / str(label)} are missing or changed "
                         "since the run; left out.")
        sources = {fp for s in synthetic for fp in s["sources"]}
        real, changed = _real_images(record, training.get(label, []), sources, per_class, seed, label)
        if changed:
            notes.append(f"class {name}: {changed} real training image(s) are missing or changed since the run; "
                         "left out.")
        for kind, got, there in (("synthetic", synthetic, len(indices)), ("real", real, None)):
            if len(got) < per_class:
                notes.append(f"class {name}: {len(got)} {kind} image(s), fewer than --per-class {per_class}"
                             + (f" (the run has {there})" if there is not None else "") + "; the sheet holds them all.")
        if not synthetic:
            continue
        counts[name] = {"real": len(real), "synthetic": len(synthetic)}
        picks += [{"item": s["item"], "class": name, "kind": "synthetic", "index": s["index"]} for s in synthetic]
        picks += [{"item": it, "class": name, "kind": "real"} for it in real]
    if not counts:
        raise StoreError(f"none of the synthetic images of run {record.id} in {root} can be read; fit the run again "
                         f"(`automl run {folder / 'recipe.yaml'}`) to make them again.")
    return picks, counts, notes


def _synthetic_images(root: Path, label: int, indices: list[int], per_class: int,
                      seed: int) -> tuple[list[dict], int]:
    """Up to ``per_class`` of the run's synthetic images of class ``label`` (image numbers ``indices``),
    in a seeded order, each whose record and PNG are there and agree; and how many were not."""
    from automl.data import load_images

    out, skipped = [], 0
    for k in [indices[i] for i in seeds.rng(seed, "review", label, "synthetic").permutation(len(indices))]:
        if len(out) == per_class:
            break
        try:
            rec = json.loads((root / str(label) / f"{k:06d}.json").read_text())
            name = rec["file"]
            if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
                raise ValueError(f"file {name!r} is not a file name")
            items, bad = load_images([str(root / str(label) / name)], skip_bad=True)
        except (OSError, ValueError, KeyError, TypeError, DataError):
            skipped += 1
            continue
        if bad or items[0].fingerprint != rec.get("fingerprint"):
            skipped += 1
            continue
        sources = [s.get("fingerprint") for s in rec.get("sources") or [] if isinstance(s, dict)]
        out.append({"item": items[0], "index": k, "sources": sources})
    return out, skipped


def _training_entries(record, folder: Path) -> dict[int, list[tuple[str, str]]]:
    """The run's real training images (train and val of ``split.json``) as (path, fingerprint) by class."""
    path = folder / "split.json"
    try:
        split = json.loads(path.read_text())
        entries = [(e["path"], int(e["label"]), e["fingerprint"]) for e in split["items"] if e["split"] != "test"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"cannot read {path} ({exc}): the run's training images are unknown. Fit the run again "
                         f"(`automl run {folder / 'recipe.yaml'}`).") from exc
    out: dict[int, list] = {}
    for p, label, fp in entries:
        out.setdefault(label, []).append((p, fp))
    return out


def _real_images(record, entries: list[tuple[str, str]], sources: set, per_class: int, seed: int,
                 label: int) -> tuple[list, int]:
    """Up to ``per_class`` of the class's training images in a seeded order (the picked synthetic images'
    own sources last), each still what the run saw; and how many tried were missing or changed."""
    from automl.data import load_dataset, load_images

    order = seeds.rng(seed, "review", label, "real").permutation(len(entries)).tolist()
    order.sort(key=lambda i: entries[i][1] in sources)  # stable: the seeded order within each group
    npz = None
    out, changed = [], 0
    for i in order:
        if len(out) == per_class:
            break
        path, fp = entries[i]
        if record.layout == "npz":
            if npz is None:
                try:
                    npz = {it.path: it for it in load_dataset(record.data, skip_bad=True).items}
                except DataError as exc:
                    raise DataError(f"the run's dataset {record.data} cannot be read again ({exc}); its real images "
                                    "are needed for the sheet.") from exc
            item = npz.get(path)
        else:
            items, _ = load_images([path], skip_bad=True) if Path(path).is_file() else ([], [])
            item = items[0] if items else None
        if item is None or item.fingerprint != fp:
            changed += 1
            continue
        out.append(item)
    return out, changed


def _ids(n: int, seed: int) -> list[str]:
    """``n`` distinct neutral ids (six hex digits), drawn at random: they tell nothing of order or kind."""
    rng = seeds.rng(seed, "review", "ids")
    digits = 6 if n < 4096 else 8
    drawn = rng.choice(16 ** digits, size=n, replace=False)
    return [f"{int(v):0{digits}x}" for v in drawn]


def _png(item, size: int) -> str:
    """The image as a ``size`` x ``size`` RGB PNG ``data:`` URI, whatever its source format (no metadata)."""
    import base64

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(item.load(size)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def sheet_html(sheet_id: str, rows: Sequence[tuple[str, str, str]], size: int = SIZE) -> str:
    """The reader's page: instructions, then each (id, class, PNG data URI) of ``rows`` in order, every
    image shown ``size`` pixels wide."""
    from automl.report.pages import esc

    figures = "\n".join(
        f"<figure><img src='{esc(uri)}' alt='image {esc(i)}, class {esc(c)}' width='{esc(size)}'>"
        f"<figcaption><b>{esc(i)}</b> &middot; class {esc(c)}</figcaption></figure>"
        for i, c, uri in rows)
    classes = sorted({c for _, c, _ in rows})
    return f"""<!DOCTYPE html>
<html lang='en'><head><meta charset='utf-8'><title>Review sheet {esc(sheet_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.instructions {{ max-width: 52em; line-height: 1.4; }}
.images {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; border: 1px solid #ccc; padding: 0.4em; background: #fafafa; }}
img {{ display: block; max-width: 100%; height: auto; image-rendering: auto; }}
figcaption {{ font-size: 0.95em; margin-top: 0.3em; }}
</style></head>
<body>
<section class='instructions'>
<h1>Review sheet {esc(sheet_id)}</h1>
<p>Each image below is either a <b>real</b> image or a <b>synthetic</b> one (generated by a program, not acquired).
For each, decide which, and write <code>real</code> or <code>synthetic</code> (or <code>r</code> / <code>s</code>)
in the <code>answer</code> column of <code>answers.csv</code>, on the row of its id. The proportion of each
is not given; it may differ between classes. The class of each image is shown beneath it
({esc(len(rows))} images; classes: {esc(', '.join(classes))}).</p>
<p>Answer every image, on your own, without discussing them. Save your copy of the CSV under your name
(for example <code>alice.csv</code>): the file's name names you as the reader. Keep the columns and the
rows' ids as they are; the order of the rows does not matter.</p>
</section>
<section class='images'>
{figures}
</section>
</body></html>
"""


def _answers_csv(sheet_id: str, rows: Sequence[tuple[str, str, str]]) -> str:
    buffer = io.StringIO(newline="")
    out = csv.writer(buffer)
    out.writerow(COLUMNS)
    for i, c, _ in rows:
        out.writerow([sheet_id, i, c.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), ""])
    return buffer.getvalue()


# --- score -----------------------------------------------------------------------------------------------


def wilson_interval(k: int, n: int, z: float = Z) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``k`` of ``n`` (Wilson 1927); None for ``n`` = 0. Unlike
    the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes."""
    if n <= 0:
        return None
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes one end is exactly 0 or 1; computed, it would be off by a rounding error.
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def proportion(k: int, n: int) -> dict:
    """``k`` of ``n`` with its value and 95 % Wilson interval (None when ``n`` is 0)."""
    interval = wilson_interval(k, n)
    return {"k": int(k), "n": int(n), "value": k / n if n else None,
            "interval": list(interval) if interval else None}


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> dict:
    """Cohen's kappa of two readers' answers on the same images: (observed - expected agreement) /
    (1 - expected), expected from each reader's own shares of real and synthetic. None where undefined:
    no image, or both readers gave one and the same answer to every image (expected agreement 1)."""
    n = len(a)
    if n != len(b):
        raise ValueError(f"expected two answer lists of one length; got {n} and {len(b)}")
    if n == 0:
        return {"n": 0, "observed": None, "expected": None, "kappa": None}
    observed = sum(x == y for x, y in zip(a, b)) / n
    expected = sum((a.count(v) / n) * (b.count(v) / n) for v in ("real", "synthetic"))
    kappa = None if expected >= 1 else (observed - expected) / (1 - expected)
    return {"n": n, "observed": observed, "expected": expected, "kappa": kappa}


@dataclass
class Answers:
    """One reader's CSV, checked: the answers by id, and the ids of the sheet left unanswered."""

    reader: str
    path: Path
    sheet: str
    answers: dict[str, str]  # id -> "real" | "synthetic"
    missing: list[str]  # ids with an empty answer, or with no row


def score(csv_paths: Sequence[str | os.PathLike], store=None, *, allow_missing: bool = False) -> dict:
    """Each reader's accuracy, sensitivity and specificity (overall and per class, with 95 % Wilson
    intervals), and Cohen's kappa between every pair of readers. ``store``: an ``automl.store.Store``,
    a folder, or None for the default store (where ``make`` wrote the sheet's key). Bad input raises
    ``DataError`` naming the file, the line and the fix."""
    from automl.store import Store

    if not csv_paths:
        raise ConfigError("give at least one filled answers CSV.")
    store = store if isinstance(store, Store) else Store(store)
    parsed = [_read_rows(Path(p)) for p in csv_paths]
    sheets = {}
    for path, sheet, _, _ in parsed:
        sheets.setdefault(sheet, path)
    if len(sheets) > 1:
        listed = ", ".join(f"{p} is sheet {s}" for s, p in sheets.items())
        raise DataError(f"the CSVs come from different sheets ({listed}); score each sheet's CSVs in their own "
                        "`automl review score` command.")
    sheet_id, first = next(iter(sheets.items()))
    key = read_key(store, sheet_id, first)
    kinds = {im["id"]: im["kind"] for im in key["images"]}
    classes = {im["id"]: im["class"] for im in key["images"]}
    readers = [_check_answers(path, sheet, rows, reader, kinds, allow_missing)
               for path, sheet, rows, reader in parsed]
    names: dict[str, Path] = {}
    for r in readers:
        if r.reader in names:
            raise DataError(f"{names[r.reader]} and {r.path} both name reader {r.reader!r}; rename one file to its "
                            "reader's name (or fill its `reader` column).")
        names[r.reader] = r.path
    out_readers = []
    for r in readers:
        per_class = {c: _scores(r.answers, kinds, [i for i in r.answers if classes[i] == c]) for c in key["classes"]}
        out_readers.append({"reader": r.reader, "file": str(r.path), "answered": len(r.answers),
                            "missing": len(r.missing), "overall": _scores(r.answers, kinds, list(r.answers)),
                            "per_class": per_class})
    agreement = []
    for a, b in combinations(readers, 2):
        both = [i for i in kinds if i in a.answers and i in b.answers]
        agreement.append({"readers": [a.reader, b.reader],
                          **cohen_kappa([a.answers[i] for i in both], [b.answers[i] for i in both])})
    return {"sheet": sheet_id, "run": key["run"], "images": len(kinds), "classes": key["classes"],
            "positive": "synthetic", "level": LEVEL, "interval": "Wilson score", "readers": out_readers,
            "agreement": agreement}


def read_key(store, sheet_id: str, named_in: Path) -> dict:
    """The key of sheet ``sheet_id`` from ``store/reviews/<id>/key.json``, checked."""
    path = store.reviews_dir / sheet_id / KEY
    if not path.is_file():
        known = sorted(p.name for p in store.reviews_dir.iterdir() if (p / KEY).is_file()) \
            if store.reviews_dir.is_dir() else []
        raise StoreError(f"sheet {sheet_id} (named in {named_in}) has no key in the store {store.root} (no {path}; "
                         f"sheets there: {', '.join(known[-5:]) or 'none'}). Pass --store with the store "
                         "`automl review make` wrote it in, or check the CSV's sheet column.")
    try:
        key = json.loads(path.read_text())
        if not isinstance(key, dict) or key.get("version") != KEY_VERSION:
            raise ValueError(f"not a version-{KEY_VERSION} review key")
        for im in key["images"]:
            if not (isinstance(im.get("id"), str) and im.get("kind") in ("real", "synthetic")
                    and im.get("class") in key["classes"]):
                raise ValueError(f"image entry {im!r:.80} is not an id, a kind and a class of the sheet")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"cannot read the review key {path}: {exc}. Restore it from a backup of the store; "
                         "without it the sheet cannot be scored.") from exc
    return key


def _read_rows(path: Path) -> tuple[Path, str, list[tuple[int, dict]], str]:
    """(path, sheet id, [(line, row)], reader) of one CSV; ``DataError`` for anything but a sheet's CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() if h else "" for h in (reader.fieldnames or [])]
            missing = [c for c in ("sheet", "id", "answer") if c not in header]
            if missing:
                raise DataError(f"{path}: no column {', '.join(missing)} in its first line (found "
                                f"{', '.join(header) or 'nothing'}); a review CSV has the columns "
                                f"{', '.join(COLUMNS)} as `automl review make` wrote them in {ANSWERS}.")
            if len(set(header)) < len(header):
                raise DataError(f"{path}: a column appears twice in its first line ({', '.join(header)}); keep one "
                                "of each.")
            reader.fieldnames = header
            rows = []
            for row in reader:
                values = {k: (v or "").strip() for k, v in row.items() if k is not None and isinstance(v, str)}
                if any(values.values()):  # a blank line is no row
                    rows.append((reader.line_num, values))
    except FileNotFoundError:
        raise DataError(f"answers file not found: {path}.") from None
    except (OSError, csv.Error, UnicodeError) as exc:
        raise DataError(f"{path}: cannot read it as a CSV ({exc}); save it from the spreadsheet as CSV (UTF-8).") \
            from exc
    if not rows:
        raise DataError(f"{path} holds no rows; give the {ANSWERS} of a sheet, filled in.")
    line, first = rows[0]
    sheet = first.get("sheet", "")
    for line, row in rows:
        if row.get("sheet", "") != sheet:
            raise DataError(f"{path} line {line}: sheet {row.get('sheet', '')!r}, but line {rows[0][0]} has {sheet!r}; "
                            "one CSV holds one sheet's rows. Restore the sheet column from its answers.csv.")
    if not _SHEET_ID.match(sheet):
        raise DataError(f"{path} line {rows[0][0]}: {sheet!r} is not a sheet id (like 260101-120000-ab12); restore the "
                        f"sheet column from the sheet's {ANSWERS}.")
    names = {row["reader"] for _, row in rows if row.get("reader")}
    if len(names) > 1:
        raise DataError(f"{path}: its reader column names {len(names)} readers ({', '.join(sorted(names))}); one "
                        "CSV holds one reader's answers. Split it into one file per reader.")
    return path, sheet, rows, names.pop() if names else path.stem


def _check_answers(path: Path, sheet: str, rows: list[tuple[int, dict]], reader: str, kinds: dict,
                   allow_missing: bool) -> Answers:
    answers, seen, empty = {}, {}, []
    for line, row in rows:
        image = row.get("id", "")
        if image not in kinds:
            raise DataError(f"{path} line {line}: id {image!r} is not an image of sheet {sheet} (its ids look like "
                            f"{next(iter(kinds))}); restore the id from the sheet's {ANSWERS}.")
        if image in seen:
            raise DataError(f"{path} line {line}: id {image} appears again (first on line {seen[image]}); keep one row "
                            "per image.")
        seen[image] = line
        text = row.get("answer", "")
        if not text:
            empty.append((line, image))
            continue
        answer = _ANSWERS.get(text.lower())
        if answer is None:
            raise DataError(f"{path} line {line}: answer {text!r} for id {image}; expected real or synthetic "
                            "(or r / s, in any case).")
        answers[image] = answer
    missing = [i for _, i in empty] + [i for i in kinds if i not in seen]
    if missing and not allow_missing:
        parts = []
        if empty:
            lines = ", ".join(str(line) for line, _ in empty[:10]) + (", ..." if len(empty) > 10 else "")
            parts.append(f"{len(empty)} row(s) without an answer (line {lines})")
        absent = len(missing) - len(empty)
        if absent:
            parts.append(f"{absent} image(s) of the sheet without a row")
        raise DataError(f"{path}: {' and '.join(parts)}; fill them in, or pass --allow-missing to score the answered "
                        "images only (the unanswered are counted).")
    return Answers(reader, path, sheet, answers, missing)


def _scores(answers: dict, kinds: dict, ids: list[str]) -> dict:
    """Accuracy, sensitivity (synthetic called synthetic) and specificity (real called real) over ``ids``,
    with the confusion counts; "synthetic" is the positive class."""
    tp = sum(kinds[i] == "synthetic" and answers[i] == "synthetic" for i in ids)
    fn = sum(kinds[i] == "synthetic" and answers[i] == "real" for i in ids)
    tn = sum(kinds[i] == "real" and answers[i] == "real" for i in ids)
    fp = sum(kinds[i] == "real" and answers[i] == "synthetic" for i in ids)
    return {"n": len(ids), "accuracy": proportion(tp + tn, len(ids)), "sensitivity": proportion(tp, tp + fn),
            "specificity": proportion(tn, tn + fp), "tp": tp, "fn": fn, "tn": tn, "fp": fp}


# --- the terminal's view -----------------------------------------------------------------------------------


def score_text(result: dict) -> str:
    """The scores as the terminal shows them: one table of readers x (all, each class), the agreement
    between every pair of readers, and what the numbers mean."""
    from automl.report import table

    lines = [f"sheet {result['sheet']} (run {result['run']}): {result['images']} images, "
             f"{len(result['readers'])} reader(s); {result['level'] * 100:.0f} % Wilson intervals", ""]
    rows = []
    for r in result["readers"]:
        for group, s in [("all", r["overall"]), *r["per_class"].items()]:
            rows.append([r["reader"], group, s["n"], _cell(s["accuracy"]), _cell(s["sensitivity"]),
                         _cell(s["specificity"])])
    lines.append(table(["reader", "class", "n", "accuracy", "sensitivity", "specificity"], rows, align="llrlll"))
    for r in result["readers"]:
        if r["missing"]:
            lines.append(f"{r['reader']}: {r['missing']} unanswered image(s) left out ({r['file']})")
    if result["agreement"]:
        lines += ["", "Agreement between readers (Cohen's kappa, on the images both answered):"]
        lines.append(table(["reader", "reader", "n", "agreement", "kappa"],
                           [[a["readers"][0], a["readers"][1], a["n"], _number(a["observed"]), _number(a["kappa"])]
                            for a in result["agreement"]], align="llrrr"))
    lines += ["", "accuracy: share of images told right (a coin flip gets 0.5; an interval that holds 0.5 does not "
              "show the reader can tell real from synthetic); sensitivity: share of synthetic images called "
              "synthetic; specificity: share of real images called real. (k/n) [95 % interval]; n/a: no such image.",
              "kappa: agreement beyond chance between two readers (1: the same answers, 0: no more alike than chance, "
              "below 0: less); n/a when undefined (no image in common, or one answer for every image by both)."]
    return "\n".join(lines)


def _cell(p: dict) -> str:
    if p["value"] is None:
        return "n/a"
    lo, hi = p["interval"]
    return f"{p['value']:.3f} ({p['k']}/{p['n']}) [{lo:.3f}, {hi:.3f}]"


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
