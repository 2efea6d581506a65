"""Benchmark of what the Zalo poller costs the event loop and the webhooks beside it.

One zns-gate application (embedded log, in this process, on a real socket) polls a fake
Zalo (`zns-gate fake-zalo`, another process) for one OA with `--templates` templates of
two params each: its first read lists them (pages of 100), reads every detail and writes
the sync records. Meanwhile a probe on the same loop wakes every millisecond and records
how late it woke, and signed webhooks are posted one after another. The baseline is the
same probe and webhooks over as long a time once the poller is idle, in the same run. Not
a test; it asserts nothing about speed.

    python -m tests.bench.poller [--templates 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from service.app import POLLER, ZALO_TOKENS, build_app
from service.config import Settings
from service.logsetup import configure_logging
from tests import zalo
from tests.bench.loop_lag import Probe
from tests.serve import free_port
from tests.zalo_tokens import FakeTokens


def scenario(templates: int) -> str:
    lines = [
        "[[apps]]",
        'app_id = "2074138120372622546"',
        'app_secret = "fake-app-secret"',
        'oa_secret_key = "fake-oa-secret-key"',
        "[[oas]]",
        'oa_id = "388613280878808645"',
        'app_id = "2074138120372622546"',
        'refresh_token = "fake-refresh-token"',
        'access_token = "fake-access-token"',
    ]
    for i in range(templates):
        lines += [
            "[[templates]]",
            f'template_id = "{700_000 + i}"',
            f'template_name = "template {i}"',
            f"tag = {i % 3 + 1}",
            'params = [{name = "customer_name", max_length = 30}, '
            '{name = "order_code", min_length = 4, max_length = 20}]',
        ]
    return "\n".join(lines) + "\n"


async def webhooks(session: aiohttp.ClientSession, base: str, until: float) -> list[float]:
    """Post webhooks one after another until `until`; their answer times (s)."""
    hooks = zalo.Webhooks()
    took: list[float] = []
    while time.perf_counter() < until:
        hook = hooks.build("user_feedback")
        started = time.perf_counter()
        async with session.post(
            f"{base}/webhooks/zalo", data=hook.body, headers=hook.headers
        ) as answer:
            await answer.read()
            assert answer.status == 200
        took.append(time.perf_counter() - started)
    return took


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main(templates: int) -> None:
    configure_logging("WARNING", json=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "scenario.toml"
        config.write_text(scenario(templates))
        zalo_port = free_port()
        fake = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "fake-zalo", "--port", str(zalo_port),
             "--config", str(config), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL,
        )
        fake_url = f"http://127.0.0.1:{zalo_port}"
        port = free_port()
        settings = Settings.model_validate(
            {
                "server": {"host": "127.0.0.1", "port": port},
                "log": {"backend": "embedded", "path": str(Path(tmp) / "bench.db")},
                "apps": [{"app_id": zalo.APP_ID, "secrets": [zalo.SECRET]}],
                "zalo": {
                    "enabled": True,
                    "api_url": fake_url,
                    "oauth_url": fake_url,
                    "token_key": base64.b64encode(b"k" * 32).decode(),
                },
            }
        )
        base = f"http://127.0.0.1:{port}"
        runner: web.AppRunner | None = None
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(200):  # the fake is up
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{fake_url}/_fake/state") as up:
                            if up.status == 200:
                                break
                    await asyncio.sleep(0.05)
                app = build_app(settings)
                app[ZALO_TOKENS] = FakeTokens(fake_url)
                probe = Probe()
                probe.start()
                started = time.perf_counter()
                runner = web.AppRunner(app)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                poller = app[POLLER]

                async def first_read_done() -> None:
                    oa = poller.oas.get(zalo.OA_ID)
                    while oa is None or len(oa.templates) < templates or poller.in_flight:
                        await asyncio.sleep(0.01)
                        oa = poller.oas.get(zalo.OA_ID)

                posting = asyncio.create_task(webhooks(session, base, time.perf_counter() + 3600))
                await first_read_done()
                took_s = time.perf_counter() - started
                posting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await posting
                polling_lags = await probe.stop()
                # The same webhooks, as long, with the poller idle.
                probe.start()
                idle_hooks = await webhooks(session, base, time.perf_counter() + took_s)
                idle_lags = await probe.stop()
                probe.start()
                busy_hooks = await _webhooks_during_read(session, base, poller, templates)
                busy_lags = await probe.stop()
        finally:
            if runner is not None:
                await runner.cleanup()
            fake.terminate()
            fake.wait(10)
    print(f"first read of {templates} templates (list, details, records): {took_s:.2f} s")
    print(f"{'while':36} {'stall p99':>10} {'max':>8} {'webhook p50':>12} {'p99':>8}")
    for name, lags, hooks in (
        ("baseline: poller idle", idle_lags, idle_hooks),
        ("poller reading every detail", busy_lags, busy_hooks),
        ("start-up and the first read", polling_lags, []),
    ):
        hook = f"{p(hooks, 0.5):9.1f} ms {p(hooks, 0.99):5.1f} ms" if hooks else ""
        print(f"{name:36} {p(lags, 0.99):7.1f} ms {max(lags) * 1000:5.1f} ms {hook}")


async def _webhooks_during_read(
    session: aiohttp.ClientSession, base: str, poller: object, templates: int
) -> list[float]:
    """Make every template's detail be read again (as after a change of each) and post
    webhooks while the poller reads them."""
    from service.zalo.poller import Poller, Read

    assert isinstance(poller, Poller)
    oa = poller.oas[zalo.OA_ID]
    oa.templates.clear()  # every template counts as changed
    poller.soon(zalo.OA_ID, (Read.TEMPLATES,))
    took: list[float] = []
    while oa.reads[Read.TEMPLATES].due != float("inf"):  # until the read starts
        await asyncio.sleep(0.01)
    while len(oa.templates) < templates or poller.in_flight:
        took += await webhooks(session, base, time.perf_counter() + 0.1)
    return took


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--templates", type=int, default=1000)
    asyncio.run(main(parser.parse_args().templates))
