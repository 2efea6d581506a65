"""The per-OA gauges of `/metrics` after records of three OAs, against the API's reads."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.app import PROCESSOR
from service.log.base import TopicPartition
from service.metrics import REGISTRY
from tests import feed, zalo
from tests.conftest import RunningService, ServiceFactory
from tests.integration.test_api import NOW, eventually, get, post, post_webhook, ready, send
from tests.integration.test_zalo_tokens import (  # noqa: F401 (fixtures)
    OA,
    REFRESH,
    Fake,
    Started,
    call,
    fake,
    gate,
    put,
)

OA_GAUGES = (
    "zns_gate_oa_daily_quota",
    "zns_gate_oa_remaining_today",
    "zns_gate_oa_negatives_today",
    "zns_gate_oa_penalty_threshold",
    "zns_gate_oa_quality",
    "zns_gate_oa_tier_down_likely",
)
LEVELS = {"UNDEFINED": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3}

Gauges = dict[str, dict[tuple[tuple[str, str], ...], float]]


def gauges_of(text: str, oa_id: str) -> Gauges:
    """`zns_gate_oa_*` samples of one OA: name -> its other labels -> value."""
    out: Gauges = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("zns_gate_oa_") and sample.labels.get("oa_id") == oa_id:
                rest = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "oa_id"))
                out.setdefault(sample.name, {})[rest] = sample.value
    return out


async def scrape(service: RunningService, oa_id: str) -> Gauges:
    async with service.client.get("/metrics") as response:
        assert response.status == 200
        return gauges_of(await response.text(), oa_id)


def other_oa(service: RunningService, *avoid: str) -> str:
    """An OA id in a partition none of `avoid` is in."""
    taken = {service.log.partition_for(oa.encode()) for oa in avoid}
    for n in range(1000):
        oa_id = f"4{n:017d}"
        if service.log.partition_for(oa_id.encode()) not in taken:
            return oa_id
    raise AssertionError("no OA id in another partition")


def expected(quota: dict[str, Any], quality: dict[str, Any]) -> Gauges:
    """The gauges GET /quota and GET /quality imply (an unlimited quota: no quota gauges)."""
    out: Gauges = {
        "zns_gate_oa_negatives_today": {(): quality["forecast"]["negatives_today"]},
        "zns_gate_oa_quality": {
            (("window", "48h"),): LEVELS[quality["quality_48h"]],
            (("window", "7d"),): LEVELS[quality["quality_7d"]],
        },
    }
    daily, projected = quota["daily_quota"], quality["forecast"]["projected_daily_quota"]
    down = projected is not None and (daily is None or projected < daily)
    out["zns_gate_oa_tier_down_likely"] = {(): 1.0 if down else 0.0}
    for name, value in (
        ("zns_gate_oa_daily_quota", daily),
        ("zns_gate_oa_remaining_today", quota["remaining_today"]),
        ("zns_gate_oa_penalty_threshold", quality["thresholds"]["penalty_threshold_today"]),
    ):
        if value is not None:
            out[name] = {(): value}
    return out


async def api_view(service: RunningService, oa_id: str) -> Gauges:
    status, quota = await get(service, f"/v1/oas/{oa_id}/quota")
    assert status == 200
    status, quality = await get(service, f"/v1/oas/{oa_id}/quality")
    assert status == 200
    return expected(quota, quality)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_each_oas_gauges_match_its_quota_and_quality_and_go_with_its_partition(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(processor={"checkpoint_interval_s": 0.2})
    await ready(service)
    low = zalo.OA_ID  # sends, receipts and a 1-star rating: LOW by the proxy
    synced = other_oa(service, low)  # Zalo's figures from a sync
    unlimited = other_oa(service, low, synced)  # an unlimited daily quota
    sends = [send(f"tr{i}", msg_id=f"m{i}", recipient="0901234567") for i in range(4)]
    assert (await post(service, f"/v1/oas/{low}/sends", {"sends": sends}))[0] == 200
    for i in range(4):
        await post_webhook(service, feed.receipt(f"m{i}", NOW + timedelta(seconds=10)))
    await post_webhook(service, feed.rating("m0", 1, NOW + timedelta(seconds=20)))
    as_of = str(int(NOW.timestamp() * 1000))
    body = {
        "as_of": as_of,
        "daily_quota": 50_000,
        "remaining_quota": 123,
        "quality_48h": "HIGH",
        "quality_7d": "MEDIUM",
    }
    assert (await post(service, f"/v1/oas/{synced}/sync", body))[0] == 200
    body = {"as_of": as_of, "daily_quota": None}
    assert (await post(service, f"/v1/oas/{unlimited}/sync", body))[0] == 200

    async def matches(oa_id: str) -> bool:
        return await scrape(service, oa_id) == await api_view(service, oa_id)

    for oa_id in (low, synced, unlimited):
        await eventually(lambda oa_id=oa_id: matches(oa_id), timeout_s=15)  # type: ignore[misc]

    shown = {oa: await scrape(service, oa) for oa in (low, synced, unlimited)}
    # What each case should show, beyond agreeing with the API.
    assert shown[low]["zns_gate_oa_negatives_today"] == {(): 1.0}
    assert shown[low]["zns_gate_oa_quality"][(("window", "48h"),)] == LEVELS["LOW"]
    assert shown[low]["zns_gate_oa_remaining_today"] == {(): 20_000 - 4}
    assert shown[low]["zns_gate_oa_penalty_threshold"] == {(): 400}
    assert shown[low]["zns_gate_oa_tier_down_likely"] == {(): 1.0}
    assert shown[synced]["zns_gate_oa_daily_quota"] == {(): 50_000}
    assert shown[synced]["zns_gate_oa_remaining_today"] == {(): 123}
    # Unlimited since today: no quota to show, but today's T still comes from the quota the
    # day started with (20,000), as GET /quality gives it.
    assert shown[unlimited].keys() == {
        "zns_gate_oa_negatives_today",
        "zns_gate_oa_penalty_threshold",
        "zns_gate_oa_quality",
        "zns_gate_oa_tier_down_likely",
    }
    assert shown[unlimited]["zns_gate_oa_penalty_threshold"] == {(): 400}
    assert set(shown[low]) == set(OA_GAUGES)  # no token stored: no token gauge

    # The group takes the low OA's partition away: its gauges go, the others' stay.
    processor = service.client.app[PROCESSOR]
    partition = service.log.partition_for(low.encode())
    await processor.on_revoked(frozenset({TopicPartition(service.log.topics.events, partition)}))
    assert await scrape(service, low) == {}
    assert await scrape(service, synced) == shown[synced]

    # The instance stops: it owns nothing, so it shows no OA at all.
    await service.client.close()
    text = generate_latest(REGISTRY).decode()
    for oa_id in (low, synced, unlimited):
        assert gauges_of(text, oa_id) == {}


@pytest.mark.parametrize("backend", ["embedded"])
async def test_gauges_follow_a_change_after_the_first_checkpoint(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(processor={"checkpoint_interval_s": 0.2})
    await ready(service)
    oa_id = zalo.OA_ID
    as_of = str(int(NOW.timestamp() * 1000))
    body = {"as_of": as_of, "daily_quota": 50_000, "remaining_quota": 500}
    assert (await post(service, f"/v1/oas/{oa_id}/sync", body))[0] == 200

    async def remaining(value: float) -> bool:
        return (await scrape(service, oa_id)).get("zns_gate_oa_remaining_today") == {(): value}

    await eventually(lambda: remaining(500), timeout_s=15)
    sends = [send(f"tr{i}", msg_id=f"m{i}", recipient="0901234567") for i in range(3)]
    assert (await post(service, f"/v1/oas/{oa_id}/sends", {"sends": sends}))[0] == 200
    await eventually(lambda: remaining(497), timeout_s=15)
    await asyncio.sleep(0)
    assert await scrape(service, oa_id) == await api_view(service, oa_id)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_the_token_gauge_is_the_refresh_tokens_time_left(
    gate: Started,  # noqa: F811
    fake: Fake,  # noqa: F811
) -> None:
    service = await gate()
    assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
    as_of = str(int(time.time() * 1000))
    assert (await post(service, f"/v1/oas/{OA}/sync", {"as_of": as_of}))[0] == 200

    async def shown() -> bool:
        return "zns_gate_oa_token_expires_seconds" in await scrape(service, OA)

    await eventually(shown, timeout_s=15)
    left = (await scrape(service, OA))["zns_gate_oa_token_expires_seconds"][()]
    status, token = await call(service, "GET", f"/v1/oas/{OA}/zalo/token")
    assert status == 200
    expected_left = datetime.fromisoformat(token["refresh_expires_at"]).timestamp() - time.time()
    assert abs(left - expected_left) < 10
    assert left > 80 * 86_400  # the refresh token's ~90 days, not the access token's day
