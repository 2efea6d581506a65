"""`zns-gate fake-zalo` as a real server: OAuth, sends, reads, webhooks and the control API.

The fake runs on a loopback port; the gate is a small real aiohttp server here
that verifies each webhook's signature as the receiver does. Every call is a
plain aiohttp request, as a client of Zalo would make it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.receiver.signature import verify
from service.zalo.fake import build_fake_app, default_scenario
from service.zalo.fake.scenario import DEFAULT_APP_ID, DEFAULT_OA_ID, Scenario, parse_scenario
from service.zalo.fake.server import FAKE_KEY, FakeZaloServer
from service.zalo.fake.state import fingerprint
from tests.conftest import ServiceFactory
from tests.serve import environment, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "fake-zalo" / "scenario.toml"
APP_SECRET = "fake-app-secret"
OA_SECRET = "fake-oa-secret-key"
ACCESS = "fake-access-token"
REFRESH = "fake-refresh-token"
OTP = {"phone": "84987654321", "template_id": "231456", "template_data": {"otp": "123456"}}


def scenario(**changes: Any) -> Scenario:
    """The default scenario with top-level keys and the OA's keys (`oa={...}`) changed."""
    values = default_scenario().model_dump()
    oa_changes = changes.pop("oa", {})
    values["oas"][0].update(oa_changes)
    values.update(changes)
    return parse_scenario(values)


@dataclass
class Gate:
    """A stand-in for zns-gate's receiver: verifies and keeps every webhook."""

    url: str
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    holder: list[Gate] = []

    async def webhook(request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw)
        signed = verify(
            request.headers.get("X-ZEvent-Signature"),
            str(body["app_id"]),
            raw,
            str(body["timestamp"]),
            [OA_SECRET],
        )
        one = holder[0]
        if not signed:
            one.refused += 1
            return web.Response(status=401)
        if one.status != 200:
            one.refused += 1
            return web.Response(status=one.status)
        one.received.append({"body": body, "headers": dict(request.headers)})
        one.arrived.set()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/webhooks/zalo", webhook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    holder.append(Gate(str(server.make_url("")).rstrip("/")))
    yield holder[0]
    await server.close()


@dataclass
class Fake:
    url: str
    server: FakeZaloServer
    http: aiohttp.ClientSession

    async def token(self, form: dict[str, str], secret: str | None = APP_SECRET) -> Any:
        headers = {} if secret is None else {"secret_key": secret}
        async with self.http.post(
            f"{self.url}/v4/oa/access_token", data=form, headers=headers
        ) as answer:
            assert answer.status == 200
            return await answer.json()

    async def refresh(self, refresh_token: str) -> Any:
        return await self.token(
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "app_id": DEFAULT_APP_ID,
            }
        )

    async def get(self, path: str, token: str = ACCESS, **params: Any) -> Any:
        async with self.http.get(
            f"{self.url}{path}", params=params, headers={"access_token": token}
        ) as answer:
            assert answer.status == 200
            return await answer.json()

    async def send(self, body: dict[str, Any], token: str = ACCESS, hashed: bool = False) -> Any:
        path = "/message/template/hashphone" if hashed else "/message/template"
        body = {"tracking_id": "order-1", **body}
        async with self.http.post(
            f"{self.url}{path}", json=body, headers={"access_token": token}
        ) as answer:
            assert answer.status == 200
            return await answer.json()

    async def control(self, path: str, body: Any = None, status: int = 200) -> Any:
        method = self.http.get if body is None else self.http.post
        kwargs = {} if body is None else {"json": body}
        async with method(f"{self.url}/_fake{path}", **kwargs) as answer:
            assert answer.status == status, await answer.text()
            return await answer.json()


FakeFactory = Callable[..., Awaitable[Fake]]


