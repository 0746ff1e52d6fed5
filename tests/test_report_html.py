"""The HTML reports (automl.report.pages): every section of a run report and a comparison report,
self-contained (no URL leaves the file), and `automl report`. Fast: run folders are assembled here from
tiny images, seeded predictions and an in-memory Optuna study, the way `fit` writes them; one small
real fit checks that `fit` writes its report and that a failing report never costs the run."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest

from automl._files import write_json
from automl.comparison import summarize
from automl.data import load_dataset, split_test
from automl.evaluate import METRIC_TABLE, evaluation_report
from automl.report.evidence import IMPORTANCE_MIN_TRIALS, bootstrap_intervals, weighted_metrics
from automl.report.pages import run_page, write_comparison_report, write_run_report
from automl.runs import BestPipeline, RunRecord
from conftest import ROOT, class_folders, run_cli, write_image

RUN_SECTIONS = ("dataset", "split", "search", "best", "test", "mistakes", "reproduce")
CREATED = datetime.now().replace(microsecond=0)


# --- assembling a run folder as fit writes it -------------------------------------------------------


def _trials(n: int, seed: int = 0) -> list:
    """``n`` trials over two extractors x two heads, the first one a reference setup, one pruned."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        head = ("logreg-elasticnet", "svc-rbf")[i % 2]
        extractor = ("xception", "inception-v3")[(i // 2) % 2]
        params = {"extractor": extractor, "head": head, f"{head}.C": float(10 ** rng.uniform(-2, 2))}
        dists = {"extractor": CategoricalDistribution(["xception", "inception-v3"]),
                 "head": CategoricalDistribution(["logreg-elasticnet", "svc-rbf"]),
                 f"{head}.C": FloatDistribution(1e-3, 1e3, log=True)}
        state = optuna.trial.TrialState.PRUNED if i == n - 1 and n > 3 else optuna.trial.TrialState.COMPLETE
        start = CREATED - timedelta(seconds=10 * (n - i) + 5)
        attrs = {"reference": "study setup: brain MRI (Xception + svc-rbf)"} if i == 0 else {}
        out.append(optuna.trial.FrozenTrial(
            number=i, state=state, value=float(rng.uniform(0.4, 0.9)) if state.name == "COMPLETE" else None,
            datetime_start=start, datetime_complete=start + timedelta(seconds=float(rng.uniform(1, 8))),
            params=params, distributions=dists, user_attrs={**attrs, "fold_scores": [0.5, 0.6]}, system_attrs={},
            intermediate_values={}, trial_id=i))
    return out


def _study(trials: list, storage: str | None = None, name: str = "fake-study"):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", storage=storage, study_name=name)
    study.add_trials(trials)
    return study


def make_run(root: Path, counts: dict[str, tuple[int, int]], *, augment: bool = False, trials: int = 12,
             runs_dir: Path | None = None, baseline: str | None = None, run_id: str = "260101-000000-abcd",
             storage: str | None = None, seed: int = 0):
    """A run folder in ``root/store/runs`` (or ``runs_dir``) as `fit` writes it, over a tiny
    split-folders dataset (``counts``: class -> (train, test) images; a test count of 0 leaves the
    class without test images). Returns (folder, dataset, study)."""
    data = root / "data"
    if not data.exists():
        for ci, (name, (n_train, n_test)) in enumerate(counts.items()):
            for i in range(n_train):
                write_image(data / "train" / name / f"tr_{i:02d}.png", size=(24, 20), seed=100 * ci + i)
            for i in range(n_test):
                write_image(data / "test" / name / f"te_{i:02d}.png", size=(24, 20), seed=5000 + 100 * ci + i)
    dataset = split_test(load_dataset(data))
    classes = dataset.classes
    test = dataset.split("test")
    rng = np.random.default_rng(seed)
    y = np.array([it.label for it in test])
    logits = rng.normal(0, 1, (len(y), len(classes)))
    logits[np.arange(len(y)), y] += 1.5
    logits[:2][np.arange(2), (y[:2] + 1) % len(classes)] += 4  # two confident mistakes
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = evaluation_report(y, proba, classes)
    study = _study(_trials(trials, seed), storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    board = [{"rank": r, "trial": t.number, "cv": t.value, "pipeline": f"{t.params['extractor']} + {t.params['head']}",
              "reference": t.user_attrs.get("reference"), "fold_scores": [0.5, 0.6]}
             for r, t in enumerate(sorted(done, key=lambda t: -t.value), 1)]
    best = max(done, key=lambda t: t.value)
    aug = None
    if augment:
        aug = _synthetic(root / "store" / "generated" / "test-shift-0123", dataset)
    record = RunRecord(
        id=run_id, created=CREATED.astimezone().strftime("%Y-%m-%dT%H:%M:%S%z"), name="fake", data=str(data),
        layout=dataset.layout, classes=classes, counts=dataset.counts(), split=dataset.split_note, metric="macro-f1",
        cv=3, seed=0, augment=aug, baseline_run=baseline,
        train_images={"real": len(dataset.split("train")), "synthetic": 4 if augment else 0,
                      "fitted_on": len(dataset.split("train")) + (4 if augment else 0)},
        best=BestPipeline(board[0]["pipeline"] + " (C=1)", best.params["extractor"], best.params["head"],
                          {"C": 1.0}, best.value, best.number, [0.5, 0.6]),
        references=[r for r in board if r["reference"]], trials={"complete": len(done), "pruned": trials - len(done)},
        study={"name": study.study_name, "storage": storage or "sqlite:///nowhere/optuna.db"},
        extractor_key={"extractor": "xception", "image_size": 71, "weights": "random:seed=0"},
        test={k: v for k, v in report.items() if k not in ("per_class", "confusion_matrix")},
        versions={"python": "3.11", "automl": "0.1.0", "numpy": np.__version__, "keras": None})
    folder = (runs_dir or root / "store" / "runs") / run_id
    folder.mkdir(parents=True)
    write_json(folder / "run.json", record.to_dict())
    write_json(folder / "metrics.json", report)
    write_json(folder / "leaderboard.json", board)
    write_json(folder / "split.json", dataset.split_record(), indent=1)
    (folder / "recipe.yaml").write_text(f"data: {data}\nextractors: [xception]\ntrials: {trials}\n")
    with open(folder / "predictions.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "fingerprint", "true", "predicted"] + [f"p({c})" for c in classes])
        for it, p in zip(test, proba):
            out.writerow([it.path, it.fingerprint, classes[it.label], classes[int(p.argmax())]]
                         + [f"{v:.6f}" for v in p])
    return folder, dataset, study


def _synthetic(folder: Path, dataset) -> dict:
    """Two synthetic images per class (PNG + record naming its real source), as automl.augment writes them."""
    from automl.data import fingerprint_bytes

    per_class = {}
    for label, name in enumerate(dataset.classes):
        sources = [it for it in dataset.split("train") if it.label == label][:2]
        for k, src in enumerate(sources):
            png = write_image(folder / str(label) / f"{k:06d}.png", size=(24, 20), seed=9000 + 10 * label + k)
            write_json(folder / str(label) / f"{k:06d}.json", {
                "file": png.name, "index": k, "class": name, "label": label, "augmenter": "test-shift",
                "params": {"noise": 8.0}, "seed": 0, "fingerprint": fingerprint_bytes(png.read_bytes()),
                "width": 24, "height": 20, "sources": [{"path": src.path, "fingerprint": src.fingerprint}]})
        per_class[name] = len(sources)
    return {"variant": "test-shift x1 all", "augmenter": "test-shift", "params": {"noise": 8.0},
            "classes": list(per_class), "ratio": 1.0, "mix": "real+synthetic", "real_fraction": 1.0,
            "real_per_class": per_class, "synthetic_per_class": per_class, "generated": 4, "reused": 0,
            "fit_seconds": 0.0, "generate_seconds": 0.1, "folder": str(folder), "generator_folder": str(folder),
            "seed": 0}


def assert_self_contained(page: str) -> None:
    """Nothing on the page points outside the file: every image a data: URI, every link an anchor or
    a relative path, no script, no style sheet or font from elsewhere, no URL at all."""
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"https?:", page, re.I), re.search(r".{60}https?:.{60}", page, re.I)
    assert not re.search(r"<(script|link|iframe|object|embed)\b|@import|url\(|srcset", page, re.I)
    for attr, value in re.findall(r"\b(src|href)\s*=\s*['\"]([^'\"]*)['\"]", page, re.I):
        assert not value.startswith("//") and "://" not in value, (attr, value)
        if attr.lower() == "src":
            assert value.startswith("data:image/png;base64,"), value[:40]
        else:
            assert value.startswith("#") or not re.match(r"^[a-z][a-z0-9+.-]*:", value, re.I), value


def _sections(page: str) -> list[str]:
    return re.findall(r"<section id='([a-z]+)'>", page)


def _images(page: str) -> list[str]:
    return re.findall(r"<img src='(data:image/png;base64,[^']+)'", page)


# --- run reports --------------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [{"benign": (8, 4), "malignant": (6, 3)},
                                    {"cat": (6, 3), "dog": (6, 3), "fox": (5, 2)}], ids=["binary", "multiclass"])
@pytest.mark.parametrize("augment", [False, True], ids=["original", "augmented"])
def test_every_section_of_a_run_report_renders(tmp_path, counts, augment):
    folder, dataset, study = make_run(tmp_path, counts, augment=augment)
    path = write_run_report(folder, dataset=dataset, study=study)
    page = path.read_text()
    assert path == folder / "report.html"
    assert_self_contained(page)
    assert _sections(page) == list(RUN_SECTIONS[:-1]) + (["augmentation"] if augment else []) + ["reproduce"]
    # dataset: counts per split and class, sizes, one example row per class
    assert "Images per split and class" in page and "smallest 24x20" in page
    assert all(f"training image of class {c}" in page for c in counts)
    # search: the leaderboard marks the reference setup; history, trial times, importances (12 trials)
    assert "<span class='badge'>reference</span> study setup: brain MRI" in page
    assert "reference setups as diamonds" in page and "seconds per trial" in page
    assert "Parameter importances: extractor and head (all trials)" in page
    # best pipeline and test metrics with bootstrap intervals
    assert "The head&#x27;s parameters" in page and "95 % interval" in page
    assert len(re.findall(r"<td>\[\d\.\d{3}, \d\.\d{3}\]</td>", page)) == 6  # every headline metric
    assert "Confusion matrix of the test split" in page and "reliability curve" in page
    assert "Per class" in page and all(f"<td>{c}</td>" in page for c in counts)
    # the worst mistakes as thumbnails, then how to reproduce it
    assert "were misclassified" in page and "test image te_" in page
    assert f"automl run {folder / 'recipe.yaml'}" in page and "Library versions of the fit" in page
    if augment:
        assert "Real and synthetic images per class" in page and page.count("class='thumb synthetic'") == 2 * len(counts)
        assert page.count("alt='real source image tr_") == 2 * len(counts) and "test-shift x1 all" in page
    # four plots (search, importances, confusion matrices, curves), the examples, the mistakes, the grid
    examples = sum(min(4, n) for n, _ in counts.values())
    assert len(_images(page)) == 4 + examples + page.count("alt='test image ") + (4 * len(counts) if augment else 0)


def test_a_class_without_test_images_and_an_undefined_auroc(tmp_path):
    folder, dataset, study = make_run(tmp_path, {"a": (6, 3), "b": (6, 3), "c": (5, 0)}, trials=4)
    page = run_page(folder, dataset=dataset, study=study)
    assert_self_contained(page)
    assert json.loads((folder / "metrics.json").read_text())["auroc"] is None  # NaN, written as null
    assert "n/a (undefined: no test image of class c)" in page
    assert "class c: no positive test image, so its ROC and precision-recall curves are undefined" in page
    assert "no test image of class c: its recall and AUROC are undefined" in page
    # the AUROC row has no interval; the others do
    assert len(re.findall(r"<td>\[\d\.\d{3}, \d\.\d{3}\]</td>", page)) == 5
    # 4 trials: too few for importances, and the page says so instead of drawing noise
    assert f"parameter importances need at least {IMPORTANCE_MIN_TRIALS} complete trials; this search has 3" in page
    assert _sections(page) == list(RUN_SECTIONS)


def test_automl_report_rereads_the_dataset_and_the_study(tmp_path, capsys):
    """`automl report` renders from the run folder alone: the dataset read again, the study reopened
    from its storage URL; trials a later fit added to the shared study are left out."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    folder, dataset, study = make_run(tmp_path, {"a": (6, 3), "b": (6, 3)}, storage=storage)
    later = _trials(14)[12:]  # started after the run was saved
    for t in later:
        t.datetime_start = CREATED + timedelta(minutes=5)
        t.datetime_complete = CREATED + timedelta(minutes=6)
        study.add_trial(t)
    code, out, err = run_cli(capsys, "report", folder.name, "--store", tmp_path / "store")
    assert code == 0, err
    assert out.strip() == f"wrote the run report {folder / 'report.html'}"
    page = (folder / "report.html").read_text()
    assert_self_contained(page)
    assert "CV F1 of 11 complete trials" in page  # the run's 12 trials (one pruned), not the later two
    assert "training image of class a" in page and "test image te_" in page

    out_file = tmp_path / "elsewhere" / "page.html"
    code, out, err = run_cli(capsys, "report", folder.name[:8], "--store", tmp_path / "store", "--out", out_file)
    assert code == 0 and out_file.is_file(), err
    code, out, err = run_cli(capsys, "report", folder.name, "--store", tmp_path / "store", "--out", tmp_path)
    assert code == 2 and f"--out {tmp_path} is a folder; give the page's file name" in err


def test_a_report_whose_dataset_and_study_are_gone_says_so_and_renders_the_rest(tmp_path):
    import shutil

    folder, _, _ = make_run(tmp_path, {"a": (6, 3), "b": (6, 3)})
    shutil.rmtree(tmp_path / "data")
    page = run_page(folder)  # the study's storage (sqlite:///nowhere/optuna.db) does not exist either
    assert_self_contained(page)
    assert "the study&#x27;s database nowhere/optuna.db is not there any more" in page
    assert "the dataset could not be read again (dataset not found" in page
    assert "(image not available)" in page  # the worst mistakes are named, without thumbnails
    assert _sections(page) == list(RUN_SECTIONS)


def test_bootstrap_metrics_are_the_metric_tables_on_the_identity_resample():
    rng = np.random.default_rng(3)
    for k, n, absent in ((2, 50, None), (4, 80, None), (3, 30, 2)):
        y = rng.integers(0, k, n)
        if absent is not None:
            y[y == absent] = 0
        proba = rng.dirichlet(np.ones(k), n)
        proba[:6] = np.round(proba[:6], 1)  # ties
        proba /= proba.sum(1, keepdims=True)
        expected = evaluation_report(y, proba, [str(i) for i in range(k)])
        got = weighted_metrics(np.ones((1, n)), y, proba)
        assert set(got) == {m.key for m in METRIC_TABLE}
        for key, value in got.items():
            assert value[0] == pytest.approx(expected[key], abs=1e-12, nan_ok=True), (k, key)
        intervals = bootstrap_intervals(y, proba, seed=0)
        assert intervals == bootstrap_intervals(y, proba, seed=0)  # seeded
        lo, hi = intervals["accuracy"]
        assert lo <= expected["accuracy"] <= hi and hi - lo < 0.5
        assert (intervals["auroc"] is None) == (absent is not None)


def test_import_automl_and_help_load_no_matplotlib():
    code = ("import sys\nimport automl, automl.report, automl.pipeline, automl.comparison\nfrom cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'matplotlib' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "report" in proc.stdout


# --- comparison reports -------------------------------------------------------------------------------


def make_comparison(root: Path, repeats: int = 3) -> Path:
    """A comparison folder as `automl compare` writes it, its runs' reports beside it."""
    store = root / "store"
    rng = np.random.default_rng(0)
    labels = ["original", "conventional x1 minority", "test-shift x1 minority"]
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    for s in range(repeats):
        for i, label in enumerate(labels):
            run_id = f"26010{s}-00000{i}-abcd"
            test = {m.key: float(np.clip(0.7 + 0.05 * i + rng.normal(0, 0.02), 0, 1)) for m in METRIC_TABLE}
            runs[label].append({"run": run_id, "test": test, "best": "xception + svc-rbf (C=1)"})
            (store / "runs" / run_id).mkdir(parents=True)
            (store / "runs" / run_id / "report.html").write_text("<!DOCTYPE html><html></html>")
            write_json(store / "runs" / run_id / "run.json", {"versions": {"numpy": np.__version__}})
    record = summarize(runs, labels, "f1_macro", seed=0)
    record.update({"data": "data/breast", "metric": "macro-f1", "repeats": repeats, "seeds": list(range(repeats)),
                   "seconds": 12.5, "recipe": {"data": "data/breast", "augment": [{"type": "conventional"}]}})
    folder = store / "comparisons" / "260102-000000-cdef"
    folder.mkdir(parents=True)
    write_json(folder / "comparison.json", record)
    return folder


def test_a_comparison_report_has_its_table_forest_plot_seeds_and_run_links(tmp_path):
    folder = make_comparison(tmp_path)
    page = write_comparison_report(folder).read_text()
    assert_self_contained(page)
    assert _sections(page) == ["results", "seeds", "runs", "reproduce"]
    assert "median [95 % bootstrap interval of the median]" in page
    assert "Forest plot of each variant&#x27;s paired difference from the original" in page
    assert page.count("verdict, ") == 0 or "verdict no significant difference" in page
    assert "3 repeats cannot reach p &lt; 0.05" in page  # the verdict says why it cannot be significant
    assert "Test F1 (macro) of each of 3 seeds per variant" in page
    assert len(_images(page)) == 2
    links = re.findall(r"<a href='([^']+)'>run ([^<]+)</a>", page)
    assert len(links) == 9 and all(href == f"../../runs/{run}/report.html" for href, run in links)
    assert all((folder / href).resolve().is_file() for href, _ in links)  # they lead to the runs' reports
    assert "automl compare --recipe compare.yaml" in page and "conventional" in page


def test_automl_report_takes_a_comparison_and_refuses_an_unknown_id(tmp_path, capsys):
    folder = make_comparison(tmp_path, repeats=2)
    code, out, err = run_cli(capsys, "report", folder.name[:10], "--store", tmp_path / "store")
    assert code == 0, err
    assert out.strip() == f"wrote the comparison report {folder / 'report.html'}"
    assert_self_contained((folder / "report.html").read_text())

    code, out, err = run_cli(capsys, "report", "nope-42", "--store", tmp_path / "store")
    assert code == 2 and not out
    assert err.startswith("error: no run or comparison 'nope-42' in the store ")
    assert "latest comparisons: 260102-000000-cdef" in err and "--store" in err
    code, _, err = run_cli(capsys, "report", "nope", "--store", tmp_path / "empty")
    assert code == 2 and "latest runs: none; latest comparisons: none" in err


# --- fit writes its report ----------------------------------------------------------------------------


def test_fit_writes_its_report_and_a_failing_report_never_costs_the_run(tmp_path, capsys, monkeypatch):
    data = class_folders(tmp_path / "data", {"yes": 8, "no": 8}, size=(24, 24))
    args = ("fit", data, "-e", "xception", "--heads", "logreg-elasticnet", "--weights", "none", "--image-size",
            "71", "--precision", "float32", "--trials", "2", "--cv", "2", "--store", tmp_path / "store",
            "--no-progress")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    run_dir, = (tmp_path / "store" / "runs").iterdir()
    assert f"report: {run_dir / 'report.html'}" in out.splitlines()
    assert_self_contained((run_dir / "report.html").read_text())

    import automl.report.pages

    def broken(*args, **kwargs):
        raise RuntimeError("no ink")

    monkeypatch.setattr(automl.report.pages, "write_run_report", broken)
    code, out, err = run_cli(capsys, *args, "--seed", "1")
    assert code == 0, err
    second, = [p for p in (tmp_path / "store" / "runs").iterdir() if p != run_dir]
    assert (second / "run.json").is_file() and not (second / "report.html").exists()
    assert (f"warning: run {second.name} is saved, but its HTML report failed (RuntimeError: no ink); "
            f"`automl report {second.name}` renders it again.") in err
    assert "report: " not in out


def test_the_service_serves_the_reports_as_html(tmp_path):
    pytest.importorskip("fastapi", reason="the service extra is part of the README's install")
    from fastapi.testclient import TestClient

    from automl.service.app import ServiceConfig, create_app

    folder, dataset, study = make_run(tmp_path, {"a": (6, 3), "b": (6, 3)}, trials=4, run_id="250101-000000-abcd")
    write_run_report(folder, dataset=dataset, study=study)
    comparison = make_comparison(tmp_path, repeats=2)
    write_comparison_report(comparison)
    config = ServiceConfig(store=tmp_path / "store", queue=f"sqlite:///{tmp_path / 'queue.db'}", token="t" * 32,
                           immediate=True)
    auth = {"Authorization": f"Bearer {'t' * 32}"}
    with TestClient(create_app(config)) as client:
        for base, page in ((f"/runs/{folder.name}", folder / "report.html"),
                           (f"/comparisons/{comparison.name}", comparison / "report.html")):
            # At the path that mirrors the store (listed), and among the files.
            assert client.get(base, headers=auth).json()["files"]["report.html"] == f"{base}/report.html"
            for path in (f"{base}/report.html", f"{base}/files/report.html"):
                answer = client.get(path, headers=auth)
                assert answer.status_code == 200 and answer.headers["content-type"] == "text/html; charset=utf-8"
                assert answer.content == page.read_bytes()
        # The comparison page's links to its runs' reports resolve on the server as on disk.
        base = f"http://testserver/comparisons/{comparison.name}/report.html"
        hrefs = re.findall(r"<a href='([^']+)'>run ", (comparison / "report.html").read_text())
        assert hrefs and all(client.get(urljoin(base, h), headers=auth).status_code == 200 for h in hrefs)
