"""What a worker does with a job id: claim the job, run it with progress reported to its record and
event log, and leave it succeeded, failed (with the CLI's message) or cancelled.

The runners call the same functions as the CLI (``automl.pipeline.fit``, ``automl.comparison.compare``,
``automl.pipeline.embed_dataset``) on the job's validated request, inside ``progress.listen``: every bar
and stage of the pipeline becomes an event, and a cancel asked for through the API raises
``progress.Cancelled`` at the next one — a step boundary, where the store is as an interrupt would
leave it, so re-submitting (or ``POST /jobs/{id}/retry``) reuses what was finished.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from automl import progress
from automl.errors import AutomlError
from automl.service.jobs import PROGRESS_EVERY_S, Heartbeat, Jobs, WorkerInfo, error_record
from automl.service.requests import recipe_for_job
from automl.store import Store

log = logging.getLogger("automl.worker")


class JobListener:
    """A progress listener that stores a job's events (stage and state changes always, a bar's moves at
    most every PROGRESS_EVERY_S seconds, its first and last always), keeps the heartbeat's stage and
    progress current, and raises ``Cancelled`` once a cancel was asked for."""

    def __init__(self, jobs: Jobs, job_id: str, heartbeat: Heartbeat):
        self.jobs, self.job_id, self.heartbeat = jobs, job_id, heartbeat
        self._last: dict[str, float] = {}
        self._checked = 0.0

    def __call__(self, event) -> None:
        now = time.monotonic()
        if now - self._checked >= 0.2:  # one stat() per 0.2 s: a cancel lands within a step plus that
            self._checked = now
            if self.jobs.cancel_requested(self.job_id):
                raise progress.Cancelled("cancelled through the API")
        if event.kind == "stage":
            if event.state == "started":  # a new stage shows in the record at once, not at the next beat
                self.heartbeat.fields.update(stage=event.stage, progress=None)
                self.jobs.beat(self.job_id, self.heartbeat.worker, **self.heartbeat.fields)
        elif event.kind == "progress":
            if event.total is None and event.done is None:
                return  # a checkpoint: nothing to show
            last = self._last.get(event.desc)
            ending = event.total is not None and event.done is not None and event.done >= event.total
            if last is not None and now - last < PROGRESS_EVERY_S and not ending:
                return
            self._last[event.desc] = now
            shown = ("stage", "desc", "done", "total", "unit", "elapsed_s", "eta_s", "info")
            self.heartbeat.fields["progress"] = {k: getattr(event, k) for k in shown}
        self.jobs.add_event(self.job_id, event.to_dict())  # only what is kept is converted


def run_job(store_root: str, job_id: str, *, worker: WorkerInfo | None = None) -> str | None:
    """Run one job to its end; its final state, or None if it was not this worker's to run."""
    store = Store(store_root)
    jobs = Jobs(store.jobs_dir)
    worker = worker or WorkerInfo.here()
    record = jobs.claim(job_id, worker)
    if record is None:
        return None
    log.info("job %s (%s): started, attempt %d", job_id, record["kind"], record["attempts"])
    try:
        with Heartbeat(jobs, job_id, worker) as heartbeat, progress.listen(JobListener(jobs, job_id, heartbeat)):
            if jobs.cancel_requested(job_id):
                raise progress.Cancelled("cancelled through the API")
            result = RUNNERS[record["kind"]](store, record["request"])
    except progress.Cancelled:
        final = jobs.finish(job_id, worker, "cancelled")
    except Exception as exc:  # noqa: BLE001 - every failure ends the job with its reason
        if not isinstance(exc, AutomlError):
            log.exception("job %s failed", job_id)
        final = jobs.finish(job_id, worker, "failed", error=error_record(exc))
    else:
        final = jobs.finish(job_id, worker, "succeeded", result=result)
    log.info("job %s: %s", job_id, final["state"])
    return final["state"]


def _fit(store: Store, request: dict) -> dict:
    from automl.pipeline import fit

    result = fit(recipe_for_job(store, request), progress=False)
    out = {"run_id": result.run_id, "notes": result.notes}
    if result.baseline is not None:
        out["baseline_run_id"] = result.baseline.run_id
    return out


def _compare(store: Store, request: dict) -> dict:
    from automl.comparison import compare

    comparison = compare(recipe_for_job(store, request), progress=False)
    return {"comparison_id": comparison.id}


def _embed(store: Store, request: dict) -> dict:
    from automl.data import load_dataset
    from automl.pipeline import embed_dataset

    recipe = recipe_for_job(store, request)
    dataset = load_dataset(Path(recipe.data), skip_bad=recipe.skip_bad)
    with progress.stage("embedding"):
        results = embed_dataset(dataset, store, list(recipe.extractors), weights=recipe.weights,
                                image_size=recipe.image_size, precision=recipe.precision, seed=recipe.seed,
                                batch_size=recipe.batch_size, skip_bad=recipe.skip_bad, progress=False)
    return {"embeddings": [{"extractor": r.key.extractor, "images": r.images, "cached": r.cache_hits,
                            "computed": r.computed,
                            "dim": int(r.embeddings.shape[1]) if r.embeddings.ndim == 2 else None,
                            "bad_files": [str(b.path) for b in r.bad_files]} for r in results]}


def _pretrain(store: Store, request: dict) -> dict:
    from automl.pretrain import pretrain

    # pretrain reports its stage, its epochs as a bar and each log line as a note itself.
    result = pretrain(**request["pretrain"], store=str(store.root), progress=False, log=lambda line: None)
    return {"extractor": result.name, "record": result.record}


RUNNERS = {"fit": _fit, "compare": _compare, "embed": _embed, "pretrain": _pretrain}


# --- the worker process ----------------------------------------------------------------------------

REAP_EVERY = "*"  # crontab minute field: the periodic reap runs every minute


def take_back(store: Store, url: str) -> list[tuple[str, str]]:
    """``Jobs.reap``, and the jobs it queued again put back on their queues."""
    from automl.service.queue import Queue

    jobs = Jobs(store.jobs_dir)
    reaped = jobs.reap()
    for job_id, state in reaped:
        log.warning("job %s: its worker is gone; %s", job_id, "queued again" if state == "queued" else "failed")
        if state == "queued":
            Queue(url, jobs.get(job_id).get("queue") or "default").enqueue(store.root, job_id)
    return reaped


def serve_worker(store_root: str, url: str, *, queue: str = "default", concurrency: int = 1) -> None:
    """Run a Huey consumer on ``queue`` until SIGINT/SIGTERM: ``concurrency`` jobs at once, each in a
    thread of this process; running jobs of dead workers are taken back at start and every minute."""
    from huey import crontab

    from automl.service.queue import REAP, Queue

    store = Store(store_root)
    store.ensure()
    q = Queue(url, queue)

    def reap() -> None:
        take_back(store, url)

    q.huey.periodic_task(crontab(minute=REAP_EVERY), name=REAP)(reap)
    take_back(store, url)
    # Threads, not Huey's worker processes: then the whole worker is one process, and killing it (kill -9,
    # a crash) leaves nothing running behind it (a process consumer's scheduler outlives its parent).
    consumer = q.huey.create_consumer(workers=concurrency, worker_type="thread", periodic=True,
                                      check_worker_health=True, health_check_interval=5)
    log.info("worker: store %s, queue %s (%s), %d job(s) at once", store.root, queue, url, concurrency)
    consumer.run()

