"""The job queue: Huey, with its SQLite storage in the store by default and Redis when one machine is
not enough, chosen by one URL (``--queue`` / ``$AUTOML_QUEUE``)::

    sqlite:///path/to/queue.db     embedded, no server (default: <store>/queue.db)
    redis://host:6379/0            a Redis server (workers on several machines sharing the store)

Why Huey: one maintained library with both an embedded storage (SQLite, nothing to run) and Redis,
workers with health checks and periodic tasks, and a small API. It carries only job ids: the job's
record in the store (``automl.service.jobs``) is the truth, so a worker killed mid-job (which Huey
would simply lose) is found by ``Jobs.reap`` and queued again.

Huey pickles its messages by default; here they are JSON (``JsonSerializer``), so a message on the
queue cannot run code in a worker whoever wrote it. Results are not stored (the job record has them).
Queues are named: ``--queues`` lets a worker take only some (e.g. ``gpu`` for embedding and generation,
``cpu`` for searches) — a job goes to the queue its request names (default ``default``).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from automl.errors import ConfigError, MissingDependencyError

ENV = "AUTOML_QUEUE"
TASK = "automl.run_job"
REAP = "automl.reap"


def queue_url(url: str | None, store_root: Path) -> str:
    """The queue's URL: the one given, else ``$AUTOML_QUEUE``, else SQLite in the store."""
    url = url or os.environ.get(ENV)
    if url:
        return url
    return f"sqlite:///{(Path(store_root) / 'queue.db').resolve()}"


def _serializer():
    from huey.registry import Message
    from huey.serializer import Serializer

    class JsonSerializer(Serializer):
        """Huey's messages as JSON: job ids and plain values only, never pickle."""

        def _serialize(self, data) -> bytes:
            if isinstance(data, Message):
                fields = data._asdict()
                if fields.get("eta") is not None:
                    fields["eta"] = fields["eta"].isoformat()
                if fields.get("expires_resolved") is not None and isinstance(fields["expires_resolved"], datetime):
                    fields["expires_resolved"] = fields["expires_resolved"].isoformat()
                data = {"__message__": fields}
            return json.dumps(data).encode("utf-8")

        def _deserialize(self, data: bytes):
            value = json.loads(data.decode("utf-8"))
            if isinstance(value, dict) and "__message__" in value:
                fields = value["__message__"]
                for key in ("eta", "expires_resolved"):
                    if isinstance(fields.get(key), str):
                        fields[key] = datetime.fromisoformat(fields[key])
                fields["args"] = tuple(fields.get("args") or ())
                return Message(**fields)
            return value

    return JsonSerializer()


class Queue:
    """One named Huey queue at ``url``, with the automl task registered on it."""

    def __init__(self, url: str, name: str = "default", *, immediate: bool = False):
        try:
            import huey
        except ImportError as exc:
            raise MissingDependencyError("the job queue needs Huey: pip install 'automl[serve]'") from exc
        self.url, self.name = url, name
        parsed = urlparse(url)
        common = dict(name=f"automl-{name}", results=False, serializer=_serializer(), immediate=immediate,
                      utc=True)
        if parsed.scheme == "sqlite":
            path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
            if not path:
                raise ConfigError(f"queue URL {url!r} names no file; use sqlite:///path/to/queue.db.")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.huey = huey.SqliteHuey(filename=path, **common)
        elif parsed.scheme in ("redis", "rediss", "unix"):
            try:
                import redis  # noqa: F401
            except ImportError as exc:
                raise MissingDependencyError("a Redis queue needs the redis package: pip install 'automl[serve]'") \
                    from exc
            self.huey = huey.RedisHuey(url=url, **common)
        else:
            raise ConfigError(f"queue URL {url!r}: expected sqlite:///path/to/queue.db or redis://host:port/db "
                              f"(--queue or ${ENV}).")
        from automl.service.worker import run_job

        self._run = self.huey.task(name=TASK, retries=0)(run_job)

    def enqueue(self, store_root: Path, job_id: str) -> None:
        self._run(str(store_root), job_id)

    def pending(self) -> int:
        return self.huey.pending_count()
