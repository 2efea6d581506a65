"""Webhooks the fake Zalo posts to a gate: signed as Zalo signs, retried as Zalo retries.

Every delivery is a tracked task, cancelled when the fake stops; a gate that is
down or answers non-200 is tried again after each of the scenario's retry
delays, then the webhook is dropped and counted. It never raises into the
request that caused it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from service.logsetup import get_logger
from service.receiver.signature import sign
from service.zalo.fake.scenario import FakeApp, Scenario

_log = get_logger("fake_zalo")


@dataclass
class Delivery:
    """One webhook and what became of it."""

    event_name: str
    body: dict[str, Any]
    attempts: int = 0
    statuses: list[int | str] = field(default_factory=list)
    outcome: str = "pending"
    """`pending`, `delivered`, `dropped` (every attempt failed) or `cancelled`."""

    def summary(self) -> dict[str, Any]:
        return {
            "event_name": self.event_name,
            "body": self.body,
            "attempts": self.attempts,
            "statuses": self.statuses,
            "outcome": self.outcome,
        }


class WebhookPoster:
    """Posts webhooks to `{gate}/webhooks/zalo`, or only records them when no gate is set."""

    def __init__(self, scenario: Scenario, gate: str | None) -> None:
        self._scenario = scenario
        self._url = gate.rstrip("/") + "/webhooks/zalo" if gate else None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.deliveries: deque[Delivery] = deque(maxlen=scenario.history_limit)
        """The newest webhooks; `counts()` counts every one since the start."""
        self._counts: Counter[str] = Counter()

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._scenario.webhook_timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)

    def point_at(self, gate: str) -> None:
        """Post to `gate` from now on (a gate started after the fake, whose address the
        fake could not be given)."""
        self._url = gate.rstrip("/") + "/webhooks/zalo"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def counts(self) -> dict[str, int]:
        outcomes = ("pending", "delivered", "dropped", "cancelled", "unsent")
        return {outcome: self._counts[outcome] for outcome in outcomes}

    def _settle(self, delivery: Delivery, outcome: str) -> None:
        self._counts[delivery.outcome] -= 1
        self._counts[outcome] += 1
        delivery.outcome = outcome

    def post(self, app: FakeApp, body: dict[str, Any], delay_s: float, zns: bool) -> Delivery:
        """Post `body` (with `app_id` and `timestamp` already in it) after `delay_s`.

        `zns` adds the `X-ZEvent-Server: ZNS` header of phone-channel events."""
        delivery = Delivery(str(body.get("event_name")), body)
        self.deliveries.append(delivery)
        self._counts["pending"] += 1
        if self._url is None:
            self._settle(delivery, "unsent")
            return delivery
        task = asyncio.create_task(self._deliver(app, delivery, delay_s, zns))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delivery

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no delivery is pending (True), or `timeout_s` passed (False)."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return not pending

    async def _deliver(self, app: FakeApp, delivery: Delivery, delay_s: float, zns: bool) -> None:
        raw = orjson.dumps(delivery.body)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ZaloWebhook",
            "X-ZEvent-Signature": sign(
                app.app_id, raw, str(delivery.body["timestamp"]), app.oa_secret_key
            ),
        }
        if zns:
            headers["X-ZEvent-Server"] = "ZNS"
        waits = [delay_s, *self._scenario.webhook_retry_delays_s]
        try:
            for attempt, wait in enumerate(waits):
                await asyncio.sleep(wait)
                if attempt:
                    headers["num_retry"] = str(attempt)
                delivery.attempts += 1
                status = await self._attempt(raw, headers)
                delivery.statuses.append(status)
                if status == 200:
                    self._settle(delivery, "delivered")
                    return
            self._settle(delivery, "dropped")
            _log.warning(
                "webhook dropped after every retry",
                event_name=delivery.event_name,
                attempts=delivery.attempts,
                last=delivery.statuses[-1],
            )
        except asyncio.CancelledError:
            self._settle(delivery, "cancelled")
            raise

    async def _attempt(self, raw: bytes, headers: dict[str, str]) -> int | str:
        assert self._session is not None
        assert self._url is not None
        try:
            async with self._session.post(self._url, data=raw, headers=headers) as answer:
                await answer.read()
                return answer.status
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            return type(exc).__name__
