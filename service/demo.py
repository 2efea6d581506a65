"""`zns-gate demo`: a first look at a running service with current, signed webhooks.

It signs, as Zalo does, a delivery receipt and a one-star rating of the same message,
both dated now, posts them to `/webhooks/zalo`, waits until the OA's quality shows
them, and prints what each step answered. A newcomer sees the receiver accept the
events and the processor count them, without writing a signature by hand. It sends
nothing else and changes nothing but that OA's counts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import orjson

from service.receiver.signature import sign

DEMO_OA = "388613280878808645"


def webhooks(app_id: str, secret: str, oa_id: str) -> list[tuple[bytes, dict[str, str]]]:
    """A receipt and a one-star rating of one fresh message, signed: (body, headers)."""
    now = int(time.time() * 1000)
    msg_id = f"demo{uuid.uuid4().hex[:16]}"
    receipt = {
        "event_name": "user_received_message",
        "app_id": app_id,
        "timestamp": str(now),
        "sender": {"id": oa_id},
        "recipient": {"id": "84987654321"},
        "message": {"delivery_time": str(now), "msg_id": msg_id, "tracking_id": "demo-1"},
    }
    rating = {
        "event_name": "user_feedback",
        "app_id": app_id,
        "oa_id": oa_id,
        "timestamp": str(now + 1),
        "message": {"msg_id": msg_id, "rate": 1, "submit_time": str(now + 1)},
    }
    out = []
    for payload, server in ((receipt, "ZNS"), (rating, None)):
        body = orjson.dumps(payload)
        headers = {
            "Content-Type": "application/json",
            "X-ZEvent-Signature": sign(app_id, body, str(payload["timestamp"]), secret),
        }
        if server is not None:
            headers["X-ZEvent-Server"] = server
        out.append((body, headers))
    return out


async def run(
    target: str, app_id: str, secret: str, oa_id: str, token: str | None, timeout_s: float
) -> dict[str, Any]:
    """Post the two webhooks and wait for the OA's quality to count them; what came back."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    steps: dict[str, Any] = {"oa_id": oa_id, "webhooks": []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        before = await _proxy_counts(http, target, oa_id, auth)
        for body, headers in webhooks(app_id, secret, oa_id):
            async with http.post(f"{target}/webhooks/zalo", data=body, headers=headers) as answer:
                steps["webhooks"].append({"status": answer.status, "answer": await answer.json()})
        if any(step["status"] != 200 for step in steps["webhooks"]):
            steps["counted"] = False
            return steps
        deadline = time.monotonic() + timeout_s
        while True:
            quality = await _quality(http, target, oa_id, auth)
            proxy = quality.get("proxy", {})
            counted = (
                proxy.get("delivered_48h", 0) > before[0]
                and proxy.get("negatives_48h", 0) > before[1]
            )
            if counted or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    steps["counted"] = counted
    steps["quality"] = {
        "proxy": proxy,
        "quality_48h": quality.get("quality_48h"),
        "explanation": quality.get("explanation"),
    }
    return steps


async def _quality(
    http: aiohttp.ClientSession, target: str, oa_id: str, auth: dict[str, str]
) -> dict[str, Any]:
    async with http.get(f"{target}/v1/oas/{oa_id}/quality", headers=auth) as answer:
        if answer.status != 200:
            return {}
        body: dict[str, Any] = await answer.json()
        return body


async def _proxy_counts(
    http: aiohttp.ClientSession, target: str, oa_id: str, auth: dict[str, str]
) -> tuple[int, int]:
    proxy = (await _quality(http, target, oa_id, auth)).get("proxy", {})
    return int(proxy.get("delivered_48h", 0)), int(proxy.get("negatives_48h", 0))
