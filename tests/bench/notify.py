"""Benchmark of notification delay: from a decision's record in `zns.decisions` (its append
at the processor's checkpoint) to its arrival at a target. Not a test; it asserts nothing
about speed.

The service runs in this process on a loopback port with one `[[notify]]` target, a
receiver on loopback in the same process. Each sample is one OA whose quality turns LOW
(four signed receipts and a one-star rating through `POST /webhooks/zalo`), which makes
a few decisions; the OAs are paced so that decisions arrive spread out, as they do in
production. The delay of each decision is its arrival time at the receiver minus the
log's append time of its record (`Record.timestamp_ms`, milliseconds). The notifier
looks at the tail of a partition every `notifier.poll_s` (default 0.2 s) when nothing
is new, which bounds the delay from below on an idle partition.

    python -m tests.bench.notify [--samples 100] [--kafka HOST:PORT]

Without `--kafka` the embedded log is used (a temporary SQLite file).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import NOTIFIER, build_app
from service.log.base import EventLog, TopicPartition, Topics
from service.log.embedded import EmbeddedLog
from service.log.kafka import KafkaLog
from service.simulate import percentile
from tests import zalo
from tests.conftest import delete_topics, make_settings

SECRET = "whsec_" + base64.b64encode(b"bench-notify-signing-key-0123456").decode()
PACE_S = 0.05
"""Between two OAs' webhooks."""


class Arrivals:
    """The receiver: the wall time each `webhook-id` first arrived at."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.at.setdefault(request.headers["webhook-id"], time.time())
        return web.Response(status=204)


async def drive(client: TestClient[web.Request, web.Application], oa_id: str) -> None:
    """Four receipts and one one-star rating: the OA's quality LOW (a few decisions)."""
    hooks = zalo.Webhooks()
    now_ms = str(int(datetime.now(UTC).timestamp() * 1000))
    for n in range(4):
        payload = hooks.payload("user_received_message", fresh=False)
        payload["sender"] = {"id": oa_id}
        payload["message"] = {"delivery_time": now_ms, "msg_id": f"{oa_id}-{n}"}
        hook = hooks.from_payload(payload, server="ZNS")
        async with client.post("/webhooks/zalo", data=hook.body, headers=hook.headers) as r:
            assert r.status == 200, await r.text()
    rating = hooks.payload("user_feedback", fresh=False)
    rating["oa_id"] = oa_id
    rating["message"] = {"msg_id": f"{oa_id}-0", "rate": 1, "submit_time": now_ms}
    hook = hooks.from_payload(rating)
    async with client.post("/webhooks/zalo", data=hook.body, headers=hook.headers) as r:
        assert r.status == 200, await r.text()


async def appended(log: EventLog) -> dict[str, int]:
    """decision_id -> the append time (ms) of its record."""
    out: dict[str, int] = {}
    for p in range(log.partitions):
        tp, start = TopicPartition(log.topics.decisions, p), 0
        while batch := await log.read(tp, start, 500):
            for record in batch:
                out[orjson.loads(record.value)["decision_id"]] = record.timestamp_ms
            start = batch[-1].offset + 1
    return out


async def measure(log: EventLog, samples: int) -> dict[str, Any]:
    arrivals = Arrivals()
    receiver = web.Application()
    receiver.router.add_post("/hook", arrivals.handle)
    target_server = TestServer(receiver, host="127.0.0.1")
    await target_server.start_server()
    settings = make_settings(
        notify=[{"name": "bench", "url": str(target_server.make_url("/hook")), "secret": SECRET}],
        processor={"checkpoint_interval_s": 1.0},
    )
    client = TestClient(TestServer(build_app(settings, log), host="127.0.0.1"))
    await client.start_server()
    try:
        app = client.app
        assert app is not None
        while NOTIFIER not in app or len(app[NOTIFIER].following()) < log.partitions:
            await asyncio.sleep(0.1)  # a new target's cursor starts at the end
        for n in range(samples):
            await drive(client, f"71{n:014d}")
            await asyncio.sleep(PACE_S)
        async with asyncio.timeout(60):
            while True:
                made = await appended(log)
                if made and set(made) <= set(arrivals.at):
                    break
                await asyncio.sleep(0.5)
    finally:
        await client.close()
        await target_server.close()
    delays = [arrivals.at[i] - ms / 1000 for i, ms in made.items()]
    return {
        "decisions": len(delays),
        "p50_ms": round(percentile(delays, 50) * 1000, 1),
        "p99_ms": round(percentile(delays, 99) * 1000, 1),
        "max_ms": round(max(delays) * 1000, 1),
    }


async def run(samples: int, kafka: str | None) -> dict[str, Any]:
    prefix = f"bn{uuid.uuid4().hex[:8]}"
    if kafka is None:
        with tempfile.TemporaryDirectory() as folder:
            log: EventLog = EmbeddedLog(str(Path(folder) / "log.db"), Topics(prefix), 3)
            return await measure(log, samples)
    log = KafkaLog(kafka, Topics(prefix), 3)
    try:
        return await measure(log, samples)
    finally:
        await delete_topics(kafka, prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="OAs turned LOW")
    parser.add_argument("--kafka", metavar="HOST:PORT", help="a running broker (else embedded)")
    args = parser.parse_args()
    result = asyncio.run(run(args.samples, args.kafka))
    report = {
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
        "backend": "kafka" if args.kafka else "embedded",
        **result,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
