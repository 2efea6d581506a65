"""Benchmark of the event loop's longest stall while the API takes its largest requests.

One zns-gate application (embedded log, in this process, on a real socket) is sent, one
at a time, the largest bodies the API takes (docs/rules.md#input-bounds): an admission naming
10,000 recipients, an admission of `count` 10,000, 100 sends in one report, a sync of
1,000 templates. Meanwhile a probe on the same loop asks to wake every millisecond and
records how late it woke. The baseline is the same probe while the loop serves small
admissions (one recipient), in the same run. Not a test; it asserts nothing about speed.

    python -m tests.bench.loop_lag [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from service.app import build_app
from service.config import Settings
from service.logsetup import configure_logging
from tests.serve import free_port

OA = "388613280878808645"


class Probe:
    """Wakes every millisecond and keeps how late each wake was (the loop's lag)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            self.lags.append(max(0.0, time.perf_counter() - due))

    def start(self) -> None:
        self.lags = []
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[float]:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.lags


def _phones(n: int, seed: int) -> list[str]:
    return [f"849{(seed * 1_000_003 + i) % 10**8:08d}" for i in range(n)]


def _now_ms() -> str:
    return str(int(datetime.now(UTC).timestamp() * 1000))


def bodies(round_: int) -> dict[str, tuple[str, Callable[[], dict[str, Any]]]]:
    def admission_recipients() -> dict[str, Any]:
        return {
            "template_id": "tpl",
            "tag": 1,
            "recipients": _phones(10_000, round_),
            "idempotency_key": f"big-{round_}",
        }

    def admission_count() -> dict[str, Any]:
        return {"template_id": "tpl", "tag": 1, "count": 10_000, "idempotency_key": f"n-{round_}"}

    def sends() -> dict[str, Any]:
        return {
            "sends": [
                {
                    "template_id": "tpl",
                    "tag": 1,
                    "tracking_id": f"r{round_}-{i}",
                    "recipient": hashlib.sha256(f"84{i}".encode()).hexdigest(),
                    "sent_time": _now_ms(),
                    "error": 0,
                }
                for i in range(100)
            ]
        }

    def sync() -> dict[str, Any]:
        return {
            "as_of": _now_ms(),
            "templates": [
                {"template_id": f"t{i}", "status": "ENABLE", "quality": "HIGH", "tag": 1}
                for i in range(1000)
            ],
        }

    return {
        "admission, 10,000 recipients": ("admissions", admission_recipients),
        "admission, count 10,000": ("admissions", admission_count),
        "sends, 100 in one report": ("sends", sends),
        "sync, 1,000 templates": ("sync", sync),
    }


def small(round_: int) -> tuple[str, Callable[[], dict[str, Any]]]:
    return (
        "admissions",
        lambda: {
            "template_id": "tpl",
            "tag": 1,
            "recipients": _phones(1, round_),
            "idempotency_key": f"small-{round_}",
        },
    )


async def _measure(
    session: aiohttp.ClientSession, base: str, probe: Probe, path: str, body: dict[str, Any]
) -> tuple[float, float]:
    """(longest lag, seconds to answer) for one request."""
    probe.start()
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    async with session.post(f"{base}/v1/oas/{OA}/{path}", json=body) as answer:
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
                "log": {"backend": "embedded", "path": str(Path(tmp) / "bench.db")},
                "receiver": {"max_body_bytes": 4 * 1024 * 1024},
            }
        )
        runner = web.AppRunner(build_app(settings))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        probe = Probe()
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(200):
                    async with session.get(f"{base}/readyz") as ready:
                        if ready.status == 200:
                            break
                    await asyncio.sleep(0.05)
                results: dict[str, list[tuple[float, float]]] = {}
                for round_ in range(rounds):
                    cases = {"baseline: admission, 1 recipient": small(round_), **bodies(round_)}
                    for name, (path, make) in cases.items():
                        body = make()  # built before the probe starts: the client's cost
                        results.setdefault(name, []).append(
                            await _measure(session, base, probe, path, body)
                        )
        finally:
            await runner.cleanup()
    report(results, width=34)


def report(results: dict[str, list[tuple[float, float]]], width: int) -> None:
    """One line per request: the loop's longest stall while it was answered (median and
    max over the rounds) and its answer time (median), from (stall s, answer s) pairs."""
    print(f"{'request':{width}} {'longest stall p50':>18} {'max':>8} {'answer p50':>11}")
    for name, values in results.items():
        stalls = [v[0] * 1000 for v in values]
        took = [v[1] * 1000 for v in values]
        print(
            f"{name:{width}} {statistics.median(stalls):15.1f} ms {max(stalls):5.1f} ms"
            f" {statistics.median(took):8.1f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
