"""The HTTP API in process (FastAPI's TestClient), jobs run inside the request (Huey's immediate mode):
every endpoint, its errors and their status codes, and the job records' life cycle."""

from __future__ import annotations

import io
import json
import os
import socket
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service extra is part of the README's install")
from fastapi.testclient import TestClient  # noqa: E402

import fakes  # noqa: E402,F401 - registers test-shift, the pretrain job's augmenter
import test_bad_inputs as bad_inputs  # noqa: E402
from automl.demo import make_demo_dataset  # noqa: E402
from automl.service.app import ServiceConfig, create_app  # noqa: E402
from automl.service.jobs import MAX_ATTEMPTS, Jobs, WorkerInfo  # noqa: E402
from automl.service.uploads import Limits  # noqa: E402

TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL = {"extractors": ["xception"], "heads": ["logreg-elasticnet"], "weights": "none", "image_size": 71,
         "precision": "float32", "trials": 3, "cv": 2}


def zipped(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    data = root / "digits"
    make_demo_dataset(data, per_class=8, size=16, classes=3, seed=0)
    allowed = root / "allowed"
    make_demo_dataset(allowed / "registered", per_class=4, size=16, classes=2, seed=1)
    config = ServiceConfig(store=root / "store", queue=f"sqlite:///{root / 'queue.db'}", token=TOKEN,
                           allowed_roots=(allowed,), immediate=True,
                           limits=Limits(max_upload_bytes=5 * 2**20, max_files=500))
    with TestClient(create_app(config)) as client:
        yield client, data, root


@pytest.fixture(scope="module")
def dataset_id(service):
    client, data, _ = service
    answer = client.post("/datasets", headers=AUTH, files={"file": ("digits.zip", zipped(data), "application/zip")})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


@pytest.fixture(scope="module")
def fitted(service, dataset_id):
    client, _, _ = service
    answer = client.post("/jobs", headers=AUTH, json={"kind": "fit", "recipe": {"data": dataset_id, **SMALL}})
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/jobs/{answer.json()['id']}"
    return answer.json()["id"]


def test_health_needs_no_token_and_everything_else_does(service):
    client, _, _ = service
    assert client.get("/health").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = client.get("/version", headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in answer.json()["error"]["message"]
        assert TOKEN not in answer.text
    version = client.get("/version", headers=AUTH).json()
    assert version["automl"] and "scikit-learn" in version["libraries"]
    schema = client.get("/openapi.json").json()
    assert {"/datasets", "/jobs", "/jobs/{job_id}/events", "/models/{run_id}/predict"} <= set(schema["paths"])


def test_a_zip_upload_is_content_addressed_and_inspected(service, dataset_id):
    client, data, _ = service
    entry = client.get(f"/datasets/{dataset_id}", headers=AUTH).json()
    assert entry["id"] == dataset_id and entry["kind"] == "zip"
    assert len(entry["summary"]["classes"]) == 3, entry["summary"]
    again = client.post("/datasets", headers=AUTH, files={"file": ("again.zip", zipped(data), "application/zip")})
    assert again.status_code == 201 and again.json()["id"] == dataset_id
    assert [e["id"] for e in client.get("/datasets", headers=AUTH).json()].count(dataset_id) == 1


def test_a_folder_under_an_allowed_root_registers_and_others_are_refused(service):
    client, data, root = service
    ok = client.post("/datasets/folder", headers=AUTH, json={"path": str(root / "allowed" / "registered")})
    assert ok.status_code == 201, ok.text
    assert ok.json()["kind"] == "folder"
    refused = client.post("/datasets/folder", headers=AUTH, json={"path": str(data)})
    assert refused.status_code == 422 and str(data) in refused.json()["error"]["message"]


def test_a_fit_job_runs_and_its_results_are_served(service, fitted):
    client, _, _ = service
    job = client.get(f"/jobs/{fitted}", headers=AUTH).json()
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["links"]["run"] == f"/runs/{job['result']['run_id']}"
    run = client.get(job["links"]["run"], headers=AUTH).json()
    assert run["record"]["best"]["head"] == "logreg-elasticnet" and run["metrics"]["n"] == run["record"]["test"]["n"]
    assert "predictions.csv" in run["files"]
    csv_text = client.get(run["files"]["predictions.csv"], headers=AUTH).text
    assert csv_text.startswith("path,")
    assert client.get(f"/runs/{job['result']['run_id']}/files/model.npz", headers=AUTH).status_code == 404
    assert client.get("/runs/../../etc/passwd", headers=AUTH).status_code == 404
    assert any(r["id"] == job["result"]["run_id"] for r in client.get("/models", headers=AUTH).json())
    assert client.get("/jobs?state=succeeded", headers=AUTH).json()[0]["id"] == fitted


def test_a_jobs_events_stream_its_stages_in_order_and_end(service, fitted):
    client, _, _ = service
    with client.stream("GET", f"/jobs/{fitted}/events", headers=AUTH) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    blocks = [b for b in text.split("\n\n") if b.strip()]
    events = [json.loads(line[len("data: "):]) for b in blocks for line in b.splitlines() if line.startswith("data: ")]
    stages = [e["stage"] for e in events if e.get("kind") == "stage" and e.get("state") == "started"]
    assert stages == ["embedding", "search", "refit", "evaluate"], stages
    assert blocks[-1].startswith("event: end") and events[-1]["state"] == "succeeded"
    seqs = [e["seq"] for e in events[:-1]]
    assert seqs == sorted(seqs) and seqs[0] == 1
    # Resuming after an event id sends only what follows it.
    with client.stream("GET", f"/jobs/{fitted}/events", headers={**AUTH, "Last-Event-ID": str(seqs[-2])}) as stream:
        again = "".join(stream.iter_text())
    resumed = [json.loads(line[len("data: "):]) for line in again.splitlines() if line.startswith("data: ")]
    assert [e["seq"] for e in resumed[:-1]] == seqs[-1:] and resumed[-1]["state"] == "succeeded"


def test_predict_answers_with_the_saved_models_classes(service, fitted):
    client, data, _ = service
    run_id = client.get(f"/jobs/{fitted}", headers=AUTH).json()["result"]["run_id"]
    images = sorted(p for p in data.rglob("*.png"))[:3]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    answer = client.post(f"/models/{run_id}/predict", headers=AUTH, files=files)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    import automl

    expected = automl.load_run(run_id, store=service[2] / "store").predict(images)
    assert [p["class"] for p in predictions] == [e["class"] for e in expected]
    for p, e in zip(predictions, expected):
        assert p["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)
    not_an_image = [("files", ("x.png", b"not an image", "image/png"))]
    bad = client.post(f"/models/{run_id}/predict", headers=AUTH, files=not_an_image)
    assert bad.status_code == 422 and "x.png" in bad.json()["error"]["message"]
    assert client.post("/models/nope/predict", headers=AUTH, files=files).status_code == 404


@pytest.mark.parametrize("recipe, status, words", [
    ({"data": "sha256-" + "0" * 32}, 422, "sha256-"),
    ({"data": "/etc"}, 422, "data"),
    ({"data": None}, 422, "data"),
    ({"data": "DATASET", "store": "/tmp/x"}, 422, "store: set by the server"),
    ({"data": "DATASET", "storage": "sqlite:///x.db"}, 422, "storage: set by the server"),
    ({"data": "DATASET", "trails": 3}, 422, "trails"),
    ({"data": "DATASET", "cv": 1}, 422, "cv"),
    ({"data": "DATASET", "extractors": ["nope"]}, 422, "nope"),
    ({"data": "DATASET", "weights": "/etc/passwd"}, 422, "outside the folders this server reads"),
    # The CLI's flag cases (tests/test_bad_inputs.py), as recipe keys.
    ({"data": "DATASET", "heads": ["svm"]}, 422, "svm"),
    ({"data": "DATASET", "metric": "auc"}, 422, "roc-auc"),
    ({"data": "DATASET", "augment": "nope"}, 422, "nope"),
    ({"data": "DATASET", "augment": {"type": "conventional", "params": {"nope": 1}}}, 422, "nope"),
    ({"data": "DATASET", "augment": ["conventional", "dcgan"]}, 422, "augment: fit takes one augmentation variant"),
    ({"data": "DATASET", "trials": 0}, 422, "trials"),
    ({"data": "DATASET", "image_size": 32}, 422, "image_size"),
    ({"data": "DATASET", "precision": "half"}, 422, "precision"),
    ({"data": "DATASET", "test_fraction": 1.5}, 422, "test_fraction"),
    ({"data": "DATASET", "storage": "foo://bar"}, 422, "storage: set by the server"),
    ({"data": "DATASET", "workers": 4}, 422, "workers: set by the server"),
])
def test_bad_recipes_are_refused_with_the_key_named(service, dataset_id, recipe, status, words):
    client, _, root = service
    body = {k: (dataset_id if v == "DATASET" else v) for k, v in recipe.items()}
    before = sorted(os.listdir(root / "store" / "jobs")) if (root / "store" / "jobs").exists() else []
    answer = client.post("/jobs", headers=AUTH, json={"kind": "fit", "recipe": body})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]["message"]
    after = sorted(os.listdir(root / "store" / "jobs")) if (root / "store" / "jobs").exists() else []
    assert after == before  # nothing created for a refused request


def test_an_embed_job_on_one_queue_leaves_a_fit_on_another_nothing_to_embed(service):
    client, _, root = service
    folder = client.post("/datasets/folder", headers=AUTH, json={"path": str(root / "allowed" / "registered")})
    keys = {k: SMALL[k] for k in ("extractors", "weights", "image_size", "precision")}
    embed = client.post("/jobs", headers=AUTH, json={"kind": "embed", "queue": "gpu",
                                                     "recipe": {"data": folder.json()["id"], **keys}}).json()
    assert embed["state"] == "succeeded" and embed["queue"] == "gpu", embed
    assert embed["result"]["embeddings"][0]["computed"] == 8
    cache = root / "store" / "embeddings"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    fit = client.post("/jobs", headers=AUTH, json={"kind": "fit", "queue": "cpu",
                                                   "recipe": {"data": folder.json()["id"], **SMALL}}).json()
    assert fit["state"] == "succeeded", fit["error"]
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == before  # nothing embedded


def test_a_comparison_without_variants_is_refused(service, dataset_id):
    answer = service[0].post("/jobs", headers=AUTH, json={"kind": "compare", "recipe": {"data": dataset_id}})
    assert answer.status_code == 422 and "at least one augmentation variant" in answer.json()["error"]["message"]


# Every bad-data case of the CLI's corpus, uploaded: refused at the upload, or at the job's submission
# when it depends on the recipe (folds, the held-out split), never by a job that fails later.
DATA_CASES = [c for c in bad_inputs.CASES if c.id.startswith(("data-", "npz-", "cv-larger"))
              and c.id not in ("data-missing",  # over HTTP: an unknown dataset id (test_bad_recipes...)
                               "data-bad-file-named-not-utf8")]  # a zip entry's name is always text
HTTP_WORDS = {  # where the service's words differ from the CLI's
    "data-empty-folder": ("empty.zip holds no images",),
    "data-class-without-images": ("entry 'train/c/notes.txt' is not an image",),  # uploads hold images only
    "data-file-not-npz": ("'d.txt'", ".npz"),
    "data-too-small-to-split": ("test_fraction:", "cannot be held out", "'a': 1"),
    "cv-larger-than-a-class": ("cv: 5-fold", "smallest class has 4 (class 'a')"),
    "cv-larger-than-one-class": ("cv: 4-fold", "smallest class has 3 (class 'b')"),
}


@pytest.mark.parametrize("case", DATA_CASES, ids=[c.id for c in DATA_CASES])
def test_every_bad_dataset_of_the_cli_is_refused_over_http(service, case, tmp_path, monkeypatch):
    client, _, root = service
    args = [str(a) for a in case.make(tmp_path, monkeypatch)]
    path, extra = Path(args[1]), args[2:]
    name = path.name + (".zip" if path.is_dir() else "")
    body = zipped(path) if path.is_dir() else path.read_bytes()
    datasets, jobs = root / "store" / "datasets", root / "store" / "jobs"
    before = (sorted(os.listdir(datasets)), sorted(os.listdir(jobs)) if jobs.exists() else [])
    answer = client.post("/datasets", headers=AUTH, files={"file": (name, body, "application/octet-stream")})
    if answer.status_code == 201:
        cv = [int(v) for flag, v in zip(extra, extra[1:]) if flag == "--cv"][-1]  # the case's own, after FAST's
        recipe = {"data": answer.json()["id"], **SMALL, "cv": cv}
        answer = client.post("/jobs", headers=AUTH, json={"kind": "fit", "recipe": recipe})
        datasets_after = [d for d in sorted(os.listdir(datasets)) if d != recipe["data"]]
    else:
        datasets_after = sorted(os.listdir(datasets))
    assert answer.status_code in (415, 422), answer.text
    message = answer.json()["error"]["message"]
    words = HTTP_WORDS.get(case.id) or [w.format(tmp=tmp_path, store="").replace(str(path), name) for w in case.names
                                        if not w.startswith("--")]  # no CLI flags over HTTP
    for word in words:
        assert word in message, (word, message)
    assert str(tmp_path) not in message and "--skip-bad" not in message  # the client's names, the API's words
    assert (datasets_after, sorted(os.listdir(jobs)) if jobs.exists() else []) == (before[0], before[1])


def test_bad_requests_get_their_status(service, dataset_id, tmp_path):
    client, _, root = service
    assert client.post("/jobs", headers=AUTH, json={"kind": "train", "recipe": {"data": dataset_id}}).status_code == 422
    malformed = client.post("/jobs", headers={**AUTH, "content-type": "application/json"}, content=b"{not json")
    assert malformed.status_code == 422 and malformed.json()["error"]["type"] == "RequestError"
    text = client.post("/datasets", headers=AUTH, files={"file": ("notes.txt", b"hello", "text/plain")})
    assert text.status_code == 415 and "notes.txt" in text.json()["error"]["message"]
    big = client.post("/datasets", headers=AUTH, files={"file": ("big.zip", b"0" * (6 * 2**20), "application/zip")})
    assert big.status_code == 413 and big.json()["error"]["type"] == "TooLargeError"
    slip = io.BytesIO()
    with zipfile.ZipFile(slip, "w") as z:
        z.writestr("../evil/a.png", b"x")
    answer = client.post("/datasets", headers=AUTH, files={"file": ("slip.zip", slip.getvalue(), "application/zip")})
    assert answer.status_code == 422 and "../evil/a.png" in answer.json()["error"]["message"]
    leftovers = [p.name for p in (root / "store" / "datasets").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert client.get("/jobs/20260101T000000-00000000", headers=AUTH).status_code == 404
    assert client.get("/jobs/../../etc", headers=AUTH).status_code == 404
    assert client.get("/datasets/sha256-nope", headers=AUTH).status_code == 404
    assert client.get("/comparisons/nope", headers=AUTH).status_code == 404
    assert client.get("/jobs?state=nope", headers=AUTH).status_code == 422


def test_cancel_and_retry_follow_the_jobs_state(service, fitted):
    client, _, _ = service
    finished = client.delete(f"/jobs/{fitted}", headers=AUTH)
    assert finished.status_code == 409 and "already succeeded" in finished.json()["error"]["message"]
    assert client.post(f"/jobs/{fitted}/retry", headers=AUTH).status_code == 409


def test_a_queued_job_cancelled_never_runs_and_a_dead_workers_job_is_taken_back(service, dataset_id):
    from automl.service.requests import validate_recipe
    from automl.service.worker import run_job
    from automl.store import Store

    _, _, root = service
    store = Store(root / "store")
    jobs = Jobs(store.jobs_dir)
    request = validate_recipe(store, {"data": dataset_id, **SMALL})
    job = jobs.create("fit", request)
    assert jobs.request_cancel(job["id"])["state"] == "cancelled"
    assert run_job(str(store.root), job["id"]) is None  # a worker that gets it later leaves it alone

    dead = WorkerInfo(host=socket.gethostname(), pid=2**22 + 7, id="gone")
    job = jobs.create("fit", request)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert jobs.claim(job["id"], dead)["attempts"] == attempt
        assert jobs.reap() == [(job["id"], "queued" if attempt < MAX_ATTEMPTS else "failed")]
    final = jobs.get(job["id"])
    assert final["state"] == "failed" and final["error"]["type"] == "WorkerLost"
    assert "died" in final["error"]["message"]
    # The server's storage URL is in the job's request, its password is not in any answer.
    secret = jobs.create("fit", {**request, "recipe": {**request["recipe"], "storage": "postgresql://u:s3cr3t@db/x"}})
    answer = service[0].get(f"/jobs/{secret['id']}", headers=AUTH).json()
    assert answer["request"]["recipe"]["storage"] == "postgresql://u:***@db/x"
    assert "s3cr3t" not in json.dumps(service[0].get("/jobs", headers=AUTH).json())
    jobs.request_cancel(secret["id"])
    # A live but silent worker is taken back once its heartbeat is stale.
    job = jobs.create("fit", request)
    alive = WorkerInfo(host="elsewhere", pid=os.getpid(), id="slow")
    jobs.claim(job["id"], alive)
    assert jobs.reap() == []
    assert jobs.reap(stale_s=-1) == [(job["id"], "queued")]
    assert not jobs.beat(job["id"], alive)  # the old holder's heartbeat no longer counts


def test_a_pretrain_job_saves_an_extractor_a_fit_names(service, tmp_path):
    from conftest import class_folders

    client, _, root = service
    data = class_folders(tmp_path / "pre" / "train", {"a": 8, "b": 8}, size=(40, 40), seed=1).parent
    class_folders(data / "test", {"a": 2, "b": 2}, size=(40, 40), seed=2)
    dataset = client.post("/datasets", headers=AUTH, files={"file": ("pre.zip", zipped(data), "application/zip")})
    assert dataset.status_code == 201, dataset.text
    options = {"data": dataset.json()["id"], "extractor": "inception-v3", "weights": "none", "image_size": 75,
               "epochs": 1, "name": "tiny"}
    for bad, words in (({"epochs": 0}, "epochs"), ({"extractor": "nope"}, "nope"), ({"store": "/x"}, "store"),
                       ({"exclude": ["sha256-" + "1" * 32]}, "exclude[0]"), ({"weights": "/etc/passwd"}, "outside"),
                       ({"augment": {"type": "nope"}}, "unknown augmenter"),
                       ({"augment": {"type": "folder", "params": {"path": "/etc"}}}, "augment.params.path")):
        answer = client.post("/jobs", headers=AUTH, json={"kind": "pretrain", "recipe": {**options, **bad}})
        assert answer.status_code == 422 and words in answer.json()["error"]["message"], answer.text
    synthetic = {"type": "test-shift", "ratio": 0.5, "classes": "all"}  # synthetic pretraining, over HTTP too
    job = client.post("/jobs", headers=AUTH, json={"kind": "pretrain", "recipe": {**options, "augment": synthetic}})
    job = job.json()
    assert job["state"] == "succeeded", job["error"]
    assert job["result"]["extractor"] == "tiny" and (root / "store" / "extractors" / "tiny.keras").is_file()
    assert job["result"]["record"]["synthetic"]["augmenter"] == "test-shift"


def test_the_event_log_numbers_and_reads_from_its_end(tmp_path):
    jobs = Jobs(tmp_path / "jobs")
    job = jobs.create("fit", {"recipe": {}})
    long = jobs.add_event(job["id"], {"kind": "note", "desc": "x" * 20_000})  # longer than one tail block
    assert long["seq"] == 2 and jobs.add_event(job["id"], {"kind": "note"})["seq"] == 3
    read, offset = jobs.read_events(job["id"])
    assert [e["seq"] for e in read] == [1, 2, 3]
    assert jobs.read_events(job["id"], offset) == ([], offset)  # a follower reads each event once
    jobs.add_event(job["id"], {"kind": "note"})
    assert [e["seq"] for e in jobs.read_events(job["id"], offset)[0]] == [4]
    assert [e["seq"] for e in jobs.events(job["id"], after=2)] == [3, 4]
