"""Benchmark of the send proxy: what `POST /messages` adds to a send through Zalo.

A fake Zalo (`zns-gate fake-zalo`, its own process) answers every send after a fixed
50 ms. Part 1, latency: messages leave on a fixed schedule at `--rate` a second (open
loop: latency counts from when a message was due), one message a request, alternately
straight to the fake's `/message/template` (the baseline: what a sender calling Zalo
itself waits) and through `zns-gate serve` (its own process, embedded log, pinned to CPU
0) to another OA of the same fake. The overhead is the difference of the two, percentile
by percentile, in the same run. Part 2, throughput and the event loop: an application in
this process (embedded log) takes batches of 100 messages from `--concurrency` senders
for `--seconds`, while a probe on its loop wakes every millisecond and records how late
it woke; its baseline is the same probe with the loop idle. Not a test; it asserts
nothing about speed.

    python -m tests.bench.proxy [--rate 200] [--seconds 10] [--concurrency 4] [--part 1|2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from service.app import ZALO_TOKENS, build_app
from service.config import Settings
from service.logsetup import configure_logging
from tests import zalo
from tests.bench.loop_lag import Probe
from tests.serve import Served, free_port
from tests.zalo_tokens import FakeTokens, Pair

extra_env: dict[str, str] = dict(
    item.split("=", 1) for item in os.environ.get("ZNS_BENCH_GATE_ENV", "").split() if item
)
"""More settings of the gate of part 1 (`ZNS_BENCH_GATE_ENV="NAME=value ..."`), to try
what a setting changes."""

GATE_OA = "388613280878808645"
DIRECT_OA = "388613280878808646"
TEMPLATE = "231456"
LATENCY_S = 0.05
TOKEN_KEY = base64.b64encode(b"b" * 32).decode()


def scenario() -> str:
    oas = []
    for oa_id, access in ((GATE_OA, "gate-access"), (DIRECT_OA, "direct-access")):
        oas += [
            "[[oas]]",
            f'oa_id = "{oa_id}"',
            f'app_id = "{zalo.APP_ID}"',
            f'refresh_token = "{oa_id}-refresh"',
            f'access_token = "{access}"',
            "daily_quota = 100000000",
            "remaining_quota = 100000000",
        ]
    return "\n".join(
        [
            "[[apps]]",
            f'app_id = "{zalo.APP_ID}"',
            'app_secret = "fake-app-secret"',
            f'oa_secret_key = "{zalo.SECRET}"',
            *oas,
            "[[templates]]",
            f'template_id = "{TEMPLATE}"',
            'template_name = "OTP"',
            "tag = 1",
            'params = [{name = "otp", min_length = 4, max_length = 8}]',
            "[behaviour.send]",
            f"delay_s = {LATENCY_S}",
        ]
    ) + "\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


_serial = itertools.count()


def one_message() -> dict[str, Any]:
    n = next(_serial)
    phone = f"09{n % 10**8:08d}"
    return {"template_id": TEMPLATE, "phone": phone, "template_data": {"otp": "1234"}}


async def direct(session: aiohttp.ClientSession, fake_url: str) -> None:
    message = one_message()
    body = {**message, "phone": "84" + message["phone"][1:], "tracking_id": f"d-{next(_serial)}"}
    async with session.post(
        f"{fake_url}/message/template", json=body, headers={"access_token": "direct-access"}
    ) as answer:
        assert (await answer.json())["error"] == 0


async def through_gate(session: aiohttp.ClientSession, gate_url: str) -> None:
    body = {"idempotency_key": f"bench-{next(_serial)}", "messages": [one_message()]}
    async with session.post(f"{gate_url}/v1/oas/{GATE_OA}/messages", json=body) as answer:
        assert answer.status == 200, await answer.text()
        result = (await answer.json())["results"][0]
        assert result["status"] == "sent", result


async def open_loop(
    send: Any, session: aiohttp.ClientSession, url: str, rate: float, seconds: float
) -> list[float]:
    """Latencies (s) of `rate` sends a second for `seconds`, each from when it was due."""
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()

    async def one(due: float) -> None:
        await send(session, url)
        latencies.append(time.perf_counter() - due)

    for n in range(int(rate * seconds)):
        due = started + n / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return latencies


async def wait_up(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(400):
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as up:
                if up.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def templates_known(session: aiohttp.ClientSession, base: str) -> None:
    """Until the gate's poller has read the template (its tag) from the fake."""
    for _ in range(600):
        async with session.get(f"{base}/v1/oas/{GATE_OA}/templates/{TEMPLATE}") as answer:
            if answer.status == 200 and (await answer.json())["tag"] is not None:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError("the gate never learned the template")


