"""Model bundles load no code: every head round-trips exactly through model.json + model.npz, a bundle
naming any other type is refused, a planted pickle is never opened (in the store or outside it), and
runs are found by id in the store or, with --run-dir, by an explicit folder."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import automl
from automl.errors import StoreError
from automl.evaluate import evaluation_report
from automl.heads import HEADS, get_head
from automl.runs import BUNDLE_FILES, BestPipeline, ModelBundle, RunRecord
from conftest import run_cli, write_image

FAST = {"ffnn": dict(hidden_layers=(8, 4), max_epochs=5, patience=2)}
RUN_ID = "250101-120000-abcd"


def _fit(name: str, **params):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = np.repeat([0, 1, 2], 20)
    X[:, 0] += y  # learnable, so the heads' probabilities are not flat
    head = get_head(name)(**{**FAST.get(name, {}), **params}).fit(X, y)
    return head, rng.normal(size=(25, 5))


def _bundle(head) -> ModelBundle:
    return ModelBundle({"extractor": "inception-v3"}, "none", 0, head.name, head, ["a", "b", "c"], automl.__version__,
                       source="inception-v3")


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in model.json")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_round_trips_exactly(name, tmp_path):
    head, X = _fit(name)
    _bundle(head).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(BUNDLE_FILES)
    record = _strict_json((tmp_path / "model.json").read_text())
    assert record["head_name"] == name and record["head"]["object"].endswith(type(head).__qualname__)
    with zipfile.ZipFile(tmp_path / "model.npz") as z:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    np.load(tmp_path / "model.npz", allow_pickle=False)  # no member needs pickle

    loaded = ModelBundle.load(tmp_path)
    assert type(loaded.head) is type(head) and loaded.head.get_params() == head.get_params()
    assert np.array_equal(loaded.head.predict_proba(X), head.predict_proba(X))  # bit for bit, not approx
    assert np.array_equal(loaded.head.predict(X), head.predict(X))
    assert (loaded.classes, loaded.head_name, loaded.seed, loaded.source) == (["a", "b", "c"], name, 0, "inception-v3")


def test_one_vs_rest_logistic_regression_round_trips(tmp_path):
    head, X = _fit("logreg-elasticnet", multi_class="ovr")
    _bundle(head).save(tmp_path)
    assert np.array_equal(ModelBundle.load(tmp_path).head.predict_proba(X), head.predict_proba(X))


def test_saving_a_type_the_head_does_not_list_fails(tmp_path):
    head, _ = _fit("logreg-elasticnet")
    head.extra_ = {"fn": np.sum}
    with pytest.raises(ValueError, match=r"head\.extra_\.fn: a .* is not a type a model bundle may hold"):
        _bundle(head).save(tmp_path)


def _retype(tree, old_suffix: str, new: str) -> None:
    """Rename, in place, every object node whose type name ends with ``old_suffix``."""
    if isinstance(tree, dict):
        if isinstance(tree.get("object"), str) and tree["object"].endswith(old_suffix):
            tree["object"] = new
        for v in tree.values():
            _retype(v, old_suffix, new)
    elif isinstance(tree, list):
        for v in tree:
            _retype(v, old_suffix, new)


def _scaler_state(record) -> dict:
    return record["head"]["state"]["dict"]["scaler_"]["state"]["dict"]


CRAFTED = {
    "an importable callable": (lambda r: _retype(r, "StandardScaler", "os.system"), "type 'os.system' is not one"),
    "builtins.eval": (lambda r: _retype(r, "StandardScaler", "builtins.eval"), "type 'builtins.eval' is not one"),
    # SVC is in svc-rbf's list, not logreg-elasticnet's: each head's bundle holds that head's types only
    "another head's type": (lambda r: _retype(r, "StandardScaler", "sklearn.svm._classes.SVC"),
                            "type 'sklearn.svm._classes.SVC' is not one"),
    "a dunder attribute": (lambda r: _scaler_state(r).update(__class__="x"), "'__class__' is not a plain attribute"),
    "an unknown tag": (lambda r: _scaler_state(r).update(mean_={"pickle": "a0"}), "unknown form"),
    "a bare NaN": (lambda r: _scaler_state(r).update(with_mean=float("nan")), "NaN is not strict JSON"),
    "an unknown head": (lambda r: r.update(head_name="evil"), "unknown head 'evil'"),
    "another head's class as the head": (lambda r: r.update(head_name="svc-rbf"), "SvcRbfHead"),
    "a newer format": (lambda r: r.update(bundle_version=2), "bundle_version 2"),
    "a missing array": (lambda r: _scaler_state(r).update(mean_={"array": "a999"}), "'a999' is not in"),
    # listed types in the wrong roles: caught by one probe prediction, not midway through predict
    "a listed type in another role": (lambda r: _retype(r, "StandardScaler", "sklearn.linear_model._logistic."
                                                        "LogisticRegression"), "the rebuilt head cannot predict"),
    "a wrong width": (lambda r: r["head"]["state"]["dict"].update(n_features_in_=10**9), "n_features_in_ is"),
}


@pytest.mark.parametrize("craft", CRAFTED, ids=list(CRAFTED))
def test_a_crafted_bundle_is_refused(craft, tmp_path):
    change, message = CRAFTED[craft]
    head, _ = _fit("logreg-elasticnet")
    _bundle(head).save(tmp_path)
    record = json.loads((tmp_path / "model.json").read_text())
    change(record)
    (tmp_path / "model.json").write_text(json.dumps(record))
    with pytest.raises(StoreError, match="model.json") as err:
        ModelBundle.load(tmp_path)
    assert message in str(err.value) and "automl run" in str(err.value)


class _Payload:
    """Unpickling this creates ``marker``: what a hostile model.joblib would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _run_folder(folder: Path, marker: Path, *, pickle_in_npz: bool = False) -> Path:
    """A run folder as automl 0.1 saved it (model.joblib), its pickle replaced by a payload."""
    folder.mkdir(parents=True)
    record = RunRecord(id=folder.name, created="2025-01-01T12:00:00+0000", data="data", layout="class-folders",
                       classes=["a", "b", "c"], counts={}, split="given", metric="accuracy", cv=3, seed=0,
                       best=BestPipeline("inception-v3 + logreg-elasticnet", "inception-v3", "logreg-elasticnet",
                                         {}, 0.5, 0), study={"name": "s", "storage": "sqlite:///x"}, test={})
    (folder / "run.json").write_text(json.dumps(record.to_dict()))
    report = evaluation_report(np.array([0, 1, 2]), np.eye(3), ["a", "b", "c"])
    (folder / "metrics.json").write_text(json.dumps(report))
    (folder / "leaderboard.json").write_text("[]")
    if pickle_in_npz:  # a current-format bundle whose arrays file hides a pickle
        _bundle(_fit("logreg-elasticnet")[0]).save(folder)
        with open(folder / "model.npz", "wb") as f:
            np.savez(f, a0=np.array([_Payload(marker)], dtype=object))
    else:
        (folder / "model.joblib").write_bytes(pickle.dumps(_Payload(marker)))
    return folder


