"""The service's latencies, against a real ``automl serve`` and ``automl worker`` on loopback.

- predict: p50 / p95 latency and images/s of ``POST /models/{run}/predict`` with 1 and with 32 images a
  request, the model warm (one untimed request first), for two runs fitted here on BreastMNIST: the
  shared MobileNet v1 TFLite file extractor (its own 224 px) and inception-v3 (random weights) at 75 px.
  ``--requests`` requests each, one at a time.
- submission to the first progress event: the time from ``POST /jobs`` to the first ``progress`` event
  of its ``/events`` stream (the worker idle and warm), median of ``--submits`` small fit jobs whose
  embeddings are cached (each a new study: 3, 4, 5 ... folds).

    .venv/bin/python bench/bench_serve.py              # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MOBILENET = SHARED / "models" / "mobilenet-v1-embedding" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--submits", type=int, default=5)
    args = ap.parse_args()
    print(f"machine : {platform.machine()} {os.cpu_count()} cpu, {platform.processor() or platform.platform()}")
    print(f"command : {' '.join([Path(sys.executable).name, *sys.argv])}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    store, port = tmp / "store", free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "AUTOML_QUEUE": f"sqlite:///{tmp / 'queue.db'}"}
    logs = open(tmp / "log.txt", "wb")
    procs = [subprocess.Popen([sys.executable, "-m", "automl", cmd, "--store", str(store), *extra], env=env, cwd=ROOT,
                              stdout=logs, stderr=subprocess.STDOUT)
             for cmd, extra in (("serve", ["--port", str(port), "--no-auth", "--allow-root", str(SHARED / "models")]),
                                       ("worker", []))]
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
    try:
        for _ in range(300):
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        npz = SHARED / "data" / "breastmnist.npz"
        with open(npz, "rb") as f:
            dataset = http.post("/datasets", files={"file": ("breastmnist.npz", f)}).json()["id"]
        with np.load(npz) as arrays:
            pixels = arrays["test_images"][:32]
        images = []
        for i, p in enumerate(pixels):
            path = tmp / f"img-{i}.png"
            Image.fromarray(p).save(path)
            images.append(("files", (path.name, path.read_bytes(), "image/png")))

        def fit(recipe: dict) -> str:
            job = http.post("/jobs", json={"kind": "fit", "recipe": {"data": dataset, "heads": ["logreg-elasticnet"],
                                                                     "trials": 3, "cv": 2, **recipe}}).json()
            if "id" not in job:
                raise SystemExit(f"the job was refused: {job}")
            with http.stream("GET", f"/jobs/{job['id']}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: ") and '"links"' in line:
                        end = json.loads(line[6:])
            assert end["state"] == "succeeded", end
            return end["result"]["run_id"]

        setups = {"mobilenet-v1 file (224 px)": {"extractors": [f"file:{MOBILENET}"], "weights": "none"},
                  "inception-v3 75 px": {"extractors": ["inception-v3"], "weights": "none", "image_size": 75,
                                         "precision": "float32"}}
        print("\npredict, warm model, one request at a time")
        print(f"{'extractor':28} {'images/request':>14} {'p50 ms':>8} {'p95 ms':>8} {'images/s':>9}")
        for label, recipe in setups.items():
            run = fit(recipe)
            for n in (1, 32):
                http.post(f"/models/{run}/predict", files=images[:n])  # warm
                times = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    answer = http.post(f"/models/{run}/predict", files=images[:n])
                    times.append(time.perf_counter() - t0)
                    assert answer.status_code == 200, answer.text
                p50, p95 = np.percentile(times, [50, 95]) * 1000
                print(f"{label:28} {n:>14} {p50:>8.1f} {p95:>8.1f} {n / np.median(times):>9.1f}")

        waits = []
        for i in range(args.submits):
            t0 = time.perf_counter()
            job = http.post("/jobs", json={"kind": "fit", "recipe": {"data": dataset, **setups["inception-v3 75 px"],
                                                                     "heads": ["logreg-elasticnet"], "trials": 3,
                                                                     "cv": 3 + i}}).json()
            with http.stream("GET", f"/jobs/{job['id']}/events") as stream:
                first = None
                for line in stream.iter_lines():
                    if first is None and line == "event: progress":
                        first = time.perf_counter() - t0
                    if line.startswith("event: end"):
                        break
            waits.append(first)
        print(f"\nsubmission -> first progress event: median {np.median(waits):.2f} s "
              f"({', '.join(f'{w:.2f}' for w in waits)})")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)


if __name__ == "__main__":
    main()
