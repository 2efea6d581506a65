"""Notifications end to end: signed webhooks drive decisions, the notifier posts them to a
receiver on loopback that verifies them with the Standard Webhooks reference library."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook

from service.app import NOTIFIER
from service.log.base import Record, TopicPartition
from service.metrics import NOTIFY_DELIVERED, NOTIFY_DLQ, NOTIFY_FAILED
from tests import feed, zalo
from tests.conftest import RunningService, ServiceFactory
from tests.integration.test_api import NOW, OA, admit, eventually, get, post_webhook, ready
from tests.integration.test_zalo_tokens import (  # noqa: F401 (the fixture `fake`)
    REFRESH,
    Fake,
    fake,
    keeper_of,
    later,
    put,
    until_owner,
    zalo_sections,
)

SECRET = "whsec_" + base64.b64encode(b"notify-test-key-0123456789abcdef").decode()
FAST = {"backoff_first_s": 0.05, "backoff_most_s": 0.2, "poll_s": 0.05}
"""Retries and polls shortened for tests."""
PROCESSOR = {"checkpoint_interval_s": 0.2}
"""Decisions are appended at each checkpoint: often, in tests."""
ZNS_2024 = [{"oa_id": OA, "rules": "zns-2024"}]
"""The OA on a 5,000 a day ladder start: T = 100, penalty_near at 50 negatives."""


@dataclass
class Receiver:
    """A notification target on loopback: verifies every post, answers as told."""

    secret: str = SECRET
    answers: list[int] = field(default_factory=list)
    """Statuses to answer first, in order; 200 after them."""
    hang: asyncio.Event | None = None
    """While set to an unset event, every post waits for it."""
    attempts: list[str] = field(default_factory=list)
    """The `webhook-id` of every post, in order, answered or not."""
    delivered: list[Any] = field(default_factory=list)
    """The verified bodies answered 2xx."""
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.attempts.append(headers["webhook-id"])
        if self.hang is not None:
            await self.hang.wait()
        status = self.answers.pop(0) if self.answers else 200
        if status == 200:
            self.delivered.append(Webhook(self.secret).verify(body, headers))
        return web.Response(status=status)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))

    def ids(self) -> list[str]:
        return [self.id_of(body) for body in self.delivered]

    @staticmethod
    def id_of(body: Any) -> str:
        return str(body["data"]["decision_id"])

    def rules(self) -> list[str]:
        return [body["data"]["rule"] for body in self.delivered if "data" in body]


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        if receiver.hang is not None:
            receiver.hang.set()
        if receiver.server is not None:
            await receiver.server.close()


async def receiver(receivers: list[Receiver], **fields: Any) -> Receiver:
    made = Receiver(**fields)
    app = web.Application()
    app.router.add_post("/hook", made.handle)
    made.server = TestServer(app, host="127.0.0.1")
    await made.server.start_server()
    receivers.append(made)
    return made


def target(receiver: Receiver | str, name: str, **fields: Any) -> dict[str, Any]:
    url = receiver if isinstance(receiver, str) else receiver.url
    return {"name": name, "url": url, "secret": SECRET, **fields}


async def start(
    service_factory: ServiceFactory, *targets: dict[str, Any], **notifier: Any
) -> RunningService:
    """The service with `targets`, once every stream follows its cursor (a new target's
    cursor starts at the end of the log: what comes later is its)."""
    service = await service_factory(
        notify=list(targets),
        notifier={**FAST, **notifier},
        processor=PROCESSOR,
        oas=ZNS_2024,
    )
    await ready(service)
    app = service.client.app
    assert app is not None
    wanted = {(t["name"], p) for t in targets for p in range(service.log.partitions)}

    async def following() -> bool:
        return bool(app[NOTIFIER].following() >= wanted)

    await eventually(following)
    return service


async def negatives(service: RunningService, count: int, first: int = 0) -> None:
    """`count` one-star ratings through the signed webhook path (each one a negative)."""
    for n in range(first, first + count):
        await post_webhook(service, feed.rating(f"m{n}", 1, NOW + timedelta(seconds=n)))


async def low_quality(service: RunningService) -> None:
    """1 negative of 4 delivered: the proxy's quality LOW, a template paused, a step down
    projected (several decisions, the `tier_down_likely` warning among them)."""
    for n in range(4):
        await post_webhook(service, feed.receipt(f"q{n}", NOW))
    await post_webhook(service, feed.rating("q0", 1, NOW + timedelta(seconds=1)))


async def decisions(service: RunningService) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await read_all(service, service.log.topics.decisions)]


async def read_all(service: RunningService, topic: str) -> list[Record]:
    out: list[Record] = []
    for p in range(service.log.partitions):
        start = 0
        while batch := await service.log.read(TopicPartition(topic, p), start, 500):
            out.extend(batch)
            start = batch[-1].offset + 1
    return out


def unused_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


async def test_a_penalty_from_negative_ratings_reaches_the_receiver_verified(
    service_factory: ServiceFactory, receivers: list[Receiver]
) -> None:
    hook = await receiver(receivers)
    service = await start(service_factory, target(hook, "ops"))
    await negatives(service, 101)  # T = 100: the 101st is the penalty

    async def penalised() -> bool:
        return "penalty" in hook.rules()

    await eventually(penalised)
    assert hook.rules().count("penalty_near") == 1  # at 50, once
    penalty = next(b for b in hook.delivered if b["data"]["rule"] == "penalty")
    assert penalty["type"] == "decision.penalty"
    assert (penalty["data"]["before"], penalty["data"]["after"]) == (5_000, 2_000)
    assert penalty["data"]["inputs"]["negatives_today"] == 101
    assert "dropped one step, from 5,000 to 2,000" in penalty["explanation"]
    # webhook-id is the decision's id, and everything in zns.decisions came, verified.
    assert set(hook.ids()) == {d["decision_id"] for d in await decisions(service)}
    assert hook.attempts[: len(hook.delivered)] == hook.ids()
    assert NOTIFY_DELIVERED.labels("ops")._value.get() >= len(hook.delivered)


async def test_slack_format_posts_the_explanation_as_text(
    service_factory: ServiceFactory, receivers: list[Receiver]
) -> None:
    hook = await receiver(receivers)
    service = await start(
        service_factory, target(hook, "chat", format="slack", kinds=["penalty_near"])
    )
    await negatives(service, 50)

    async def came() -> bool:
        return bool(hook.delivered)

    await eventually(came)
    await asyncio.sleep(0.5)  # nothing else comes: only penalty_near is wanted
    assert len(hook.delivered) == 1
    (body,) = hook.delivered
    assert set(body) == {"text"}
    assert body["text"].startswith(f"OA {OA} at ")
    assert "Warning penalty_near: 50 negatives today" in body["text"]
    assert "above 100 the daily quota drops one step" in body["text"]


async def test_kinds_choose_what_each_target_gets(
    service_factory: ServiceFactory, receivers: list[Receiver]
) -> None:
    by_kind, by_rule = await receiver(receivers), await receiver(receivers)
    service = await start(
        service_factory,
        target(by_kind, "by-kind", kinds=["quality"]),
        target(by_rule, "by-rule", kinds=["tier_down_likely"]),
    )
    await low_quality(service)

    async def both() -> bool:
        return bool(by_kind.delivered) and bool(by_rule.delivered)

    await eventually(both)
    await asyncio.sleep(0.5)  # time for anything unwanted to come too
    made = await decisions(service)
    assert {d["kind"] for d in made} == {"quality", "warning"}
    quality = sorted(d["decision_id"] for d in made if d["kind"] == "quality")
    assert sorted(by_kind.ids()) == quality
    (warning,) = [d for d in made if d["kind"] == "warning"]
    assert warning["rule"] == "tier_down_likely"
    assert by_rule.ids() == [warning["decision_id"]]


async def test_a_target_answering_500_is_retried_until_it_takes_the_decision(
    service_factory: ServiceFactory, receivers: list[Receiver]
) -> None:
    hook = await receiver(receivers, answers=[500, 503])
    failed_before = NOTIFY_FAILED.labels("flaky")._value.get()
    service = await start(service_factory, target(hook, "flaky", kinds=["penalty_near"]))
    await negatives(service, 50)

    async def came() -> bool:
        return bool(hook.delivered)

    await eventually(came)
    (decision_id,) = hook.ids()
    assert hook.attempts == [decision_id] * 3  # the same id each time: a receiver dedups
    assert NOTIFY_FAILED.labels("flaky")._value.get() - failed_before == 2


async def test_a_target_down_past_the_retry_window_gets_its_decisions_dead_lettered(
    service_factory: ServiceFactory,
) -> None:
    url = unused_url()
    before = NOTIFY_DLQ.labels("down")._value.get()
    service = await start(
        service_factory, target(url, "down", kinds=["penalty_near"]), retry_for_s=0.5
    )
    await negatives(service, 50)

    async def dead() -> bool:
        return bool(await read_all(service, service.log.topics.notify_dlq))

    await eventually(dead)
    (record,) = await read_all(service, service.log.topics.notify_dlq)
    letter = orjson.loads(record.value)
    (warning,) = [d for d in await decisions(service) if d["rule"] == "penalty_near"]
    assert letter["decision"] == warning
    origin = "/".join(url.split("/")[:3])  # scheme://host:port: never the path
    assert (letter["target"], letter["url"], letter["last_error"]) == (
        "down",
        origin,
        "unreachable",
    )
    assert letter["attempts"] >= 2
    assert letter["source"]["topic"] == service.log.topics.decisions
    assert record.key == OA.encode()
    assert NOTIFY_DLQ.labels("down")._value.get() - before == 1


async def test_a_restart_delivers_what_was_in_flight_and_nothing_is_lost(
    service_factory: ServiceFactory, receivers: list[Receiver]
) -> None:
    hook = await receiver(receivers, answers=[503] * 10_000)  # down for now
    first = await start(service_factory, target(hook, "ops"))
    await low_quality(first)

    async def tried() -> bool:
        return len(set(hook.attempts)) >= 3

    await eventually(tried)
    await first.client.close()  # the decisions in flight are not delivered
    assert hook.delivered == []
    hook.answers.clear()  # up again
    second = await start(service_factory, target(hook, "ops"))
    made = {d["decision_id"] for d in await decisions(second)}

    async def all_came() -> bool:
        return set(hook.ids()) >= made

    await eventually(all_came)
    # Delivered, the cursor moves on: a second restart posts none of them again.
    app = second.client.app
    assert app is not None
    streams = app[NOTIFIER]._streams.values()

    async def saved() -> bool:
        return all(s.cursor == s._saved for s, _ in streams)

    await eventually(saved)
    await second.client.close()
    count = len(hook.delivered)
    third = await start(service_factory, target(hook, "ops"))
    await negatives(third, 50)  # a new decision after the restart still comes

    async def warned() -> bool:
        return "penalty_near" in hook.rules()

    await eventually(warned)
    assert len(hook.delivered) == count + 1


async def test_a_hanging_target_holds_back_neither_the_api_nor_another_target(
    service_factory: ServiceFactory, receivers: list[Receiver]
) -> None:
    slow = await receiver(receivers, hang=asyncio.Event())
    fast = await receiver(receivers)
    service = await start(service_factory, target(slow, "slow"), target(fast, "fast"), timeout_s=60)
    await low_quality(service)

    async def hanging() -> bool:
        return bool(slow.attempts) and bool(fast.delivered)

    await eventually(hanging)
    # While the slow target holds its posts open, admissions are decided and answered...
    status, answer, _ = await admit(service, template_id="t9", tag=1, count=3, idempotency_key="h")
    assert (status, answer["granted"]) == (200, 3)
    assert (await get(service, f"/v1/oas/{OA}/quota"))[0] == 200
    # ... and the fast target gets every decision.
    made = {d["decision_id"] for d in await decisions(service)}

    async def fast_has_all() -> bool:
        return set(fast.ids()) >= made

    await eventually(fast_has_all)
    assert slow.delivered == []
    assert slow.hang is not None
    slow.hang.set()

    async def slow_has_all() -> bool:
        return set(slow.ids()) >= made

    await eventually(slow_has_all)


async def test_token_expiring_warns_once_per_refresh_token(
    service_factory: ServiceFactory,
    receivers: list[Receiver],
    fake: Fake,  # noqa: F811
) -> None:
    hook = await receiver(receivers)
    service = await service_factory(
        **zalo_sections(fake),
        notify=[target(hook, "tokens", kinds=["token_expiring"])],
        notifier=FAST,
        processor=PROCESSOR,
    )
    await until_owner(service)
    app = service.client.app
    assert app is not None

    async def following() -> bool:
        return len(app[NOTIFIER].following()) == service.log.partitions

    await eventually(following)
    body = {"app_id": zalo.APP_ID, "refresh_token": REFRESH}
    assert (await put(service, body))[0] == 200
    keeper = keeper_of(service)
    # Zalo rate-limits every refresh: the refresh token ages towards its end unrenewed.
    await fake.control("/errors", {"endpoint": "oauth", "error": -32, "times": 10_000})
    later(keeper, 84 * 86_400)  # 6 days left of 90

    async def warned() -> bool:
        return bool(hook.delivered)

    await eventually(warned)
    await asyncio.sleep(keeper.options.tail_every_s * 3)  # more ticks: no second warning
    (warning,) = hook.delivered
    assert (warning["data"]["kind"], warning["data"]["rule"]) == ("warning", "token_expiring")
    assert warning["data"]["source"]["topic"] == service.log.topics.tokens
    assert "refresh token expires at" in warning["explanation"]
    made = [d for d in await decisions(service) if d["rule"] == "token_expiring"]
    assert [d["decision_id"] for d in made] == [warning["data"]["decision_id"]]
    assert keeper._tokens[OA].expiring_warned  # kept in the token's record
