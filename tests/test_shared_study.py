"""Who writes a shared study's run (``automl.shared_study.RunElection``), in one process on SQLite:
one winner among concurrent voters, the others handed its run; an earlier command's marker never
taken for this one's; a writer that failed replaced at once."""

from __future__ import annotations

import threading
import time

from automl.search import open_storage
from automl.shared_study import RunElection, run_key


def election(tmp_path, began: float, written: set) -> RunElection:
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return RunElection(storage, run_key("automl-0123", 24, ["test fingerprints"]), began=began,
                       exists=written.__contains__)


def test_concurrent_voters_elect_one_writer_and_the_others_get_its_run(tmp_path):
    began, written, votes = time.time(), set(), {}
    voters = [election(tmp_path, began, written) for _ in range(3)]

    def vote(i):
        votes[i] = voters[i].vote()
        if votes[i].won:
            with voters[i].writing():
                time.sleep(0.3)  # the refit
                written.add("run-1")
                voters[i].done("run-1")

    threads = [threading.Thread(target=vote, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(v.won for v in votes.values()) == [False, False, True]
    assert {v.run_id for v in votes.values() if not v.won} == {"run-1"}


def test_a_later_command_writes_its_own_run_and_a_failed_writer_is_replaced(tmp_path):
    written = set()
    first = election(tmp_path, time.time(), written)
    assert first.vote().won
    first.done("run-1")
    written.add("run-1")
    # A rerun that began its search after that run was elected writes a run of its own.
    time.sleep(0.01)
    rerun = election(tmp_path, time.time(), written)
    assert rerun.vote().won
    # A voter of the same search waits for the rerun's writer while it writes...
    patient = election(tmp_path, rerun.began, written)
    waited = threading.Thread(target=lambda: setattr(patient, "result", patient.vote()))
    waited.start()
    time.sleep(1.5)
    assert waited.is_alive()
    # Its writer fails (an exception while writing): a voter of the same search takes over at once.
    try:
        with rerun.writing():
            raise RuntimeError("the refit ran out of memory")
    except RuntimeError:
        pass
    waited.join(10)
    assert not waited.is_alive() and patient.result.won
    # Different budgets or test splits never share a run.
    assert run_key("automl-0123", 24, ["a"]) != run_key("automl-0123", 30, ["a"]) != run_key("automl-0123", 24, ["b"])
