"""Jobs: what a front end submits (a fit, a comparison, an embedding) and follows until it ends.

A job lives in the store, beside what it makes::

    store/jobs/<job-id>/job.json      the record: kind, request, state, stage, progress, error, result
    store/jobs/<job-id>/events.jsonl  every progress event, one JSON object a line (what /events streams)
    store/jobs/<job-id>/cancel        present once a cancel was asked for

The queue (``automl.service.queue``) only carries job ids; the record is the truth. States::

    queued -> running -> succeeded | failed | cancelled
    queued -> cancelled                      (cancelled before a worker took it)
    running -> queued                        (its worker died: ``reap``, up to MAX_ATTEMPTS runs)

Every change of a record is a read-modify-write under an exclusive ``flock`` of the job's folder, and
``job.json`` is replaced atomically, so a reader never sees half a record. A running job's worker
stamps ``heartbeat`` every HEARTBEAT_S seconds; a job whose worker process is gone (same host) or whose
heartbeat is older than STALE_S (any host) is taken back by ``reap``: queued again, so the retry
resumes from the store (cached embeddings, generated images, the Optuna study), or failed with the
reason once it has run MAX_ATTEMPTS times.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from automl._files import json_text, process_alive, write_json
from automl.errors import AutomlError, DataError

KINDS = ("fit", "compare", "embed", "pretrain")
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
HEARTBEAT_S = 5.0
STALE_S = 60.0
MAX_ATTEMPTS = 2
PROGRESS_EVERY_S = 0.5  # the least time between two stored progress events of one bar (first and last always kept)
_ID = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{8}$")


class NotFoundError(AutomlError):
    """A job, dataset, run or file the request names does not exist (HTTP 404)."""


class ConflictError(AutomlError):
    """The request conflicts with the thing's state, e.g. cancelling a finished job (HTTP 409)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    """Sorts by submission time; 8 random hex digits keep two in one second apart."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class WorkerInfo:
    """Who runs a job: the host and process, for ``reap`` to tell a dead worker from a slow one."""

    host: str
    pid: int
    id: str

    @classmethod
    def here(cls) -> "WorkerInfo":
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    def to_dict(self) -> dict:
        return {"host": self.host, "pid": self.pid, "id": self.id}


