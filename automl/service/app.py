"""The HTTP API a front end calls (FastAPI): datasets, jobs with live progress, results, predictions.

``create_app(ServiceConfig(...))`` builds it; ``automl serve`` runs it with uvicorn. Every error is a
JSON body ``{"error": {"type", "message"}}`` with the message the CLI would print, and the status of
its kind: 422 bad recipe or data, 404 unknown id, 409 a conflict with the thing's state, 413 too
large, 415 wrong content type, 401 missing or wrong token, 503 a missing package or weights.
"""


import asyncio
import hmac
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from automl import __version__
from automl.errors import (AutomlError, ConfigError, DataError, MissingDependencyError, StoreError, TooLargeError,
                           WeightsUnavailableError)
from automl.service.jobs import FINAL, KINDS, STATES, ConflictError, Jobs, NotFoundError
from automl.service.uploads import DatasetNotFoundError, Limits
from automl.store import Store

RUN_FILES = ("predictions.csv", "recipe.yaml", "split.json", "metrics.json", "leaderboard.json", "run.json",
             "samples.png", "report.html", "quality.json")
COMPARISON_FILES = ("comparison.json", "table.txt", "report.html")
REPORT = "report.html"
SSE_POLL_S = 0.25
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SSE_KEEPALIVE_S = 15.0


@dataclass
class ServiceConfig:
    store: Path
    queue: Optional[str] = None  # URL; None: $AUTOML_QUEUE, else SQLite in the store
    token: Optional[str] = None  # the bearer token clients send; None only with no_auth
    no_auth: bool = False
    allowed_roots: tuple = ()  # server folders a client may register as datasets or name in a recipe
    limits: Limits = field(default_factory=Limits)
    storage: Optional[str] = None  # Optuna storage URL for searches (None: the store's SQLite)
    immediate: bool = False  # run jobs inside the request (tests, debugging): no worker needed
    warm_models: int = 4


STATUS = ((TooLargeError, 413), (NotFoundError, 404), (DatasetNotFoundError, 404), (ConflictError, 409),
          (MissingDependencyError, 503),
          (WeightsUnavailableError, 503), (StoreError, 500), (DataError, 422), (ConfigError, 422), (AutomlError, 422))


def status_of(exc: AutomlError) -> int:
    return next(code for kind, code in STATUS if isinstance(exc, kind))


