"""Several processes on one study: the extra search processes a fit starts on this machine
(``workers``), and the election of the one process that refits and writes the run when several
commands (on this machine or others, sharing the store and the storage) searched the same study.

Search processes (``SearchProcesses``): ``workers - 1`` children, each a fresh interpreter (spawned,
never forked from a process that holds TensorFlow or BLAS threads), run ``run_search`` on the parent's
arrays, with the same study, budget and deadline and no progress bar; the study's own bookkeeping
(``automl.search``: slots, budget, dead trials) keeps them from repeating or overrunning each other.
The fold threads of the machine are split between the processes. Children die with the parent (Linux
kills them when it dies, even by SIGKILL) and are stopped when it stops early (Ctrl-C, a cancel, an
error); a child that dies leaves its running trial to be failed and its slot run again.

The election (``RunElection``): with a trial budget, each command that searched a study votes once
its search is over. The first creates a marker in the storage (an empty Optuna study named
``<study>:run:<key>:<generation>``: the database's unique study name is the lock, on SQLite and on a
server alike), refits, evaluates, writes the run and records its id there, beating every
``HEARTBEAT_S`` meanwhile. The others wait for that id and return the run it names. A writer that
dies (its pid gone on this host, or silent for ``GRACE_S`` elsewhere) is replaced by a waiting voter
(the next generation). A marker made before a voter began its search belongs to an earlier command
(a rerun writes its own run, as a single process always did). Without a trial budget (``--timeout``
alone) every command writes its own run: the processes do not end together.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

from automl import progress as events
from automl._files import die_with_parent
from automl.search import CLAIM_WAIT_S, GRACE_S, HEARTBEAT_S, owner_gone, process_owner

_WRITER = "automl:writer"
_POLL_S = 1.0  # how often a voter waiting for another process's run looks again
_STOP_S = 10.0  # how long a child stopped early gets to end before it is killed
_WRITING: set[str] = set()  # the elections this process is writing a run for (threads may run several)


# --- search processes on this machine --------------------------------------------------------------


class SearchProcesses:
    """``count`` child processes running ``run_search(**search)`` beside the caller's own search; a
    context manager: entering starts them, leaving stops any still running."""

    def __init__(self, count: int, search: dict):
        self.count, self.search = count, search
        self.processes: list = []

    def __enter__(self) -> "SearchProcesses":
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        for i in range(self.count):
            process = context.Process(target=_search_child, args=(self.search,), name=f"automl-search-{i + 1}")
            process.start()
            self.processes.append(process)
        return self

    def wait(self) -> list[str]:
        """Wait for the children (whose searches end with the caller's: one budget); what went wrong
        with any of them, for the run's notes."""
        problems = []
        for i, process in enumerate(self.processes, 1):
            while process.is_alive():
                process.join(0.5)
                events.checkpoint()  # a cancel while waiting stops them all (``__exit__``)
            if process.exitcode:
                how = (f"was killed by signal {-process.exitcode}" if process.exitcode < 0
                       else f"exited with code {process.exitcode}")
                problems.append(f"search process {i} of {self.count + 1} (pid {process.pid}) {how}; the others "
                                "ran its trials")
        return problems

    def __exit__(self, *exc) -> None:
        alive = [p for p in self.processes if p.is_alive()]
        for process in alive:
            process.terminate()
        deadline = time.monotonic() + _STOP_S
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


def _search_child(search: dict) -> None:
    die_with_parent(signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above: nobody would stop us
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group: the parent stops us
    from automl.search import run_search

    run_search(**search, progress=False)


# --- which process writes the run ------------------------------------------------------------------


def run_key(study: str, budget: int, *parts) -> str:
    """The election's name for one study, budget and whatever else makes two runs differ (the test
    split, the run's name): voters agree on a run only if these are equal."""
    digest = hashlib.blake2b(json.dumps([budget, *parts]).encode(), digest_size=6).hexdigest()
    return f"{study}:run:{digest}"


@dataclass
class Vote:
    won: bool
    run_id: str | None = None  # the winner's run, for a voter that lost
    writer: dict | None = None  # its owner (host, pid, ...), for a voter that lost


class RunElection:
    """One voter: ``vote()`` once the search is over; the winner calls ``done(run_id)`` after writing
    the run (inside ``writing()``, which beats), a voter that lost reads the run from the store."""

    def __init__(self, storage, key: str, *, began: float, exists: Callable[[str], bool]):
        import uuid

        self.storage, self.key, self.began, self.exists = storage, key, began, exists
        self.owner = process_owner(uuid.uuid4().hex)
        self.marker: int | None = None  # our marker's study id, once won
        self._info: dict | None = None

    def vote(self, *, echo: bool = False) -> Vote:
        """Won, or lost with the run another voter wrote (waiting for it while it writes); ``echo``
        also prints the wait's note on stderr."""
        import optuna

        announced, unclaimed = False, {}
        while True:
            generation, marker = self._latest()
            info = None if marker is None else marker.system_attrs.get(_WRITER)
            if marker is not None and info is None:
                # A voter between creating its marker and saying who it is (milliseconds), or one
                # that died there: after CLAIM_WAIT_S the next generation is free.
                first = unclaimed.setdefault(marker.study_name, time.monotonic())
                if time.monotonic() - first < CLAIM_WAIT_S:
                    time.sleep(0.05)
                    continue
            ours = info is not None and info["elected"] >= self.began
            if info is not None and info.get("run_id") and ours:
                if self.exists(info["run_id"]):
                    return Vote(False, info["run_id"], info["owner"])
                ours = False  # written, but not into this store (or deleted since): write it here
            if ours and not self._dead(info):
                if not announced:
                    events.note(f"search over; {_who(info['owner'])} is writing the run: waiting for it", echo=echo)
                    announced = True
                time.sleep(_POLL_S)
                events.checkpoint()
                continue
            try:
                self.marker = self.storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE],
                                                            f"{self.key}:{generation + 1}")
            except optuna.exceptions.DuplicatedStudyError:
                continue  # another voter took that generation first: look again
            _WRITING.add(self.owner["session"])
            self._say(state="writing", run_id=None, elected=time.time())
            return Vote(True)

    def writing(self):
        """A context in which the winner's marker beats (another host's voter takes a marker silent
        for GRACE_S as dead)."""
        return _Beating(self)

    def done(self, run_id: str) -> None:
        self._say(state="done", run_id=run_id)
        _WRITING.discard(self.owner["session"])

    # --- the marker ------------------------------------------------------------------------------

    def _latest(self):
        prefix = f"{self.key}:"
        markers = [s for s in self.storage.get_all_studies() if s.study_name.startswith(prefix)]
        if not markers:
            return 0, None
        latest = max(markers, key=lambda s: int(s.study_name.rsplit(":", 1)[1]))
        return int(latest.study_name.rsplit(":", 1)[1]), latest

    def _say(self, **fields) -> None:
        current = dict(self._info or {})
        current.update(fields, owner=self.owner, beat=time.time())
        self._info = current
        self.storage.set_study_system_attr(self.marker, _WRITER, current)

    @staticmethod
    def _dead(info: dict) -> bool:
        """Whether a writing voter is certainly gone: this process's, by its election; this host's, by
        its pid; another host's, by a beat older than GRACE_S."""
        owner = info["owner"]
        if info.get("state") == "failed":
            return True
        if owner["host"] == process_owner("")["host"] and owner["pid"] == os.getpid():
            return owner["session"] not in _WRITING
        return owner_gone(owner) is not None or time.time() - info["beat"] > GRACE_S


class _Beating:
    def __init__(self, election: RunElection):
        self.election = election
        self.stop = threading.Event()

    def __enter__(self):
        def beat():
            while not self.stop.wait(HEARTBEAT_S):
                try:
                    self.election._say()
                except Exception:  # noqa: BLE001 - a missed beat is not worth the run; the next may land
                    pass

        self.thread = threading.Thread(target=beat, name="automl-run-writer", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, kind, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if self.election.owner["session"] in _WRITING:  # not done: say so, so another voter writes it now
            _WRITING.discard(self.election.owner["session"])
            try:
                self.election._say(state="failed")
            except Exception:  # noqa: BLE001 - then the others wait for the silence (GRACE_S)
                pass


def _who(owner: dict) -> str:
    return f"pid {owner.get('pid')} on {str(owner.get('host', '?')).split('|')[0]}"


def written_by(vote: Vote) -> str:
    """The line a voter that lost prints."""
    return f"this process searched the study with others; {_who(vote.writer or {})} wrote its run {vote.run_id}"
