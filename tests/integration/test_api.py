"""The /v1 API on both backends: answers from the processor's state, validation, access."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from service.api.models import ErrorBody
from service.api.openapi import OPERATIONS, statuses
from service.domain.records import recipient_hash
from tests import feed, zalo
from tests.conftest import RunningService, ServiceFactory

ROOT = Path(__file__).resolve().parents[2]
OA = zalo.OA_ID
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


async def call(
    service: RunningService,
    method: str,
    path: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One request, repeated after `Retry-After` while the answer is a 503 `restoring` (a
    partition moving in the group), as a sender's client does."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        async with service.client.request(method, path, data=data, headers=headers) as response:
            status, body = response.status, await response.json()
            retry = response.headers.get("Retry-After")
            conforms(method, path, status, body)
            if not (status == 503 and body["error"]["code"] == "restoring" and retry):
                return status, body, dict(response.headers)
        assert asyncio.get_running_loop().time() < deadline, "the partition never came back"
        await asyncio.sleep(float(retry))


def conforms(method: str, path: str, status: int, body: Any) -> None:
    """The answer is one the OpenAPI document (`schemas/openapi.json`) declares, in the
    shape of its model (the models forbid fields they do not name)."""
    route = path.split("?")[0]
    for op in OPERATIONS:
        pattern = re.sub(r"\{[a-z_]+\}", "[^/]+", op.path) + "$"
        if op.method == method.lower() and re.match(pattern, route):
            break
    else:
        raise AssertionError(f"{method} {route} is not in the OpenAPI document")
    if status == 200:
        if op.answer is not None:
            op.answer.model_validate(body)
    else:
        assert status in statuses(op), f"{method} {route}: {status} is not declared"
        ErrorBody.model_validate(body)


async def get(service: RunningService, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, body, _ = await call(service, "GET", path, headers=headers)
    return status, body


async def post(
    service: RunningService, path: str, body: Any, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    status, answer, _ = await call(service, "POST", path, data, headers)
    return status, answer


async def post_webhook(service: RunningService, raw: feed.Raw) -> None:
    hook = zalo.Webhooks().from_payload(orjson.loads(raw.value), server=raw.headers.get("server"))
    status, _ = await service.post(hook)
    assert status == 200


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.1)


async def ready(service: RunningService) -> None:
    async def check() -> bool:
        async with service.client.get("/readyz") as response:
            return response.status == 200

    await eventually(check)


def send(tracking: str, **fields: Any) -> dict[str, Any]:
    return {
        "template_id": "t1",
        "tag": 2,
        "tracking_id": tracking,
        "sent_time": str(int(NOW.timestamp() * 1000)),
        "error": 0,
        **fields,
    }


async def test_an_unknown_oa_is_new_on_its_rule_sets_defaults(service: RunningService) -> None:
    await ready(service)
    status, quota = await get(service, "/v1/oas/111222333/quota")
    assert status == 200
    assert quota["daily_quota"] == 20_000
    assert quota["remaining_today"] == 20_000
    assert quota["by_tag"] == {"1": 20_000, "2": 20_000, "3": 10_000}  # the first-month bonus
    assert quota["promotion"] == {
        "monthly_quota": 10_000,
        "remaining_month": 10_000,
        "estimated_next_month": 0,
    }
    assert quota["allowed_tags"] == [1, 2, 3]
    assert quota["suspended"] is False
    assert quota["penalties"] == []
    assert quota["next_evaluation_at"] is None
    status, zalo_shape = await get(service, "/v1/oas/111222333/message/quota")
    assert zalo_shape == {
        "error": 0,
        "message": "Success",
        "data": {
            "dailyQuota": 20_000,
            "remainingQuota": 20_000,
            "dailyQuotaPromotion": None,
            "remainingQuotaPromotion": None,
            "monthlyPromotionQuota": 10_000,
            "remainingMonthlyPromotionQuota": 10_000,
            "estimatedNextMonthPromotionQuota": 0,
        },
    }
    status, quality = await get(service, "/v1/oas/111222333/quality")
    assert (quality["quality_48h"], quality["quality_7d"], quality["score"]) == (
        "UNDEFINED",
        "UNDEFINED",
        None,
    )


async def test_sends_and_webhooks_show_in_quota_quality_and_templates(
    service: RunningService,
) -> None:
    await ready(service)
    sends = [send(f"tr{i}", msg_id=f"m{i}", recipient="0901234567") for i in range(4)]
    status, answer = await post(service, f"/v1/oas/{OA}/sends", {"sends": [*sends, sends[0]]})
    assert (status, answer) == (200, {"accepted": 4, "duplicates": 1})
    for i in range(4):
        await post_webhook(service, feed.receipt(f"m{i}", NOW + timedelta(seconds=10)))
    await post_webhook(service, feed.rating("m0", 1, NOW + timedelta(seconds=20)))

    async def folded() -> bool:
        status, quality = await get(service, f"/v1/oas/{OA}/quality")
        return status == 200 and bool(quality["proxy"]["negatives_48h"] == 1)

    await eventually(folded)
    _, quality = await get(service, f"/v1/oas/{OA}/quality")
    assert quality["proxy"]["delivered_48h"] == 4
    assert quality["proxy"]["quality_48h"] == "LOW"  # 1 of 4, by the Wilson bound
    assert quality["tier_basis"] == "proxy"
    assert quality["forecast"]["negatives_today"] == 1
    assert quality["forecast"]["negatives_before_penalty"] == 399
    assert any("1 of 4" in line for line in quality["explanation"])
    _, quota = await get(service, f"/v1/oas/{OA}/quota")
    assert quota["remaining_today"] == 20_000 - 4
    assert quota["next_evaluation_at"] is not None
    assert {p["reason"] for p in quota["penalties"]} >= {"quality_low"}
    status, template = await get(service, f"/v1/oas/{OA}/templates/t1")
    assert status == 200
    assert template["counts"]["delivered_7d"] == 4
    assert template["paused"] is True  # the proxy turned LOW: zns-gate's first pause
    assert (await get(service, f"/v1/oas/{OA}/templates/nope"))[0] == 404
    _, listing = await get(service, "/v1/oas")
    assert [oa["oa_id"] for oa in listing["oas"]] == [OA]


async def test_sync_and_resume_are_applied(service: RunningService) -> None:
    await ready(service)
    as_of = str(int(NOW.timestamp() * 1000))
    status, _ = await post(
        service,
        f"/v1/oas/{OA}/sync",
        {"as_of": as_of, "daily_quota": 50_000, "remaining_quota": 123},
    )
    assert status == 200
    status, _ = await post(service, f"/v1/oas/{OA}/sends", {"sends": [send("bad", error=-1351)]})
    assert status == 200

    async def applied() -> bool:
        status, quota = await get(service, f"/v1/oas/{OA}/quota")
        if status != 200:
            return False
        return bool(quota["daily_quota"] == 50_000 and quota["suspended"])

    await eventually(applied)
    _, quota = await get(service, f"/v1/oas/{OA}/quota")
    assert quota["remaining_today"] == 123
    assert quota["by_tag"]["2"] == 0  # suspended
    assert (await post(service, f"/v1/oas/{OA}/resume", {}))[0] == 200

    async def resumed() -> bool:
        status, quota = await get(service, f"/v1/oas/{OA}/quota")
        return status == 200 and not quota["suspended"]

    await eventually(resumed)


async def test_bad_bodies_get_4xx_and_append_nothing(service: RunningService) -> None:
    await ready(service)
    before = len(await service.events())
    path = f"/v1/oas/{OA}/sends"
    assert await post(service, path, b"{nope") == (
        400,
        {"error": {"code": "malformed_json", "message": "the body is not JSON"}},
    )
    status, body = await post(service, path, {"sends": [{"template_id": "t1", "error": 0}]})
    assert (status, body["error"]["code"]) == (422, "invalid_request")
    assert "tracking_id" in body["error"]["message"]
    status, body = await post(service, path, {"sends": [send("x", recipient="not a phone")]})
    assert (status, body["error"]["code"]) == (422, "invalid_request")
    status, body = await post(service, f"/v1/oas/{OA}/sync", {"as_of": "1", "quality_7d": "OK"})
    assert (status, body["error"]["code"]) == (422, "invalid_request")
    assert len(await service.events()) == before


async def test_tokens_and_scopes(service_factory: ServiceFactory) -> None:
    reader, sender = "r" * 20, "s" * 20
    service = await service_factory(
        api={
            "tokens": [
                {"token": reader, "scopes": ["read"]},
                {"token": sender, "scopes": ["read", "send"]},
            ]
        }
    )
    await ready(service)
    path = f"/v1/oas/{OA}/quota"
    assert (await get(service, path))[1]["error"]["code"] == "unauthenticated"
    assert (await get(service, path, token="x" * 20))[0] == 401
    assert (await get(service, path, token=reader))[0] == 200
    body = {"sends": [send("t")]}
    status, answer = await post(service, f"/v1/oas/{OA}/sends", body, token=reader)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert (await post(service, f"/v1/oas/{OA}/sends", body, token=sender))[0] == 200
    assert (await post(service, f"/v1/oas/{OA}/resume", {}, token=sender))[0] == 403
    assert (await get(service, "/healthz"))[0] == 200  # outside /v1: no token needed


async def test_without_a_processor_reads_answer_503(service_factory: ServiceFactory) -> None:
    service = await service_factory(processor={"enabled": False})
    async with service.client.get(f"/v1/oas/{OA}/quota") as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "processor_disabled"


def test_recipients_are_hashed_before_they_reach_the_log() -> None:
    from service.api.models import SendItem

    item = SendItem.model_validate(send("x", recipient="+84 90 123 4567"))
    assert item.recipient == recipient_hash("84901234567")


async def admit(service: RunningService, **body: Any) -> tuple[int, Any, dict[str, str]]:
    return await call(
        service,
        "POST",
        f"/v1/oas/{OA}/admissions",
        orjson.dumps(body),
        {"Content-Type": "application/json"},
    )


async def test_an_admission_is_granted_applied_at_once_and_idempotent(
    service: RunningService,
) -> None:
    await ready(service)
    status, answer, headers = await admit(
        service, template_id="t1", tag=2, count=5, idempotency_key="k1"
    )
    assert status == 200
    assert (answer["granted"], answer["denied"], answer["remaining"]) == (5, [], 19_995)
    assert headers["X-RateLimit-Remaining"] == "19995"
    assert 0 < int(headers["X-RateLimit-Reset"]) <= 86_400
    _, quota = await get(service, f"/v1/oas/{OA}/quota")
    assert quota["remaining_today"] == 19_995  # the owner applied the grant at once
    again = await admit(service, template_id="t1", tag=2, count=5, idempotency_key="k1")
    assert again[1] == answer  # the same answer, nothing more granted
    assert (await get(service, f"/v1/oas/{OA}/quota"))[1]["remaining_today"] == 19_995
    status, conflict, _ = await admit(
        service, template_id="t1", tag=2, count=6, idempotency_key="k1"
    )
    assert (status, conflict["error"]["code"]) == (409, "idempotency_conflict")
    # The template's tag is known now; an unknown template needs one.
    assert (await admit(service, template_id="t1", idempotency_key="k2"))[1]["granted"] == 1
    status, body, _ = await admit(service, template_id="t9", idempotency_key="k3")
    assert (status, body["error"]["code"]) == (422, "tag_required")
    status, body, _ = await admit(
        service, template_id="t1", tag=2, recipients=["0901234567"], count=2, idempotency_key="k4"
    )
    assert (status, body["error"]["code"]) == (422, "invalid_request")
    status, body, _ = await admit(service, template_id="t1", tag=4, idempotency_key="k5")
    assert (status, body["error"]["code"]) == (422, "invalid_request")


async def test_concurrent_admissions_never_grant_more_than_remains(
    service: RunningService,
) -> None:
    await ready(service)
    as_of = str(int(NOW.timestamp() * 1000))
    await post(service, f"/v1/oas/{OA}/sync", {"as_of": as_of, "remaining_quota": 50})

    async def synced() -> bool:
        status, quota = await get(service, f"/v1/oas/{OA}/quota")
        return status == 200 and quota["remaining_today"] == 50

    await eventually(synced)
    answers = await asyncio.gather(
        *(admit(service, template_id="t1", tag=2, idempotency_key=f"c{i}") for i in range(200))
    )
    assert all(status == 200 for status, _, _ in answers)
    assert sum(answer["granted"] for _, answer, _ in answers) == 50
    reasons = {d["reason"] for _, answer, _ in answers for d in answer["denied"]}
    assert reasons == {"daily_quota_exhausted"}


async def test_the_same_key_after_a_restart_gets_the_first_answer(
    service_factory: ServiceFactory,
) -> None:
    first = await service_factory()
    await ready(first)
    _, answer, _ = await admit(first, template_id="t1", tag=2, count=3, idempotency_key="r1")
    await first.client.close()  # a checkpoint on the way out; the embedded file is released
    second = await service_factory()
    await ready(second)
    _, again, _ = await admit(second, template_id="t1", tag=2, count=3, idempotency_key="r1")
    assert again == answer
    assert (await get(second, f"/v1/oas/{OA}/quota"))[1]["remaining_today"] == 20_000 - 3


async def test_the_openapi_document_is_served_and_names_every_route(
    service: RunningService,
) -> None:
    status, served, _ = await call(service, "GET", "/openapi.json")
    assert status == 200
    assert served == json.loads((ROOT / "schemas" / "openapi.json").read_text(encoding="utf-8"))
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in service.client.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert routes == {(op.method, op.path) for op in OPERATIONS}