def create_app(config: ServiceConfig):
    try:
        from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
        from pydantic import BaseModel
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as exc:
        raise MissingDependencyError("the service needs FastAPI: pip install 'automl[serve]'") from exc

    from automl.service import uploads
    from automl.service.predictor import WarmModels
    from automl.service.queue import Queue, queue_url
    from automl.service.requests import check_kind_fields, validate_pretrain, validate_recipe

    store = Store(config.store)
    store.ensure()
    jobs = Jobs(store.jobs_dir)
    url = queue_url(config.queue, store.root)
    queues: dict[str, Queue] = {}
    models = WarmModels(config.warm_models)
    if not config.no_auth and not config.token:
        raise ConfigError("the service needs an API token (--token-file or $AUTOML_TOKEN), or --no-auth on "
                          "127.0.0.1 only.")

    def queue(name: str) -> Queue:
        if name not in queues:
            queues[name] = Queue(url, name, immediate=config.immediate)
        return queues[name]

    app = FastAPI(title="automl", version=__version__, description=(
        "Image classification on small datasets: upload a dataset, submit a fit or a comparison, follow its "
        "progress, read the results, predict with the model."))
    app.state.config, app.state.jobs, app.state.models = config, jobs, models
    app.add_middleware(BodyLimit, limit=config.limits.max_upload_bytes)

    # --- errors ------------------------------------------------------------------------------------

    def error(status: int, kind: str, message: str, headers: dict | None = None):
        return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)

    @app.exception_handler(AutomlError)
    async def automl_error(request: Request, exc: AutomlError):
        return error(status_of(exc), type(exc).__name__, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kinds = {404: "NotFound", 405: "MethodNotAllowed", 413: "TooLargeError", 415: "UnsupportedMediaType"}
        return error(exc.status_code, kinds.get(exc.status_code, "HTTPError"), str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        lines = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
            lines.append(f"{where}: {e.get('msg')}")
        return error(422, "RequestError", "; ".join(lines) or "the request is malformed.")

    # --- auth --------------------------------------------------------------------------------------

    def authorised(authorization: Optional[str] = Header(None, description="Bearer <token>")) -> None:
        if config.no_auth:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.token.encode()):
            raise _Unauthorised()

    class _Unauthorised(Exception):
        pass

    @app.exception_handler(_Unauthorised)
    async def unauthorised(request: Request, exc: _Unauthorised):
        return error(401, "Unauthorised", "missing or wrong API token: send the header 'Authorization: Bearer "
                     "<token>' with the token the server was started with.", {"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorised)]

    # --- basics ------------------------------------------------------------------------------------

    @app.get("/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/version", tags=["service"], dependencies=auth)
    def version() -> dict:
        from automl.pipeline import library_versions

        return {"automl": __version__, "libraries": library_versions(), "queue": _redacted(url)}

    # --- datasets ----------------------------------------------------------------------------------

    @app.post("/datasets", status_code=201, tags=["datasets"], dependencies=auth)
    def upload_dataset(file: UploadFile = File(..., description="a .zip (class folders, or train/ and test/) "
                                               "or a MedMNIST .npz")) -> dict:
        name = Path(file.filename or "upload").name
        suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
        if suffix == "zip":
            entry = uploads.ingest_zip(file.file, store, name=name, limits=config.limits)
        elif suffix == "npz":
            entry = uploads.ingest_npz(file.file, store, name=name, limits=config.limits)
        else:
            raise _WrongType(f"{name!r}: upload a .zip of image folders or a MedMNIST .npz (or images with "
                             "POST /datasets/images).")
        return entry.to_dict()

    class _WrongType(Exception):
        pass

    @app.exception_handler(_WrongType)
    async def wrong_type(request: Request, exc: _WrongType):
        return error(415, "UnsupportedMediaType", str(exc))

    @app.post("/datasets/images", status_code=201, tags=["datasets"], dependencies=auth)
    def upload_images(files: list[UploadFile] = File(..., description="the images"),
                      classes: list[str] = Form(..., description="each image's class, in the order of files")) -> dict:
        if len(classes) == 1 and len(files) > 1:
            classes = classes * len(files)
        if len(classes) != len(files):
            raise DataError(f"{len(files)} files but {len(classes)} classes: send one 'classes' field per file "
                            "(or one for all).")
        entry = uploads.ingest_images([(Path(f.filename or "image").name, c, f.file) for f, c in zip(files, classes)],
                                      store, limits=config.limits)
        return entry.to_dict()

    class FolderRequest(BaseModel):
        path: str

    @app.post("/datasets/folder", status_code=201, tags=["datasets"], dependencies=auth)
    def register_folder(body: FolderRequest) -> dict:
        return uploads.register_folder(body.path, store, allowed_roots=list(config.allowed_roots)).to_dict()

    @app.get("/datasets", tags=["datasets"], dependencies=auth)
    def list_datasets() -> list[dict]:
        return [e.to_dict() for e in uploads.list_datasets(store)]

    @app.get("/datasets/{dataset_id}", tags=["datasets"], dependencies=auth)
    def get_dataset(dataset_id: str) -> dict:
        return uploads.get_dataset(store, dataset_id).to_dict()

    # --- jobs --------------------------------------------------------------------------------------

    class JobRequest(BaseModel):
        kind: Literal[KINDS] = "fit"  # type: ignore[valid-type]
        recipe: dict[str, Any]
        queue: str = "default"

    def described(record: dict) -> dict:
        recipe = (record.get("request") or {}).get("recipe") or {}
        if recipe.get("storage"):  # the server's database URL: its password is not the client's to read
            record = {**record, "request": {**record["request"], "recipe": {**recipe,
                                                                           "storage": _redacted(recipe["storage"])}}}
        job_id = record["id"]
        links = {"self": f"/jobs/{job_id}", "events": f"/jobs/{job_id}/events"}
        result = record.get("result") or {}
        if result.get("run_id"):
            links["run"] = f"/runs/{result['run_id']}"
            links["predict"] = f"/models/{result['run_id']}/predict"
        if result.get("comparison_id"):
            links["comparison"] = f"/comparisons/{result['comparison_id']}"
        return {**record, "links": links}

    @app.post("/jobs", status_code=202, tags=["jobs"], dependencies=auth)
    def submit(body: JobRequest) -> JSONResponse:
        check_kind_fields(body.kind, body.recipe)
        if not body.queue.replace("-", "").isalnum():
            raise ConfigError(f"queue {body.queue!r}: letters, digits and '-' only.")
        if body.kind == "pretrain":
            request = validate_pretrain(store, body.recipe, allowed_roots=config.allowed_roots)
        else:
            request = validate_recipe(store, body.recipe, kind=body.kind, allowed_roots=config.allowed_roots,
                                      storage=config.storage)
        record = jobs.create(body.kind, request, queue=body.queue)
        queue(body.queue).enqueue(store.root, record["id"])
        record = jobs.get(record["id"])
        return JSONResponse(described(record), status_code=202, headers={"Location": f"/jobs/{record['id']}"})

    @app.get("/jobs", tags=["jobs"], dependencies=auth)
    def list_jobs(state: Optional[str] = None, limit: int = 100) -> list[dict]:
        if state is not None and state not in STATES:
            raise ConfigError(f"state {state!r}: one of {', '.join(STATES)}.")
        return [described(r) for r in jobs.list(state=state, limit=max(1, min(limit, 1000)))]

    @app.get("/jobs/{job_id}", tags=["jobs"], dependencies=auth)
    def get_job(job_id: str) -> dict:
        return described(jobs.get(job_id))

    @app.delete("/jobs/{job_id}", status_code=202, tags=["jobs"], dependencies=auth)
    def cancel(job_id: str) -> dict:
        return described(jobs.request_cancel(job_id))

    @app.post("/jobs/{job_id}/retry", status_code=202, tags=["jobs"], dependencies=auth)
    def retry(job_id: str) -> dict:
        record = jobs.requeue(job_id)
        queue(record.get("queue") or "default").enqueue(store.root, job_id)
        return described(jobs.get(job_id))

    @app.get("/jobs/{job_id}/events", tags=["jobs"], dependencies=auth,
             response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
    async def events(job_id: str, after: int = 0, last_event_id: Optional[str] = Header(None)) -> StreamingResponse:
        """Server-sent events: every stored event of the job after ``after`` (or ``Last-Event-ID``), then
        new ones as they come, until the job ends (a last ``end`` event carries its final record)."""
        jobs.get(job_id)  # 404 now, not inside the stream
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else max(0, after)

        async def stream():
            seen, offset, quiet = start, 0, time.monotonic()
            while True:
                read, offset = await asyncio.to_thread(jobs.read_events, job_id, offset)
                batch = [e for e in read if e["seq"] > seen]
                for event in batch:
                    seen = event["seq"]
                    yield f"id: {seen}\nevent: {event.get('kind', 'progress')}\ndata: {json.dumps(event)}\n\n"
                if batch:
                    quiet = time.monotonic()
                record = await asyncio.to_thread(jobs.get, job_id)
                if record["state"] in FINAL and not batch:
                    yield f"event: end\ndata: {json.dumps(described(record))}\n\n"
                    return
                if time.monotonic() - quiet > SSE_KEEPALIVE_S:
                    quiet = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(SSE_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- results -----------------------------------------------------------------------------------

    from automl.runs import RunRecord, list_runs

    def run_folder(run_id: str) -> Path:
        """A run of the store by its exact id (no prefixes, no paths over HTTP)."""
        folder = store.runs_dir / run_id
        if not _SAFE_ID.match(run_id) or not (folder / "run.json").is_file():
            raise NotFoundError(f"no run {run_id!r} in this store; GET /runs lists them.")
        return folder

    def read_json(path: Path):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def listed(folder: Path, names: tuple, base: str) -> dict:
        """The links of the downloadable files (of ``names``) that ``folder`` holds; the report at the
        path that mirrors the store (below)."""
        return {n: f"{base}/{n}" if n == REPORT else f"{base}/files/{n}" for n in names if (folder / n).is_file()}

    def served(folder: Path, names: tuple, name: str, base: str) -> FileResponse:
        if name not in names or not (folder / name).is_file():
            raise NotFoundError(f"{base[1:]} has no file {name!r}; its files: GET {base}.")
        return FileResponse(folder / name)

    def run_summary(record: RunRecord) -> dict:
        data = record.to_dict()
        return {"id": record.id, "links": {"self": f"/runs/{record.id}", "predict": f"/models/{record.id}/predict"},
                **{k: data.get(k) for k in ("created", "name", "classes", "metric", "best", "test")}}

    @app.get("/runs", tags=["results"], dependencies=auth)
    def runs() -> list[dict]:
        return [run_summary(r) for r in reversed(list_runs(store.runs_dir, broken=[]))]

    @app.get("/runs/{run_id}", tags=["results"], dependencies=auth)
    def run(run_id: str) -> dict:
        folder = run_folder(run_id)
        return {"record": RunRecord.read(folder).to_dict(), "metrics": read_json(folder / "metrics.json"),
                "leaderboard": read_json(folder / "leaderboard.json"),
                "files": listed(folder, RUN_FILES, f"/runs/{folder.name}")}

    @app.get("/runs/{run_id}/files/{name}", tags=["results"], dependencies=auth)
    def run_file(run_id: str, name: str) -> FileResponse:
        return served(run_folder(run_id), RUN_FILES, name, f"/runs/{run_id}")

    # A report also at the path that mirrors the store (runs/<id>/report.html), where the relative links
    # between reports (a comparison's to its runs, an augmented run's to its baseline) resolve.
    @app.get("/runs/{run_id}/report.html", tags=["results"], dependencies=auth)
    def run_report(run_id: str) -> FileResponse:
        return served(run_folder(run_id), RUN_FILES, REPORT, f"/runs/{run_id}")

    def comparison_folder(comparison_id: str) -> Path:
        folder = store.comparisons_dir / comparison_id
        if not _SAFE_ID.match(comparison_id) or not (folder / "comparison.json").is_file():
            raise NotFoundError(f"no comparison {comparison_id!r} in this store.")
        return folder

    @app.get("/comparisons/{comparison_id}", tags=["results"], dependencies=auth)
    def comparison(comparison_id: str) -> dict:
        folder = comparison_folder(comparison_id)
        table = folder / "table.txt"
        return {"record": read_json(folder / "comparison.json"),
                "table": table.read_text() if table.is_file() else None,
                "files": listed(folder, COMPARISON_FILES, f"/comparisons/{comparison_id}")}

    @app.get("/comparisons/{comparison_id}/files/{name}", tags=["results"], dependencies=auth)
    def comparison_file(comparison_id: str, name: str) -> FileResponse:
        return served(comparison_folder(comparison_id), COMPARISON_FILES, name, f"/comparisons/{comparison_id}")

    @app.get("/comparisons/{comparison_id}/report.html", tags=["results"], dependencies=auth)
    def comparison_report(comparison_id: str) -> FileResponse:
        return served(comparison_folder(comparison_id), COMPARISON_FILES, REPORT, f"/comparisons/{comparison_id}")

    # --- models ------------------------------------------------------------------------------------

    @app.get("/models", tags=["models"], dependencies=auth)
    def list_models() -> list[dict]:
        return [run_summary(r) for r in reversed(list_runs(store.runs_dir, broken=[]))
                if (store.runs_dir / r.id / "model.json").is_file()]

    @app.post("/models/{run_id}/predict", tags=["models"], dependencies=auth)
    def predict(run_id: str, files: list[UploadFile] = File(..., description="one or more images")) -> dict:
        from automl.data import BadFile, bad_files_error, load_images
        from automl.images import IMAGE_SUFFIXES

        folder = run_folder(run_id)
        if len(files) > config.limits.max_files:
            raise TooLargeError(f"{len(files)} images in one request; at most {config.limits.max_files}.")
        model = models.get(folder)
        scratch = Path(tempfile.mkdtemp(prefix="automl-predict-"))
        try:
            paths, names = [], []
            for i, upload in enumerate(files):
                name = Path(upload.filename or f"image-{i}").name
                path = scratch / f"{i:06d}-{name}"
                limit = config.limits.max_file_bytes
                with open(path, "wb") as out:
                    uploads.copy_limited(upload.file, out, limit, lambda: TooLargeError(
                        f"image {name!r} is over {limit / 2**20:.0f} MiB, the per-file limit; send a smaller image."))
                paths.append(path)
                names.append(name)
            items, bad = load_images(paths, skip_bad=True)
            if bad:  # named as the client sent them, not by the scratch copy
                sent = {str(p): n for p, n in zip(paths, names)}
                raise bad_files_error([BadFile(sent.get(str(b.path), b.path), b.reason) for b in bad],
                                      f"Send only images ({', '.join(IMAGE_SUFFIXES)}) that decode.")
            started = time.perf_counter()
            proba = model.predict(items)
            seconds = time.perf_counter() - started
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        classes = model.bundle.classes
        return {"run_id": folder.name, "seconds": seconds, "predictions": [
            {"file": n, "class": classes[int(p.argmax())], "probabilities": {c: float(v) for c, v in zip(classes, p)}}
            for n, p in zip(names, proba)]}

    return app


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413: at once when its Content-Length says so,
    else as soon as the bytes received pass it (a chunked upload), before a handler reads it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        received, refused = 0, False

        async def counted():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # answer now; the handler sees the client gone
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message):
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send):
        body = json.dumps({"error": {"type": "TooLargeError", "message": (
            f"the request is over {self.limit / 2**20:.0f} MiB, the server's upload limit; split the dataset or "
            "ask the server's operator to raise --max-upload.")}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _redacted(url: str) -> str:
    from automl.storage import redact

    return redact(url)
