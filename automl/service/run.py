"""``automl serve`` and ``automl worker``: configuration from flags and the environment, then uvicorn
or the Huey consumer. The API token is read from a file or ``$AUTOML_TOKEN`` and never printed."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from automl._files import die_with_parent
from automl.errors import ConfigError, MissingDependencyError
from automl.store import Store

TOKEN_ENV = "AUTOML_TOKEN"


def read_token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc.strerror}.") from None
        if not token:
            raise ConfigError(f"the token file {token_file} is empty; write the token in it.")
        return token
    return os.environ.get(TOKEN_ENV) or None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(*, host: str, port: int, store: Path | None, queue: str | None, workers: int, token_file: Path | None,
          no_auth: bool, allowed_roots: Sequence[Path], max_upload_mib: int, storage: str | None,
          log: Callable[[str], None] = print) -> None:
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("the service needs uvicorn and FastAPI: pip install 'automl[serve]'") from exc
    from automl.service.app import ServiceConfig, create_app
    from automl.service.queue import queue_url
    from automl.service.uploads import Limits

    token = read_token(token_file)
    if no_auth and not loopback(host):
        raise ConfigError(f"--no-auth serves without a token, which is allowed on a loopback --host only (got {host}); "
                          "give a token (--token-file or $AUTOML_TOKEN) to listen on other addresses.")
    if not no_auth and not token:
        raise ConfigError("no API token: pass --token-file FILE or set $AUTOML_TOKEN (clients send "
                          "'Authorization: Bearer TOKEN'), or --no-auth on 127.0.0.1.")
    for root in allowed_roots:
        if not Path(root).is_dir():
            raise ConfigError(f"--allow-root {root}: not a folder.")
    root = Store(store).root
    url = queue_url(queue, root)
    limits = Limits(max_upload_bytes=max_upload_mib * 2**20)
    config = ServiceConfig(store=root, queue=url, token=None if no_auth else token, no_auth=no_auth,
                           allowed_roots=tuple(Path(r).resolve() for r in allowed_roots), limits=limits,
                           storage=storage)
    app = create_app(config)
    child = None
    if workers > 0:
        env = {**os.environ, "AUTOML_QUEUE": url}
        env.pop(TOKEN_ENV, None)
        child = subprocess.Popen([sys.executable, "-m", "automl", "worker", "--store", str(root),
                                  "--concurrency", str(workers)], env=env, preexec_fn=_die_with_parent)
        log(f"worker: pid {child.pid}, {workers} job(s) at once")
    log(f"serving on http://{host}:{port} (store {root}; auth {'off' if no_auth else 'bearer token'})")
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


def worker(*, store: Path | None, queue: str | None, queue_name: str, concurrency: int) -> None:
    from automl.service.queue import queue_url
    from automl.service.worker import serve_worker

    if concurrency < 1:
        raise ConfigError(f"--concurrency {concurrency}: at least 1.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root = Store(store).root
    serve_worker(str(root), queue_url(queue, root), queue=queue_name, concurrency=concurrency)


def _die_with_parent() -> None:
    """In the worker ``serve --workers`` starts (before exec): it gets SIGTERM when the server dies,
    even by SIGKILL, so no worker outlives its server."""
    die_with_parent(signal.SIGTERM)
