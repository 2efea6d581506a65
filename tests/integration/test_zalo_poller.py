"""The Zalo poller in a running gate, against the local fake Zalo as a real server: what it
reads shows in the API, a webhook makes it read again soon, -124 is refreshed once, errors
back off, a slow Zalo holds up no webhook or admission, and an OA this instance does not
own is never asked for.

Between the gate and the fake sits a small recording proxy (a real HTTP server too), so a
test can see which calls reached Zalo, for which OA and when.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.app import POLLER, ZALO_TOKENS, build_app
from service.zalo.fake.scenario import DEFAULT_APP_ID
from service.zalo.poller import Poller, PollerOptions
from tests import zalo
from tests.conftest import LogOpener, RunningService, make_settings
from tests.integration.test_api import admit, get, ready
from tests.zalo_gate import (
    OA,
    OTHER_OA,
    TOKEN_KEY,
    Gate,
    GateFactory,
    ZaloFactory,
    scenario,
    until,
)
from tests.zalo_tokens import FakeTokens, Pair


@pytest.mark.parametrize("numbers", ["strings", "numbers"])
async def test_what_the_poller_read_shows_in_quota_quality_and_templates(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory, numbers: str
) -> None:
    z = await zalo_factory(
        scenario(
            numbers=numbers,
            oa={
                "daily_quota": 2000,
                "remaining_quota": 1500,
                "monthly_promotion_quota": 300,
                "remaining_monthly_promotion_quota": 250,
                "quality_48h": "MEDIUM",
                "quality_7d": "HIGH",
                "allowed_tags": ["TRANSACTION", "CUSTOMER_CARE"],
            },
        )
    )
    gate = await gate_factory(z)
    service = gate.service
    await ready(service)

    async def quota_read() -> bool:
        status, quota = await get(service, f"/v1/oas/{OA}/quota")
        return status == 200 and quota["daily_quota"] == 2000 and quota["allowed_tags"] == [1, 2]

    await until(quota_read)
    _, quota = await get(service, f"/v1/oas/{OA}/quota")
    assert quota["remaining_today"] == 1500
    assert quota["promotion"]["monthly_quota"] == 300
    assert quota["promotion"]["remaining_month"] == 250

    async def quality_read() -> bool:
        _, quality = await get(service, f"/v1/oas/{OA}/quality")
        return bool(quality["zalo"]["quality_48h"] == "MEDIUM")

    await until(quality_read)
    _, quality = await get(service, f"/v1/oas/{OA}/quality")
    assert quality["zalo"]["quality_7d"] == "HIGH"
    assert quality["zalo"]["fresh"] is True

    async def templates_read() -> bool:
        _, answer = await get(service, f"/v1/oas/{OA}/templates")
        return len(answer["templates"]) == 4 and all(
            t["params"] is not None for t in answer["templates"]
        )

    await until(templates_read)
    _, answer = await get(service, f"/v1/oas/{OA}/templates")
    by_id = {t["template_id"]: t for t in answer["templates"]}
    assert (by_id["231456"]["tag"], by_id["231457"]["tag"], by_id["231459"]["tag"]) == (1, 2, 3)
    assert by_id["231456"]["status"] == "ENABLE"
    assert by_id["231456"]["zalo_quality"] == "HIGH"
    assert by_id["231456"]["params"] == [
        {
            "name": "otp",
            "require": True,
            "type": "STRING",
            "min_length": 4,
            "max_length": 8,
            "accept_null": False,
        }
    ]
    assert [p["name"] for p in by_id["231457"]["params"]] == ["customer_name", "order_code", "note"]

    syncs = await gate.syncs()
    assert syncs
    assert all(s["source"] == "zalo" and s["oa_id"] == OA for s in syncs)
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < int(s["as_of"]) <= now_ms for s in syncs)
    # One call of each read at start, details of the four templates, nothing more.
    assert len(z.paths("/message/quota")) == 1
    assert len(z.paths("/template/info/v2")) == 4
    assert len(z.calls) == 8


async def test_a_quota_webhook_makes_the_poller_read_the_quota_again_soon(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z = await zalo_factory()
    gate = await gate_factory(z)
    service = gate.service
    await ready(service)

    async def quota_is(value: int) -> bool:
        _, quota = await get(service, f"/v1/oas/{OA}/quota")
        return bool(quota["daily_quota"] == value)

    await until(lambda: quota_is(500))
    assert len(z.paths("/message/quota")) == 1
    # Zalo raises the tier; its webhook says 10000, but Zalo's own figure is what counts.
    await z.control(f"/oas/{OA}", {"daily_quota": 7000, "remaining_quota": 6990})
    status, _ = await service.post(zalo.Webhooks().build("change_oa_daily_quota"))
    assert status == 200
    await until(lambda: quota_is(7000))
    assert len(z.paths("/message/quota")) == 2
    _, quota = await get(service, f"/v1/oas/{OA}/quota")
    assert quota["remaining_today"] == 6990
    # A template webhook reads the templates again, and only the changed one's detail.
    details = len(z.paths("/template/info/v2"))
    await z.control(f"/oas/{OA}/templates/231457", {"status": "DISABLE", "quality": "LOW"})
    status, _ = await service.post(
        zalo.Webhooks().build("change_template_status", template_id="231457")
    )
    assert status == 200

    async def disabled() -> bool:
        _, t = await get(service, f"/v1/oas/{OA}/templates/231457")
        return bool(t["status"] == "DISABLE" and t["zalo_quality"] == "LOW")

    await until(disabled)
    assert len(z.paths("/template/info/v2")) == details + 1


async def test_an_expired_token_is_refreshed_once_and_every_read_retried(
    zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z = await zalo_factory()
    await z.control("/clock", {"advance_s": 90_001})  # the known access token has expired
    gate = await gate_factory(z)
    await ready(gate.service)

    async def everything_read() -> bool:
        _, answer = await get(gate.service, f"/v1/oas/{OA}/templates")
        return len(answer["templates"]) == 4 and all(
            t["params"] is not None for t in answer["templates"]
        )

    await until(everything_read)
    assert gate.tokens.refreshes == 1  # four reads refused at once, one refresh
    refused = [c for c in z.calls if c.token == "fake-access-token"]
    assert {c.path for c in refused} <= {
        "/message/quota",
        "/quality",
        "/template/all",
        "/message/template-tag",
    }
    assert len(refused) == len({c.path for c in refused})  # each refused once, not retried
    fresh = gate.tokens.pairs[OA].access
    assert len(z.paths("/message/quota", fresh)) == 1  # its one retry


async def test_an_oa_this_instance_does_not_own_is_never_polled(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z = await zalo_factory(
        scenario(
            more_oas=[
                {
                    "oa_id": OTHER_OA,
                    "app_id": DEFAULT_APP_ID,
                    "refresh_token": "other-refresh",
                    "access_token": "other-access",
                }
            ]
        )
    )
    tokens = FakeTokens(z.fake_url)
    tokens.pairs[OTHER_OA] = Pair("other-access", "other-refresh")
    tokens.owned = {OA}
    gate = await gate_factory(z, tokens)
    await ready(gate.service)
    # The other OA's quota webhook reaches this gate; it must not make it ask Zalo.
    other = zalo.Webhooks().build("change_oa_daily_quota", oa_id=OTHER_OA)
    assert (await gate.service.post(other))[0] == 200
    mine = zalo.Webhooks().build("change_oa_daily_quota")
    assert (await gate.service.post(mine))[0] == 200

    async def read_again() -> bool:
        return len(z.paths("/message/quota", "fake-access-token")) == 2

    await until(read_again)
    assert [c for c in z.calls if c.token == "other-access"] == []
    assert {s["oa_id"] for s in await gate.syncs()} == {OA}


async def test_a_slow_zalo_holds_up_no_webhook_and_no_admission(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    slow = {"delay_s": 30.0}
    z = await zalo_factory(
        scenario(
            behaviour={
                "quota": slow,
                "quality": slow,
                "templates": slow,
                "template_tag": slow,
            }
        )
    )
    gate = await gate_factory(z, request_timeout_s=5)
    service = gate.service
    await ready(service)

    async def waiting() -> bool:
        return gate.poller.in_flight == 4

    await until(waiting)
    started = time.monotonic()
    for i in range(5):
        status, _ = await service.post(zalo.Webhooks().build("user_feedback"))
        assert status == 200
        status, answer, _ = await admit(
            service, template_id="231456", tag=1, count=1, idempotency_key=f"k-{i}"
        )
        assert status == 200
        assert answer["granted"] == 1
    answered_in = time.monotonic() - started
    # All ten answered while the poller's four calls were still waiting for Zalo.
    assert gate.poller.in_flight == 4
    assert answered_in < 5
    await until(lambda: _no_longer_waiting(gate), timeout_s=15)
    assert await gate.syncs() == []  # nothing came back from Zalo in time: nothing to write


async def _no_longer_waiting(gate: Gate) -> bool:
    return gate.poller.in_flight == 0


async def test_errors_back_off_exponentially_per_read(
    zalo_factory: ZaloFactory, log_factory: LogOpener
) -> None:
    z = await zalo_factory()
    await z.control("/errors", {"endpoint": "quality", "error": -32, "times": 5})
    tokens = FakeTokens(z.fake_url)
    settings = make_settings(
        zalo={"enabled": True, "api_url": z.url, "oauth_url": z.fake_url, "token_key": TOKEN_KEY}
    )
    log = await log_factory(partitions=3)
    poller = Poller(
        settings,
        tokens,
        log,
        options=PollerOptions(backoff_base_s=0.2, backoff_cap_s=1.0, tick_s=0.05),
    )
    await poller.start()
    try:

        async def answered() -> bool:
            return len(z.paths("/quality")) == 6

        await until(answered)
        await asyncio.sleep(0.5)
    finally:
        await poller.close()
    times = [c.at for c in z.paths("/quality")]
    assert len(times) == 6  # five refusals, then the answer, then nothing (15 min interval)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for n, gap in enumerate(gaps, start=1):
        wait = min(1.0, 0.2 * 2 ** (n - 1))
        assert 0.5 * wait - 0.02 <= gap <= wait + 0.3, (n, gaps)
    # The other reads did not wait for the failing one.
    assert len(z.paths("/message/quota")) == 1
    assert len(z.paths("/message/template-tag")) == 1


async def test_the_quota_is_read_again_a_minute_after_local_midnight(
    zalo_factory: ZaloFactory, log_factory: LogOpener
) -> None:
    z = await zalo_factory()
    settings = make_settings(
        zalo={"enabled": True, "api_url": z.url, "oauth_url": z.fake_url, "token_key": TOKEN_KEY}
    )
    # The wall clock starts 0.4 s before 00:01 in Vietnam and runs at real speed.
    zone = settings.rules.zone
    start_at = datetime(2026, 12, 3, 0, 0, 59, 600_000, tzinfo=zone)
    started = time.monotonic()

    def wall() -> datetime:
        return start_at + timedelta(seconds=time.monotonic() - started)

    log = await log_factory(partitions=3)
    poller = Poller(
        settings, FakeTokens(z.fake_url), log, options=PollerOptions(tick_s=0.05), wall=wall
    )
    await poller.start()
    try:

        async def read_twice() -> bool:
            return len(z.paths("/message/quota")) == 2

        await until(read_twice, timeout_s=10)
        await asyncio.sleep(0.3)
    finally:
        await poller.close()
    quota_calls = z.paths("/message/quota")
    assert len(quota_calls) == 2
    assert quota_calls[1].at - started >= 0.35  # not before 00:01
    assert len(z.paths("/quality")) == 1  # only the quota is read at midnight


async def test_many_templates_go_100_to_a_record(
    zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    many = [{"template_id": str(800_000 + i), "template_name": f"t{i}"} for i in range(250)]
    z = await zalo_factory(scenario(templates=many))
    gate = await gate_factory(z)
    await ready(gate.service)

    async def all_read() -> bool:
        _, answer = await get(gate.service, f"/v1/oas/{OA}/templates")
        return len(answer["templates"]) == 250 and all(
            t["params"] == [] for t in answer["templates"]
        )

    await until(all_read)
    records = [s for s in await gate.syncs() if "templates" in s]
    assert [len(s["templates"]) for s in records] == [100, 100, 50]
    assert len({s["as_of"] for s in records}) == 1
    assert len(z.paths("/template/all")) == 3
    assert len(z.paths("/template/info/v2")) == 250


async def test_without_zalo_enabled_nothing_polls(
    zalo_factory: ZaloFactory, log_factory: LogOpener
) -> None:
    z = await zalo_factory()
    log = await log_factory(partitions=3, start=False)
    app = build_app(make_settings(zalo={"api_url": z.url, "oauth_url": z.fake_url}), log)
    app[ZALO_TOKENS] = FakeTokens(z.fake_url)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        await ready(RunningService(client, log))
        await asyncio.sleep(0.5)
        assert POLLER not in app
    finally:
        await client.close()
    assert z.calls == []


async def test_reads_that_wait_for_a_slot_are_made_once(
    zalo_factory: ZaloFactory, log_factory: LogOpener
) -> None:
    others = [f"99900000000000000{i}" for i in range(3)]
    z = await zalo_factory(
        scenario(
            more_oas=[
                {
                    "oa_id": oa,
                    "app_id": DEFAULT_APP_ID,
                    "refresh_token": f"refresh-{oa}",
                    "access_token": f"access-{oa}",
                }
                for oa in others
            ]
        )
    )
    tokens = FakeTokens(z.fake_url)
    for oa in others:
        tokens.pairs[oa] = Pair(f"access-{oa}", f"refresh-{oa}")
    settings = make_settings(
        zalo={"enabled": True, "api_url": z.url, "oauth_url": z.fake_url, "token_key": TOKEN_KEY}
    )
    log = await log_factory(partitions=3)
    poller = Poller(settings, tokens, log, options=PollerOptions(concurrency=1, tick_s=0.05))
    await poller.start()
    try:

        async def all_read() -> bool:
            return len(z.paths("/message/template-tag")) == 4

        await until(all_read)
        await asyncio.sleep(0.5)
    finally:
        await poller.close()
    for token in ["fake-access-token", *(f"access-{oa}" for oa in others)]:
        for path in ("/message/quota", "/quality", "/template/all", "/message/template-tag"):
            assert len(z.paths(path, token)) == 1, (token, path)
