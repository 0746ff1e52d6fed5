"""automl pretrain: bad inputs fail before anything is written, --exclude catches planted overlaps, the
output is an extractor `fit` uses by name, and a killed pretraining resumes from its checkpoint.

Random weights (`--weights none`) and 75 px images keep each training test to well under a minute."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import fakes
from automl.recipe import RecipeError, parse_recipe
from conftest import ROOT, class_folders, run_cli

TRAIN = ("--weights", "none", "--image-size", "75", "--no-progress")


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    class_folders(root / "train", {"a": 16, "b": 16}, size=(40, 40), seed=1)
    class_folders(root / "test", {"a": 3, "b": 3}, size=(40, 40), seed=2)
    return root


def _store_files(store):
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


@pytest.mark.parametrize("args, message", [
    (("--extractor", "resnet-50"), "unknown extractor 'resnet-50'; valid names: inception-resnet-v2, inception-v3"),
    (("--image-size", "74"), "must be an integer >= 75"),
    (("--exclude", "nowhere.npz"), "--exclude nowhere.npz: not found"),
    (("--name", "xception"), "is a built-in extractor"),
    (("--name", "bad/name"), "a pretrained extractor's name is letters"),
    (("--epochs", "0"), "'--epochs' parameter of automl pretrain must be an int in the range [1, inf)"),
    (("--exclude-mode", "ignore"), "'--exclude-mode' parameter of automl pretrain must be a str among {'drop', 'refuse'}"),
    (("--val-fraction", "1.5"), "'--val-fraction' parameter of automl pretrain must be a float in the range (0, 1)"),
])
def test_bad_inputs_fail_before_anything_is_written(data, tmp_path, capsys, args, message):
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "pretrain", data, *TRAIN, "--store", store, *args)
    assert code == 2 and message in err, err
    assert _store_files(store) == []


def test_name_collision_needs_overwrite(data, tmp_path, capsys):
    store = tmp_path / "store"
    existing = store / "extractors" / "mine.keras"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"an earlier pretraining")
    code, _, err = run_cli(capsys, "pretrain", data, *TRAIN, "--store", store, "--name", "mine")
    assert code == 2 and "exists already" in err and "--overwrite" in err
    assert existing.read_bytes() == b"an earlier pretraining"
    assert _store_files(store) == ["extractors", "extractors/mine.keras"]


def test_unknown_freeze_layer_lists_block_names(data, tmp_path, capsys):
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "pretrain", data, *TRAIN, "--store", store, "--freeze-until", "mixed99")
    assert code == 2 and "no layer of that name in inception-v3" in err and "mixed7" in err
    assert _store_files(store) == []


def test_pretrain_excludes_planted_test_images_and_fit_uses_it_by_name(data, tmp_path, capsys):
    # Planted overlaps: a pretraining image copied byte for byte into another dataset's test split, and
    # another one's pixels stored as a row of an .npz test split (matched by decoded pixels only).
    other = class_folders(tmp_path / "other" / "test", {"a": 2, "b": 2}, size=(40, 40), seed=3).parent
    class_folders(other / "train", {"a": 2, "b": 2}, size=(40, 40), seed=4)
    (other / "test" / "a" / "planted.png").write_bytes((data / "train" / "a" / "img_003.png").read_bytes())
    pixels = np.asarray(Image.open(data / "train" / "b" / "img_005.png").convert("RGB"))
    npz = tmp_path / "other.npz"
    np.savez(npz, train_images=np.zeros((2, 40, 40, 3), np.uint8), train_labels=np.array([0, 1]),
             test_images=np.stack([pixels, np.zeros_like(pixels)]), test_labels=np.array([1, 0]))
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "pretrain", data, *TRAIN, "--epochs", "2", "--store", store, "--name", "tiny",
                             "--exclude", other, "--exclude", npz)
    assert code == 0, err
    assert f"--exclude {other} (test split, 5 images): 1 pretraining image(s) match; dropped" in out
    assert f"--exclude {npz} (test split, 2 images): 1 pretraining image(s) match; dropped" in out
    record = json.loads((store / "extractors" / "tiny.json").read_text())
    assert [e["dropped"] for e in record["excluded"]] == [1, 1]
    assert [e["data"] for e in record["excluded"]] == [str(other), str(npz)]
    assert record["counts"]["train"] + record["counts"]["val"] == 30  # 32 train images, 2 dropped
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and record["best_epoch"] in (1, 2)
    assert record["settings"]["image_size"] == 75 and record["model"]["dim"] == 2048
    assert sorted(p.name for p in (store / "extractors").iterdir()) == ["tiny.json", "tiny.keras"]  # no checkpoint

    code, _, err = run_cli(capsys, "pretrain", data, *TRAIN, "--exclude", npz, "--exclude-mode", "refuse",
                           "--store", store, "--name", "tiny2")
    assert code == 2 and "1 pretraining image(s) also appear in the test split" in err and "img_005.png" in err

    code, out, err = run_cli(capsys, "fit", data, "--extractors", "tiny", "--heads", "svc-rbf", "--trials", "2",
                             "--cv", "2", "--store", store, "--no-progress")
    assert code == 0, err
    run_dir, = (store / "runs").iterdir()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["best"]["extractor"] == f"file:{(store / 'extractors' / 'tiny.keras').resolve()}"
    assert run["extractor_key"]["extractor"] == "file:tiny.keras"
    assert run["extractor_key"]["weights"] == "file:" + record["model"]["content_hash"]
    image = data / "test" / "a" / "img_000.png"
    code, out, err = run_cli(capsys, "predict", run_dir.name, image, "--json", "--store", store, "--no-progress")
    assert code == 0 and json.loads(out)["class"] in ("a", "b"), err
    code, out, err = run_cli(capsys, "embed", data, "-e", "tiny", "--store", store, "--no-progress")
    assert code == 0 and "file:tiny.keras" in out, err
    code, _, err = run_cli(capsys, "embed", data, "-e", "tiny2", "--store", store, "--no-progress")
    assert code == 2 and "unknown extractor 'tiny2'" in err and "xception, tiny (built in, and made by" in err


def test_store_names_resolve_in_recipes_and_unknown_names_list_them(tmp_path):
    store = tmp_path / "store"
    (store / "extractors").mkdir(parents=True)
    (store / "extractors" / "chest-v3.keras").write_bytes(b"resolution only checks that the file exists")
    recipe = parse_recipe(f"data: d\nstore: {store}\nextractors: [chest_v3, xception]\n", base_dir=tmp_path)
    assert recipe.extractors == [f"file:{store.resolve() / 'extractors' / 'chest-v3.keras'}", "xception"]
    with pytest.raises(RecipeError) as info:
        parse_recipe("data: d\nstore: store\nextractors: [chest-v4]\n", base_dir=tmp_path)
    message = str(info.value)
    assert "extractors[0]: unknown extractor" in message and "inception-v3, xception, chest-v3" in message
    assert "Did you mean 'chest-v3'?" in message


def test_killed_pretraining_resumes_from_its_checkpoint(data, tmp_path, capsys, monkeypatch):
    """A pretraining process SIGKILLed while writing its second epoch's checkpoint (the weights written,
    state.json not yet): the rerun continues after the first epoch, and trains only what was not
    committed. A tiny backbone (tests/fakes.py) stands in: what is tested is the checkpoint, not it."""
    from automl.extractors.backbone import Backbone

    store = tmp_path / "store"
    args = ["pretrain", str(data), *TRAIN, "--epochs", "3", "--patience", "5", "--store", str(store),
            "--name", "resumed"]
    script = textwrap.dedent(f"""
        import os, signal, sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        import fakes
        import automl.pretrain as pt
        from automl.extractors.backbone import Backbone
        from cli import main
        Backbone.keras_model = fakes.tiny_keras_model
        real = pt._save_weights

        def dying(model, folder, name):
            if name == "last-2":  # epoch 2's best weights are written, its state.json never is
                os.kill(os.getpid(), signal.SIGKILL)
            return real(model, folder, name)

        pt._save_weights = dying
        main({args!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    states = list((store / "extractors").glob(".pretrain-resumed-*/state.json"))
    assert len(states) == 1
    assert not (store / "extractors" / "resumed.keras").exists()
    before = json.loads(states[0].read_text())
    done = before["epoch"]
    assert done == 1

    monkeypatch.setattr(Backbone, "keras_model", fakes.tiny_keras_model)
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert f"resuming from the checkpoint after epoch {done}" in out
    assert f"epoch {done}/3:" not in out and "epoch 3/3:" in out  # finished epochs are not trained again
    record = json.loads((store / "extractors" / "resumed.json").read_text())
    assert record["resumed_after_epoch"] == done
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3]
    assert record["epochs"][:done] == before["history"]["epochs"]
    assert not list((store / "extractors").glob(".pretrain-*")), "the checkpoint is removed once saved"
