"""Schemathesis over the API's own OpenAPI schema, in process: a bounded number of generated requests per
operation, and none may answer 5xx (every bad input is the client's error, with a JSON error body)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the test extra installs schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from automl.service.app import ServiceConfig, create_app  # noqa: E402
from automl.service.uploads import Limits  # noqa: E402

_ROOT = Path(tempfile.mkdtemp(prefix="automl-fuzz-"))
APP = create_app(ServiceConfig(store=_ROOT / "store", queue=f"sqlite:///{_ROOT / 'queue.db'}", no_auth=True,
                               immediate=True, allowed_roots=(_ROOT,), limits=Limits(max_upload_bytes=2**20)))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_gets_a_server_error(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:500])
    content_type = response.headers.get("content-type") or [""]
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if response.status_code >= 400 and content_type.startswith("application/json"):
        body = response.json()
        assert "error" in body and body["error"]["message"], body
