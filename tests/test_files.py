"""automl._files: every writer's primitives (atomic files and folders, stale temporaries, digests)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from automl._files import (atomic_folder, atomic_path, atomic_write, atomic_write_text, content_digest, file_digest,
                           remove_stale_temporaries, temporary_owner, temporary_sibling)


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_atomic_write_replaces_whole_and_leaves_no_temporary_on_error(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_text(path, "first")
    assert path.read_text() == "first"

    def half(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "first" and sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_atomic_path_keeps_the_suffix_and_cleans_up(tmp_path):
    path = tmp_path / "model.weights.h5"
    with pytest.raises(ValueError):
        with atomic_path(path) as tmp:
            assert tmp.name.endswith(".weights.h5") and temporary_owner(tmp) == os.getpid()
            tmp.write_bytes(b"half")
            raise ValueError
    assert not list(tmp_path.iterdir())
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"whole")
    assert path.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [path]


def test_atomic_folder_is_all_or_nothing(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(final) as tmp:
            (tmp / "a").write_text("a")
            raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())
    with atomic_folder(final) as tmp:
        (tmp / "a").write_text("first")
    assert (final / "a").read_text() == "first"
    # Another writer finished first: its folder is kept, unless told to replace it.
    with atomic_folder(final) as tmp:
        (tmp / "a").write_text("second")
    assert (final / "a").read_text() == "first"
    with atomic_folder(final, replace=lambda existing: (existing / "a").read_text() == "first") as tmp:
        (tmp / "a").write_text("third")
    assert (final / "a").read_text() == "third" and list(tmp_path.iterdir()) == [final]

    def refuse(existing):
        raise FileExistsError(existing)

    with pytest.raises(FileExistsError):
        with atomic_folder(final, replace=refuse) as tmp:
            (tmp / "a").write_text("fourth")
    assert (final / "a").read_text() == "third" and list(tmp_path.iterdir()) == [final]


def test_temporaries_of_dead_writers_only_are_removed(tmp_path):
    dead = dead_pid()
    stale_file = tmp_path / f".tmp-{dead}-abc-shard.npz"
    stale_folder = tmp_path / f".tmp-{dead}-abc-run"
    live = temporary_sibling(tmp_path / "x")
    other = tmp_path / ".tmp-notapid-x"
    stale_file.write_bytes(b"half")
    stale_folder.mkdir()
    (stale_folder / "inside").write_text("half")
    live.write_bytes(b"in progress")
    other.write_bytes(b"not ours")
    assert temporary_owner(stale_file) == dead and temporary_owner(other) is None
    remove_stale_temporaries(tmp_path)
    assert not stale_file.exists() and not stale_folder.exists() and live.exists() and other.exists()
    stale_file.write_bytes(b"half")
    with atomic_folder(tmp_path / "run"):  # a folder write cleans up beside itself first
        assert not stale_file.exists()


def test_content_digest_of_a_folder_covers_names_and_bytes(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "x.bin").write_bytes(b"1")
    (a / "sub" / "y.bin").write_bytes(b"2")
    b = tmp_path / "b"
    (b / "sub").mkdir(parents=True)
    (b / "sub" / "y.bin").write_bytes(b"2")
    (b / "x.bin").write_bytes(b"1")
    assert content_digest(a) == content_digest(b)  # the same content, written in another order
    assert content_digest(a / "x.bin") == file_digest(a / "x.bin") != content_digest(a)
    (b / "sub" / "y.bin").rename(b / "sub" / "z.bin")
    assert content_digest(a) != content_digest(b)
    (b / "sub" / "z.bin").rename(b / "sub" / "y.bin")
    assert content_digest(a) == content_digest(b)
    (b / "x.bin").write_bytes(b"33")
    assert content_digest(a) != content_digest(b)
