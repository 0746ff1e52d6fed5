"""``automl store check [--repair]``: find what is wrong in a store, and set it right without losing anything.

What is checked, and what ``--repair`` does (nothing is deleted but temporaries of writers that are gone):

- ``store.json``: parses, and names the format this automl reads (never repaired: another format is
  another automl's store).
- ``embeddings/<key>/``: ``key.json`` reads and its key's slug is the folder's name (else the folder is
  moved into ``embeddings/.damaged/``); every shard passes ``automl.cache.read_shard`` read in full and
  has the dimension of the other shards (else it is moved into ``<key>/.damaged/``).
- ``runs/<id>/`` and ``comparisons/<id>/``: the record parses (``run.json`` into ``RunRecord``, with the
  folder's id) and the files a run needs exist (else the folder is moved into ``runs/.broken/``).
- ``generated/<key>/<class>/``: each record parses, its image exists and its fingerprint matches the
  image's bytes; an image without a record is a generation stopped between the two (both are moved
  into ``<key>/.damaged/<class>/``, and the next fit generates them again).
- Temporaries (``.tmp-<pid>-…``) of processes that no longer run: removed.
- ``optuna.db``: opens, passes SQLite's ``quick_check`` (else it is moved into ``.damaged/``; the next fit
  starts its searches afresh); trials left RUNNING by a process that is gone (known from a ``pid``/``host``
  trial attribute, or a heartbeat older than ``STALE_HEARTBEAT_S``) are marked FAIL, so a resumed search
  runs them again. RUNNING trials with no owner recorded are listed as notes, not problems: a fit may be
  running them right now.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from automl._files import TMP_PREFIX, file_digest, process_alive, remove_stale_temporaries, temporary_owner
from automl.cache import DAMAGED, EmbeddingCache
from automl.errors import StoreError
from automl.runs import BUNDLE_FILES, LEGACY_BUNDLE, RunRecord
from automl.search import owner_gone
from automl.store import STORE_VERSION, Store

BROKEN = ".broken"  # where run and comparison folders that cannot be used go (dot names are never listed)
# What `show`, `compare` and `predict` read from a run folder.
RUN_FILES = ("run.json", "recipe.yaml", "split.json", "metrics.json", "leaderboard.json", *BUNDLE_FILES)
COMPARISON_FILES = ("comparison.json",)
STALE_HEARTBEAT_S = 600  # a RUNNING trial whose heartbeat is older than this has lost its process


@dataclass
class Problem:
    path: Path
    what: str
    fix: str  # what --repair does, or what to do by hand when it cannot
    repair: Callable[[], str] | None = field(default=None, repr=False)  # does it; says what it did
    repaired: str | None = None  # after --repair: what was done
    repair_failed: str | None = None


@dataclass
class StoreCheck:
    root: Path
    repair: bool
    checked: dict[str, int] = field(default_factory=dict)  # what was looked at, by kind
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not wrong

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if p.repaired is None]

    @property
    def ok(self) -> bool:
        return not self.remaining


def check_store(store: Store, *, repair: bool = False) -> StoreCheck:
    """Every problem of ``store`` (repaired where ``repair`` and a repair exists)."""
    root = store.root
    if not root.is_dir():
        raise StoreError(f"there is no store at {root}; pass --store with the store folder (or set $AUTOML_STORE).")
    result = StoreCheck(root, repair)
    # Temporaries first: a repair that moves a folder aside takes its temporaries with it.
    for check in (_stamp, _temporaries, _embeddings, _runs, _generated, _study):
        for problem in check(store, result):
            if repair and problem.repair is not None:
                try:
                    problem.repaired = problem.repair()
                except OSError as exc:
                    problem.repair_failed = str(exc)
            result.problems.append(problem)
    return result


# --- the stamp ---------------------------------------------------------------------------------------


def _stamp(store: Store, result: StoreCheck) -> Iterator[Problem]:
    stamp = store.root / "store.json"
    if not stamp.exists():
        result.notes.append(f"{stamp} does not exist yet: the first write creates it")
        return
    try:
        version = json.loads(stamp.read_text()).get("version")
    except (OSError, ValueError, AttributeError) as exc:
        yield Problem(stamp, f"the store's format stamp cannot be read ({exc})",
                      f'restore it: it holds {{"version": {STORE_VERSION}}} for this automl')
        return
    if version != STORE_VERSION:
        yield Problem(stamp, f"a store of format {version}; this automl reads format {STORE_VERSION}",
                      "use an automl that reads that format, or another --store")


# --- embeddings ----------------------------------------------------------------------------------------


def _embeddings(store: Store, result: StoreCheck) -> Iterator[Problem]:
    from automl.extractors import ExtractorKey

    folders = _children(store.embeddings_dir)
    result.checked["embedding folders"] = len(folders)
    result.checked["shards"] = 0
    for folder in folders:
        meta = folder / "key.json"
        cache = EmbeddingCache(folder, {})
        shards = cache.shards()
        result.checked["shards"] += len(shards)
        aside = store.embeddings_dir / DAMAGED / folder.name
        move = f"--repair moves the folder to {aside} (its embeddings are computed again when needed)"
        if not meta.exists():
            if shards:
                yield Problem(folder, f"{len(shards)} shard(s) but no key.json: they cannot be told apart from "
                                      "another extractor's", move, lambda f=folder, a=aside: _move(f, a))
            continue
        try:
            key = ExtractorKey(**json.loads(meta.read_text()))
            slug = key.slug()
        except (OSError, ValueError, TypeError) as exc:
            yield Problem(meta, f"the cache key cannot be read ({type(exc).__name__}: {exc})", move,
                          lambda f=folder, a=aside: _move(f, a))
            continue
        if slug != folder.name:
            yield Problem(meta, f"a key whose folder is {slug}, not {folder.name}: the folder was renamed or "
                                "key.json edited", move, lambda f=folder, a=aside: _move(f, a))
            continue
        for damaged in cache.damaged():
            yield Problem(damaged.path, f"unreadable embedding shard ({damaged.reason})",
                          f"--repair moves it to {folder / DAMAGED}/ (its rows are computed again by the next embed)",
                          lambda c=cache, p=damaged.path: _said(c.set_aside(p)))
        set_aside = list((folder / DAMAGED).glob("*")) if (folder / DAMAGED).is_dir() else []
        if set_aside:
            result.notes.append(f"{len(set_aside)} damaged shard(s) set aside in {folder / DAMAGED} "
                                "(nothing reads them; delete them when you no longer need them)")


def _said(where: Path | str) -> str:
    if isinstance(where, Path):
        return f"moved to {where}"
    raise OSError(where)


# --- runs and comparisons ---------------------------------------------------------------------------------


def _runs(store: Store, result: StoreCheck) -> Iterator[Problem]:
    for kind, parent, needs, read in (("runs", store.runs_dir, RUN_FILES, _read_run),
                                      ("comparisons", store.comparisons_dir, COMPARISON_FILES, _read_comparison)):
        folders = _children(parent)
        result.checked[kind] = len(folders)
        for folder in folders:
            aside = parent / BROKEN / folder.name
            move = f"--repair moves it to {aside} (out of `automl runs`; nothing is deleted)"
            missing = [name for name in needs if not (folder / name).is_file()]
            if kind == "runs" and set(missing) == set(BUNDLE_FILES) and (folder / LEGACY_BUNDLE).is_file():
                # automl 0.1's pickle: usable for show, refused by predict; a refit replaces it, not --repair.
                result.notes.append(f"{folder}: saved by automl 0.1 ({LEGACY_BUNDLE}, a pickle automl never loads); "
                                    f"predict refuses it. Fix: automl run {folder / 'recipe.yaml'}")
                missing = []
            trouble = read(folder) if needs[0] not in missing else None
            if missing:
                what = f"incomplete: {', '.join(missing)} missing"
            elif trouble:
                what = trouble
            else:
                continue
            yield Problem(folder, what, move, lambda f=folder, a=aside: _move(f, a))
        broken = _children(parent / BROKEN)
        if broken:
            result.notes.append(f"{len(broken)} broken folder(s) set aside in {parent / BROKEN}")


def _read_run(folder: Path) -> str | None:
    try:
        record = RunRecord.read(folder)
    except StoreError as exc:
        return f"run.json does not hold a run record ({exc.__cause__ or exc})"
    if record.id != folder.name:
        return f"run.json names run {record.id!r}, not the folder's {folder.name!r}"
    return None


def _read_comparison(folder: Path) -> str | None:
    try:
        record = json.loads((folder / "comparison.json").read_text())
    except (OSError, ValueError) as exc:
        return f"comparison.json cannot be read ({exc})"
    return None if isinstance(record, dict) else "comparison.json does not hold an object"


# --- generated images ---------------------------------------------------------------------------------


def _generated(store: Store, result: StoreCheck) -> Iterator[Problem]:
    result.checked["generated images"] = 0
    for key_dir in _children(store.generated_dir):
        for class_dir in _children(key_dir):
            aside = key_dir / DAMAGED / class_dir.name
            regenerate = f"--repair moves it to {aside}/ (the next fit with this augmentation makes it again)"
            records = sorted(class_dir.glob("[0-9]*.json"))
            named = set()
            for rec_path in records:
                result.checked["generated images"] += 1
                image, trouble = _generated_image(rec_path)
                named.add(image.name)
                if trouble:
                    files = [rec_path] + ([image] if image.exists() else [])
                    yield Problem(rec_path, trouble, regenerate,
                                  lambda fs=files, a=aside: "; ".join(_move(f, a / f.name) for f in fs))
            for image in sorted(class_dir.glob("[0-9]*.png")):
                if image.name not in named:
                    yield Problem(image, "a generated image without its record (the generation stopped between "
                                         "the two)", regenerate, lambda f=image, a=aside: _move(f, a / f.name))


def _generated_image(rec_path: Path) -> tuple[Path, str | None]:
    """The record's image (the one of the same number when the record does not say), and what is wrong
    with the pair (None when nothing)."""
    try:
        record = json.loads(rec_path.read_text())
        image = rec_path.parent / record["file"]
        expected = record["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return rec_path.with_suffix(".png"), \
            f"the generated image's record cannot be read ({type(exc).__name__}: {exc})"
    if image.parent != rec_path.parent:
        return rec_path.with_suffix(".png"), f"the record names {record['file']!r}, outside its class folder"
    if not image.is_file():
        return image, f"its image {image.name} is missing"
    if file_digest(image) != expected:
        return image, f"{image.name} is not the image the record describes (its fingerprint differs)"
    return image, None


# --- temporaries ----------------------------------------------------------------------------------------


def _temporaries(store: Store, result: StoreCheck) -> Iterator[Problem]:
    live = 0
    found = 0
    for folder, dirs, files in os.walk(store.root):
        for name in [*dirs, *files]:
            if not name.startswith(TMP_PREFIX):
                continue
            found += 1
            path = Path(folder) / name
            pid = temporary_owner(path)
            if pid is None:
                continue
            if process_alive(pid):
                live += 1
                continue
            yield Problem(path, f"a temporary of process {pid}, which no longer runs", "--repair removes it",
                          lambda p=path: _remove_temporary(p))
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX)]
    result.checked["temporaries"] = found
    if live:
        result.notes.append(f"{live} temporary file(s) of running processes (left alone)")


def _remove_temporary(path: Path) -> str:
    remove_stale_temporaries(path.parent)
    if path.exists():
        raise OSError(f"{path} could not be removed")
    return "removed"


# --- the study database ------------------------------------------------------------------------------------


def _study(store: Store, result: StoreCheck) -> Iterator[Problem]:
    db = store.root / "optuna.db"
    result.checked["study databases"] = int(db.exists())
    if not db.exists():
        return
    aside = store.root / DAMAGED / f"optuna-{time.strftime('%y%m%d-%H%M%S')}.db"
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            verdict = con.execute("PRAGMA quick_check").fetchone()[0]
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            running = _running_trials(con, tables) if {"trials", "studies"} <= tables else []
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            result.notes.append(f"{db} is locked by a running fit; check again when it is done")
            return
        verdict, tables, running = str(exc), set(), []
    except sqlite3.DatabaseError as exc:
        verdict, tables, running = str(exc), set(), []
    if verdict != "ok" or not {"trials", "studies"} <= tables:
        what = f"not a usable Optuna database ({verdict if verdict != 'ok' else 'no studies or trials table'})"
        yield Problem(db, what, f"--repair moves it to {aside} (its searches start afresh on the next fit)",
                      lambda: _move(db, aside))
        return
    unknown = 0
    for trial_id, number, study, stale in running:
        if stale is None:
            unknown += 1
            continue
        yield Problem(db, f"trial {number} of study {study!r} is RUNNING but {stale}",
                      "--repair marks it FAIL (a resumed search runs it again)",
                      lambda t=trial_id: _fail_trial(store.optuna_url, t))
    if unknown:
        result.notes.append(f"{unknown} RUNNING trial(s) in {db} name no process; if no fit is running, they are "
                            "left from a killed one")


def _running_trials(con: sqlite3.Connection, tables: set[str]) -> list[tuple[int, int, str, str | None]]:
    """(trial id, number, study name, why it is stale or None when that cannot be told) per RUNNING trial."""
    rows = con.execute("SELECT t.trial_id, t.number, s.study_name FROM trials t JOIN studies s "
                       "ON s.study_id = t.study_id WHERE t.state = 'RUNNING'").fetchall()
    out = []
    for trial_id, number, study in rows:
        attrs: dict[str, object] = {}
        for table in ("trial_system_attributes", "trial_user_attributes"):
            if table in tables:
                for key, value in con.execute(f"SELECT key, value_json FROM {table} WHERE trial_id = ?", (trial_id,)):
                    try:
                        attrs[key.rsplit(":", 1)[-1].lower()] = json.loads(value)
                    except ValueError:
                        pass
        stale = None
        claim = attrs.get("claim")  # automl.search's record of the process that runs the trial
        pid, host = attrs.get("pid"), attrs.get("host", attrs.get("hostname"))
        if isinstance(claim, dict) and isinstance(claim.get("owner"), dict):
            stale = owner_gone(claim["owner"])
        elif isinstance(pid, int) and host in (None, socket.gethostname()) and not process_alive(pid):
            stale = f"its process {pid} no longer runs"
        if stale is None and "trial_heartbeats" in tables:
            age = con.execute("SELECT (julianday('now') - julianday(heartbeat)) * 86400 FROM trial_heartbeats "
                              "WHERE trial_id = ?", (trial_id,)).fetchone()
            if age and age[0] is not None and age[0] > STALE_HEARTBEAT_S:
                stale = f"its last heartbeat was {age[0] / 60:.0f} min ago"
        out.append((trial_id, number, study, stale))
    return out


def _fail_trial(url: str, trial_id: int) -> str:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        if storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
            return "marked FAIL"
        return "finished meanwhile"
    except RuntimeError:  # finished by its own process meanwhile
        return "finished meanwhile"
    finally:
        storage.remove_session()


# --- helpers ----------------------------------------------------------------------------------------------


def _children(folder: Path) -> list[Path]:
    """The sub-folders that hold data: not temporaries, not what was set aside (dot names)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _move(path: Path, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target = target.with_name(f"{target.name}-{time.strftime('%y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, target)
    return f"moved to {target}"
