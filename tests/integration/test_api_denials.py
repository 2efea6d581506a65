"""Every denial reason of docs/rules.md#denial-reasons, driven through HTTP on both backends.

Each case is an OA of its own: records are posted the way senders, operators and
Zalo post them (sends, syncs, signed webhooks), then an admission is asked for
until the processor has folded them, and the denial must name the reason and
Zalo's code. The clock is the stream's (`rules.clock = "stream"`): every record
is stamped 23:30 in Vietnam, so "now" is night there (the -133 case needs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from service.app import PROCESSOR
from service.log.base import TopicPartition
from tests import feed
from tests.conftest import RunningService, ServiceFactory
from tests.integration.test_api import post, post_webhook, ready

# Yesterday's: the API takes times within the log's retention, up to a few minutes ahead.
NIGHT = (datetime.now(ZoneInfo("Asia/Ho_Chi_Minh")) - timedelta(days=1)).replace(
    hour=23, minute=30, second=0, microsecond=0
)
PHONE = "0901234567"
Setup = Callable[[RunningService, str], Awaitable[None]]


def ms(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def sent(tracking: str, **fields: Any) -> dict[str, Any]:
    return {
        "template_id": "t1",
        "tag": 2,
        "tracking_id": tracking,
        "sent_time": ms(NIGHT),
        "error": 0,
        **fields,
    }


def sends(*items: dict[str, Any]) -> Setup:
    async def setup(service: RunningService, oa_id: str) -> None:
        status, answer = await post(service, f"/v1/oas/{oa_id}/sends", {"sends": list(items)})
        assert status == 200, answer

    return setup


def sync(**fields: Any) -> Setup:
    async def setup(service: RunningService, oa_id: str) -> None:
        status, answer = await post(
            service, f"/v1/oas/{oa_id}/sync", {"as_of": ms(NIGHT), **fields}
        )
        assert status == 200, answer

    return setup


async def nothing(service: RunningService, oa_id: str) -> None:
    return None


async def low_template(service: RunningService, oa_id: str) -> None:
    """Four messages of t1 delivered, one rated a star: its 7-day proxy quality is LOW."""
    await sends(*(sent(f"tr{i}", msg_id=f"{oa_id}-m{i}", recipient=PHONE) for i in range(4)))(
        service, oa_id
    )
    later = NIGHT + timedelta(seconds=10)
    for i in range(4):
        await post_webhook(service, feed.receipt(f"{oa_id}-m{i}", later, oa_id=oa_id))
    await post_webhook(service, feed.rating(f"{oa_id}-m0", 1, later, oa_id=oa_id))


CASES: list[tuple[str, int | None, Setup, dict[str, Any]]] = [
    ("oa_suspended", -1351, sends(sent("s", error=-1351)), {}),
    ("template_not_enabled", -131, sync(templates=[{"template_id": "t1", "status": "REJECT"}]), {}),
    ("template_disabled", -146, sync(templates=[{"template_id": "t1", "quality": "LOW"}]), {}),
    ("template_paused", None, low_template, {}),
    ("tag_not_allowed", -145, sync(allowed_tags=[1]), {}),
    ("night_window", -133, sends(sent("s", error=-133)), {}),
    ("daily_quota_exhausted", -144, sync(remaining_quota=0), {}),
    ("template_daily_quota_exhausted", -147, sends(sent("s", error=-147)), {}),
    (
        "promotion_monthly_quota_exhausted",
        -1441,
        sync(monthly_promotion_quota=0, remaining_monthly_promotion_quota=0),
        {"tag": 3},
    ),
    ("governor_throttled", None, sync(quality_48h="LOW", quality_7d="LOW"), {"tag": 3}),
    # Sent with another template: the -141 is a negative signal that would pause t1 first.
    (
        "recipient_opted_out",
        -141,
        sends(sent("s", error=-141, recipient=PHONE, template_id="t9")),
        {},
    ),
    ("recipient_not_eligible", -140, nothing, {"tag": 3}),
    (
        "recipient_promotion_limit",
        -1472,
        sends(sent("a", recipient=PHONE), sent("b", tag=3, recipient=PHONE, template_id="t3")),
        {"tag": 3},
    ),
]


@pytest.mark.parametrize(
    ("reason", "zalo_error", "setup", "asked"), CASES, ids=[c[0] for c in CASES]
)
async def test_each_denial_reason_through_http(
    service_factory: ServiceFactory,
    reason: str,
    zalo_error: int | None,
    setup: Setup,
    asked: dict[str, Any],
) -> None:
    service = await service_factory(rules={"clock": "stream"})
    await ready(service)
    oa_id = f"77{CASES.index((reason, zalo_error, setup, asked)):012d}"
    await setup(service, oa_id)
    await folded(service)
    body = {"template_id": "t1", "tag": 2, "recipients": [PHONE], "idempotency_key": "k", **asked}
    status, answer = await post(service, f"/v1/oas/{oa_id}/admissions", body)
    assert status == 200, answer
    assert answer["granted"] == 0, answer
    [denial] = answer["denied"]
    assert (denial["reason"], denial["count"]) == (reason, 1)
    assert denial.get("zalo_error") == zalo_error


async def folded(service: RunningService) -> None:
    """Until the processor has folded every record appended so far."""
    log, processor = service.log, service.client.app[PROCESSOR]
    ends = await log.end_offsets(
        TopicPartition(log.topics.events, p) for p in range(log.partitions)
    )
    async with asyncio.timeout(30):
        while not all(
            tp.partition in processor.folders
            and processor.folders[tp.partition].position + 1 >= end
            for tp, end in ends.items()
        ):
            await asyncio.sleep(0.02)
