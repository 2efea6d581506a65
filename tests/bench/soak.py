"""Soak: `zns-gate simulate` against `zns-gate serve` for many minutes at a fixed rate. Not a
test. Reports the service's memory (RSS) minute by minute and the latency of each minute,
so that growth and drift show: the first minute is the baseline of the last.

    python -m tests.bench.soak [--minutes 10] [--rate 100] [--oas 50]

The service runs on the embedded log, pinned to CPU 0; the traffic comes from CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from service.simulate import Plan, simulate
from tests import zalo
from tests.serve import Served


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def soak(served: Served, args: argparse.Namespace) -> list[dict[str, Any]]:
    await served.wait_ready(60, "/readyz")
    plan = Plan(args.seed, args.oas, 0.05, zalo.APP_ID, zalo.SECRET)
    minutes = []
    for minute in range(args.minutes):
        summary = (await simulate(served.url, plan, args.rate, 60)).as_json()
        row = {
            "minute": minute + 1,
            "rss_mb": round(rss_mb(served.process.pid), 1),
            "sent": summary["sent"],
            "refused": summary["refused_by_status"],
            "admission_ms": summary["latency_ms"].get("admission"),
            "receipt_ms": summary["latency_ms"].get("receipt"),
        }
        minutes.append(row)
        print(json.dumps(row), flush=True)
    return minutes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--oas", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})  # the traffic on CPU 1
    apps = orjson.dumps([{"app_id": zalo.APP_ID, "secrets": [zalo.SECRET]}]).decode()
    with tempfile.TemporaryDirectory() as folder:
        served = Served(Path(folder), "soak", "0", ZNS_GATE_APPS=apps, ZNS_GATE_LOG_LEVEL="WARNING")
        start_rss = 0.0
        try:
            asyncio.run(served.wait_ready(60, "/readyz"))
            start_rss = rss_mb(served.process.pid)
            minutes = asyncio.run(soak(served, args))
        finally:
            served.stop()
    first, last = minutes[0], minutes[-1]
    report = {
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
        "rate": args.rate,
        "oas": args.oas,
        "rss_mb_at_start": round(start_rss, 1),
        "rss_mb_after_first_minute": first["rss_mb"],
        "rss_mb_at_end": last["rss_mb"],
        "admission_p99_ms_first_minute": (first["admission_ms"] or {}).get("p99"),
        "admission_p99_ms_last_minute": (last["admission_ms"] or {}).get("p99"),
        "receipt_p99_ms_first_minute": (first["receipt_ms"] or {}).get("p99"),
        "receipt_p99_ms_last_minute": (last["receipt_ms"] or {}).get("p99"),
        "minutes": minutes,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
