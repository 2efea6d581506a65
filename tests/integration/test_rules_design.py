"""Rules of docs/rules.md and docs/api.md driven through HTTP on both backends with the stream
clock (`rules.clock = "stream"`): signed webhooks, sends, resumes, then the answers.

Each test is an OA of its own; T0 is 10:00 in Vietnam three days ago, so every time
posted is inside the API's bounds and behind the wall clock (the stream's "now" is
not the wall's).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests import feed
from tests.conftest import RunningService, ServiceFactory
from tests.integration.test_api import get, post, post_webhook, ready
from tests.integration.test_api_denials import folded

VN = ZoneInfo("Asia/Ho_Chi_Minh")
T0 = (datetime.now(VN) - timedelta(days=3)).replace(hour=10, minute=0, second=0, microsecond=0)
MIDNIGHT_AFTER_T0 = (T0 + timedelta(days=1)).replace(hour=0)


def ms(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def sent(tracking: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "template_id": "t1",
        "tag": 1,
        "tracking_id": tracking,
        "sent_time": ms(at),
        "error": 0,
        **fields,
    }


async def stream_service(service_factory: ServiceFactory) -> RunningService:
    service = await service_factory(rules={"clock": "stream"})
    await ready(service)
    return service


async def test_an_operators_command_does_not_move_the_stream_clock(
    service_factory: ServiceFactory,
) -> None:
    """docs/rules.md#time-and-windows: "Events with no OA id do not move any clock, and neither
    does an operator's `command`: it has no event time, and takes effect at the OA's current
    "now"."""
    service = await stream_service(service_factory)
    oa_id = "5100000000001"
    await post_webhook(service, feed.template_status("t1", "ENABLE", T0, oa_id=oa_id))
    await folded(service)
    _, quota = await get(service, f"/v1/oas/{oa_id}/quota")
    assert quota["resets_at"] == MIDNIGHT_AFTER_T0.isoformat()
    for path in (f"/v1/oas/{oa_id}/resume", f"/v1/oas/{oa_id}/templates/t1/resume"):
        status, answer = await post(service, path, {})
        assert status == 200, answer
    await folded(service)
    _, quota = await get(service, f"/v1/oas/{oa_id}/quota")
    assert quota["resets_at"] == MIDNIGHT_AFTER_T0.isoformat()
    assert quota["remaining_today"] == 20_000


async def test_a_later_value_from_zalo_ends_a_minus_144(service_factory: ServiceFactory) -> None:
    """docs/rules.md#send-errors: -144 sets "remaining today 0, until a later value from Zalo for
    today (a send's `quota`, a `sync`, `change_oa_daily_quota`) or the next day"."""
    service = await stream_service(service_factory)
    oa_id = "5100000000002"
    path = f"/v1/oas/{oa_id}/sends"
    status, _ = await post(service, path, {"sends": [sent("s1", T0, error=-144)]})
    assert status == 200
    await folded(service)
    assert (await get(service, f"/v1/oas/{oa_id}/quota"))[1]["remaining_today"] == 0
    quota = {"dailyQuota": 20_000, "remainingQuota": 300}
    later = sent("s2", T0 + timedelta(seconds=5), msg_id=f"{oa_id}-m2", quota=quota)
    status, _ = await post(service, path, {"sends": [later]})
    assert status == 200
    await folded(service)
    assert (await get(service, f"/v1/oas/{oa_id}/quota"))[1]["remaining_today"] == 300


async def test_duplicates_are_counted_against_earlier_requests(
    service_factory: ServiceFactory,
) -> None:
    """docs/api.md: `POST /v1/oas/{oa_id}/sends` "answers `{"accepted": n, "duplicates": n}`:
    `duplicates` counts the items already recorded (by `tracking_id` or `msg_id`), in this
    request or an earlier one; `accepted` the others"."""
    service = await stream_service(service_factory)
    oa_id = "5100000000003"
    path = f"/v1/oas/{oa_id}/sends"
    body = {"sends": [sent("s1", T0, msg_id=f"{oa_id}-m1")]}
    assert await post(service, path, body) == (200, {"accepted": 1, "duplicates": 0})
    # At once (maybe before the processor folded the first) and after it did.
    assert await post(service, path, body) == (200, {"accepted": 0, "duplicates": 1})
    await folded(service)
    assert await post(service, path, body) == (200, {"accepted": 0, "duplicates": 1})
    # The same message under another tracking id, and within one request.
    again = sent("s1-retry", T0, msg_id=f"{oa_id}-m1")
    other = sent("s2", T0, msg_id=f"{oa_id}-m2")
    assert await post(service, path, {"sends": [again, other, other]}) == (
        200,
        {"accepted": 1, "duplicates": 2},
    )
    # Concurrent repeats: one of them is the first.
    fresh = {"sends": [sent("s3", T0, msg_id=f"{oa_id}-m3")]}
    answers = await asyncio.gather(*(post(service, path, fresh) for _ in range(4)))
    assert sorted(answer["accepted"] for _, answer in answers) == [0, 0, 0, 1]
    await folded(service)
    _, quota = await get(service, f"/v1/oas/{oa_id}/quota")
    assert quota["remaining_today"] == 20_000 - 3  # the state counted each message once