class Jobs:
    """The jobs of one store."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not _ID.match(job_id):
            raise NotFoundError(f"no job {job_id!r}: job ids look like 20261203T101500-1a2b3c4d; list them with "
                                "GET /jobs.")
        return self.root / job_id

    # --- reading ---------------------------------------------------------------------------------

    def get(self, job_id: str) -> dict:
        path = self.folder(job_id) / "job.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFoundError(f"no job {job_id!r} in this store; list them with GET /jobs.") from None

    def list(self, *, state: str | None = None, limit: int = 100) -> list[dict]:
        """The newest ``limit`` jobs first (optionally of one state)."""
        out = []
        if not self.root.is_dir():
            return out
        for folder in sorted(self.root.iterdir(), reverse=True):
            if not _ID.match(folder.name):
                continue
            try:
                record = json.loads((folder / "job.json").read_text())
            except (OSError, ValueError):
                continue  # being created
            if state is None or record.get("state") == state:
                out.append(record)
            if len(out) >= limit:
                break
        return out

    def events(self, job_id: str, after: int = 0) -> list[dict]:
        """The stored events with ``seq`` > ``after``, in order."""
        return [e for e in self.read_events(job_id)[0] if e["seq"] > after]

    def read_events(self, job_id: str, offset: int = 0) -> tuple[list[dict], int]:
        """The events whose lines are complete from byte ``offset`` of the log on, and the offset after
        them: a follower reads each event once, not the whole log at every poll."""
        try:
            f = open(self.folder(job_id) / "events.jsonl", "rb")
        except FileNotFoundError:
            return [], offset
        with f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line being written waits for the next read
        return [json.loads(line) for line in data[:end].splitlines()], offset + end

    def cancel_requested(self, job_id: str) -> bool:
        return (self.folder(job_id) / "cancel").exists()

    # --- writing ---------------------------------------------------------------------------------

    def create(self, kind: str, request: dict, *, queue: str = "default") -> dict:
        job_id = new_job_id()
        folder = self.folder(job_id)
        folder.mkdir(parents=True)
        record = {"id": job_id, "kind": kind, "state": "queued", "stage": None, "progress": None, "error": None,
                  "result": None, "created": now(), "started": None, "finished": None, "attempts": 0,
                  "worker": None, "heartbeat": None, "queue": queue, "request": request}
        write_json(folder / "job.json", record)
        self._append(folder, {"kind": "state", "state": "queued", "time": time.time()})
        return record

    @contextlib.contextmanager
    def _locked(self, job_id: str) -> Iterator[dict]:
        """The record, under the job's lock; what the block leaves in it is written back."""
        folder = self.folder(job_id)
        if not (folder / "job.json").exists():
            raise NotFoundError(f"no job {job_id!r} in this store; list them with GET /jobs.")
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                record = json.loads((folder / "job.json").read_text())
                before = json.dumps(record, sort_keys=True)
                yield record
                if json.dumps(record, sort_keys=True) != before:
                    write_json(folder / "job.json", record)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, folder: Path, event: dict) -> dict:
        """Append one event with the next sequence number (callers hold the lock or are the only writer)."""
        path = folder / "events.jsonl"
        event = {"seq": _last_seq(path) + 1, **event}
        with open(path, "a") as f:
            f.write(json_text(event, indent=None) + "\n")
        return event

    def add_event(self, job_id: str, event: dict) -> dict:
        folder = self.folder(job_id)
        with open(folder / ".events.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._append(folder, event)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def claim(self, job_id: str, worker: WorkerInfo) -> dict | None:
        """Mark a queued job running for ``worker``; None if it is not queued (cancelled, finished, or
        already taken: a queue may deliver a job twice)."""
        with self._locked(job_id) as record:
            if record["state"] != "queued":
                return None
            record.update(state="running", started=now(), worker=worker.to_dict(), heartbeat=time.time(),
                          attempts=record["attempts"] + 1, error=None)
            claimed = dict(record)
        self.add_event(job_id, {"kind": "state", "state": "running", "attempt": claimed["attempts"],
                                "time": time.time()})
        return claimed

    def beat(self, job_id: str, worker: WorkerInfo, **fields) -> bool:
        """Stamp the heartbeat (and ``fields``: stage, progress) if ``worker`` still holds the job."""
        with self._locked(job_id) as record:
            if record["state"] != "running" or (record["worker"] or {}).get("id") != worker.id:
                return False
            record["heartbeat"] = time.time()
            record.update(fields)
            return True

    def finish(self, job_id: str, worker: WorkerInfo | None, state: str, *, error: dict | None = None,
               result: dict | None = None) -> dict:
        assert state in FINAL
        with self._locked(job_id) as record:
            if worker is not None and (record["worker"] or {}).get("id") != worker.id:
                return record  # taken back by reap meanwhile: the new holder decides
            if record["state"] in FINAL:
                return record
            record.update(state=state, finished=now(), error=error, result=result)
            final = dict(record)
        self.add_event(job_id, {"kind": "state", "state": state, "error": error, "result": result,
                                "time": time.time()})
        return final

    def request_cancel(self, job_id: str) -> dict:
        """Cancel a queued job now; ask a running one to stop at its next step boundary."""
        with self._locked(job_id) as record:
            if record["state"] in FINAL:
                raise ConflictError(f"job {job_id} already {record['state']}; nothing to cancel.")
            (self.folder(job_id) / "cancel").touch()
            if record["state"] == "queued":
                record.update(state="cancelled", finished=now())
            final = dict(record)
        if final["state"] == "cancelled":
            self.add_event(job_id, {"kind": "state", "state": "cancelled", "time": time.time()})
        return final

    def requeue(self, job_id: str) -> dict:
        """A failed or cancelled job queued again (``POST /jobs/{id}/retry``): it resumes from the store."""
        with self._locked(job_id) as record:
            if record["state"] not in ("failed", "cancelled"):
                raise ConflictError(f"job {job_id} is {record['state']}; only a failed or cancelled job is retried.")
            with contextlib.suppress(FileNotFoundError):
                (self.folder(job_id) / "cancel").unlink()
            record.update(state="queued", finished=None, error=None, attempts=0)
            final = dict(record)
        self.add_event(job_id, {"kind": "state", "state": "queued", "time": time.time()})
        return final

    def reap(self, *, stale_s: float = STALE_S, host: str | None = None) -> list[tuple[str, str]]:
        """Take back the running jobs whose worker is gone: its process is dead (on this host) or its
        heartbeat is older than ``stale_s``. Returns (job id, new state) pairs; a job queued again must
        be put back on the queue by the caller."""
        host = host or socket.gethostname()
        out = []
        for record in self.list(state="running", limit=10**6):
            worker = record.get("worker") or {}
            dead = worker.get("host") == host and not _alive(worker.get("pid"))
            stale = time.time() - (record.get("heartbeat") or 0) > stale_s
            if not (dead or stale):
                continue
            why = (f"its worker (pid {worker.get('pid')} on {worker.get('host')}) "
                   + ("died" if dead else f"sent no heartbeat for {stale_s:.0f} s"))
            with self._locked(record["id"]) as current:
                if current["state"] != "running" or current.get("worker") != record.get("worker"):
                    continue
                if current["attempts"] < MAX_ATTEMPTS:
                    current.update(state="queued", worker=None, heartbeat=None)
                else:
                    current.update(state="failed", finished=now(), error={
                        "type": "WorkerLost", "message": f"the job stopped twice because {why}; it was not "
                        "retried again. Its finished steps are in the store: POST /jobs/{id}/retry resumes it."})
                new_state = current["state"]
            self.add_event(record["id"], {"kind": "state", "state": new_state, "reason": why, "time": time.time()})
            out.append((record["id"], new_state))
        return out


def _last_seq(path: Path) -> int:
    """The sequence number of the log's last event (0 for none), read from its end: appending stays
    as cheap for the ten-thousandth event as for the first."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        size, block = f.seek(0, os.SEEK_END), 4096
        while True:
            start = max(0, size - block)
            f.seek(start)
            lines = f.read(size - start).rstrip(b"\n").rsplit(b"\n", 1)
            if len(lines) == 2 or start == 0:
                return json.loads(lines[-1])["seq"] if lines[-1] else 0
            block *= 4  # a last line longer than the block read


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0 or not process_alive(pid):
        return False
    # A zombie (killed, not yet waited for by its parent) is dead for our purposes.
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class Heartbeat:
    """A thread that stamps the job's heartbeat every HEARTBEAT_S seconds while the worker runs it,
    with the latest stage and progress the job reported."""

    def __init__(self, jobs: Jobs, job_id: str, worker: WorkerInfo, every: float = HEARTBEAT_S):
        self.jobs, self.job_id, self.worker, self.every = jobs, job_id, worker, every
        self.fields: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError, ValueError, NotFoundError):
                self.jobs.beat(self.job_id, self.worker, **self.fields)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def error_record(exc: BaseException) -> dict:
    """What a failed job's ``error`` holds: the type and the same message the CLI prints."""
    if isinstance(exc, AutomlError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "InternalError", "message": f"{type(exc).__name__}: {exc}. This is a bug in automl; the "
            "worker's log has the traceback."}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DataError(f"unknown job kind {kind!r}; valid kinds: {', '.join(KINDS)}.")
    return kind


Runner = Callable[[dict], dict]
