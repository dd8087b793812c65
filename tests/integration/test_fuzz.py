"""Fuzz both doors against the server's own OpenAPI document: no input may produce a 5xx.

Hypothesis drives schemathesis' strategies directly (its pytest plugin does not support this pytest)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 20
STATUSES: list[tuple[str, int]] = []


@pytest.fixture(scope="module")
def server(server_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """A server of its own: the fuzzer may delete and copy models."""
    with BackgroundServer(server_config.with_(home=tmp_path_factory.mktemp("fuzz-home"))) as srv:
        yield srv


def test_no_input_gives_a_server_error(server: BackgroundServer) -> None:
    api = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15
    seen = 0

    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:
            nonlocal seen
            if isinstance(case.body, dict) and "model" in case.body and len(repr(case.body)) % 2:
                case.body["model"] = MODEL  # half the cases reach the real model, past the name checks
            if isinstance(case.body, dict) and case.operation.path in ("/api/chat", "/api/generate"):
                options = case.body.get("options")
                if isinstance(options, dict):  # short generations: this test is about input handling
                    options["num_predict"] = 8
                elif options is None:
                    case.body["options"] = {"num_predict": 8}
            for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
                if isinstance(case.body, dict) and isinstance(case.body.get(field), int):
                    case.body[field] = min(case.body[field], 8)
            response = case.call(base_url=server.base_url, timeout=120)
            case.validate_response(response, checks=[not_a_server_error])
            assert b"Traceback" not in response.content
            seen += 1
            STATUSES.append((case.operation.path, response.status_code))

        fuzz()
    assert seen >= len(operations) * 5
    reached = {path for path, status in STATUSES if status == 200}
    assert {"/api/chat", "/api/generate", "/api/embed"} & reached, STATUSES  # past validation too
