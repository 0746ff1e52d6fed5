"""The search survives kills and company: a killed search resumes to exactly the uninterrupted
run's history and winner, and processes sharing one study keep its budget, leave nothing RUNNING
and never evaluate a configuration twice.

Tiny synthetic features (60 x 8, logreg/svc heads) so a trial takes milliseconds; subprocesses only
where a kill or a second process is the point.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from automl import search
from automl.errors import StoreError

ROOT = Path(__file__).resolve().parents[1]
HEADS = ["logreg-elasticnet", "svc-rbf"]
N = 12  # past TPE's 10 random start-up trials, so kills land in both phases

# The search of a fit, in a process of its own. argv: database, budget, the fold score (counted over
# the whole process) at which the process SIGKILLs itself (0: never), seconds of sleep per fold score.
CHILD = """
import json, os, signal, sys, time
import automl.search as search
from tests.test_search_resume import features

db, n_trials, kill_at, slow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
real, calls = search.full_scores, [0]

def scored(*args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(slow)
    return real(*args, **kwargs)

search.full_scores = scored
study = search.run_search(*features(), heads=%r, metric="accuracy", cv=3, seed=0, storage=f"sqlite:///{db}",
                          name="t", n_trials=n_trials, timeout=None, progress=False)
best = search.best_trial(study)
print(json.dumps({"number": best.number, "value": best.value, "params": best.params}))
""" % (HEADS,)


def features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    # Named after the study's reference setups' extractors, so two reference setups are in scope.
    return {n: rng.normal(size=(60, 8)) + y[:, None] * s for n, s in (("xception", 0.6), ("inception-v3", 0.3))}, y


def child(db: Path, n_trials: int = N, kill_at: int = 0, slow: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(n_trials), str(kill_at), str(slow)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def search_here(db: Path, n_trials: int = N):
    return search.run_search(*features(), heads=HEADS, metric="accuracy", cv=3, seed=0, storage=f"sqlite:///{db}",
                             name="t", n_trials=n_trials, timeout=None, progress=False)


def history(study) -> list:
    """The finished trials in order, as what they evaluated and scored (trial numbers aside: an
    interrupted trial keeps its number)."""
    return [(t.state.name, t.params, t.value, t.user_attrs.get("reference"))
            for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


def finished(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from trials where state in ('COMPLETE','PRUNED')").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Where the tests' study databases live: a RAM disk where there is one, so commits cost no disk
    flush (what is tested here is order and ownership, not durability)."""
    import tempfile

    ram = Path("/dev/shm")
    if not (ram.is_dir() and os.access(ram, os.W_OK)):
        yield tmp_path_factory.mktemp("studies")
        return
    with tempfile.TemporaryDirectory(dir=ram, prefix="automl-test-") as name:
        yield Path(name)


@pytest.fixture
def db(folder, request):
    return folder / f"{request.node.name}.db"


@pytest.fixture(scope="module")
def uninterrupted(folder):
    study = search_here(folder / "uninterrupted.db")
    configurations = {json.dumps(params, sort_keys=True) for _, params, *_ in history(study)}
    assert len(configurations) == N  # each trial drew its own configuration
    states = [state.lower() for state, *_ in history(study)]
    assert search.trial_counts(study) == {state: states.count(state) for state in set(states)}
    return study


# Fold scores (3 per trial unless pruned) at which the search kills itself: during the first
# reference setup, during a TPE trial.
@pytest.mark.parametrize("kill_at", [2, 29])
def test_a_search_killed_mid_trial_resumes_to_the_uninterrupted_result(db, uninterrupted, kill_at):
    import optuna

    proc = child(db, kill_at=kill_at)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert finished(db) < N
    # What a run record would count now: the dead process's trial is interrupted, not running.
    killed = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    assert [t.state.name for t in killed.get_trials()][-1] == "RUNNING"
    assert "running" not in search.trial_counts(killed) and search.trial_counts(killed)["interrupted"] == 1

    resumed = search_here(db)
    assert history(resumed) == history(uninterrupted)
    best, once = search.best_trial(resumed), search.best_trial(uninterrupted)
    assert (best.params, best.value) == (once.params, once.value)
    counts = search.trial_counts(resumed)
    assert "running" not in counts and counts["interrupted"] == 1  # the killed trial, failed and its slot re-run
    assert all(t.state.name != "RUNNING" for t in resumed.get_trials())


def test_a_search_killed_from_outside_resumes_to_the_uninterrupted_result(db, uninterrupted):
    outcomes = set()
    for k in (4, 9):  # kill -9 at arbitrary points (storage writes included) after k finished trials
        proc = child(db, slow=0.01)
        deadline = time.time() + 120
        while finished(db) < k and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.kill()
        proc.communicate()
        outcomes.add(proc.returncode)
    assert -signal.SIGKILL in outcomes
    resumed = search_here(db)
    assert history(resumed) == history(uninterrupted)
    best, once = search.best_trial(resumed), search.best_trial(uninterrupted)
    assert (best.params, best.value) == (once.params, once.value)
    assert all(t.state.name != "RUNNING" for t in resumed.get_trials())


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_sharing_a_study_keep_its_budget_and_never_repeat_a_configuration(db, processes):
    n = N
    procs = [child(db, n_trials=n, slow=0.005) for _ in range(processes)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, [err[-2000:] for _, err in outs]
    study = search_here(db, n_trials=n)  # joins a finished study: runs nothing
    trials = study.get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == n
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    configurations = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(set(configurations)) == n
    references = [t.user_attrs["reference"] for t in done if "reference" in t.user_attrs]
    in_scope = [label for e, h, label in search.REFERENCE_SETUPS if e in features()[0] and h in HEADS]
    assert len(in_scope) == 2 and sorted(references) == sorted(in_scope)  # each exactly once
    # Every process waited for the others' last trials, so all report the same winner.
    winners = {out for out, _ in outs}
    assert len(winners) == 1
    best = search.best_trial(study)
    assert json.loads(winners.pop()) == {"number": best.number, "value": best.value, "params": best.params}


def test_a_live_trial_failed_by_another_process_runs_its_slot_again(db, uninterrupted, monkeypatch):
    """Another process may take a slow trial for dead (no claim in CLAIM_WAIT_S, or no heartbeat in
    GRACE_S) and fail it under its live owner: the owner goes on, and the slot runs again."""
    real, calls = search.full_scores, []

    def scored(*args, **kwargs):
        calls.append(1)
        if len(calls) == 20:
            with sqlite3.connect(db) as con:
                con.execute("update trials set state = 'FAIL' where state = 'RUNNING'")
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "full_scores", scored)
    study = search_here(db)
    assert history(study) == history(uninterrupted)
    assert search.trial_counts(study)["interrupted"] == 1


def test_a_locked_storage_is_retried_then_named(tmp_path, monkeypatch):
    session = search._Session(f"sqlite:///{tmp_path}/s.db", "t")
    monkeypatch.setattr(search.time, "sleep", lambda s: None)
    tries = []

    def flaky():
        tries.append(1)
        if len(tries) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    assert session.retrying("reading the study", flaky) == "done" and len(tries) == 3

    def locked():
        raise RuntimeError("commit failed") from sqlite3.OperationalError("database is locked")

    with pytest.raises(StoreError, match=r"s\.db stayed locked by other processes while reading the study"):
        session.retrying("reading the study", locked)
    with pytest.raises(ZeroDivisionError):  # anything else is not the storage's lock: raised as it is
        session.retrying("reading the study", lambda: 1 / 0)


def test_a_slot_freed_below_a_running_trial_is_taken_again_never_the_running_ones(tmp_path, monkeypatch):
    """A worker killed mid-trial while a later trial runs elsewhere: the next trial takes the freed
    slot (its sampler draws what the dead trial drew), never the running trial's (the same draw twice)."""
    import optuna

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(storage=url, study_name="t")
    monkeypatch.setattr(search, "_LIVE_SESSIONS", set())

    def start():  # a trial started by a search of its own that is still running it
        session = search._Session(url, "t")
        search._LIVE_SESSIONS.add(session.token)
        sampler = search._slot_sampler(session, 0, [], n_trials=10)
        study = optuna.load_study(storage=session.storage, study_name="t", sampler=sampler)
        session.study_id = session.storage.get_study_id_from_name("t")
        trial = study.ask()
        return session, (sampler.ticket.slot, trial.suggest_float("C", 1e-3, 1e3, log=True))

    sessions, drawn = zip(*[start() for _ in range(3)])  # trials 0, 1, 2 running
    assert [slot for slot, _ in drawn] == [0, 1, 2]
    search._LIVE_SESSIONS.discard(sessions[1].token)  # the search running trial 1 dies
    assert start()[1] == drawn[1]  # trial 3 fails trial 1 and reruns its slot: the same draw
    assert start()[1][0] == 3  # trial 4 goes on past the slots held
