"""Schemathesis generates requests from the live OpenAPI document, schema-conforming (positive) and
schema-violating (negative); no input may produce a 5xx. Several hundred cases per run."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

pytestmark = pytest.mark.e2e

OPERATIONS = ["POST /v1/rank", "POST /v1/embed", "POST /v1/embed/content", "GET /v1/features/importance",
              "GET /v1/features/rankings", "GET /v1/features/rankings/{method}", "POST /v1/admin/reload"]
EXAMPLES = {"POST /v1/rank": 150, "POST /v1/embed": 100}  # per generation mode; others 50
CALLS: dict[str, int] = {}


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(f"{served.url}/openapi.json")


def test_every_route_is_fuzzed(api_schema):
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert set(OPERATIONS) <= labels
    assert labels - set(OPERATIONS) <= {"GET /v1/models", "GET /healthz", "GET /readyz", "GET /metrics"}


CASES = [(label, mode) for label in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
CASES += [("GET /v1/models", GenerationMode.POSITIVE), ("GET /readyz", GenerationMode.POSITIVE)]  # no inputs


@pytest.mark.parametrize("label, mode", CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_no_input_produces_a_server_error(api_schema, label, mode):
    operation = api_schema.find_operation_by_label(label)
    calls = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES.get(label, 50), deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def check(case):
        response = case.call(timeout=30)
        calls.append(response.status_code)
        assert response.status_code < 500, \
            f"{label} -> {response.status_code}: {response.text[:300]}\n{case.as_curl_command()}"
        if label == "POST /v1/admin/reload":
            assert response.status_code != 200  # no token in generated requests: never reloads

    check()
    CALLS[f"{label} {mode.value}"] = len(calls)
    assert calls


def test_fuzzing_sent_several_hundred_requests():
    """Runs after the parametrized cases above (definition order)."""
    assert sum(CALLS.values()) >= 400, CALLS
