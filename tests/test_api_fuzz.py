"""schemathesis against the OpenAPI spec of the embedded server: no operation answers 5xx.

A bounded number of generated requests per operation (``MAX_EXAMPLES``) keeps the run short.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from api.app import create_app
from tests.test_api_roundtrip import embedded_settings

MAX_EXAMPLES = 8
HOME = Path(tempfile.mkdtemp(prefix="deltazoo-fuzz-")) / "home"

app = create_app(embedded_settings(HOME))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def running_app() -> Iterator[TestClient]:
    with TestClient(app) as client:  # runs the lifespan (store, in-process runner)
        yield client


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
