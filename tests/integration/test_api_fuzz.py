"""Schemathesis against a running `zns-gate serve`, from the committed `schemas/openapi.json`.

For every operation it generates requests, valid and invalid, and checks that
no input gets a 5xx and that every answer is one the document declares (its
status, content type, headers and schema). The service runs as its own
process on the embedded log, as `zns-gate serve` out of the box does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve import Served

ROOT = Path(__file__).resolve().parents[2]
schema = schemathesis.openapi.from_path(ROOT / "schemas" / "openapi.json")
# Valid and invalid requests both; the same ones on every run, so CI is repeatable.
schema.config.generation.update(deterministic=True)
# The webhook is fuzzed by its own suite (signatures); here the 401 it answers is enough.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`zns-gate serve` on the embedded log, ready; its base URL."""
    served = Served(tmp_path_factory.mktemp("fuzz"))
    url = served.url
    deadline = time.monotonic() + 30
    while True:
        assert served.alive, served.tail()
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "zns-gate serve never became ready"
        time.sleep(0.1)
    yield url
    assert served.stop() == 0, served.tail()


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_input_gets_a_5xx_and_every_answer_is_declared(
    case: schemathesis.Case[Any], served: str
) -> None:
    case.call_and_validate(base_url=served, checks=CHECKS, timeout=10)


def test_the_fuzzed_service_stayed_healthy(served: str) -> None:
    """After everything above, it still answers and is ready (nothing it accepted broke it)."""
    assert requests.get(f"{served}/readyz", timeout=5).status_code == 200
    quota = requests.get(f"{served}/v1/oas/1/quota", timeout=5)
    assert quota.status_code == 200
