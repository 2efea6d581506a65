"""Schemathesis against a running `zns-gate serve`, from the committed `schemas/openapi.json`.

For every operation it generates requests, valid and invalid, and checks that
no input gets a 5xx and that every answer is one the document declares (its
status, content type, headers and schema). Hypothesis then sends values just
and far outside the input bounds (times, quotas, counts, ids) to one OA: each
gets a 4xx, and that OA's state shows none of them. The service runs as its own
process on the embedded log, as `zns-gate serve` out of the box does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


# --- out of bounds ----------------------------------------------------------------------------

BOUNDED_OA = "fuzz-bounds"
_NOW_MS = int(datetime.now(UTC).timestamp() * 1000)
_DAY_MS = 86_400_000
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TRACKING = re.compile(r"[A-Za-z0-9_.:-]{1,48}")


bad_times = st.one_of(
    st.just(0),
    st.integers(min_value=-(10**15), max_value=_NOW_MS - 201 * _DAY_MS),
    # A day ahead, not just past the 5 minutes allowed: _NOW_MS is taken when the module is
    # imported, and the suite may reach this test many minutes later.
    st.integers(min_value=_NOW_MS + _DAY_MS, max_value=10**16 - 1),
).flatmap(lambda ms: st.sampled_from([ms, str(ms)]))
bad_quotas = st.one_of(
    st.integers(min_value=-(2**63), max_value=-1),
    st.integers(min_value=10_000_001, max_value=2**64 - 1),
)
bad_counts = st.one_of(
    st.integers(min_value=10_001, max_value=2**63), st.integers(min_value=-(2**63), max_value=0)
)
bad_ids = st.one_of(
    st.text(alphabet="0123456789abc", min_size=65, max_size=80),
    st.text(min_size=1, max_size=20).filter(lambda s: not _ID.fullmatch(s)),
)
bad_tracking = st.one_of(
    st.text(alphabet="xyz", min_size=49, max_size=60),
    st.text(min_size=1, max_size=20).filter(lambda s: not _TRACKING.fullmatch(s)),
)


def _send(**fields: Any) -> dict[str, Any]:
    return {
        "template_id": "tpl",
        "tag": 2,
        "tracking_id": "fuzz",
        "sent_time": str(_NOW_MS),
        "error": 0,
        **fields,
    }


def _sync(**fields: Any) -> dict[str, Any]:
    return {"as_of": str(_NOW_MS), **fields}


def _admission(**fields: Any) -> dict[str, Any]:
    return {"template_id": "tpl", "tag": 2, "idempotency_key": "fuzz", **fields}


out_of_bounds = st.one_of(
    bad_times.map(lambda t: ("sends", {"sends": [_send(sent_time=t)]})),
    bad_quotas.map(lambda q: ("sends", {"sends": [_send(quota={"dailyQuota": q})]})),
    bad_quotas.map(lambda q: ("sends", {"sends": [_send(quota={"remainingQuota": q})]})),
    bad_ids.map(lambda i: ("sends", {"sends": [_send(template_id=i)]})),
    bad_tracking.map(lambda i: ("sends", {"sends": [_send(tracking_id=i)]})),
    bad_times.map(lambda t: ("sync", _sync(as_of=t))),
    st.sampled_from(
        [
            "daily_quota",
            "remaining_quota",
            "monthly_promotion_quota",
            "remaining_monthly_promotion_quota",
        ]
    ).flatmap(lambda name: bad_quotas.map(lambda q: ("sync", _sync(**{name: q})))),
    bad_ids.map(lambda i: ("sync", _sync(templates=[{"template_id": i}]))),
    st.text(min_size=65, max_size=200).map(
        lambda s: ("sync", _sync(templates=[{"template_id": "tpl", "status": s}]))
    ),
    bad_counts.map(lambda c: ("admissions", _admission(count=c))),
    bad_ids.map(lambda i: ("admissions", _admission(template_id=i))),
)


@given(case=out_of_bounds)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_values_out_of_bounds_get_a_4xx(case: tuple[str, dict[str, Any]], served: str) -> None:
    path, body = case
    answer = requests.post(f"{served}/v1/oas/{BOUNDED_OA}/{path}", json=body, timeout=10)
    assert 400 <= answer.status_code < 500, (body, answer.text)
    assert answer.json()["error"]["code"] == "invalid_request", (body, answer.text)


def test_values_out_of_bounds_changed_nothing(served: str) -> None:
    """Records of one OA are folded in order: once a last, valid sync shows, the refused
    requests before it would have shown too."""
    sentinel = _sync(templates=[{"template_id": "sentinel", "status": "ENABLE"}])
    assert requests.post(f"{served}/v1/oas/{BOUNDED_OA}/sync", json=sentinel, timeout=5).ok
    deadline = time.monotonic() + 30
    while True:
        templates = requests.get(f"{served}/v1/oas/{BOUNDED_OA}/templates", timeout=5)
        if templates.status_code == 200 and templates.json()["templates"]:
            break
        assert time.monotonic() < deadline, "the sentinel sync was never folded"
        time.sleep(0.1)
    assert [t["template_id"] for t in templates.json()["templates"]] == ["sentinel"]
    quota = requests.get(f"{served}/v1/oas/{BOUNDED_OA}/quota", timeout=5).json()
    assert (quota["daily_quota"], quota["remaining_today"]) == (20_000, 20_000)
    assert quota["promotion"]["monthly_quota"] == 10_000
    assert quota["next_evaluation_at"] is None  # no send was ever counted