async def latency(tmp: Path, fake_url: str, rate: float, seconds: float) -> None:
    app = {"app_id": zalo.APP_ID, "secrets": [zalo.SECRET], "app_secret": "fake-app-secret"}
    apps = orjson.dumps([app]).decode()
    served = Served(
        tmp,
        "gate",
        cpu="0",
        ZNS_GATE_LOG__PATH=str(tmp / "gate.db"),
        ZNS_GATE_APPS=apps,
        ZNS_GATE_ZALO__ENABLED="true",
        ZNS_GATE_ZALO__API_URL=fake_url,
        ZNS_GATE_ZALO__OAUTH_URL=fake_url,
        ZNS_GATE_ZALO__TOKEN_KEY=TOKEN_KEY,
        ZNS_GATE_ZALO__MODE="production",
        # 200 a second answered after 50 ms are 10 in flight: room for more.
        ZNS_GATE_ZALO__SEND_CONCURRENCY="64",
        ZNS_GATE_LOG_LEVEL="WARNING",
        **extra_env,
    )
    try:
        await served.wait_ready(60, "/readyz")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            token = {"app_id": zalo.APP_ID, "refresh_token": f"{GATE_OA}-refresh"}
            async with session.put(f"{served.url}/v1/oas/{GATE_OA}/zalo/token", json=token) as r:
                assert r.status == 200, await r.text()
            await templates_known(session, served.url)
            # Warm both paths, then alternate them so that drift of the machine hits both.
            await open_loop(through_gate, session, served.url, rate, 2)
            await open_loop(direct, session, fake_url, rate, 2)
            runs: dict[str, list[float]] = {"direct": [], "gate": []}
            for _ in range(2):
                runs["direct"] += await open_loop(direct, session, fake_url, rate, seconds / 2)
                runs["gate"] += await open_loop(
                    through_gate, session, served.url, rate, seconds / 2
                )
            async with session.get(f"{served.url}/metrics") as answer:
                checkpoints = _checkpoints(await answer.text())
    finally:
        served.stop()
    print(f"part 1: {rate:.0f} messages a second, one a request, Zalo answering after 50 ms")
    print(f"{'':28} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}")
    rows = {name: [percentile(v, q) for q in (0.5, 0.9, 0.99, 1.0)] for name, v in runs.items()}
    labels = {"direct": "straight to Zalo (baseline)", "gate": "through POST /messages"}
    for name, label in labels.items():
        print(f"{label:28} " + " ".join(f"{x:6.1f} ms" for x in rows[name]))
    overhead = [g - d for g, d in zip(rows["gate"], rows["direct"], strict=True)]
    print(f"{'overhead':28} " + " ".join(f"{x:6.1f} ms" for x in overhead))
    print(f"the gate's checkpoints: {checkpoints}")


def _checkpoints(metrics: str) -> str:
    """How many checkpoints the gate made and how long they took on average."""
    values: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("zns_gate_checkpoint_seconds_") and " " in line:
            name, _, value = line.rpartition(" ")
            values[name.split("{")[0].rsplit("_", 1)[1]] = float(value)
    count = values.get("count", 0)
    mean = values.get("sum", 0) / count * 1000 if count else 0
    return f"{count:.0f}, {mean:.1f} ms each on average"


async def throughput(tmp: Path, fake_url: str, seconds: float, concurrency: int) -> None:
    port = free_port()
    settings = Settings.model_validate(
        {
            "server": {"host": "127.0.0.1", "port": port},
            "log": {"backend": "embedded", "path": str(tmp / "in-process.db")},
            "apps": [{"app_id": zalo.APP_ID, "secrets": [zalo.SECRET]}],
            "zalo": {
                "enabled": True,
                "api_url": fake_url,
                "oauth_url": fake_url,
                "token_key": TOKEN_KEY,
                "mode": "production",
                "send_concurrency": 64,
            },
        }
    )
    app = build_app(settings)
    app[ZALO_TOKENS] = FakeTokens(
        fake_url, pairs={GATE_OA: Pair("gate-access", f"{GATE_OA}-refresh")}
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    probe = Probe()
    sent = 0
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await wait_up(session, f"{base}/readyz")
            await templates_known(session, base)
            probe.start()
            await asyncio.sleep(seconds / 2)
            idle = await probe.stop()

            async def sender(until: float) -> None:
                nonlocal sent
                while time.perf_counter() < until:
                    body = {
                        "idempotency_key": f"batch-{next(_serial)}",
                        "messages": [one_message() for _ in range(100)],
                    }
                    async with session.post(
                        f"{base}/v1/oas/{GATE_OA}/messages", json=body
                    ) as answer:
                        results = (await answer.json())["results"]
                    sent += sum(r["status"] == "sent" for r in results)

            probe.start()
            started = time.perf_counter()
            await asyncio.gather(*(sender(started + seconds) for _ in range(concurrency)))
            took = time.perf_counter() - started
            busy = await probe.stop()
    finally:
        await runner.cleanup()
    print(
        f"\npart 2: batches of 100 from {concurrency} senders, one OA, in this process:"
        f" {sent / took:.0f} messages a second sent"
    )
    print(f"{'event loop':28} {'lag p50':>9} {'p99':>9} {'max':>9}")
    for label, lags in (("idle (baseline)", idle), ("taking the batches", busy)):
        print(f"{label:28} " + " ".join(f"{percentile(lags, q):6.2f} ms" for q in (0.5, 0.99, 1.0)))


async def main(rate: float, seconds: float, concurrency: int, part: int) -> None:
    configure_logging("WARNING", json=True)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        config = tmp / "scenario.toml"
        config.write_text(scenario())
        zalo_port = free_port()
        fake = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, "-m", "service.cli", "fake-zalo",
             "--port", str(zalo_port), "--config", str(config), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL,
        )
        fake_url = f"http://127.0.0.1:{zalo_port}"
        try:
            async with aiohttp.ClientSession() as session:
                await wait_up(session, f"{fake_url}/_fake/state")
            if part in (0, 1):
                await latency(tmp, fake_url, rate, seconds)
            if part in (0, 2):
                await throughput(tmp, fake_url, seconds, concurrency)
        finally:
            fake.terminate()
            fake.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--part", type=int, choices=(0, 1, 2), default=0, help="0: both")
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds, args.concurrency, args.part))
