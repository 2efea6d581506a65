"""Faults under load (issue: end to end under load and faults).

`zns-gate serve` runs as its own process and `zns-gate simulate`'s traffic
keeps coming while the service is killed with SIGKILL and started again. At
the end:
- nothing that was acknowledged is lost: every webhook, send and admission
  that got a 200 is in the log;
- nothing is counted twice: the state the processor stored equals one clean
  pass over the log.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from service.log.base import EventLog
from service.simulate import Plan, Summary, simulate
from tests import zalo
from tests.conftest import LogOpener, ServiceFactory, start_broker
from tests.integration.test_api import ready
from tests.integration.test_processor import assert_same, clean_pass, read_topic, stored
from tests.serve import Served

PARTITIONS = 3


def settings(opener: LogOpener) -> dict[str, str]:
    where = (
        {"ZNS_GATE_LOG__BACKEND": "kafka", "ZNS_GATE_LOG__BOOTSTRAP_SERVERS": opener.where}
        if opener.backend == "kafka"
        else {"ZNS_GATE_LOG__PATH": opener.where}
    )
    return {
        **where,
        "ZNS_GATE_LOG__TOPIC_PREFIX": opener.prefix,
        "ZNS_GATE_LOG__PARTITIONS": str(PARTITIONS),
        "ZNS_GATE_LOG__SESSION_TIMEOUT_MS": "6000",
        "ZNS_GATE_RULES__CLOCK": "stream",  # so that a clean pass later folds alike
        "ZNS_GATE_PROCESSOR__CHECKPOINT_INTERVAL_S": "0.3",
        "ZNS_GATE_APPS": orjson.dumps([{"app_id": zalo.APP_ID, "secrets": [zalo.SECRET]}]).decode(),
        "ZNS_GATE_LOG_LEVEL": "WARNING",
    }


class Recorder:
    """What the simulated senders and Zalo were told: one line per request."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, data: bytes) -> int:
        self.lines.append(orjson.loads(data))
        return len(data)

    def acknowledged(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["kind"] == kind and line["status"] == 200]


async def logged_values(log: EventLog) -> list[dict[str, Any]]:
    out = []
    for partition in range(PARTITIONS):
        for record in await read_topic(log, log.topics.events, partition):
            out.append(orjson.loads(record.value))
    return out


def assert_nothing_acknowledged_is_lost(record: Recorder, values: list[dict[str, Any]]) -> None:
    webhooks = {orjson.dumps(v) for v in values if "event_name" in v}
    for kind in ("receipt", "rating", "reply", "management", "duplicate"):
        for line in record.acknowledged(kind):
            assert orjson.dumps(line["body"]) in webhooks, line
    tracking = {v["send"]["tracking_id"] for v in values if "send" in v}
    for line in record.acknowledged("send"):
        assert line["body"]["sends"][0]["tracking_id"] in tracking, line
    admissions = {v["idempotency_key"] for v in values if "idempotency_key" in v}
    for line in record.acknowledged("admission"):
        assert line["body"]["idempotency_key"] in admissions, line


async def test_killed_three_times_under_load_loses_and_doubles_nothing(
    log_factory: LogOpener, tmp_path: Path
) -> None:
    env = settings(log_factory)
    record = Recorder()
    plan = Plan(21, 6, 0.1, zalo.APP_ID, zalo.SECRET)
    served = Served(tmp_path, "serve-0", **env)
    summaries: list[Summary] = []
    try:
        await served.wait_ready(60, "/readyz")
        for n in range(1, 4):
            traffic = asyncio.create_task(
                simulate(served.url, plan, rate=60, duration_s=2.5, record=record)
            )
            await asyncio.sleep(1.5)
            served.process.send_signal(signal.SIGKILL)
            served.process.wait()
            summaries.append(await traffic)
            served = Served(tmp_path, f"serve-{n}", **env)
            await served.wait_ready(60, "/readyz")
        # A last stretch with nothing killed, then a clean stop (a final checkpoint) once
        # everything appended is folded: what is not stays in the log for the next start.
        summaries.append(await simulate(served.url, plan, rate=60, duration_s=2, record=record))
        await folded_to_the_end(served)
        assert served.stop() == 0, served.tail()
    finally:
        served.stop()
    refused = [s.as_json()["refused_by_status"] for s in summaries]
    assert all(set(r) <= {"0", "503"} for r in refused), refused  # never a 4xx
    assert all("0" in r for r in refused[:3]), "each kill came while requests were under way"
    assert record.acknowledged("receipt"), "traffic got through"

    log = await log_factory(partitions=PARTITIONS)
    assert_nothing_acknowledged_is_lost(record, await logged_values(log))
    assert_same(await stored(log), await clean_pass(log))


async def folded_to_the_end(served: Served, timeout_s: float = 30) -> None:
    """Until every partition's consumer lag, as its last checkpoint measured it, is 0."""
    async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session:
        while True:
            async with session.get(served.url + "/metrics") as response:
                text = await response.text()
            lags = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("zns_gate_consumer_lag_records{")
            ]
            if len(lags) == PARTITIONS and not any(lags):
                return
            await asyncio.sleep(0.2)


