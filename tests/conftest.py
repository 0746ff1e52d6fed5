from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Tests import Keras and torch in one process in any order; triton must load before TensorFlow.
from automl._imports import before_tensorflow  # noqa: E402

before_tensorflow()

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))  # cli.py lives at the top level


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, every: float = 0.2):
    """``check()``'s first truthy value, tried every ``every`` seconds; fails after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def postgres_cluster():
    """A throw-away PostgreSQL cluster of Debian's postgresql (initdb + pg_ctl; as the postgres user
    when run as root, which initdb refuses) on a free loopback port, password authentication; yields
    its URL and removes it all at the end. For the scale-out tests and ``bench/bench_scale_out.py``."""
    import secrets
    import shutil
    import subprocess
    import tempfile

    def binary(name: str) -> str:
        versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))  # Debian keeps them off PATH
        found = shutil.which(name) or (str(versions[-1]) if versions else None)
        if found is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
        return found

    initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
    # Not under pytest's temporary folder: that is private to this user, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="automl-postgres-"))
    data, password, port = folder / "data", secrets.token_hex(12), free_port()
    (folder / "pw").write_text(password)
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "pw", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*args):
        subprocess.run([*as_user, *args], check=True, capture_output=True, cwd=folder)

    try:
        run(initdb, "-D", str(data), "-U", "automl", f"--pwfile={folder / 'pw'}", "--auth-host=scram-sha-256",
            "--auth-local=peer", "-E", "UTF8")
        run(pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", "start")
        try:
            yield f"postgresql://automl:{password}@127.0.0.1:{port}/postgres"
        finally:
            run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_image(path: Path, *, size=(20, 16), mode="RGB", fmt=None, seed=0, **save_kwargs) -> Path:
    """A small random image; ``size`` is (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 4096, (h, w), dtype=np.uint16))
    elif mode in ("L", "1", "P"):
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        if mode != "L":
            im = im.convert(mode)
    else:
        channels = len(mode)
        im = Image.fromarray(rng.integers(0, 256, (h, w, channels), dtype=np.uint8), mode)
    im.save(path, format=fmt, **save_kwargs)
    return path


def class_folders(root: Path, counts: dict[str, int], *, seed=0, size=(20, 16), suffix=".png") -> Path:
    for ci, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / name / f"img_{i:03d}{suffix}", size=size, seed=seed * 1000 + ci * 100 + i)
    return root


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: tiny networks run faster so, and far faster when other jobs
    share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def folder_dataset(tmp_path) -> Path:
    return class_folders(tmp_path / "data", {"cat": 6, "dog": 5})


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared is missing beside the repository ({SHARED}); the tests read real images there")
    return SHARED


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from cli import main

    capsys.readouterr()
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny seeded Stable Diffusion folder (tests/sd_fixture.py), built once per session."""
    from sd_fixture import CONFIG, build_tiny_sd

    if not (CONFIG / "unet" / "config.json").is_file():
        pytest.fail(f"the SD 1.5 configs are missing ({CONFIG}); the Stable Diffusion tests build their tiny model "
                    "from them")
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")