@pytest.fixture
async def fake_factory() -> AsyncIterator[FakeFactory]:
    servers: list[TestServer] = []
    http = aiohttp.ClientSession()

    async def start(s: Scenario | None = None, gate: Gate | None = None) -> Fake:
        app = build_fake_app(s or scenario(), gate=gate.url if gate else None)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Fake(str(server.make_url("")).rstrip("/"), app[FAKE_KEY], http)

    yield start
    for server in servers:
        await server.close()
    await http.close()


@pytest.fixture
async def fake(fake_factory: FakeFactory) -> Fake:
    return await fake_factory()


# OAuth v4


async def test_refresh_rotates_and_the_old_refresh_token_is_refused(fake: Fake) -> None:
    first = await fake.refresh(REFRESH)
    assert set(first) == {"access_token", "refresh_token", "expires_in"}
    assert first["expires_in"] == "90000"
    assert first["refresh_token"] != REFRESH

    reused = await fake.refresh(REFRESH)
    assert reused["error"] == -14014
    assert "access_token" not in reused

    second = await fake.refresh(first["refresh_token"])
    assert second["refresh_token"] not in (REFRESH, first["refresh_token"])
    quota = await fake.get("/message/quota", token=second["access_token"])
    assert quota["error"] == 0
    oauth = await fake.control("/oauth")
    assert [entry["error"] for entry in oauth] == [0, -14014, 0]


async def test_the_secret_key_is_required_and_checked(fake: Fake) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": REFRESH, "app_id": DEFAULT_APP_ID}
    assert (await fake.token(form, secret=None))["error"] == -14003
    assert (await fake.token(form, secret="not-the-secret"))["error"] == -14003
    assert (await fake.token({**form, "app_id": "1"}))["error"] == -14002
    # A refused call used nothing up: the refresh token still works.
    assert "access_token" in await fake.refresh(REFRESH)


def _pkce() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(b"v" * 48).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


async def test_the_code_exchange_checks_the_pkce_verifier(fake: Fake) -> None:
    verifier, challenge = _pkce()
    async with fake.http.get(
        f"{fake.url}/v4/oa/permission",
        params={
            "app_id": DEFAULT_APP_ID,
            "redirect_uri": "http://127.0.0.1:8080/zalo/callback",
            "code_challenge": challenge,
            "state": "signed-state",
        },
        allow_redirects=False,
    ) as answer:
        assert answer.status == 302
        location = urlsplit(answer.headers["Location"])
    assert location.path == "/zalo/callback"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["oa_id"] == DEFAULT_OA_ID
    assert query["state"] == "signed-state"
    form = {"grant_type": "authorization_code", "code": query["code"], "app_id": DEFAULT_APP_ID}

    wrong = await fake.token({**form, "code_verifier": "x" * 43})
    assert wrong["error"] == -14019
    pair = await fake.token({**form, "code_verifier": verifier})
    assert pair["expires_in"] == "90000"
    assert (await fake.get("/quality", token=pair["access_token"]))["error"] == 0
    # A code is used once.
    assert (await fake.token({**form, "code_verifier": verifier}))["error"] == -14008


async def test_an_access_token_expires_by_the_fakes_clock(fake: Fake) -> None:
    await fake.control("/clock", {"advance_s": 89_990})
    assert (await fake.get("/message/quota"))["error"] == 0
    await fake.control("/clock", {"advance_s": 11})
    expired = await fake.get("/message/quota")
    assert expired == {"error": -124, "message": "Access token is invalid"}
    assert (await fake.send(OTP))["error"] == -124
    # The refresh token outlives it.
    fresh = await fake.refresh(REFRESH)
    assert (await fake.get("/message/quota", token=fresh["access_token"]))["error"] == 0


# Sending


