"""The Zalo client against the local fake Zalo as a real server: typed answers with numbers
as strings and as numbers, pages of templates, the -124 rule (one refresh through the
fake's OAuth, one retry), and the envelope's cases (Zalo's error codes, HTTP errors, bodies
that are not JSON, timeouts, a closed port), each classified.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.config import ZaloSettings
from service.metrics import ZALO_CALLS
from service.zalo.client import NotSent, SendUnknown, Sent, ZaloCallError, ZaloClient
from service.zalo.fake import build_fake_app, default_scenario
from service.zalo.fake.scenario import DEFAULT_OA_ID, Scenario, parse_scenario
from service.zalo.outcomes import OutcomeClass, Transport
from tests.serve import free_port
from tests.zalo_tokens import FakeTokens

OA = DEFAULT_OA_ID


def scenario(**changes: Any) -> Scenario:
    values = default_scenario().model_dump()
    values["oas"][0].update(changes.pop("oa", {}))
    values.update(changes)
    return parse_scenario(values)


class Fake:
    def __init__(self, url: str) -> None:
        self.url = url

    async def control(self, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as http:
            if body is None:
                async with http.get(f"{self.url}/_fake{path}") as answer:
                    assert answer.status == 200, await answer.text()
                    return await answer.json()
            async with http.post(f"{self.url}/_fake{path}", json=body) as answer:
                assert answer.status == 200, await answer.text()
                return await answer.json()


Started = tuple[Fake, ZaloClient, FakeTokens]
Start = Callable[..., Awaitable[Started]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[TestServer] = []
    clients: list[ZaloClient] = []

    async def run(
        s: Scenario | None = None, timeout_s: float = 5.0, url: str | None = None
    ) -> Started:
        server = TestServer(build_fake_app(s or scenario()), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        fake_url = str(server.make_url("")).rstrip("/")
        tokens = FakeTokens(fake_url)
        client = ZaloClient(
            ZaloSettings(api_url=url or fake_url, request_timeout_s=timeout_s), tokens
        )
        await client.start()
        clients.append(client)
        return Fake(fake_url), client, tokens

    yield run
    for client in clients:
        await client.close()
    for server in servers:
        await server.close()


@pytest.mark.parametrize("numbers", ["as_zalo", "strings", "numbers"])
async def test_the_reads_are_typed_whether_zalo_sends_numbers_or_strings(
    start: Start, numbers: str
) -> None:
    _, client, _ = await start(
        scenario(numbers=numbers, oa={"daily_quota": 2000, "remaining_quota": 1500})
    )
    quota = await client.quota(OA)
    assert (quota.daily_quota, quota.remaining_quota) == (2000, 1500)
    assert (quota.monthly_promotion_quota, quota.remaining_monthly_promotion_quota) == (125, 125)
    assert quota.daily_quota_promotion is None
    quality = await client.quality(OA)
    assert (quality.quality_48h, quality.quality_7d) == ("HIGH", "HIGH")
    listed = await client.templates(OA)
    assert [t.template_id for t in listed] == ["231456", "231457", "231458", "231459"]
    assert listed[0].status == "ENABLE"
    assert listed[0].quality == "HIGH"
    assert listed[0].created_time == 1_700_000_000_000
    info = await client.template_info(OA, "231457")
    assert info.template_id == "231457"
    assert info.template_tag == "CUSTOMER_CARE"
    assert [(p.name, p.require, p.max_length, p.accept_null) for p in info.params] == [
        ("customer_name", True, 30, False),
        ("order_code", True, 20, False),
        ("note", False, 30, True),
    ]
    assert info.params[0].min_length == 0
    assert info.params[0].type == "STRING"
    assert await client.template_tags(OA) == ["TRANSACTION", "CUSTOMER_CARE", "PROMOTION"]


async def test_templates_come_in_pages_of_100_and_the_status_filter_is_zalos_number(
    start: Start,
) -> None:
    many = [
        {
            "template_id": str(500_000 + i),
            "template_name": f"t{i}",
            "status": "REJECT" if i % 10 == 0 else "ENABLE",
        }
        for i in range(250)
    ]
    _, client, _ = await start(scenario(templates=many))
    first = await client.templates_page(OA)
    assert len(first.templates) == 100
    assert first.total == 250
    listed = await client.templates(OA)
    assert [t.template_id for t in listed] == [t["template_id"] for t in many]
    rejected = await client.templates(OA, status="REJECT")
    assert {t.template_id for t in rejected} == {
        t["template_id"] for t in many if t["status"] == "REJECT"
    }
    assert all(t.status == "REJECT" for t in rejected)


async def test_an_expired_token_is_refreshed_once_and_the_call_retried_once(start: Start) -> None:
    fake, client, tokens = await start()
    await fake.control("/clock", {"advance_s": 90_001})  # the known access token expires
    quota = await client.quota(OA)
    assert quota.daily_quota == 500
    assert (tokens.refusals, tokens.refreshes) == (1, 1)
    calls = await fake.control("/oauth")
    assert [c["grant_type"] for c in calls] == ["refresh_token"]
    assert tokens.pairs[OA].access != "fake-access-token"
    # A second -124 after the retry is not retried again: it is the caller's, classified.
    await fake.control("/errors", {"endpoint": "quality", "error": -124, "times": 2})
    with pytest.raises(ZaloCallError) as refused:
        await client.quality(OA)
    assert refused.value.outcome is OutcomeClass.AUTH
    assert refused.value.code == -124
    assert tokens.refusals == 2
    assert tokens.refreshes == 2


async def test_zalos_error_codes_are_classified_by_the_table(start: Start) -> None:
    fake, client, _ = await start()
    cases = [
        (-32, OutcomeClass.TRANSIENT),
        (-135, OutcomeClass.NEEDS_HUMAN),
        (-144, OutcomeClass.RESCHEDULE),
        (-100, OutcomeClass.PERMANENT_PAYLOAD),
        (-99_999, OutcomeClass.TRANSIENT),  # unknown: Zalo's trouble until known
    ]
    for code, expected in cases:
        await fake.control("/errors", {"endpoint": "quota", "error": code})
        before = ZALO_CALLS.labels("quota", expected.value)._value.get()
        with pytest.raises(ZaloCallError) as failed:
            await client.quota(OA)
        assert (failed.value.code, failed.value.outcome) == (code, expected)
        assert ZALO_CALLS.labels("quota", expected.value)._value.get() == before + 1
    assert (await client.quota(OA)).daily_quota == 500  # the scripted errors are used up


async def test_http_errors_and_bodies_that_are_not_json_are_classified(start: Start) -> None:
    answers = {
        "/message/quota": web.Response(status=502, text="bad gateway"),
        "/quality": web.Response(status=200, text="<html>maintenance</html>"),
        "/message/template-tag": web.Response(status=429, text="slow down"),
        "/template/all": web.Response(status=404, text="no such path"),
    }

    async def answer(request: web.Request) -> web.Response:
        template = answers[request.path]
        return web.Response(status=template.status, text=template.text)

    app = web.Application()
    for path in answers:
        app.router.add_get(path, answer)
    odd = TestServer(app, host="127.0.0.1")
    await odd.start_server()
    try:
        _, client, _ = await start(url=str(odd.make_url("")).rstrip("/"))
        expected = [
            (client.quota(OA), Transport.HTTP_5XX, OutcomeClass.TRANSIENT),
            (client.quality(OA), Transport.NOT_JSON, OutcomeClass.TRANSIENT),
            (client.template_tags(OA), Transport.HTTP_429, OutcomeClass.TRANSIENT),
            (client.templates(OA), Transport.HTTP_4XX, OutcomeClass.NEEDS_HUMAN),
        ]
        for call, transport, outcome in expected:
            with pytest.raises(ZaloCallError) as failed:
                await call
            assert (failed.value.transport, failed.value.outcome) == (transport, outcome)
            assert failed.value.code is None
    finally:
        await odd.close()


async def test_a_timeout_is_no_answer_and_a_closed_port_is_never_sent(start: Start) -> None:
    _, slow, _ = await start(scenario(behaviour={"quota": {"delay_s": 2.0}}), timeout_s=0.3)
    with pytest.raises(ZaloCallError) as timed_out:
        await slow.quota(OA)
    assert timed_out.value.transport is Transport.NO_ANSWER
    assert timed_out.value.outcome is OutcomeClass.UNKNOWN
    _, closed, _ = await start(url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ZaloCallError) as refused:
        await closed.quota(OA)
    assert refused.value.transport is Transport.CONNECT
    assert refused.value.outcome is OutcomeClass.TRANSIENT


async def test_a_send_answers_sent_not_sent_or_unknown(start: Start) -> None:
    fake, client, tokens = await start()
    body = {
        "phone": "84987654321",
        "template_id": "231456",
        "template_data": {"otp": "123456"},
        "tracking_id": "order-1",
    }
    sent = await client.send(OA, body)
    assert isinstance(sent, Sent)
    assert sent.msg_id
    assert sent.sent_time.isdigit()
    assert (sent.daily_quota, sent.remaining_quota) == (500, 499)
    bad_phone = await client.send(OA, {**body, "phone": "12", "tracking_id": "order-2"})
    assert isinstance(bad_phone, NotSent)
    assert (bad_phone.reason, bad_phone.outcome, bad_phone.error) == (
        "zalo_error",
        OutcomeClass.PERMANENT_RECIPIENT,
        -108,
    )
    short = await client.send(OA, {**body, "template_data": {"otp": "1"}, "tracking_id": "o-3"})
    assert isinstance(short, NotSent)
    assert short.error == -1122
    assert short.outcome is OutcomeClass.PERMANENT_PAYLOAD
    tokens.pairs[OA].access = None
    assert await client.send(OA, body) == NotSent("no_token", OutcomeClass.NEEDS_HUMAN)
    sends = await fake.control("/sends")
    assert len(sends) == 3  # the one without a token never reached Zalo

    _, slow, _ = await start(scenario(behaviour={"send": {"delay_s": 2.0}}), timeout_s=0.3)
    unknown = await slow.send(OA, body)
    assert isinstance(unknown, SendUnknown)
    _, closed, _ = await start(url=f"http://127.0.0.1:{free_port()}")
    unavailable = await closed.send(OA, body)
    assert isinstance(unavailable, NotSent)
    assert unavailable.reason == "zalo_unavailable"
    assert unavailable.outcome is OutcomeClass.TRANSIENT


async def test_a_zalo_that_ignores_the_offset_does_not_page_for_ever(start: Start) -> None:
    page = [{"templateId": 900 + i, "status": "ENABLE"} for i in range(100)]
    asked: list[str] = []

    async def same_page(request: web.Request) -> web.Response:
        asked.append(request.query.get("offset", ""))
        return web.json_response({"error": 0, "message": "Success", "data": page})

    app = web.Application()
    app.router.add_get("/template/all", same_page)
    odd = TestServer(app, host="127.0.0.1")
    await odd.start_server()
    try:
        _, client, _ = await start(url=str(odd.make_url("")).rstrip("/"))
        listed = await client.templates(OA)
    finally:
        await odd.close()
    assert [t.template_id for t in listed] == [str(900 + i) for i in range(100)]
    assert asked == ["0", "100"]


async def test_a_send_answered_by_an_error_page_may_have_gone_and_is_unknown(
    start: Start,
) -> None:
    """A 5xx, or a 200 that is not Zalo's envelope, comes after Zalo (or a gateway before
    it) had the request: the send is unknown, never "not sent"; a 429 or a 4xx is a
    refusal before sending."""
    answers = {
        "502": web.Response(status=502, text="Bad Gateway"),
        "200-html": web.Response(status=200, text="<html>maintenance</html>"),
        "429": web.Response(status=429, text="slow down"),
        "404": web.Response(status=404, text="no such path"),
    }
    chosen: list[str] = []

    async def send(_: web.Request) -> web.Response:
        return answers[chosen[-1]]

    app = web.Application()
    app.router.add_post("/message/template", send)
    odd = TestServer(app, host="127.0.0.1")
    await odd.start_server()
    body = {"phone": "84987654321", "template_id": "231456", "template_data": {}}
    body["tracking_id"] = "t"
    try:
        _, client, _ = await start(url=str(odd.make_url("")).rstrip("/"))
        results = {}
        for case in answers:
            chosen.append(case)
            results[case] = await client.send(OA, body)
    finally:
        await odd.close()
    assert isinstance(results["502"], SendUnknown)
    assert isinstance(results["200-html"], SendUnknown)
    for refused in ("429", "404"):
        result = results[refused]
        assert isinstance(result, NotSent), refused
        assert result.reason == "zalo_unavailable"
