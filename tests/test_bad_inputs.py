"""The bad-input corpus: every way a careless or hostile user was seen to break the CLI, each run
in-process through ``automl``'s own entry point. Every case asserts the exit code, that the message
names the file or field (and, where there is one, the fix), that nothing was embedded when the check
needs no embeddings, and that the store holds nothing half-written (no run folder, no temporary).

Plus the inputs that must work: a non-UTF-8 file name through a whole fit, GIFs, broken run records
beside good ones, and strict JSON in every file a run writes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from automl._files import json_text, write_json
from conftest import class_folders, run_cli, write_image
from test_files import dead_pid

FAST = ("-e", "inception-v3", "--heads", "logreg-elasticnet", "--weights", "none", "--image-size", "75",
        "--precision", "float32", "--trials", "2", "--cv", "2", "--no-progress")
NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name: not UTF-8, held by Python as a surrogate escape


@dataclass
class Case:
    """``make(tmp, monkeypatch)`` builds the inputs and returns the CLI arguments ({store} is the
    case's store folder); ``names`` must all appear in stderr ({tmp}, {store} filled in)."""

    id: str
    make: Callable
    code: int
    names: tuple
    store_used: bool = False  # the case's store existed before (so it may exist after)
    absent: tuple = field(default=())  # text that must not appear in stderr


def data(tmp: Path, counts=None, test=None) -> Path:
    """train/ and test/ class folders of tiny images (so no split is drawn and --cv 2 fits)."""
    root = tmp / "data"
    class_folders(root / "train", counts or {"a": 4, "b": 4})
    class_folders(root / "test", test or {"a": 2, "b": 2}, seed=7)
    return root


def npz(tmp: Path, **arrays) -> Path:
    path = tmp / "d.npz"
    np.savez(path, **arrays)
    return path


def images(n: int, shape=(8, 8), dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 255, (n, *shape)).astype(dtype)


def stamped_store(tmp: Path) -> Path:
    store = tmp / "store"
    store.mkdir()
    (store / "store.json").write_text('{"version": 1}')
    return store


def fit(*extra):
    return lambda tmp, mp: ["fit", data(tmp), *FAST, "--store", tmp / "store", *extra]


def with_store(prepare: Callable[[Path], None], *extra):
    """A fit on good data whose store ``prepare`` damaged first."""
    def make(tmp, mp):
        prepare(stamped_store(tmp))
        return ["fit", data(tmp), *FAST, "--store", tmp / "store", *extra]
    return make


def fit_on(build: Callable[[Path], Path], *extra):
    """A fit on the data ``build(tmp)`` makes."""
    return lambda tmp, mp: ["fit", build(tmp), *FAST, "--store", tmp / "store", *extra]


def recipe(text: str, command: str = "fit"):
    def make(tmp, mp):
        data(tmp)
        path = tmp / "recipe.yaml"
        path.write_text(text)
        return [command, path] if command != "fit" else ["fit", "--recipe", path, "--store", tmp / "store"]
    return make


def corrupt_sqlite(path: Path) -> None:
    """A real Optuna SQLite file, cut in half: a valid header, a malformed body."""
    con = sqlite3.connect(path)
    con.executescript("create table t(x); " + "".join(f"insert into t values ({'x' * 500!r});" for _ in range(64)))
    con.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def junk_file(tmp: Path, name: str, content: bytes = b"this is not an image") -> Path:
    root = data(tmp)
    (root / "train" / "a" / name).write_bytes(content)
    return root


def bad_npz_zip(tmp: Path) -> Path:
    path = tmp / "d.npz"
    path.write_bytes(b"PK not really a zip")
    return path


def no_postgres_driver(tmp, mp):
    mp.setitem(__import__("sys").modules, "psycopg", None)  # import psycopg -> ImportError, installed or not
    return ["fit", data(tmp), *FAST, "--store", tmp / "store", "--storage", "postgresql://me:secret@db.invalid/x"]


def sqlite_elsewhere(prepare):
    def make(tmp, mp):
        db = tmp / "studies" / "optuna.db"
        db.parent.mkdir()
        prepare(db)
        return ["fit", data(tmp), *FAST, "--store", tmp / "store", "--storage", f"sqlite:///{db}"]
    return make


CASES = [
    # --- flags and recipes: refused before the data is read -------------------------------------
    Case("no-data", lambda tmp, mp: ["fit", "--store", tmp / "store"], 2, ("give DATA or --recipe",)),
    Case("unknown-extractor", fit("-e", "resnet"), 2, ("extractors", "unknown extractor", "resnet", "expected one of")),
    Case("unknown-head", fit("--heads", "svm"), 2, ("heads", "svm", "svc-rbf")),
    Case("unknown-metric", fit("--metric", "auc"), 2, ("metric", "auc", "Did you mean 'roc-auc'")),
    Case("unknown-augmenter", fit("--augment", "nope"), 2, ("nope", "conventional")),
    Case("unknown-augment-param", fit("--augment", "conventional", "-p", "nope=1"), 2, ("nope",)),
    Case("augment-param-not-key-value", fit("--augment", "conventional", "-p", "nope"), 2,
         ("--augment-param", "KEY=VALUE")),
    Case("plan-flag-without-augment", fit("--ratio", "2"), 2, ("--ratio", "--augment")),
    Case("two-variants-in-fit", fit("--augment", "conventional,dcgan"), 2, ("one augmentation variant",
                                                                                 "automl compare")),
    Case("compare-without-variants", lambda tmp, mp: ["compare", data(tmp), "--store", tmp / "store"], 2,
         ("at least one augmentation variant", "--augment")),
    Case("trials-zero", fit("--trials", "0"), 2, ("--trials", "0")),
    Case("cv-one", fit("--cv", "1"), 2, ("--cv", ">= 2")),
    Case("image-size-too-small", fit("--image-size", "32"), 2, ("image_size", ">= 71", "--image-size")),
    Case("unknown-precision", fit("--precision", "half"), 2, ("precision", "half")),
    Case("test-fraction-out-of-range", fit("--test-fraction", "1.5"), 2, ("--test-fraction", "1.5")),
    Case("weights-file-missing", fit("--weights", "missing.h5"), 3, ("weights file not found", "missing.h5")),
    Case("recipe-missing", lambda tmp, mp: ["fit", "--recipe", tmp / "nope.yaml"], 2,
         ("{tmp}/nope.yaml", "does not exist")),
    Case("recipe-unknown-key", recipe("data: data\ntrails: 5\n"), 2, ("{tmp}/recipe.yaml", "trails", "trials")),
    Case("recipe-wrong-type", recipe("data: data\ncv: '5'\n"), 2, ("{tmp}/recipe.yaml", "line 2", "cv")),
    Case("recipe-python-tag", recipe("data: !!python/object/apply:os.system [touch x]\n"), 2,
         ("{tmp}/recipe.yaml", "safe_load")),
    Case("recipe-bad-storage-validate", recipe("data: data\nstorage: foo://bar\n", "validate"), 2,
         ("storage", "foo")),
    Case("recipe-path-not-utf8", lambda tmp, mp: ["fit", tmp / os.fsdecode(b"d\xe9ta"), *FAST], 2,
         ("data", "not UTF-8", "rename")),

    # --- the Optuna storage: checked before any embedding -----------------------------------------
    Case("storage-unknown-scheme", fit("--storage", "foo://bar"), 2, ("storage", "unknown database scheme 'foo'",
                                                                     "sqlite:///")),
    Case("storage-not-a-url", fit("--storage", "optuna.db"), 2, ("storage", "optuna.db")),
    Case("storage-driver-missing", no_postgres_driver, 3, ("psycopg", "pip install"), absent=("secret",)),
    Case("storage-sqlite-folder-missing", fit("--storage", "sqlite:////nonexistent-h10/optuna.db"), 2,
         ("/nonexistent-h10", "does not exist")),
    Case("storage-sqlite-not-a-database", sqlite_elsewhere(lambda db: db.write_bytes(b"garbage " * 200)), 2,
         ("{tmp}/studies/optuna.db", "not a usable database", "mv ")),
    Case("storage-sqlite-is-a-folder", sqlite_elsewhere(lambda db: db.mkdir()), 2,
         ("{tmp}/studies/optuna.db", "not a file")),

    # --- the store --------------------------------------------------------------------------------
    Case("store-optuna-db-corrupt", with_store(lambda s: (s / "optuna.db").write_bytes(b"\0garbage" * 300)), 2,
         ("{store}/optuna.db", "not a usable database", "store check --repair"), store_used=True),
    Case("store-optuna-db-truncated", with_store(lambda s: corrupt_sqlite(s / "optuna.db")), 2,
         ("{store}/optuna.db", "not a usable database"), store_used=True),
    Case("store-is-a-file", lambda tmp, mp: ["fit", data(tmp), *FAST, "--store", _touch(tmp / "store")], 2,
         ("{store}", "is a file"), store_used=True),
    Case("store-under-a-file", lambda tmp, mp: ["fit", data(tmp), *FAST, "--store", _touch(tmp / "f") / "store"],
         2, ("{tmp}/f/store", "cannot write to store", "writable")),
    Case("store-runs-is-a-file", with_store(lambda s: _touch(s / "runs")), 2, ("{store}/runs", "is a file"),
         store_used=True),
    Case("store-stamp-corrupt", with_store(lambda s: (s / "store.json").write_text("{not json")), 2,
         ("{store}/store.json", "not valid JSON"), store_used=True),
    Case("store-other-format", with_store(lambda s: (s / "store.json").write_text('{"version": 99}')), 2,
         ("{store}", "format 99"), store_used=True),

    # --- the data ---------------------------------------------------------------------------------
    Case("data-missing", lambda tmp, mp: ["fit", tmp / "nowhere", *FAST, "--store", tmp / "store"], 2,
         ("{tmp}/nowhere", "dataset not found")),
    Case("data-empty-folder", fit_on(lambda tmp: _mkdir(tmp / "empty")), 2, ("{tmp}/empty", "no class folders")),
    Case("data-one-class", fit_on(lambda tmp: class_folders(tmp / "one", {"only": 4})), 2,
         ("{tmp}/one", "single class")),
    Case("data-class-without-images", fit_on(lambda tmp: _no_images_class(tmp)), 2,
         ("{tmp}/data/train/c", "holds no images")),
    Case("data-file-not-an-image", fit_on(lambda tmp: junk_file(tmp, "junk.png")), 2,
         ("{tmp}/data/train/a/junk.png", "not an image format", "--skip-bad"), absent=("BytesIO", "0x")),
    Case("data-empty-image-file", fit_on(lambda tmp: junk_file(tmp, "empty.jpg", b"")), 2,
         ("{tmp}/data/train/a/empty.jpg", "empty file")),
    Case("data-truncated-png", fit_on(lambda tmp: junk_file(tmp, "cut.png", _png_bytes()[:40])), 2,
         ("{tmp}/data/train/a/cut.png",)),
    Case("data-bad-file-named-not-utf8", fit_on(lambda tmp: junk_file(tmp, NON_UTF8)), 2,
         ("{tmp}/data/train/a/caf\\xe9.png",)),
    Case("data-all-bad-with-skip-bad", fit_on(lambda tmp: _all_bad_class(tmp), "--skip-bad"), 2,
         ("class 'b'", "no usable training images")),
    Case("data-file-not-npz", fit_on(lambda tmp: _touch(tmp / "d.txt")), 2, ("{tmp}/d.txt", ".npz")),
    Case("data-test-without-train", fit_on(lambda tmp: class_folders(tmp / "d" / "test", {"a": 2, "b": 2}) and
                                           tmp / "d"), 2, ("{tmp}/d", "no train/")),
    Case("data-splits-mixed-with-classes", fit_on(lambda tmp: _mixed(tmp)), 2, ("{tmp}/data", "mixes split folders")),
    Case("data-test-class-not-in-train", fit_on(lambda tmp: _extra_test_class(tmp)), 2,
         ("{tmp}/data/test", "'c'")),
    Case("data-too-small-to-split", fit_on(lambda tmp: class_folders(tmp / "d", {"a": 1, "b": 4})), 2,
         ("{tmp}/d", "cannot hold out")),
    Case("npz-not-a-zip", fit_on(bad_npz_zip), 2, ("{tmp}/d.npz", "not a readable .npz")),
    Case("npz-missing-keys", fit_on(lambda tmp: npz(tmp, x=images(4))), 2, ("{tmp}/d.npz", "train_images")),
    Case("npz-images-without-labels", fit_on(lambda tmp: npz(tmp, train_images=images(4), train_labels=[0, 1, 0, 1],
                                                             test_images=images(2))), 2,
         ("{tmp}/d.npz", "test_labels")),
    Case("npz-count-mismatch", fit_on(lambda tmp: npz(tmp, train_images=images(4), train_labels=[0, 1, 0])), 2,
         ("{tmp}/d.npz", "4 images", "3 labels")),
    Case("npz-bad-shape", fit_on(lambda tmp: npz(tmp, train_images=images(4, (8, 8, 2)), train_labels=[0, 1, 0, 1])),
         2, ("{tmp}/d.npz", "train_images", "(4, 8, 8, 2)")),
    Case("npz-one-class", fit_on(lambda tmp: npz(tmp, train_images=images(4), train_labels=[3, 3, 3, 3])), 2,
         ("{tmp}/d.npz", "single class")),
    Case("npz-float-labels", fit_on(lambda tmp: npz(tmp, train_images=images(4), train_labels=[0.5, 1, 0, 1])), 2,
         ("{tmp}/d.npz", "train_labels", "non-integer")),

    # --- folds against the smallest class: before embedding, naming the class ---------------------
    Case("cv-larger-than-a-class", fit("--cv", "5"), 2,
         ("5-fold", "smallest class has 4 (class 'a')", "--cv 4")),
    Case("cv-larger-than-one-class", fit_on(lambda tmp: data(tmp, {"a": 6, "b": 3}), "--cv", "4"), 2,
         ("smallest class has 3 (class 'b')", "--cv 3")),

    # --- saved runs -------------------------------------------------------------------------------
    Case("show-unknown-run", lambda tmp, mp: ["show", "nope", "--store", tmp / "store"], 2,
         ("no run 'nope'", "automl runs")),
    Case("predict-unknown-run", lambda tmp, mp: ["predict", "nope", tmp, "--store", tmp / "store"], 2,
         ("no run 'nope'",)),
    Case("show-broken-run", lambda tmp, mp: ["show", _broken_run(tmp), "--store", tmp / "store"], 2,
         ("{store}/runs/260101-000000-dead/run.json", "store check --repair"), store_used=True),
    Case("predict-broken-run", lambda tmp, mp: ["predict", _broken_run(tmp), data(tmp), "--store", tmp / "store"], 2,
         ("{store}/runs/260101-000000-dead/run.json", "store check --repair"), store_used=True),
    Case("demo-data-into-a-full-folder", lambda tmp, mp: ["demo-data", data(tmp)], 2, ("{tmp}/data", "not empty")),
]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(images(1, (32, 32, 3))[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def _no_images_class(tmp: Path) -> Path:
    root = data(tmp)
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "notes.txt").write_text("no images here")
    return root


def _all_bad_class(tmp: Path) -> Path:
    root = data(tmp)
    for p in (root / "train" / "b").iterdir():
        p.write_bytes(b"broken")
    return root


def _mixed(tmp: Path) -> Path:
    root = data(tmp)
    class_folders(root, {"loose": 2})
    return root


def _extra_test_class(tmp: Path) -> Path:
    root = data(tmp)
    class_folders(root / "test", {"c": 1})
    return root


def _broken_run(tmp: Path) -> str:
    folder = tmp / "store" / "runs" / "260101-000000-dead"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text('{"id": "260101-000000-dead", "best": ')  # cut off mid-write
    return folder.name


def half_written(store: Path, before: set) -> list[str]:
    """What a failed command left in the store that was not there before: run or comparison folders,
    temporaries anywhere."""
    if not store.is_dir():
        return []
    out = [str(p) for p in store.rglob(".tmp-*")]
    for folder in ("runs", "comparisons"):
        if (store / folder).is_dir():
            out += [str(p) for p in (store / folder).iterdir() if str(p) not in before]
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_early_with_a_named_cause(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a recipe's relative paths, and nothing written beside the tests
    args = case.make(tmp_path, monkeypatch)
    store = tmp_path / "store"
    before = {str(p) for p in store.rglob("*")} if store.is_dir() else set()
    code, out, err = run_cli(capsys, *args)
    assert code == case.code, (code, err)
    message = " ".join(err.split())  # the CLI wraps long usage errors
    for name in case.names:
        expected = name.format(tmp=tmp_path, store=store)
        assert expected in message, f"{expected!r} not in {err!r}"
    for text in case.absent:
        assert text not in err
    assert "Traceback" not in err
    if not err.startswith("Usage:") and args[0] != "validate":  # click's usage errors; validate lists problems
        assert err.startswith("error: ") and len(err.strip().splitlines()) <= 12, err
    assert not half_written(store, before)
    assert not (store / "embeddings").exists()  # every one of these fails before embedding anything
    if not case.store_used:
        assert not store.exists()  # not even created: the read-only checks come first


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40


def test_read_only_store_is_refused_before_embedding(capsys, tmp_path):
    store = stamped_store(tmp_path)
    (store / "runs").mkdir()
    os.chmod(store / "runs", 0o555)
    try:
        probe = store / "runs" / "probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("this user writes into a read-only folder (root); the store-under-a-file cases cover it")
        code, _, err = run_cli(capsys, "fit", data(tmp_path), *FAST, "--store", store)
        assert code == 2 and f"{store}/runs" in err and "writable" in err
        assert not (store / "embeddings").exists() and not list(store.rglob(".tmp-*"))
    finally:
        os.chmod(store / "runs", 0o755)


# --- odd but valid inputs, and what a run writes ---------------------------------------------------


def strict_json(path: Path):
    """Parse as RFC 8259 JSON: NaN, Infinity and -Infinity are refused."""
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(encoding="ascii"), parse_constant=refuse)


def test_a_fit_with_a_non_utf8_file_name_and_broken_runs_beside_it(capsys, tmp_path):
    root = data(tmp_path)
    write_image(root / "test" / "a" / NON_UTF8, seed=99)  # evaluated, so it lands in predictions.csv
    store = tmp_path / "store"
    stale = store / "runs" / f".tmp-{dead_pid()}-abc-260101-000000-0000"  # a killed fit's half-written run
    (stale / "model.joblib").parent.mkdir(parents=True)
    (stale / "model.joblib").write_bytes(b"half")

    code, out, err = run_cli(capsys, "fit", root, *FAST, "--store", store)
    assert code == 0, err
    run_dir, = (store / "runs").iterdir()  # the stale temporary was removed when the run was written
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        paths = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert str(root / "test" / "a" / NON_UTF8) in paths  # the name's bytes as they are on disk
    assert Path(next(p for p in paths if p.endswith(".png") and "caf" in p)).is_file()  # and it opens the file
    assert os.fsencode(str(root / "test" / "a" / NON_UTF8)) in (run_dir / "predictions.csv").read_bytes()
    split = strict_json(run_dir / "split.json")
    assert str(root / "test" / "a" / NON_UTF8) in {it["path"] for it in split["items"]}  # \udce9: lossless
    for name in ("run.json", "metrics.json", "leaderboard.json"):
        strict_json(run_dir / name)

    # A second run whose run.json is broken: `runs` lists the good one and names the broken one;
    # `show` of the good one still works, `show` of the broken one is a clear error.
    broken = store / "runs" / "000000-000000-beef"
    shutil.copytree(run_dir, broken)
    (broken / "run.json").write_text("{\"id\": ")
    code, out, err = run_cli(capsys, "runs", "--store", store)
    assert code == 0 and run_dir.name in out and broken.name not in out
    assert f"{broken}/run.json" in err and "store check --repair" in err
    code, out, _ = run_cli(capsys, "show", run_dir.name[:10], "--store", store)
    assert code == 0 and run_dir.name in out
    code, _, err = run_cli(capsys, "show", broken.name, "--store", store)
    assert code == 2 and err.startswith("error: ") and f"{broken}/run.json" in err


def test_write_json_is_strict():
    value = {"nan": float("nan"), "inf": [float("inf"), -math.inf], "np": np.float32(0.5), "arr": np.array([1, 2]),
             "int": np.int64(3), "ok": 1.25}
    assert json.loads(json_text(value)) == {"nan": None, "inf": [None, None], "np": 0.5, "arr": [1, 2], "int": 3,
                                            "ok": 1.25}
    with pytest.raises(TypeError, match="set"):
        json_text({"x": {1, 2}})
    assert json.loads(json_text({"x": {1}}, default=sorted)) == {"x": [1]}


def test_write_json_is_atomic_and_keeps_non_utf8_names(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"path": NON_UTF8, "score": float("nan")})
    assert json.loads(path.read_text()) == {"path": NON_UTF8, "score": None}
    assert os.fsencode(json.loads(path.read_text())["path"]) == b"caf\xe9.png"
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert json.loads(path.read_text())["score"] is None and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_dataset_warnings_and_gifs(capsys, tmp_path):
    from PIL import Image

    root = data(tmp_path)
    frames = [Image.fromarray(images(3, (16, 20, 3))[i]) for i in range(3)]
    frames[0].save(root / "train" / "a" / "anim.gif", save_all=True, append_images=frames[1:])
    shutil.copy(root / "train" / "a" / "img_000.png", root / "train" / "b" / "same.png")  # one image, two classes
    (root / "train" / "b" / "scan.ico").write_bytes(b"an icon")
    summary = json.loads(run_cli(capsys, "inspect", root, "--json")[1])
    assert summary["counts"]["train"] == {"a": 5, "b": 5}  # the GIF is read (its first frame)
    assert summary["ignored_files"] == [str(root / "train" / "b" / "scan.ico")]
    assert len(summary["conflicting_labels"]) == 1
    code, _, err = run_cli(capsys, "embed", root, "-e", "inception-v3", "--weights", "none", "--image-size", "75",
                           "--precision", "float32", "--store", tmp_path / "store", "--no-progress")
    assert code == 0, err
    assert "filed under two or more classes" in err and "same.png (b)" in err
    assert "ignored 1 file(s)" in err and "scan.ico" in err


def test_npz_with_nan_pixels_is_named(capsys, tmp_path):
    from automl.data import load_dataset
    from automl.report import dataset_notes

    pixels = images(6, (8, 8), np.float32)
    pixels[4, 2, 3] = np.nan
    path = npz(tmp_path, train_images=pixels, train_labels=[0, 1, 0, 1, 0, 1])
    dataset = load_dataset(path)
    assert dataset.nonfinite == [f"{path}:train[4]"]
    notes = dataset_notes(dataset)
    assert any("NaN or infinite pixels" in n and f"{path}:train[4]" in n for n in notes)
    assert dataset.items[4].load(8).dtype == np.uint8  # still decodable
    code, out, _ = run_cli(capsys, "inspect", path)
    assert code == 0 and f"{path}:train[4]" in out


def test_undecodable_reason_names_no_buffer(tmp_path):
    from automl.data import load_dataset

    root = junk_file(tmp_path, "junk.png")
    dataset = load_dataset(root, skip_bad=True)
    reason, = [b.reason for b in dataset.bad_files]
    assert "BytesIO" not in reason and "not an image format" in reason