async def test_each_send_takes_one_from_the_quota_and_none_is_left_gives_144(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(scenario(oa={"daily_quota": 10, "remaining_quota": 2}))
    first = await fake.send(OTP)
    assert first["error"] == 0
    assert first["data"]["quota"] == {"dailyQuota": "10", "remainingQuota": "1"}
    assert isinstance(first["data"]["sent_time"], str)
    assert len(first["data"]["msg_id"]) == 20
    second = await fake.send(OTP)
    assert second["data"]["quota"]["remainingQuota"] == "0"
    third = await fake.send(OTP)
    assert third["error"] == -144
    assert "data" not in third
    quota = await fake.get("/message/quota")
    assert quota["data"]["remainingQuota"] == 0
    assert [s["error"] for s in await fake.control("/sends")] == [0, 0, -144]


async def test_the_next_day_gives_the_daily_quota_back(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(scenario(oa={"daily_quota": 10, "remaining_quota": 0}))
    assert (await fake.send(OTP))["error"] == -144
    await fake.control("/clock", {"advance_s": 86_400})
    fresh = await fake.refresh(REFRESH)
    assert (await fake.send(OTP, token=fresh["access_token"]))["error"] == 0


@pytest.mark.parametrize("phone", ["0987654321", "84abc", "8498765432", "", 84987654321])
async def test_a_bad_phone_is_108(fake: Fake, phone: Any) -> None:
    assert (await fake.send({**OTP, "phone": phone}))["error"] == -108
    assert (await fake.get("/message/quota"))["data"]["remainingQuota"] == 500


async def test_hashphone_takes_a_sha256_of_the_phone(fake: Fake) -> None:
    hashed = hashlib.sha256(b"84987654321").hexdigest()
    body = {k: v for k, v in OTP.items() if k != "phone"}
    assert (await fake.send({**body, "hash_phone": "84987654321"}, hashed=True))["error"] == -108
    assert (await fake.send({**body, "hash_phone": hashed}, hashed=True))["error"] == 0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, -1121),
        ({"otp": ""}, -1121),
        ({"otp": "12"}, -1122),
        ({"otp": "123456789"}, -1122),
        ({"otp": "1234"}, 0),
        ({"otp": 12345678}, 0),
    ],
)
async def test_template_data_is_checked_against_list_params(
    fake: Fake, data: dict[str, Any], error: int
) -> None:
    assert (await fake.send({**OTP, "template_data": data}))["error"] == error


async def test_an_optional_param_may_be_left_out(fake: Fake) -> None:
    shipped = {"customer_name": "An", "order_code": "A-1"}
    body = {"phone": "84987654321", "template_id": "231457", "template_data": shipped}
    assert (await fake.send(body))["error"] == 0
    long_name = {**shipped, "customer_name": "x" * 31}
    assert (await fake.send({**body, "template_data": long_name}))["error"] == -1122


