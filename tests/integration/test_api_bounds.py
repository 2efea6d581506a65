"""What the API refuses at the door, on both backends: times, quotas, counts, ids and
content types out of bounds get a 4xx with the service's error body and append nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from service.domain.records import AdmissionRecord
from tests import zalo
from tests.conftest import RunningService, ServiceFactory
from tests.integration.test_api import call, eventually, get, post, ready, send

OA = zalo.OA_ID


def ms(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


NOW = datetime.now(UTC)
# A day ahead, not minutes: NOW is taken at import, and a test may run long after it.
FAR_FUTURE, TOO_OLD = ms(NOW + timedelta(days=1)), ms(NOW - timedelta(days=201))
BAD_TIMES = ["0", "9999999999999999", "-62135596800001", FAR_FUTURE, TOO_OLD]


async def refused(
    service: RunningService,
    path: str,
    body: Any,
    status: int = 422,
    code: str = "invalid_request",
    naming: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """`body` posted to `path` gets `status` with `code` (its message naming `naming`), and
    nothing reaches the log."""
    before = len(await service.events())
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    sent_headers = {"Content-Type": "application/json"} if headers is None else headers
    answer_status, answer, _ = await call(service, "POST", path, data, sent_headers)
    assert (answer_status, answer["error"]["code"]) == (status, code), (body, answer)
    if naming is not None:
        assert naming in answer["error"]["message"], answer
    assert len(await service.events()) == before


@pytest.mark.parametrize("when", BAD_TIMES)
async def test_times_outside_retention_and_the_near_future_are_refused(
    service: RunningService, when: str
) -> None:
    await ready(service)
    body = {"sends": [send("ok"), send("t", sent_time=when)]}
    await refused(service, f"/v1/oas/{OA}/sends", body, naming="sends.1.sent_time")
    await refused(service, f"/v1/oas/{OA}/sync", {"as_of": when}, naming="as_of")


async def test_times_within_the_bounds_are_taken(service: RunningService) -> None:
    await ready(service)
    near = ms(datetime.now(UTC) + timedelta(minutes=4))
    old = ms(NOW - timedelta(days=199))
    body = {"sends": [send("a", sent_time=near), send("b", sent_time=old)]}
    assert (await post(service, f"/v1/oas/{OA}/sends", body))[0] == 200
    assert (await post(service, f"/v1/oas/{OA}/sync", {"as_of": near}))[0] == 200


@pytest.mark.parametrize(
    "quota",
    [
        {"dailyQuota": 10**15},
        {"dailyQuota": -5},
        {"remainingQuota": -1},
        {"remainingQuota": 10_000_001},
        {"dailyQuota": 1_000, "remainingQuota": 1_001},
    ],
)
async def test_a_sends_quota_out_of_bounds_is_refused(
    service: RunningService, quota: dict[str, Any]
) -> None:
    await ready(service)
    body = {"sends": [send("t", quota=quota)]}
    await refused(service, f"/v1/oas/{OA}/sends", body, naming="quota")


@pytest.mark.parametrize(
    "fields",
    [
        {"daily_quota": -100},
        {"daily_quota": 2**63},
        {"daily_quota": -(2**63)},
        {"remaining_quota": 10_000_001},
        {"monthly_promotion_quota": 2**63},
        {"remaining_monthly_promotion_quota": -1},
        {"daily_quota": 1_000, "remaining_quota": 1_001},
        {"templates": [{"template_id": "t1", "status": "E" * 50_000}]},
        {"templates": [{"template_id": "t1", "quality": "L" * 65}]},
        {"templates": [{"template_id": f"t{i}"} for i in range(1_001)]},
        {"templates": [{"template_id": "t" * 65}]},
    ],
)
async def test_a_sync_out_of_bounds_is_refused(
    service: RunningService, fields: dict[str, Any]
) -> None:
    await ready(service)
    await refused(service, f"/v1/oas/{OA}/sync", {"as_of": ms(NOW), **fields})


async def test_a_sync_at_the_bounds_is_taken(service: RunningService) -> None:
    await ready(service)
    body = {
        "as_of": ms(NOW),
        "daily_quota": 10_000_000,
        "remaining_quota": 10_000_000,
        "templates": [{"template_id": f"t{i}", "status": "ENABLE"} for i in range(1_000)],
    }
    assert (await post(service, f"/v1/oas/{OA}/sync", body))[0] == 200


async def test_an_unlimited_daily_quota_in_a_send_report_reaches_the_fold(
    service: RunningService,
) -> None:
    await ready(service)
    body = {"sends": [send("u", quota={"dailyQuota": None, "remainingQuota": None})]}
    assert (await post(service, f"/v1/oas/{OA}/sends", body))[0] == 200

    async def unlimited() -> bool:
        status, quota = await get(service, f"/v1/oas/{OA}/quota")
        return status == 200 and quota["daily_quota"] is None

    await eventually(unlimited)
    [record] = [r for r in await service.events() if r.key == OA.encode()]
    assert orjson.loads(record.value)["send"]["quota"] == {
        "dailyQuota": None,
        "remainingQuota": None,
    }


@pytest.mark.parametrize(
    "item",
    [
        {"tracking_id": "t" * 49},
        {"tracking_id": "order 77"},
        {"tracking_id": "order/77"},
        {"template_id": "t" * 65},
        {"template_id": "t:1"},
        {"template_id": "t/1"},
    ],
)
async def test_ids_out_of_bounds_in_a_send_are_refused(
    service: RunningService, item: dict[str, Any]
) -> None:
    await ready(service)
    await refused(service, f"/v1/oas/{OA}/sends", {"sends": [send("t", **item)]})


async def test_ids_at_the_bounds_are_taken(service: RunningService) -> None:
    await ready(service)
    item = send("Ab0_.:-" + "x" * 41, template_id="Tt9_.-" + "y" * 58)
    assert (await post(service, f"/v1/oas/{OA}/sends", {"sends": [item]}))[0] == 200


@pytest.mark.parametrize("template_id", ["t" * 65, "t 1", "t#1"])
async def test_a_bad_template_id_in_an_admission_is_refused(
    service: RunningService, template_id: str
) -> None:
    await ready(service)
    body = {"template_id": template_id, "tag": 2, "idempotency_key": "k"}
    await refused(service, f"/v1/oas/{OA}/admissions", body, naming="template_id")


@pytest.mark.parametrize("oa_id", ["9" * 65, "a%20b", "a:b", "a%2Fb"])
async def test_a_bad_oa_id_in_the_path_is_a_400(service: RunningService, oa_id: str) -> None:
    await ready(service)
    status, body, _ = await call(service, "GET", f"/v1/oas/{oa_id}/quota")
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert "oa_id" in body["error"]["message"]
    await refused(service, f"/v1/oas/{oa_id}/sends", {"sends": [send("t")]}, 400, "bad_request")
    await refused(service, f"/v1/oas/{OA}/templates/{oa_id}/resume", {}, 400, "bad_request")


@pytest.mark.parametrize(
    "body",
    [
        {"count": 10_001},
        {"count": 1_000_000},
        {"recipients": [f"849{i:08d}" for i in range(10_001)]},
    ],
)
async def test_an_admission_beyond_the_unit_bound_is_refused(
    service: RunningService, body: dict[str, Any]
) -> None:
    await ready(service)
    admission = {"template_id": "t1", "tag": 2, "idempotency_key": "k", **body}
    naming = "count" if "count" in body else "recipients"
    await refused(service, f"/v1/oas/{OA}/admissions", admission, naming=naming)


async def test_the_unit_bound_is_a_setting(service_factory: ServiceFactory) -> None:
    service = await service_factory(api={"max_admission_units": 5})
    await ready(service)
    path = f"/v1/oas/{OA}/admissions"
    body = {"template_id": "t1", "tag": 2, "idempotency_key": "k"}
    await refused(service, path, {**body, "count": 6}, naming="count")
    phones = [f"849{i:08d}" for i in range(6)]
    await refused(service, path, {**body, "recipients": phones}, naming="recipients")
    assert (await post(service, path, {**body, "count": 5}))[1]["granted"] == 5


async def test_a_denied_admission_names_100_recipients_and_a_repeat_gets_the_same_answer(
    service: RunningService,
) -> None:
    await ready(service)
    await post(service, f"/v1/oas/{OA}/sync", {"as_of": ms(NOW), "remaining_quota": 0})

    async def synced() -> bool:
        status, quota = await get(service, f"/v1/oas/{OA}/quota")
        return status == 200 and quota["remaining_today"] == 0

    await eventually(synced)
    phones = [f"849{i:08d}" for i in range(3_000)]
    body = {"template_id": "t1", "tag": 2, "recipients": phones, "idempotency_key": "big"}
    status, first = await post(service, f"/v1/oas/{OA}/admissions", body)
    assert status == 200
    assert len(first["denied"]) == 101
    assert first["denied"][-1] == {
        "recipient": None,
        "count": 2_900,
        "reason": "daily_quota_exhausted",
        "zalo_error": -144,
    }
    assert (await post(service, f"/v1/oas/{OA}/admissions", body)) == (200, first)


async def test_the_largest_admission_record_is_accepted_by_the_log(
    service: RunningService,
) -> None:
    """10,000 recipients granted: the largest admission record, well within the broker's
    default limit of about 1 MB."""
    await ready(service)
    phones = [f"849{i:08d}" for i in range(10_000)]
    body = {"template_id": "t1", "tag": 2, "recipients": phones, "idempotency_key": "huge"}
    status, answer = await post(service, f"/v1/oas/{OA}/admissions", body)
    assert (status, answer["granted"]) == (200, 10_000)
    [record] = [r for r in await service.events() if r.key == OA.encode()]
    assert len(record.value) < 1_000_000
    assert len(AdmissionRecord.model_validate_json(record.value).granted_recipients) == 10_000


def test_the_worst_admission_record_fits_the_brokers_default_limit() -> None:
    """Every unit named, 100 denials named and every reason counted: under 1,000,000 bytes
    (the Kafka log's batch size, within the broker's default 1 MiB)."""
    from service.domain.admission import NAMED_DENIALS, ZALO_ERRORS

    hashes = ["f" * 64] * 10_000
    denied = [
        {
            "recipient": "e" * 64,
            "count": 1,
            "reason": "recipient_promotion_limit",
            "zalo_error": -1472,
        }
    ] * NAMED_DENIALS + [
        {"count": 10_000, "reason": reason, "zalo_error": code}
        for reason, code in ZALO_ERRORS.items()
    ]
    record = AdmissionRecord.model_validate(
        {
            "oa_id": "9" * 64,
            "admission_id": "a" * 32,
            "idempotency_key": "k" * 200,
            "request_hash": "0" * 64,
            "template_id": "t" * 64,
            "tag": 3,
            "granted_recipients": hashes,
            "at": ms(NOW),
            "answer": {
                "admission_id": "a" * 32,
                "granted": 10_000,
                "denied": denied,
                "remaining": 10_000_000,
                "retry_after_s": 2_678_400,
            },
        }
    )
    assert len(record.model_dump_json().encode()) < 1_000_000


@pytest.mark.parametrize(
    ("path", "content_type", "data"),
    [
        ("sends", "text/plain", orjson.dumps({"sends": [send("t")]})),
        ("sends", "application/x-www-form-urlencoded", b"sends=1"),
        ("admissions", "multipart/form-data; boundary=x", b"--x--"),
        ("sync", "text/plain", b"{}"),
        ("resume", None, b""),
    ],
)
async def test_v1_posts_take_json_only(
    service: RunningService, path: str, content_type: str | None, data: bytes
) -> None:
    await ready(service)
    headers = {} if content_type is None else {"Content-Type": content_type}
    await refused(
        service, f"/v1/oas/{OA}/{path}", data, 415, "unsupported_media_type", headers=headers
    )
    json_utf8 = {"Content-Type": "application/json; charset=utf-8"}
    status, _, _ = await call(service, "POST", f"/v1/oas/{OA}/resume", b"{}", json_utf8)
    assert status == 200


async def test_head_on_a_read_needs_the_read_scope_only(service_factory: ServiceFactory) -> None:
    reader = "r" * 20
    service = await service_factory(api={"tokens": [{"token": reader, "scopes": ["read"]}]})
    await ready(service)
    headers = {"Authorization": f"Bearer {reader}"}
    async with service.client.head(f"/v1/oas/{OA}/quota", headers=headers) as response:
        assert response.status == 200
    async with service.client.head(f"/v1/oas/{OA}/quota") as response:
        assert response.status == 401
