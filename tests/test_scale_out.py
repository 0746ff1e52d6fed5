"""One study, several search processes: `automl fit --workers N`, and commands on one store joining
one study, on a real PostgreSQL server (a throw-away cluster of Debian's postgresql, started here on
a free loopback port) and on the store's SQLite file. The budget holds across all of them, a worker
killed mid-trial costs the study nothing but a failed trial, and exactly one process writes the run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, postgres_cluster, wait_for

pytestmark = pytest.mark.timeout(600)

# The embeddings come from the cache `automl embed` filled (the two-job pattern), so the fits only search.
EMBED = ("-e", "inception-v3", "--weights", "none", "--image-size", "75", "--precision", "float32")
FIT = (*EMBED, "--heads", "logreg-elasticnet,svc-rbf", "--cv", "3", "--no-progress")


@pytest.fixture(scope="module")
def postgres():
    try:
        with postgres_cluster() as url:
            yield url
    except RuntimeError as exc:  # not installed: CI installs it, so this fails rather than skips
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A demo dataset and a store whose embedding cache holds it (filled once, by `automl embed`)."""
    root = tmp_path_factory.mktemp("scale")
    automl("demo-data", root / "digits", "--per-class", "40", "--classes", "4", "--size", "16", check=True)
    automl("embed", root / "digits", *EMBED, "--store", root / "store", check=True)
    return root


def automl(*args, check: bool = False, wait: bool = True):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "automl", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=500)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@functools.lru_cache
def _storage(url: str):
    import optuna

    return optuna.storages.RDBStorage(url)  # one connection pool for all the test's polling


def trials_of(url: str):
    """The trials of the one search study in ``url`` (the run elections' markers left aside)."""
    storage = _storage(url)
    studies = [s for s in storage.get_all_studies() if ":run:" not in s.study_name]
    assert len(studies) == 1, [s.study_name for s in studies]
    return storage.get_all_trials(storage.get_study_id_from_name(studies[0].study_name), deepcopy=False)


def owner_pid(trial) -> int | None:
    return ((trial.system_attrs.get("automl:claim") or {}).get("owner") or {}).get("pid")


def kill_a_child_mid_trial(url: str, parents: set[int]) -> int:
    """SIGKILL the first search child (not a command the test started) seen running a trial."""
    from optuna.trial import TrialState

    def running_child():
        try:
            trials = trials_of(url)
        except Exception:  # noqa: BLE001 - the study is not made yet
            return None
        pids = {owner_pid(t) for t in trials if t.state == TrialState.RUNNING} - parents - {None}
        return next(iter(pids), None)

    pid = wait_for(running_child, 300, "a search child running a trial", every=0.02)
    os.kill(pid, signal.SIGKILL)
    return pid


def check_the_study(url: str, store: Path, budget: int, killed: int | None) -> list:
    """The budget holds, nothing is left running, no finished configuration twice, the killed
    child's trial failed as interrupted, one run written whose best is the study's best."""
    from optuna.trial import TrialState

    trials = trials_of(url)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == budget, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    configs = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(configs)) == len(configs)
    if killed is not None:
        failed = [t for t in trials if t.state == TrialState.FAIL and not t.system_attrs["automl:claim"]["surplus"]]
        assert [owner_pid(t) for t in failed] == [killed], [(t.number, t.system_attrs) for t in failed]
        assert "gone" in failed[0].system_attrs["automl:interrupted"]
    runs = sorted((store / "runs").iterdir())
    assert len(runs) == 1, runs
    record = json.loads((runs[0] / "run.json").read_text())
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert record["best"]["cv_score"] == pytest.approx(best.value)
    return trials


def test_two_commands_of_two_processes_share_one_postgres_study(postgres, digits, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(digits / "store", store)  # the cache, filled by `automl embed`
    args = ("fit", digits / "digits", *FIT, "--trials", "24", "--workers", "2", "--store", store,
            "--storage", postgres)
    cache = {p: p.stat().st_mtime_ns for p in (store / "embeddings").rglob("*") if p.is_file()}
    commands = [automl(*args, wait=False) for _ in range(2)]
    killed = kill_a_child_mid_trial(postgres, {c.pid for c in commands})
    outputs = [c.communicate(timeout=500) for c in commands]
    assert [c.returncode for c in commands] == [0, 0], [err[-3000:] for _, err in outputs]
    trials = check_the_study(postgres, store, 24, killed)
    assert len({owner_pid(t) for t in trials}) >= 4  # two commands and a child of each ran trials
    run_id = next((store / "runs").iterdir()).name
    assert all(f"saved run {run_id}" in out for out, _ in outputs)  # both print the one run
    assert sum(f"wrote its run {run_id}" in err for _, err in outputs) == 1  # the other says who wrote it
    assert {p: p.stat().st_mtime_ns for p in cache} == cache  # the fits embedded nothing: `automl embed` had
    assert postgres.split("@")[0].split(":")[-1] not in json.dumps(json.loads(
        (store / "runs" / run_id / "run.json").read_text()))  # the password is never in the record


def test_workers_on_the_stores_sqlite_file_survive_a_killed_child(digits, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(digits / "store", store)
    command = automl("fit", digits / "digits", *FIT, "--trials", "12", "--workers", "3", "--store", store, wait=False)
    url = f"sqlite:///{store / 'optuna.db'}"
    killed = kill_a_child_mid_trial(url, {command.pid})
    out, err = command.communicate(timeout=500)
    assert command.returncode == 0, err[-3000:]
    check_the_study(url, store, 12, killed)
    assert f"(pid {killed}) was killed by signal 9" in err  # the note names the lost process


def test_wrong_postgres_credentials_fail_before_any_embedding(postgres, digits, tmp_path):
    wrong = postgres.replace("automl:", "automl:not-", 1)
    done = automl("fit", digits / "digits", *FIT, "--trials", "2", "--store", tmp_path / "store", "--storage", wrong)
    assert done.returncode != 0
    assert "password authentication failed" in done.stderr and "automl:***@" in done.stderr, done.stderr[-2000:]
    assert "not-" not in done.stderr  # the password never reaches the terminal
    assert not (tmp_path / "store" / "embeddings").exists()


def test_redact_hides_every_form_of_password():
    from automl.storage import redact

    assert redact("postgresql://u:p@ss@db:5432/x") == "postgresql://u:***@db:5432/x"  # '@' inside the password
    assert redact("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("postgresql://u@db/x?sslmode=require&password=s3") == "postgresql://u@db/x?sslmode=require&password=***"
    assert redact("postgresql://db:5432/x") == "postgresql://db:5432/x" and redact("sqlite:///a.db") == "sqlite:///a.db"