async def test_template_state_tag_and_promotion_quota(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(scenario(oa={"remaining_monthly_promotion_quota": 1}))
    offer = {
        "phone": "84987654321",
        "template_id": "231459",
        "template_data": {"customer_name": "An"},
    }
    assert (await fake.send(offer))["error"] == 0
    assert (await fake.send(offer))["error"] == -1441
    quota = (await fake.get("/message/quota"))["data"]
    assert (quota["remainingQuota"], quota["remainingMonthlyPromotionQuota"]) == (499, 0)
    assert (await fake.send({**OTP, "template_id": "999"}))["error"] == -117
    await fake.control(f"/oas/{DEFAULT_OA_ID}/templates/231456", {"status": "PENDING_REVIEW"})
    assert (await fake.send(OTP))["error"] == -131
    await fake.control(
        f"/oas/{DEFAULT_OA_ID}/templates/231456", {"status": "DISABLE", "quality": "LOW"}
    )
    assert (await fake.send(OTP))["error"] == -146
    await fake.control(f"/oas/{DEFAULT_OA_ID}", {"allowed_tags": ["TRANSACTION"]})
    shipped = {"customer_name": "An", "order_code": "A-1"}
    body = {"phone": "84987654321", "template_id": "231457", "template_data": shipped}
    assert (await fake.send(body))["error"] == -145


async def test_a_body_that_is_not_json_or_lacks_fields_is_100(fake: Fake) -> None:
    async with fake.http.post(
        f"{fake.url}/message/template", data=b"{not json", headers={"access_token": ACCESS}
    ) as answer:
        assert (await answer.json())["error"] == -100
    assert (await fake.send({**OTP, "tracking_id": ""}))["error"] == -100
    assert (await fake.send({k: v for k, v in OTP.items() if k != "template_data"}))[
        "error"
    ] == -100
    huge = {**OTP, "template_data": {"otp": "1234", "n": 10**30}}
    assert (await fake.send(huge))["error"] == 0
    assert len(await fake.control("/sends")) == 4
    assert (await fake.get("/message/quota"))["data"]["remainingQuota"] == 499


async def test_oauth_wants_a_form_and_a_known_grant(fake: Fake) -> None:
    async with fake.http.post(
        f"{fake.url}/v4/oa/access_token",
        json={"grant_type": "refresh_token", "refresh_token": REFRESH, "app_id": DEFAULT_APP_ID},
        headers={"secret_key": APP_SECRET},
    ) as answer:
        assert (await answer.json())["error"] == -14001
    assert (await fake.token({"grant_type": "password", "app_id": DEFAULT_APP_ID}))["error"] == (
        -14001
    )


async def test_a_development_send_is_accepted_and_noted(fake: Fake) -> None:
    assert (await fake.send({**OTP, "mode": "development"}))["error"] == 0
    assert (await fake.control("/sends"))[0]["body"]["mode"] == "development"


# Scripted behaviour


async def test_a_scripted_error_answers_once_then_the_call_succeeds(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(scenario(errors=[{"endpoint": "send", "error": -124, "times": 1}]))
    assert (await fake.send(OTP))["error"] == -124
    assert (await fake.send(OTP))["error"] == 0
    await fake.control("/errors", [{"endpoint": "quota", "error": -32, "times": 2}])
    assert [(await fake.get("/message/quota"))["error"] for _ in range(3)] == [-32, -32, 0]


async def test_an_error_rate_refuses_that_share_of_calls(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(scenario(behaviour={"quality": {"error_rate": 1.0, "error": -500}}))
    assert (await fake.get("/quality"))["error"] == -500
    assert (await fake.get("/message/quota"))["error"] == 0


async def test_a_delay_longer_than_the_clients_timeout_is_a_timeout(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(scenario(behaviour={"send": {"delay_s": 1.0}}))
    with pytest.raises(TimeoutError):
        async with fake.http.post(
            f"{fake.url}/message/template",
            json={**OTP, "tracking_id": "t"},
            headers={"access_token": ACCESS},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass
    assert (await fake.get("/message/quota"))["error"] == 0


async def test_bad_control_input_is_400_and_changes_nothing(fake: Fake) -> None:
    before = await fake.control("/state")
    refused = await fake.control("/errors", {"endpoint": "nowhere", "error": 1}, status=400)
    assert refused["error"] == "invalid_request"
    await fake.control("/clock", {"advance_s": -5}, status=400)
    await fake.control(f"/oas/{DEFAULT_OA_ID}", {"remaining_quota": "many"}, status=400)
    assert (await fake.control("/oas/1", {}, status=404))["error"] == "unknown_oa"
    after = await fake.control("/state")
    assert after["oas"] == before["oas"]
    assert after["scripted_errors"] == []
    assert after["clock_offset_s"] == 0


async def test_tokens_are_shown_by_fingerprint_with_their_state(fake: Fake) -> None:
    pair = await fake.refresh(REFRESH)
    tokens = await fake.control("/tokens")
    refresh = {t["token"]: t["used"] for t in tokens["refresh_tokens"]}
    assert refresh == {fingerprint(REFRESH): True, fingerprint(pair["refresh_token"]): False}
    access = {t["token"]: t["valid"] for t in tokens["access_tokens"]}
    assert access == {fingerprint(ACCESS): True, fingerprint(pair["access_token"]): True}
    assert pair["access_token"] not in orjson.dumps(tokens).decode()
    oauth = await fake.control("/oauth")
    assert oauth[0]["used"] == fingerprint(REFRESH)
    assert oauth[0]["refresh_token"] == fingerprint(pair["refresh_token"])


async def test_what_the_fake_remembers_is_bounded(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(scenario(history_limit=2))
    ids = [(await fake.send({**OTP, "tracking_id": f"t-{i}"}))["data"]["msg_id"] for i in range(3)]
    assert [s["body"]["tracking_id"] for s in await fake.control("/sends")] == ["t-1", "t-2"]
    assert len(await fake.control("/sends?limit=1")) == 1
    await fake.control("/sends?limit=0", status=400)
    await fake.control("/clock", {"advance_s": 1})
    statuses = [(await fake.get("/message/status", message_id=i))["data"]["status"] for i in ids]
    assert statuses == [-1, 1, 1]
    counts = (await fake.control("/webhooks"))["counts"]
    assert counts["unsent"] == 3


# Reading


async def test_template_list_pages_and_filters_by_numeric_status(fake: Fake) -> None:
    await fake.control(f"/oas/{DEFAULT_OA_ID}/templates/231458", {"status": "DISABLE"})
    first = await fake.get("/template/all", offset=0, limit=3)
    second = await fake.get("/template/all", offset=3, limit=3)
    assert first["metadata"]["total"] == second["metadata"]["total"] == 4
    ids = [t["templateId"] for t in first["data"] + second["data"]]
    assert ids == [231456, 231457, 231458, 231459]
    assert {t["status"] for t in first["data"]} == {"ENABLE", "DISABLE"}
    disabled = await fake.get("/template/all", offset=0, limit=100, status=4)
    assert [(t["templateId"], t["status"]) for t in disabled["data"]] == [(231458, "DISABLE")]
    enabled = await fake.get("/template/all", offset=0, limit=100, status=1)
    assert enabled["metadata"]["total"] == 3
    assert (await fake.get("/template/all", offset=0, limit=101))["error"] == -100
    assert (await fake.get("/template/all", status=9))["error"] == -100


async def test_template_info_and_tags(fake: Fake) -> None:
    info = (await fake.get("/template/info/v2", template_id="231456"))["data"]
    assert info["templateTag"] == "TRANSACTION"
    assert info["templateQuality"] == "HIGH"
    assert info["timeout"] == 15000
    assert info["listParams"] == [
        {
            "name": "otp",
            "require": True,
            "type": "STRING",
            "maxLength": 8,
            "minLength": 4,
            "acceptNull": False,
        }
    ]
    assert (await fake.get("/template/info/v2", template_id="1"))["error"] == -117
    tags = await fake.get("/message/template-tag")
    assert tags["data"] == ["TRANSACTION", "CUSTOMER_CARE", "PROMOTION"]
    quality = await fake.get("/quality")
    assert quality["data"] == {"oaCurrentQuality": "HIGH", "oa7dayQuality": "HIGH"}


@pytest.mark.parametrize(
    ("numbers", "send_quota", "read_quota", "expires_in"),
    [
        ("as_zalo", "499", 499, "90000"),
        ("numbers", 499, 499, 90000),
        ("strings", "499", "499", "90000"),
    ],
)
async def test_counts_come_as_strings_or_numbers_by_the_scenario(
    fake_factory: FakeFactory, numbers: str, send_quota: Any, read_quota: Any, expires_in: Any
) -> None:
    fake = await fake_factory(scenario(numbers=numbers))
    assert (await fake.send(OTP))["data"]["quota"]["remainingQuota"] == send_quota
    assert (await fake.get("/message/quota"))["data"]["remainingQuota"] == read_quota
    assert (await fake.refresh(REFRESH))["expires_in"] == expires_in
    # Statuses stay strings in every style.
    assert (await fake.get("/template/all"))["data"][0]["status"] == "ENABLE"


async def test_message_status_follows_delivery(fake: Fake) -> None:
    msg_id = (await fake.send(OTP))["data"]["msg_id"]
    assert (await fake.get("/message/status", message_id=msg_id))["data"] == {"status": 0}
    await fake.control("/clock", {"advance_s": 1})
    delivered = (await fake.get("/message/status", message_id=msg_id))["data"]
    assert delivered["status"] == 1
    assert isinstance(delivered["delivery_time"], str)
    assert (await fake.get("/message/status", message_id="nope"))["data"] == {"status": -1}


# Webhooks


async def test_a_send_is_followed_by_a_signed_receipt_and_a_rating(
    fake_factory: FakeFactory, gate: Gate
) -> None:
    fake = await fake_factory(scenario(receipt_delay_s=0.05, rating_rate=1.0), gate=gate)
    sent = (await fake.send({**OTP, "tracking_id": "order-77"}))["data"]
    receipt, rating = await gate.wait_for(2)
    assert gate.refused == 0
    assert receipt["headers"]["X-ZEvent-Server"] == "ZNS"
    assert receipt["headers"]["User-Agent"] == "ZaloWebhook"
    assert receipt["body"]["event_name"] == "user_received_message"
    assert receipt["body"]["sender"] == {"id": DEFAULT_OA_ID}
    assert receipt["body"]["recipient"] == {"id": "84987654321"}
    assert receipt["body"]["message"]["msg_id"] == sent["msg_id"]
    assert receipt["body"]["message"]["tracking_id"] == "order-77"
    assert int(receipt["body"]["message"]["delivery_time"]) >= int(sent["sent_time"])
    assert rating["body"]["event_name"] == "user_feedback"
    assert rating["body"]["oa_id"] == DEFAULT_OA_ID
    assert rating["body"]["message"]["msg_id"] == sent["msg_id"]
    assert 1 <= rating["body"]["message"]["rate"] <= 5
    assert (await fake.control("/webhooks"))["counts"]["delivered"] == 2


async def test_a_gate_that_answers_non_200_is_retried_then_the_webhook_dropped(
    fake_factory: FakeFactory, gate: Gate
) -> None:
    gate.status = 503
    fake = await fake_factory(
        scenario(receipt_delay_s=0.0, webhook_retry_delays_s=[0.05, 0.05]), gate=gate
    )
    await fake.send(OTP)
    drained = await fake.control("/webhooks/drain", {"timeout_s": 5})
    assert drained["drained"] is True
    assert drained["counts"]["dropped"] == 1
    delivery = (await fake.control("/webhooks"))["deliveries"][0]
    assert delivery["attempts"] == 3
    assert delivery["statuses"] == [503, 503, 503]
    assert gate.refused == 3


async def test_a_gate_that_is_down_is_retried_and_counted(fake_factory: FakeFactory) -> None:
    down = Gate(f"http://127.0.0.1:{free_port()}")
    fake = await fake_factory(
        scenario(receipt_delay_s=0.0, webhook_retry_delays_s=[0.05]), gate=down
    )
    await fake.send(OTP)
    drained = await fake.control("/webhooks/drain", {"timeout_s": 5})
    assert drained["counts"]["dropped"] == 1
    assert (await fake.control("/webhooks"))["deliveries"][0]["attempts"] == 2


async def test_a_gate_that_comes_back_gets_the_redelivery(
    fake_factory: FakeFactory, gate: Gate
) -> None:
    gate.status = 500
    fake = await fake_factory(
        scenario(receipt_delay_s=0.0, webhook_retry_delays_s=[0.3]), gate=gate
    )
    await fake.send(OTP)
    await asyncio.sleep(0.1)
    gate.status = 200
    (redelivered,) = await gate.wait_for(1)
    assert redelivered["headers"]["num_retry"] == "1"


async def test_status_and_quota_changes_post_zalos_webhooks(
    fake_factory: FakeFactory, gate: Gate
) -> None:
    fake = await fake_factory(gate=gate)
    await fake.control(
        f"/oas/{DEFAULT_OA_ID}/templates/231457",
        {"status": "REJECT", "reason": "Logo không hợp lệ", "notify": True},
    )
    await fake.control(f"/oas/{DEFAULT_OA_ID}", {"daily_quota": 2000, "notify": True})
    await fake.control(f"/oas/{DEFAULT_OA_ID}/templates/231458", {"quality": "LOW", "notify": True})
    # Without notify, a change posts nothing.
    await fake.control(f"/oas/{DEFAULT_OA_ID}/templates/231459", {"status": "DISABLE"})
    status, quota, quality = await gate.wait_for(3)
    assert quality["body"]["event_name"] == "change_template_quality"
    assert (quality["body"]["template_id"], quality["body"]["quality"]) == ("231458", "LOW")
    assert (await fake.control("/webhooks/drain", {}))["counts"]["delivered"] == 3
    assert status["body"]["event_name"] == "change_template_status"
    assert status["body"]["template_id"] == "231457"
    assert status["body"]["status"] == {"prev_status": "ENABLE", "new_status": "REJECT"}
    assert quota["body"]["event_name"] == "change_oa_daily_quota"
    assert quota["body"]["oaId"] == DEFAULT_OA_ID
    assert quota["body"]["quota"] == {"prev_value": 500, "new_value": 2000}
    assert (await fake.get("/message/quota"))["data"]["dailyQuota"] == 2000


async def test_stopping_cancels_pending_webhooks(gate: Gate) -> None:
    app = build_fake_app(scenario(receipt_delay_s=30.0), gate=gate.url)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        fake = Fake(str(server.make_url("")).rstrip("/"), app[FAKE_KEY], http)
        await fake.send(OTP)
    await server.close()
    assert app[FAKE_KEY].webhooks.counts()["cancelled"] == 1
    assert gate.received == []


async def test_a_real_gate_accepts_the_fakes_webhooks(
    fake_factory: FakeFactory, service_factory: ServiceFactory
) -> None:
    service = await service_factory(apps=[{"app_id": DEFAULT_APP_ID, "secrets": [OA_SECRET]}])
    url = str(service.client.make_url("")).rstrip("/")
    fake = await fake_factory(scenario(receipt_delay_s=0.0, rating_rate=1.0), gate=Gate(url))
    msg_id = (await fake.send(OTP))["data"]["msg_id"]
    drained = await fake.control("/webhooks/drain", {"timeout_s": 10})
    assert drained["counts"]["delivered"] == 2, await fake.control("/webhooks")
    records = await service.events()
    names = sorted((r.header("event_name") or b"").decode() for r in records)
    assert names == ["user_feedback", "user_received_message"]
    assert all(orjson.loads(r.value)["message"]["msg_id"] == msg_id for r in records)
    assert all(r.key == DEFAULT_OA_ID.encode() for r in records)


# The command


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_the_command_serves_the_example_scenario_and_stops_on_a_signal(signum: int) -> None:
    port = free_port()
    command = ["fake-zalo", "--port", str(port), "--config", str(EXAMPLE)]
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *command, "--gate", "http://127.0.0.1:1"],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/message/quota"
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(url, headers={"access_token": "dev-access-token"}) as a:
                        answer = await a.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("fake-zalo did not answer")
        assert answer["data"]["dailyQuota"] == 2000
    finally:
        process.send_signal(signum)
        output, _ = process.communicate(timeout=10)
    assert process.returncode == 0, output
    assert '"stopped"' in output
    assert "dev-access-token" not in output


def test_the_command_refuses_an_invalid_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[apps]]\napp_id = "1"\napp_secret = "s"\noa_secret_key = "k"\n')
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "fake-zalo", "--config", str(bad)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "invalid scenario oas" in done.stderr
