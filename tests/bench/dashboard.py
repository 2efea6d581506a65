"""Benchmark of the dashboard's reads: the event loop's longest stall and the answer time.

One zns-gate application (embedded log, one partition, in this process, on a real socket)
holds 20,000 decisions of 50 OAs in its `zns.decisions` partition, so that
`GET /v1/oas/{oa_id}/decisions` reads the most it ever reads (5,000 records) and keeps
one OA's share of them. `GET /v1/oas/{oa_id}/history` (168 hours) and the page itself
are measured beside it, and `GET /v1/oas/{oa_id}/quota` is the baseline of the same run.
A probe on the same loop (`loop_lag.Probe`) asks to wake every millisecond and records how
late it woke. What start-up made is left out of garbage collection, as `zns-gate serve`
does (`freeze_what_started`). Not a test; it asserts nothing about speed.

    python -m tests.bench.dashboard [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from service.app import build_app, freeze_what_started
from service.config import Settings
from service.http import LOG
from service.logsetup import configure_logging
from tests.bench.loop_lag import Probe, report
from tests.serve import free_port

OA = "oa7"
DECISIONS = 20_000
OAS = 50


async def _fill(app: web.Application) -> None:
    """`DECISIONS` quality decisions, the OAs taking turns, in the one partition."""
    log = app[LOG]
    at = datetime.now(UTC).isoformat()
    placed = []
    for n in range(DECISIONS):
        oa_id = f"oa{n % OAS}"
        value = {
            "decision_id": f"d{n}",
            "oa_id": oa_id,
            "kind": "quality",
            "rule": "proxy_48h",
            "before": "HIGH",
            "after": "LOW",
            "inputs": {"delivered": 1000, "negatives": 9},
            "at": at,
            "source": {"topic": "zns.events", "partition": 0, "offset": n},
        }
        placed.append(log.place(log.topics.decisions, oa_id.encode(), orjson.dumps(value)))
    await asyncio.gather(*placed)


async def _measure(session: aiohttp.ClientSession, url: str, probe: Probe) -> tuple[float, float]:
    """(longest lag, seconds to answer) for one GET."""
    probe.start()
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    async with session.get(url) as answer:
        await answer.read()
        assert answer.status == 200, (answer.status, await answer.text())
    took = time.perf_counter() - started
    await asyncio.sleep(0.02)
    lags = await probe.stop()
    return max(lags), took


async def main(rounds: int) -> None:
    configure_logging("WARNING", json=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        settings = Settings.model_validate(
            {
                "server": {"host": "127.0.0.1", "port": port},
                "log": {
                    "backend": "embedded",
                    "path": str(Path(tmp) / "bench.db"),
                    "partitions": 1,
                },
            }
        )
        app = build_app(settings)
        app.on_startup.append(freeze_what_started)  # as `zns-gate serve` does
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        cases = {
            "baseline: quota": f"{base}/v1/oas/{OA}/quota",
            "history, 168 hours": f"{base}/v1/oas/{OA}/history",
            "decisions, limit 200 of 5,000 read": f"{base}/v1/oas/{OA}/decisions?limit=200",
            "the page (/ui/)": f"{base}/ui/",
        }
        probe = Probe()
        results: dict[str, list[tuple[float, float]]] = {}
        try:
            await _fill(app)
            async with aiohttp.ClientSession() as session:
                for _ in range(200):
                    async with session.get(f"{base}/readyz") as ready:
                        if ready.status == 200:
                            break
                    await asyncio.sleep(0.05)
                for _ in range(rounds):
                    for name, url in cases.items():
                        results.setdefault(name, []).append(await _measure(session, url, probe))
        finally:
            await runner.cleanup()
    report(results, width=36)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
