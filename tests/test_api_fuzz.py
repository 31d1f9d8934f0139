"""schemathesis against the OpenAPI spec of the embedded server: no operation answers 5xx.

One pytest item per operation (plain ``pytest.mark.parametrize``, so that pytest-xdist runs every one of
them: schemathesis's own ``schema.parametrize()`` items collapse to a single item under xdist), each
running a bounded number of generated requests (``MAX_EXAMPLES``) to keep the run short.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from deltazoo.api.app import create_app
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.test_api_roundtrip import embedded_settings

MAX_EXAMPLES = 8
HOME = Path(tempfile.mkdtemp(prefix="deltazoo-fuzz-")) / "home"

app = create_app(embedded_settings(HOME))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
OPERATIONS = sorted((result.ok() for result in schema.get_all_operations()), key=lambda op: op.label)


@pytest.fixture(scope="module", autouse=True)
def running_app() -> Iterator[TestClient]:
    with TestClient(app) as client:  # runs the lifespan (store, in-process runner)
        yield client


def test_every_operation_is_fuzzed() -> None:
    """The spec lists the whole API (uploads, files, artifacts, texts, tokens...), not a stray subset."""
    labels = {op.label for op in OPERATIONS}
    assert len(OPERATIONS) >= 25, labels
    assert {"POST /v1/models", "HEAD /v1/models/{org}/{name}/versions/{rev}/files/{path}"} <= labels


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_no_server_errors(operation: schemathesis.APIOperation) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    check()
