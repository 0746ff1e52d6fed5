"""File primitives every writer of the store uses. Imports nothing of the project.

One rule for all of them: write under a temporary name that carries the writer's process id, then
rename into place, so a reader never sees half a file or folder, a killed writer leaves only a
temporary (removed by the next writer once its process is gone), and two writers of the same
content at worst both write it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

TMP_PREFIX = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """``.tmp-<pid>-<random>-<name>`` beside ``path``: unique, and owned by this process."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}")


def temporary_owner(path: Path) -> int | None:
    """The process id in a temporary's name, or None for a name that is not one of ours."""
    if not path.name.startswith(TMP_PREFIX):
        return None
    pid = path.name[len(TMP_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix) for a writer that wants a file name, such as
    Keras's ``save``; when the block ends without an error it is renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def atomic_write(path: Path, write: Callable) -> None:
    """Write through ``write(file)`` (a binary file object) to a temporary sibling, then rename over ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, value, *, indent: int | None = 2, sort_keys: bool = False,
               default: Callable | None = None) -> None:
    """``value`` as strict JSON (RFC 8259), written atomically: every JSON file the project writes goes
    through here (``json_text``)."""
    atomic_write_text(path, json_text(value, indent=indent, sort_keys=sort_keys, default=default))


def json_text(value, *, indent: int | None = 2, sort_keys: bool = False, default: Callable | None = None) -> str:
    """``value`` as strict JSON text. NaN and +-inf become null (JSON has no such numbers, and Python's
    bare ``NaN`` breaks every other reader); numpy scalars and arrays become their Python values;
    ``default`` converts anything else, and without it anything else is a TypeError. ``allow_nan=False``
    stays on behind the conversion, so a value that slips past it fails loudly instead of writing ``NaN``.

    Text is ASCII: a file name that is not UTF-8 (a str with surrogate escapes) is written as ``\\udcXX``
    escapes, which Python's ``json`` reads back to the same str (``os.fsencode`` gives the original bytes).
    """
    return json.dumps(_strict(value, default), indent=indent, sort_keys=sort_keys, allow_nan=False)


def json_values(value, default: Callable | None = None):
    """``value`` with JSON types only, as ``json_text`` writes it: NaN and +-inf None, numpy scalars and
    arrays their Python values, anything else ``default(value)`` (without it, a TypeError)."""
    return _strict(value, default)


def _strict(value, default: Callable | None):
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else _strict(k, default)): _strict(v, default) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v, default) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # numpy scalars and arrays
        return _strict(value.tolist(), default)
    if default is not None:
        return _strict(default(value), None)
    raise TypeError(f"a {type(value).__name__} cannot be written as JSON: {value!r:.80}")


@contextmanager
def atomic_folder(final: Path, *, replace: bool | Callable[[Path], bool] = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block ends without an error it is
    renamed to ``final`` (all or nothing). An existing ``final`` (another writer finished first) is
    kept and the new folder dropped, unless ``replace`` is true or, called with the existing folder
    when the block ends, returns true (it may also raise, to refuse). Temporaries of killed writers
    beside it are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = temporary_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        if not final.exists():
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.exists():
                    raise
                # lost a race: another writer renamed its folder into place after the check
        elif replace is True or (callable(replace) and replace(final)):
            old = temporary_sibling(final)
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.exists():
                    os.replace(old, final)  # a real failure: put the previous folder back
                    raise
            _remove(old)
    finally:
        _remove(tmp)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporaries (files or folders) in ``folder`` whose writer process no longer exists."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for tmp in folder.glob(f"{TMP_PREFIX}*"):
        pid = temporary_owner(tmp)
        if pid is None or process_alive(pid):
            continue
        _remove(tmp)


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def die_with_parent(signum: int) -> None:
    """Ask Linux to send this process ``signum`` when its parent dies, even by SIGKILL (elsewhere:
    nothing), so a child a command starts never outlives it."""
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs. A zombie (dead, not yet reaped by its parent: a search process
    killed while the fit that started it is busy) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): the signal's answer stands


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """128-bit blake2b of a file's bytes (memoised per path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    return _file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


def content_digest(path: Path) -> str:
    """``file_digest`` of a file, or a digest of every file of a folder (relative names and bytes)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + file_digest(f).encode())
    return h.hexdigest()


DEFAULT_STORE = "store"


def store_root(path: str | os.PathLike | None = None) -> Path:
    """Where the store is: ``path`` (``--store``), else ``$AUTOML_STORE``, else ``./store``."""
    return Path(path or os.environ.get("AUTOML_STORE") or DEFAULT_STORE).expanduser()
