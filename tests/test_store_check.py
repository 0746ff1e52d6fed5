"""`automl store check [--repair]`: every planted problem is named with its path, repaired without
losing anything, and a second check is clean."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from automl.data import fingerprint_bytes
from automl.extractors import ExtractorKey
from automl.runs import BUNDLE_FILES, LEGACY_BUNDLE, RunRecord
from automl.store import Store
from automl.store_check import RUN_FILES, check_store
from conftest import run_cli

KEY = ExtractorKey("fake", "random:seed=0", 16, "float32", "none")


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _run(store: Store, run_id: str):
    record = RunRecord.from_dict({
        "id": run_id, "created": "2026-01-01T00:00:00", "data": "data", "layout": "folders", "classes": ["a", "b"],
        "counts": {"train": {"a": 2, "b": 2}}, "split": "given", "metric": "accuracy", "cv": 2, "seed": 0,
        "best": {"pipeline": "fake + logreg", "extractor": "fake", "head": "logreg", "params": {}, "cv_score": 0.5,
                 "trial": 0},
        "test": {"accuracy": 0.5, "f1_macro": 0.5, "auroc": 0.5}})
    folder = store.runs_dir / run_id
    folder.mkdir(parents=True)
    for name in RUN_FILES:
        (folder / name).write_text("{}")
    (folder / "run.json").write_text(json.dumps(record.to_dict()))
    return folder


def _generated(store: Store, k: int):
    folder = store.generated_dir / "test-shift-0123456789abcdef" / "0"
    folder.mkdir(parents=True, exist_ok=True)
    data = bytes([k]) * 100
    (folder / f"{k:06d}.png").write_bytes(data)
    (folder / f"{k:06d}.json").write_text(json.dumps({"file": f"{k:06d}.png", "fingerprint": fingerprint_bytes(data)}))
    return folder / f"{k:06d}.png", folder / f"{k:06d}.json"


def _study(store: Store, running_pid: int | None = None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=store.optuna_url, study_name="s", load_if_exists=True)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    if running_pid is not None:
        trial = study.ask()
        trial.set_user_attr("pid", running_pid)
        return trial.number


@pytest.fixture
def clean_store(tmp_path):
    store = Store(tmp_path / "store")
    cache = store.embedding_cache(KEY)
    for i in range(3):
        cache.add([f"{i:032x}"], np.full((1, 4), i, np.float32))
    _run(store, "260101-000000-aaaa")
    _run(store, "260101-000001-bbbb")
    for k in range(3):
        _generated(store, k)
    _study(store)
    return store


def test_a_clean_store_passes(clean_store, capsys):
    code, out, err = run_cli(capsys, "store", "check", "--store", clean_store.root)
    assert code == 0, out + err
    assert "no problems" in out and "3 shards" in out and "2 runs" in out and "3 generated images" in out


def test_every_planted_problem_is_named_then_repaired(clean_store, capsys):
    store = clean_store
    root = store.root
    dead = _dead_pid()
    cache = store.embedding_cache(KEY)
    garbage, zero, *_ = cache.shards()
    garbage.write_bytes(b"garbage")
    zero.write_bytes(b"")
    odd_dim = cache.folder / "shard-odd.npz"
    np.savez(odd_dim, fingerprints=np.array(["f" * 32], dtype="S32"), embeddings=np.zeros((1, 9), np.float32))
    renamed = store.embeddings_dir / "renamed-by-hand"
    renamed.mkdir()
    (renamed / "key.json").write_text((cache.folder / "key.json").read_text())
    bad_json = _run(store, "260101-000002-cccc")
    (bad_json / "run.json").write_text("{not json")
    no_model = _run(store, "260101-000003-dddd")
    (no_model / "model.json").unlink()
    wrong_id = _run(store, "260101-000004-eeee")
    (wrong_id / "run.json").write_text((wrong_id / "run.json").read_text().replace("000004-eeee", "000009-ffff"))
    changed, _ = _generated(store, 3)
    changed.write_bytes(b"other bytes")
    missing, _ = _generated(store, 4)
    missing.unlink()
    orphan, orphan_record = _generated(store, 5)
    orphan_record.unlink()
    stale_run = store.runs_dir / f".tmp-{dead}-abc-260101-000005-gggg"
    stale_run.mkdir()
    (stale_run / "run.json").write_text("{}")
    stale_shard = cache.folder / f".tmp-{dead}-abc-shard-x.npz"
    stale_shard.write_bytes(b"half")
    live = cache.folder / f".tmp-{os.getpid()}-abc-shard-y.npz"
    live.write_bytes(b"in progress")
    trial = _study(store, running_pid=dead)
    planted = [garbage, zero, odd_dim, renamed / "key.json", bad_json, no_model, wrong_id,
               changed.with_suffix(".json"), missing.with_suffix(".json"), orphan, stale_run, stale_shard]

    code, out, err = run_cli(capsys, "store", "check", "--store", root)
    assert code == 1, out + err
    lines = out.splitlines()
    for path in planted:
        assert any(line.startswith(f"{path}: ") and "Fix:" in line for line in lines), (path, out)
    assert f"trial {trial} of study 's' is RUNNING but its process {dead} no longer runs" in out
    assert "problem(s) remain" in out and "--repair" in out
    assert not any(str(live) in line for line in lines) and "temporary file(s) of running processes" in out
    assert garbage.exists() and bad_json.exists()  # checking changes nothing

    code, out, err = run_cli(capsys, "store", "check", "--repair", "--store", root)
    assert code == 0, out + err
    assert "all repaired" in out
    for path in planted:
        assert any(line.startswith(f"{path}: ") and ("moved to" in line or "removed" in line)
                   for line in out.splitlines()), (path, out)
    # Set aside, not deleted: each where the report said.
    assert (cache.folder / ".damaged" / garbage.name).read_bytes() == b"garbage"
    assert (cache.folder / ".damaged" / "shard-odd.npz").exists()
    assert (store.embeddings_dir / ".damaged" / "renamed-by-hand" / "key.json").exists()
    assert (store.runs_dir / ".broken" / bad_json.name / "run.json").read_text() == "{not json"
    assert (store.runs_dir / ".broken" / no_model.name).is_dir()
    assert (store.runs_dir / ".broken" / wrong_id.name).is_dir()
    assert (changed.parent.parent / ".damaged" / "0" / changed.name).read_bytes() == b"other bytes"
    assert not stale_run.exists() and not stale_shard.exists() and live.exists()
    with sqlite3.connect(root / "optuna.db") as con:
        assert con.execute("SELECT state FROM trials WHERE number = ?", (trial,)).fetchone() == ("FAIL",)

    code, out, err = run_cli(capsys, "store", "check", "--store", root)
    assert code == 0 and "no problems" in out, out
    assert "set aside in" in out
    # What stayed works: the cache answers from its good shard, `runs` lists the two good runs.
    assert len(cache.lookup(f"{i:032x}" for i in range(3))) == 1
    code, out, err = run_cli(capsys, "runs", "--store", root)
    assert code == 0 and out.count("260101-") == 2


def test_a_corrupt_study_database_is_moved_aside(clean_store, capsys):
    db = clean_store.root / "optuna.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x07" * 4000)
    code, out, _ = run_cli(capsys, "store", "check", "--store", clean_store.root)
    assert code == 1 and f"{db}: not a usable Optuna database" in out
    code, out, _ = run_cli(capsys, "store", "check", "--repair", "--store", clean_store.root)
    assert code == 0 and not db.exists()
    moved, = (clean_store.root / ".damaged").glob("optuna-*.db")
    assert f"moved to {moved}" in out


def test_what_cannot_be_repaired_stays_a_problem(clean_store, capsys):
    (clean_store.root / "store.json").write_text("{broken")
    trial = _study(clean_store, running_pid=None)
    code, out, _ = run_cli(capsys, "store", "check", "--repair", "--store", clean_store.root)
    assert code == 1 and f"{clean_store.root / 'store.json'}: the store's format stamp cannot be read" in out
    assert "1 problem(s) remain" in out
    assert trial is None and "name no process" not in out  # no RUNNING trial planted: nothing to say


def test_a_running_trial_with_no_owner_is_a_note_not_a_problem(clean_store):
    import optuna

    optuna.create_study(storage=clean_store.optuna_url, study_name="s", load_if_exists=True).ask()
    result = check_store(clean_store)
    assert result.ok and any("1 RUNNING trial(s)" in n for n in result.notes)


def test_a_trial_claimed_by_a_dead_search_is_a_problem_and_repaired(clean_store):
    # The claim automl.search records as a trial starts names its process: a dead one is found and failed.
    import optuna

    from automl import search

    study = optuna.create_study(storage=clean_store.optuna_url, study_name="s", load_if_exists=True)
    trial = study.ask()
    owner = {"host": search._host(), "pid": _dead_pid(), "started": None, "session": "gone"}
    storage = optuna.storages.RDBStorage(clean_store.optuna_url)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), trial.number)
    storage.set_trial_system_attr(trial_id, "automl:claim", {"owner": owner, "slot": 2})
    result = check_store(clean_store)
    assert not result.ok and any("is gone" in p.what for p in result.problems)
    check_store(clean_store, repair=True)
    assert check_store(clean_store).ok
    assert study.trials[trial.number].state == optuna.trial.TrialState.FAIL


def test_a_run_of_automl_0_1_is_a_note_with_its_refit_not_a_problem(clean_store):
    old = _run(clean_store, "250101-000000-0000")
    for name in BUNDLE_FILES:
        (old / name).unlink()
    (old / LEGACY_BUNDLE).write_bytes(b"a pickle, never opened")
    result = check_store(clean_store)
    assert result.ok and any(str(old) in n and "automl run" in n for n in result.notes)


def test_no_store_is_an_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "store", "check", "--store", tmp_path / "nothing")
    assert code == 2 and f"no store at {tmp_path / 'nothing'}" in err
