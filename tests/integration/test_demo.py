"""`zns-gate demo` against a running service: two current signed webhooks, accepted, and
counted in the OA's quality; with a wrong secret it says so and exits 1."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests import zalo
from tests.conftest import RunningService
from tests.integration.test_api import get, ready

ROOT = Path(__file__).resolve().parents[2]


def demo(service: RunningService, secret: str) -> list[str]:
    target = str(service.client.make_url("")).rstrip("/")
    return [
        sys.executable, "-m", "service.cli", "demo", "--target", target,
        "--app-id", zalo.APP_ID, "--secret", secret, "--oa-id", zalo.OA_ID,
    ]  # fmt: skip


@pytest.mark.parametrize("backend", ["embedded"])
async def test_the_demo_posts_current_webhooks_and_shows_them_counted(
    backend: str, service: RunningService
) -> None:
    await ready(service)
    done = await asyncio.to_thread(
        subprocess.run, demo(service, zalo.SECRET), cwd=ROOT, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    steps = orjson.loads(done.stdout)
    assert [s["status"] for s in steps["webhooks"]] == [200, 200]
    assert steps["counted"] is True
    assert steps["quality"]["proxy"]["delivered_48h"] == 1
    assert steps["quality"]["proxy"]["negatives_48h"] == 1
    status, quality = await get(service, f"/v1/oas/{zalo.OA_ID}/quality")
    assert (status, quality["proxy"]["negatives_48h"]) == (200, 1)

    wrong = await asyncio.to_thread(
        subprocess.run, demo(service, "not-the-secret"), cwd=ROOT, capture_output=True, timeout=60
    )
    assert wrong.returncode == 1
    refused = orjson.loads(wrong.stdout)
    assert [s["status"] for s in refused["webhooks"]] == [401, 401]
    assert refused["webhooks"][0]["answer"]["error"]["code"] == "invalid_signature"