async def accepts_webhooks_again(served: Served, timeout_s: float = 60) -> None:
    """Until a webhook gets 200 (the producer may still be renewing after the outage)."""
    hooks = zalo.Webhooks()
    async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session:
        while True:
            hook = hooks.build("user_feedback")
            url = f"{served.url}/webhooks/zalo"
            async with session.post(url, data=hook.body, headers=hook.headers) as response:
                if response.status == 200:
                    return
                assert response.status == 503, await response.text()
            await asyncio.sleep(0.5)


@pytest.mark.kafka
async def test_a_broker_restart_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """A broker of this test's own stops for a few seconds while traffic keeps coming:
    the service answers 503 meanwhile (Zalo retries), never a 4xx, and at the end what
    was acknowledged is all there, counted once."""
    broker = await asyncio.to_thread(start_broker, "faults")
    opener = LogOpener("kafka", broker.bootstrap)
    served = Served(tmp_path, "serve", **settings(opener))
    record = Recorder()
    plan = Plan(22, 6, 0.1, zalo.APP_ID, zalo.SECRET)
    try:
        await served.wait_ready(60, "/readyz")
        traffic = asyncio.create_task(
            simulate(served.url, plan, rate=50, duration_s=12, record=record)
        )
        await asyncio.sleep(3)
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(4)
        await asyncio.to_thread(broker.start, False)  # the same data, the same ports
        during = (await traffic).as_json()
        await served.wait_ready(90, "/readyz")
        await accepts_webhooks_again(served)
        before_after = len(record.lines)
        await simulate(served.url, plan, rate=50, duration_s=4, record=record)
        await folded_to_the_end(served)
        assert served.stop() == 0, served.tail()

        webhooks = ("receipt", "rating", "reply", "management", "duplicate")
        refused = {
            line["status"]
            for line in record.lines
            if line["kind"] in webhooks and line["status"] != 200
        }
        assert refused == {503}, (refused, during)  # the broker was away: 503, never a 4xx
        # Back, it takes webhooks again (admissions may still wait for a partition to move).
        after = [line for line in record.lines[before_after:] if line["kind"] in webhooks]
        assert len(after) >= 10, "webhooks were sent after the broker came back"
        assert all(line["status"] == 200 for line in after[-5:]), after
        log = await opener(partitions=PARTITIONS)
        assert_nothing_acknowledged_is_lost(record, await logged_values(log))
        assert_same(await stored(log), await clean_pass(log))
    finally:
        served.stop()
        await opener.close_all()
        await asyncio.to_thread(broker.stop)


async def test_slow_and_stalled_clients_do_not_hold_the_server(
    service_factory: ServiceFactory,
) -> None:
    """Connections that never finish their headers or bodies: bodies get 408 once their
    read timeout passes, and meanwhile every other request is answered as usual."""
    service = await service_factory(receiver={"read_timeout_s": 0.3}, api={"read_timeout_s": 0.5})
    await ready(service)
    host, port = service.client.host, service.client.port
    hook = zalo.Webhooks().build("user_feedback")
    admission = orjson.dumps({"template_id": "t1", "tag": 1, "idempotency_key": "slow"})

    async def stalled(head: str, body: bytes) -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head.encode() + body)
        await writer.drain()
        stalled_writers.append(writer)
        return reader

    stalled_writers: list[asyncio.StreamWriter] = []
    webhook_head = (
        f"POST /webhooks/zalo HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(hook.body)}\r\n"
        f"X-ZEvent-Signature: {hook.headers['X-ZEvent-Signature']}\r\n\r\n"
    )
    api_head = (
        f"POST /v1/oas/{zalo.OA_ID}/admissions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(admission)}\r\n\r\n"
    )
    bodies = [await stalled(webhook_head, hook.body[:10]) for _ in range(15)]
    bodies += [await stalled(api_head, admission[:5]) for _ in range(15)]
    for _ in range(20):  # headers that never end
        await stalled(f"GET /v1/oas/{zalo.OA_ID}/quota HTTP/1.1\r\nHost: {host}\r\nX-A: ", b"")

    async with asyncio.timeout(10):  # answered while all of the above hang
        async with service.client.get("/healthz") as response:
            assert response.status == 200
        body = {"template_id": "t1", "tag": 1, "idempotency_key": "normal"}
        async with service.client.post(f"/v1/oas/{zalo.OA_ID}/admissions", json=body) as r:
            assert r.status == 200
        assert (await service.post(zalo.Webhooks().build("user_feedback")))[0] == 200

    async with asyncio.timeout(10):
        answers = [await reader.read(4096) for reader in bodies]
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:3]
    assert all(b"request_timeout" in answer for answer in answers)
    for writer in stalled_writers:
        writer.close()
    kinds = [dict(r.headers).get("kind") for r in await service.events()]
    assert sorted(k.decode() if k else "" for k in kinds) == ["admission", "webhook"]