def test_the_payload_is_live(tmp_path):
    """The planted pickle really runs code when unpickled, so the tests below can fail."""
    import joblib

    marker = tmp_path / "marker"
    folder = _run_folder(tmp_path / "run", marker)
    joblib.load(folder / "model.joblib")
    assert marker.exists()


@pytest.mark.parametrize("where", ["store", "outside"])
def test_a_planted_pickle_is_never_loaded(where, tmp_path, capsys):
    marker = tmp_path / "marker"
    store = tmp_path / "store"
    folder = _run_folder(store / "runs" / RUN_ID if where == "store" else tmp_path / "x" / RUN_ID, marker)
    image = write_image(tmp_path / "img.png")
    attempts = ([[RUN_ID], [folder], [folder, "--run-dir"]] if where == "store" else [[folder, "--run-dir"]])
    for args in attempts:
        code, _, err = run_cli(capsys, "predict", *args, image, "--store", store, "--no-progress")
        assert code == 2 and "automl 0.1" in err and "runs code" in err
        assert f"automl run {folder / 'recipe.yaml'}" in err  # the fix, with the path to give it
    if where == "outside":  # without --run-dir, a folder outside the store is not even looked at
        code, _, err = run_cli(capsys, "predict", folder, image, "--store", store, "--no-progress")
        assert code == 2 and f"run folder {folder} is outside the store's runs folder" in err and "--run-dir" in err
        with pytest.raises(StoreError, match="outside the store"):
            automl.load_run(folder, store=store)
    with pytest.raises(StoreError, match="automl 0.1"):
        automl.load_run(folder, store=store, run_dir=True).predict([image])
    assert not marker.exists()


def test_a_pickle_inside_the_arrays_is_never_loaded(tmp_path, capsys):
    marker = tmp_path / "marker"
    store = tmp_path / "store"
    _run_folder(store / "runs" / RUN_ID, marker, pickle_in_npz=True)
    code, _, err = run_cli(capsys, "predict", RUN_ID, write_image(tmp_path / "i.png"), "--store", store,
                           "--no-progress")
    assert code == 2 and "model.npz" in err and "allow_pickle=False" in err
    assert not marker.exists()


def test_a_compressed_arrays_member_is_refused(tmp_path):
    head, _ = _fit("logreg-elasticnet")
    _bundle(head).save(tmp_path)
    with np.load(tmp_path / "model.npz") as npz:
        arrays = dict(npz)
    np.savez_compressed(tmp_path / "model.npz", **arrays)
    with pytest.raises(StoreError, match="stored uncompressed"):
        ModelBundle.load(tmp_path)


def test_runs_are_found_in_the_store_or_with_run_dir(tmp_path, capsys):
    store = tmp_path / "store"
    folder = _run_folder(store / "runs" / RUN_ID, tmp_path / "marker")
    assert automl.load_run(RUN_ID[:9], store=store).folder == folder
    assert automl.load_run(folder, store=store).folder == folder  # a path inside the store's runs/
    code, out, _ = run_cli(capsys, "show", folder, "--store", store)
    assert code == 0 and RUN_ID in out

    copy = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(folder, copy)
    code, _, err = run_cli(capsys, "show", copy, "--store", store)
    assert code == 2 and f"run folder {copy} is outside the store's runs folder {store / 'runs'}" in err
    assert "--run-dir" in err
    code, out, _ = run_cli(capsys, "show", copy, "--run-dir", "--store", store)
    assert code == 0 and RUN_ID in out
    # A runs/ folder of another store: the error names that store.
    other = tmp_path / "other" / "runs" / RUN_ID
    shutil.copytree(folder, other)
    code, _, err = run_cli(capsys, "show", other, "--store", store)
    assert code == 2 and f"--store {other.parent.parent} {RUN_ID}" in err
    code, _, err = run_cli(capsys, "show", tmp_path / "elsewhere", "--run-dir", "--store", store)
    assert code == 2 and "no run.json" in err
    assert not (tmp_path / "marker").exists()  # show reads the record, never the 0.1 pickle


def test_an_extractor_key_of_unknown_fields_is_refused_by_name():
    bundle = _bundle(_fit("logreg-elasticnet")[0])  # its key lacks every field but the extractor's name
    with pytest.raises(StoreError, match="extractor key .* is not one this automl reads"):
        bundle.extractor_key()
