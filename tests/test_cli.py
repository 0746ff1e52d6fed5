"""The command line end to end, on generated and on real images (../shared/data)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, class_folders, run_cli

HEAVY = ("tensorflow", "keras", "torch", "torchvision", "diffusers", "transformers")


def test_import_and_help_load_no_heavy_framework():
    code = (
        "import sys\n"
        "import automl, automl.data, automl.extractors, automl.embed, automl.pipeline, automl.store\n"
        "from cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "embed" in proc.stdout and "inspect" in proc.stdout


def test_console_script_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "automl")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "automl 0.1.0"


def _table(out: str) -> dict[str, dict[str, str]]:
    """Rows of the embed table by extractor name."""
    lines = [l for l in out.splitlines() if l.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = {}
    for line in lines[2:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == len(header):
            rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_embed_brain_mri_folder_then_all_cached(capsys, tmp_path, shared):
    data = shared / "data" / "brain_tumor_yesno"
    args = ("embed", data, "-e", "inception-v3", "--weights", "none", "--image-size", "75", "--store",
            tmp_path / "store", "--no-progress")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    row = _table(out)["inception-v3"]
    # 253 files, 22 groups of byte-identical copies: 228 distinct images are computed.
    assert (row["images"], row["cache hits"], row["computed"], row["dim"]) == ("253", "0", "228", "2048")
    assert float(row["images/s"]) > 0
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    row = _table(out)["inception-v3"]
    assert (row["cache hits"], row["computed"], row["images/s"]) == ("253", "0", "-")


@pytest.mark.slow
def test_embed_breastmnist_with_every_extractor(capsys, tmp_path, shared):
    code, out, err = run_cli(capsys, "embed", shared / "data" / "breastmnist.npz", "--weights", "none",
                             "--image-size", "75", "--store", tmp_path / "store", "--no-progress")
    assert code == 0, err
    rows = _table(out)
    assert set(rows) == {"inception-resnet-v2", "xception", "inception-v3"}
    assert {name: row["dim"] for name, row in rows.items()} == \
        {"inception-resnet-v2": "1536", "xception": "2048", "inception-v3": "2048"}
    # 780 images, one train/test pair identical.
    assert all(row["images"] == "780" and row["computed"] == "779" for row in rows.values())
    assert "1 test image(s) also appear in train/val" in err


def test_inspect_real_datasets(capsys, shared):
    code, out, _ = run_cli(capsys, "inspect", shared / "data" / "breastmnist.npz", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["counts"] == {"train": {"0": 147, "1": 399}, "val": {"0": 21, "1": 57},
                                 "test": {"0": 42, "1": 114}}
    assert summary["train_test_duplicates"] == [[f"{shared}/data/breastmnist.npz:train[115]",
                                                 f"{shared}/data/breastmnist.npz:test[76]"]]
    code, out, _ = run_cli(capsys, "inspect", shared / "data" / "brain_tumor_yesno")
    assert code == 0
    assert "train  98  155    253" in out
    assert "22 group(s) of identical images" in out
    assert "none: fit holds out a stratified, seeded 20 %" in out


@pytest.mark.parametrize("make, args, message", [
    (lambda p: None, (), "dataset not found"),
    (lambda p: class_folders(p, {"only": 2}), (), "single class"),
    (lambda p: class_folders(p, {"a": 2, "b": 2}), ("-e", "resnet"), "unknown extractor 'resnet'; valid names"),
    (lambda p: class_folders(p, {"a": 2, "b": 2}), ("--image-size", "32"), "must be an integer >= 75"),
    (lambda p: class_folders(p, {"a": 2, "b": 2}), ("--precision", "half"), "precision must be one of"),
    (lambda p: class_folders(p, {"a": 2, "b": 2}), ("--weights", "missing.h5"), "weights file not found"),
])
def test_bad_input_exits_non_zero_and_writes_nothing(capsys, tmp_path, make, args, message):
    data = tmp_path / "data"
    make(data)
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "embed", data, "--weights", "none", "--store", store, "--no-progress", *args)
    assert code != 0
    assert err.startswith("error: ") and message in err
    assert not store.exists()


def test_skip_bad_lists_the_files(capsys, tmp_path):
    data = class_folders(tmp_path / "data", {"a": 3, "b": 3})
    (data / "a" / "junk.png").write_bytes(b"not a png")
    code, _, err = run_cli(capsys, "inspect", data)
    assert code == 2 and "junk.png" in err and "--skip-bad" in err
    code, out, _ = run_cli(capsys, "inspect", data, "--skip-bad")
    assert code == 0 and f"{data}/a/junk.png" in out


def test_demo_data_then_embed(capsys, tmp_path):
    demo = tmp_path / "demo"
    code, out, _ = run_cli(capsys, "demo-data", demo, "--per-class", "8", "--classes", "2")
    assert code == 0 and "wrote 16 digit images (2 classes)" in out
    code, _, err = run_cli(capsys, "demo-data", demo)
    assert code == 2 and "not empty" in err
    code, out, err = run_cli(capsys, "embed", demo, "-e", "xception", "--weights", "none", "--image-size", "71",
                             "--store", tmp_path / "s", "--no-progress")
    assert code == 0, err
    assert _table(out)["xception"]["computed"] == "16"
