"""`zns-gate serve` killed with SIGKILL in the middle of a 100-message `POST /messages`, on
both backends, then started again on the same log: the same request again sends nothing
(the fake Zalo counts its sends: none twice), and answers every message: `sent` where the
outcome was recorded, `unknown` where it may have been sent before the kill.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from service.zalo.fake import build_fake_app
from tests import zalo
from tests.conftest import LogOpener
from tests.integration.test_faults import settings
from tests.serve import Served
from tests.zalo_gate import OA, scenario

TOKEN_KEY = base64.b64encode(b"c" * 32).decode()
APP_SECRET = "fake-app-secret"  # the fake's default app's
REFRESH = "fake-refresh-token"


def gate_env(opener: LogOpener, fake_url: str) -> dict[str, str]:
    apps = [{"app_id": zalo.APP_ID, "secrets": [zalo.SECRET], "app_secret": APP_SECRET}]
    return {
        **settings(opener),
        "ZNS_GATE_APPS": orjson.dumps(apps).decode(),
        "ZNS_GATE_ZALO__ENABLED": "true",
        "ZNS_GATE_ZALO__API_URL": fake_url,
        "ZNS_GATE_ZALO__OAUTH_URL": fake_url,
        "ZNS_GATE_ZALO__TOKEN_KEY": TOKEN_KEY,
        "ZNS_GATE_ZALO__SEND_CONCURRENCY": "4",
    }


async def fake_sends(http: aiohttp.ClientSession, fake_url: str) -> list[dict[str, Any]]:
    async with http.get(f"{fake_url}/_fake/sends") as answer:
        sends: list[dict[str, Any]] = await answer.json()
    return sends


async def answered(http: aiohttp.ClientSession, url: str, body: Any) -> dict[str, Any]:
    """The answer to `body`, asking again while the restarted service is not serving yet."""
    async with asyncio.timeout(60):
        while True:
            async with http.post(f"{url}/v1/oas/{OA}/messages", json=body) as answer:
                if answer.status == 200:
                    result: dict[str, Any] = await answer.json()
                    return result
                assert answer.status == 503, await answer.text()
            await asyncio.sleep(0.2)


async def test_a_repeat_after_a_kill_mid_batch_sends_nothing_twice_and_answers_every_message(
    log_factory: LogOpener, tmp_path: Path
) -> None:
    # Zalo answers each send after 50 ms: 100 messages, 4 at a time, take over a second.
    fake = TestServer(
        build_fake_app(
            scenario(
                behaviour={"send": {"delay_s": 0.05}},
                oa={"daily_quota": 100_000, "remaining_quota": 100_000},
            )
        ),
        host="127.0.0.1",
    )
    await fake.start_server()
    fake_url = str(fake.make_url("")).rstrip("/")
    env = gate_env(log_factory, fake_url)
    messages = [
        {"template_id": "231456", "tag": 1, "phone": f"09{i:08d}", "template_data": {"otp": "1234"}}
        for i in range(100)
    ]
    body = {"idempotency_key": "killed-batch", "messages": messages}
    served = Served(tmp_path, "first", **env)
    try:
        async with aiohttp.ClientSession() as http:
            await served.wait_ready(60, "/readyz")
            token = {"app_id": zalo.APP_ID, "refresh_token": REFRESH}
            async with http.put(f"{served.url}/v1/oas/{OA}/zalo/token", json=token) as answer:
                assert answer.status == 200, await answer.text()
            batch = asyncio.create_task(
                http.post(f"{served.url}/v1/oas/{OA}/messages", json=body)
            )
            async with asyncio.timeout(30):
                while len(await fake_sends(http, fake_url)) < 20:
                    await asyncio.sleep(0.02)
            served.process.send_signal(signal.SIGKILL)
            served.process.wait(timeout=30)
            with contextlib.suppress(aiohttp.ClientError):
                await batch  # the connection died with the service
            before = await fake_sends(http, fake_url)
            assert 20 <= len(before) < 100, "killed in the middle of the batch"

            served = Served(tmp_path, "second", **env)
            await served.wait_ready(60, "/readyz")
            repeated = await answered(http, served.url, body)
            # The same tracking ids under another key: admitted before the kill, sent or
            # not, none may go again.
            again = [{**m, "tracking_id": f"killed-batch-{i}"} for i, m in enumerate(messages)]
            other = await answered(http, served.url, {"idempotency_key": "new", "messages": again})
            await asyncio.sleep(0.5)  # a send the repeat made would have reached Zalo by now
            after = await fake_sends(http, fake_url)
    finally:
        served.stop()
        await fake.close()

    # Nothing was sent again, and no message was sent twice.
    assert len(after) == len(before)
    sent_to = Counter(s["body"]["tracking_id"] for s in after)
    assert max(sent_to.values()) == 1
    # Every message is answered: sent where its outcome was recorded, unknown where it may
    # have gone before the kill; never failed, never sent again.
    results = repeated["results"]
    assert [r["tracking_id"] for r in results] == [f"killed-batch-{i}" for i in range(100)]
    statuses = Counter(r["status"] for r in results)
    assert set(statuses) <= {"sent", "unknown"}, statuses
    assert statuses["sent"] > 0, "the outcomes recorded before the kill are answered"
    assert statuses["unknown"] >= 100 - len(before)  # the ones never sent are unknown too
    assert {(r["status"], r["reason"]) for r in other["results"]} == {
        ("rejected", "invalid_tracking_id")
    }
    zalo_ids = {s["body"]["tracking_id"]: s["msg_id"] for s in after}
    for result in results:
        if result["status"] == "sent":
            assert result["msg_id"] == zalo_ids[result["tracking_id"]]
