"""Benchmark of end-to-end freshness: from a webhook's 200 to the quality endpoint showing
it. Not a test; it asserts nothing about speed.

For each sample, a delivery receipt (a signed webhook) is posted for a message the
OA has sent; the clock starts when the receiver answers 200 and stops when
`GET /v1/oas/{oa_id}/quality` first counts the delivery. The quality endpoint is
asked in a tight loop; one such request's own round trip, measured in the same
run, is the baseline (the resolution of the measurement). Both backends; on
Kafka the broker runs on CPU 1 and the service on CPU 0.

    python -m tests.bench.freshness [--samples 200] [--backends embedded,kafka]

Needs Java and Maven for the Kafka backend (the broker is started from deploy/kafka).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from service.simulate import percentile
from tests import zalo
from tests.bench.receiver import KAFKA_SH
from tests.serve import Served, free_port


async def delivered(session: aiohttp.ClientSession, url: str, oa_id: str) -> int:
    async with session.get(f"{url}/v1/oas/{oa_id}/quality") as response:
        if response.status != 200:
            return -1
        body = await response.json()
        return int(body["proxy"]["delivered_48h"])


async def measure(url: str, samples: int) -> dict[str, float]:
    hooks = zalo.Webhooks()
    oa_id = "6100000000000001"
    lags: list[float] = []
    round_trips: list[float] = []
    async with aiohttp.ClientSession() as session:
        while await delivered(session, url, oa_id) < 0:  # ready
            await asyncio.sleep(0.1)
        for n in range(samples):
            msg_id = f"fresh-{n}"
            send = {
                "template_id": "t1",
                "tag": 1,
                "tracking_id": msg_id,
                "msg_id": msg_id,
                "sent_time": str(int(time.time() * 1000)),
                "error": 0,
            }
            async with session.post(f"{url}/v1/oas/{oa_id}/sends", json={"sends": [send]}) as r:
                assert r.status == 200, await r.text()
            before = await delivered(session, url, oa_id)
            payload = hooks.payload("user_received_message", fresh=False)
            payload["sender"] = {"id": oa_id}
            payload["message"] = {
                "delivery_time": str(int(datetime.now(UTC).timestamp() * 1000)),
                "msg_id": msg_id,
                "tracking_id": msg_id,
            }
            hook = hooks.from_payload(payload, server="ZNS")
            async with session.post(
                f"{url}/webhooks/zalo", data=hook.body, headers=hook.headers
            ) as r:
                assert r.status == 200, await r.text()
            started = time.perf_counter()
            while True:
                asked = time.perf_counter()
                count = await delivered(session, url, oa_id)
                round_trips.append(time.perf_counter() - asked)
                if count > before:
                    lags.append(time.perf_counter() - started)
                    break
    return {
        "samples": samples,
        "p50_ms": percentile(lags, 50) * 1000,
        "p99_ms": percentile(lags, 99) * 1000,
        "quality_round_trip_p50_ms": statistics.median(round_trips) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--backends", default="embedded,kafka")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, {os.uname().machine}"}
    apps = orjson.dumps([{"app_id": zalo.APP_ID, "secrets": [zalo.SECRET]}]).decode()
    for backend in args.backends.split(","):
        broker: list[str] = []
        env = {"ZNS_GATE_APPS": apps, "ZNS_GATE_LOG_LEVEL": "WARNING"}
        if backend == "kafka":
            broker = ["--name", "bench-freshness", "--port", str(free_port())]
            broker += ["--controller-port", str(free_port())]
            subprocess.run(["bash", str(KAFKA_SH), "clean", *broker], check=True)
            subprocess.run(
                ["taskset", "-c", "1", "bash", str(KAFKA_SH), "start", *broker], check=True
            )
            env |= {
                "ZNS_GATE_LOG__BACKEND": "kafka",
                "ZNS_GATE_LOG__BOOTSTRAP_SERVERS": f"127.0.0.1:{broker[3]}",
                "ZNS_GATE_LOG__TOPIC_PREFIX": f"fresh{uuid.uuid4().hex[:6]}",
            }
        try:
            with tempfile.TemporaryDirectory() as folder:
                served = Served(Path(folder), backend, "0", **env)
                try:
                    asyncio.run(served.wait_ready(90, "/readyz"))
                    report[backend] = asyncio.run(measure(served.url, args.samples))
                finally:
                    served.stop()
        finally:
            if broker:
                subprocess.run(["bash", str(KAFKA_SH), "clean", *broker], check=False)
        result = report[backend]
        print(
            f"{backend:9} p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
            f"(one quality request: {result['quality_round_trip_p50_ms']:.1f} ms)",
            flush=True,
        )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
