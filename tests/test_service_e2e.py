"""End to end: a real ``automl serve`` on loopback and a real ``automl worker`` process, once with the
embedded queue (SQLite in the store) and once with a real Redis server (Debian's redis-server, started
here on a free port). Upload BreastMNIST, fit and follow the progress stream, read the metrics, predict
three images, cancel a job midway, and kill -9 the worker during a job that then finishes after a
restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, free_port, wait_for

httpx = pytest.importorskip("httpx", reason="the test extra installs httpx")

SMALL = {"extractors": ["xception"], "heads": ["logreg-elasticnet"], "weights": "none", "image_size": 71,
         "precision": "float32", "cv": 2}
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run does)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _connects(port), 20, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Service:
    def __init__(self, tmp: Path, queue: str):
        self.store, self.queue, self.port = tmp / "store", queue, free_port()
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
        self.env.pop("AUTOML_TOKEN", None)
        self.logs = tmp
        self.server = self._start("server", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--no-auth")
        self.worker = None
        self.start_worker()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        wait_for(self._healthy, 60, "automl serve to answer /health")

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}-{time.monotonic_ns()}.log", "wb")
        command = [sys.executable, "-m", "automl", *args, "--store", str(self.store), "--queue", self.queue]
        return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def start_worker(self) -> None:
        self.worker = self._start("worker", "worker", "--concurrency", "1")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def submit(self, dataset: str, **recipe) -> str:
        answer = self.http.post("/jobs", json={"kind": "fit", "recipe": {"data": dataset, **SMALL, **recipe}})
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/jobs/{job_id}").json()

    def follow(self, job_id: str) -> list[dict]:
        """Every event of the job's stream until its end event."""
        events = []
        with self.http.stream("GET", f"/jobs/{job_id}/events", timeout=600) as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: "):
                    events.append({"event": kind, **json.loads(line[len("data: "):])})
                    if kind == "end":
                        break
        return events

    def logs_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob("*.log")))

    def close(self) -> None:
        for proc in (self.worker, self.server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.http.close()


@pytest.fixture
def service(tmp_path, queue_url):
    svc = Service(tmp_path, queue_url)
    yield svc
    svc.close()


def test_a_front_ends_day_against_a_real_server_and_worker(service, shared, tmp_path):
    svc = service
    npz = shared / "data" / "breastmnist.npz"
    with open(npz, "rb") as f:
        upload = svc.http.post("/datasets", files={"file": ("breastmnist.npz", f, "application/octet-stream")})
    assert upload.status_code == 201, upload.text
    dataset = upload.json()["id"]

    # 1. A small fit, followed live to its end.
    first = svc.submit(dataset, trials=3)
    events = svc.follow(first)
    end = events[-1]
    assert end["event"] == "end" and end["state"] == "succeeded", (end, svc.logs_text())
    stages = [e["stage"] for e in events if e["event"] == "stage" and e.get("state") == "started"]
    assert stages == ["embedding", "search", "refit", "evaluate"], stages
    assert any(e["event"] == "progress" and e.get("total") for e in events)
    run = svc.http.get(end["links"]["run"]).json()
    assert run["metrics"]["n"] == 156 and 0 <= run["metrics"]["accuracy"] <= 1

    with np.load(npz) as arrays:
        images = arrays["test_images"][:3]
    files = []
    for i, pixels in enumerate(images):
        path = tmp_path / f"test-{i}.png"
        Image.fromarray(pixels).save(path)
        files.append(("files", (path.name, path.read_bytes(), "image/png")))
    predicted = svc.http.post(f"/models/{end['result']['run_id']}/predict", files=files)
    assert predicted.status_code == 200, predicted.text
    assert [p["file"] for p in predicted.json()["predictions"]] == ["test-0.png", "test-1.png", "test-2.png"]

    # 2. A long search cancelled midway: it stops at a step boundary and leaves no run.
    runs_before = set(os.listdir(svc.store / "runs"))
    second = svc.submit(dataset, trials=400, metric="accuracy")  # another study, the same embeddings
    wait_for(lambda: (svc.job(second).get("stage") == "search"), 300, "the second job's search")
    assert svc.http.delete(f"/jobs/{second}").status_code == 202
    final = wait_for(lambda: (j := svc.job(second))["state"] in ("cancelled", "failed", "succeeded") and j, 120,
                     "the cancel")
    assert final["state"] == "cancelled", final
    assert set(os.listdir(svc.store / "runs")) == runs_before

    # 3. The worker killed with SIGKILL mid-search; after a restart the job runs again and finishes.
    third = svc.submit(dataset, trials=60, metric="balanced-accuracy")
    wait_for(lambda: (svc.job(third).get("stage") == "search"), 300, "the third job's search")
    svc.worker.send_signal(signal.SIGKILL)
    svc.worker.wait(10)
    time.sleep(1)
    assert svc.job(third)["state"] == "running"  # nobody has noticed yet
    svc.start_worker()
    final = wait_for(lambda: (j := svc.job(third))["state"] in ("succeeded", "failed", "cancelled") and j, 600,
                     "the retried job")
    assert final["state"] == "succeeded" and final["attempts"] == 2, (final, svc.logs_text())
    reasons = [e for e in svc.http.get(f"/jobs/{third}/events").text.splitlines() if "died" in e]
    assert reasons, "the event log names why the job ran again"
