"""`POST /v1/oas/{oa_id}/messages` against the local fake Zalo as a real server: every
status and reason, the quota Zalo answers with, idempotency (repeats, concurrent repeats,
conflicts), -124, a hanging Zalo whose receipt settles the unknown outcome, and Zalo's
slowness held to its OA.

Between the gate and the fake sits the recording proxy of the poller's tests, so a test
counts the calls that reached Zalo; the fake's `/_fake/sends` lists the sends it took.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from service.api.messages import PROXY
from service.domain.records import normalised_phone
from tests import zalo
from tests.integration.test_api import get, post, ready
from tests.zalo_gate import Gate, GateFactory, Zalo, ZaloFactory, scenario, until
from tests.zalo_tokens import FakeTokens

OA = zalo.OA_ID
ROOT = Path(__file__).resolve().parents[2]
OTP = "231456"  # the fake's default templates: OTP has param otp (4 to 8 characters), tag 1
SEND_PATHS = ("/message/template", "/message/template/hashphone")


def message(phone: str = "0987654321", otp: str = "123456", **fields: Any) -> dict[str, Any]:
    return {"template_id": OTP, "phone": phone, "template_data": {"otp": otp}, **fields}


def phones(n: int, start: int = 0) -> list[str]:
    return [f"09{start + i:08d}" for i in range(n)]


async def send_messages(
    gate: Gate, key: str, messages: list[dict[str, Any]], **fields: Any
) -> tuple[int, Any]:
    body = {"idempotency_key": key, "messages": messages, **fields}
    return await post(gate.service, f"/v1/oas/{OA}/messages", body)


def zalo_sends(z: Zalo) -> int:
    return sum(len(z.paths(p)) for p in SEND_PATHS)


async def fake_sends(z: Zalo) -> list[dict[str, Any]]:
    """Every send the fake took (its `/_fake/sends`), the oldest first."""
    async with aiohttp.ClientSession() as http, http.get(f"{z.fake_url}/_fake/sends") as answer:
        assert answer.status == 200
        sends: list[dict[str, Any]] = await answer.json()
    return sends


async def started(
    zalo_factory: ZaloFactory, gate_factory: GateFactory, **changes: Any
) -> tuple[Zalo, Gate]:
    z = await zalo_factory(scenario(**changes))
    gate = await gate_factory(z)
    await ready(gate.service)
    await templates_known(gate)
    return z, gate


async def templates_known(gate: Gate) -> None:
    """Until the poller's first sync has brought the templates' tags and params."""

    async def known() -> bool:
        status, body = await get(gate.service, f"/v1/oas/{OA}/templates/{OTP}")
        return status == 200 and body["params"] is not None

    await until(known)


async def quota(gate: Gate) -> dict[str, Any]:
    status, body = await get(gate.service, f"/v1/oas/{OA}/quota")
    assert status == 200, body
    return dict(body)


async def remaining(gate: Gate) -> int:
    left: int = (await quota(gate))["remaining_today"]
    return left


async def send_records(gate: Gate) -> list[dict[str, Any]]:
    return [
        orjson.loads(r.value)
        for r in await gate.service.events()
        if dict(r.headers).get("kind") == b"send"
    ]


async def admissions(gate: Gate) -> list[dict[str, Any]]:
    return [
        orjson.loads(r.value)
        for r in await gate.service.events()
        if dict(r.headers).get("kind") == b"admission"
    ]


async def test_messages_are_sent_and_each_outcome_is_recorded_with_its_admission(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(
        zalo_factory, gate_factory, oa={"daily_quota": 500, "remaining_quota": 400}
    )
    numbers = phones(3)
    wanted = [message(numbers[0], tracking_id="order-77"), message(numbers[1]), message(numbers[2])]
    status, answer = await send_messages(gate, "batch-1", wanted)
    assert status == 200, answer
    results = answer["results"]
    assert [r["status"] for r in results] == ["sent"] * 3
    assert [r["tracking_id"] for r in results] == ["order-77", "batch-1-1", "batch-1-2"]
    taken = await fake_sends(z)
    assert [t["body"]["tracking_id"] for t in taken] == ["order-77", "batch-1-1", "batch-1-2"]
    assert {r["msg_id"] for r in results} == {t["msg_id"] for t in taken}
    # Zalo is sent the phone as 84..., the values as strings, the mode of `zalo.mode`.
    assert taken[0]["body"]["phone"] == "84" + numbers[0][1:]
    assert taken[0]["body"]["template_data"] == {"otp": "123456"}
    assert taken[0]["body"]["mode"] == "development"
    assert results[0]["sent_time"].endswith("+07:00")

    # One admission for the three, then one send record per message naming it.
    [admission] = await admissions(gate)
    assert admission["answer"]["granted"] == 3
    assert admission["answer"]["admission_id"] == answer["admission_id"]
    records = await send_records(gate)
    assert sorted(r["send"]["tracking_id"] for r in records) == sorted(
        r["tracking_id"] for r in results
    )
    for record in records:
        assert record["send"]["admission_id"] == answer["admission_id"]
        assert record["send"]["error"] == 0
        assert record["request"]["idempotency_key"] == "batch-1"
        expected = hashlib.sha256(normalised_phone(numbers[record["request"]["index"]]).encode())
        assert record["send"]["recipient"] == expected.hexdigest()

    # Zalo's own numbers came with each answer: the fake's remaining is what the gate shows.
    async def settled() -> bool:
        return await remaining(gate) == 397

    await until(settled)


async def test_the_mode_defaults_to_the_setting_and_can_be_given(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory)  # zalo.mode defaults to development
    assert (await send_messages(gate, "dev", [message()]))[0] == 200
    assert (await send_messages(gate, "prod", [message("0911111111")], mode="production"))[0] == 200
    first, second = await fake_sends(z)
    assert first["body"]["mode"] == "development"
    assert "mode" not in second["body"]


async def test_a_hashed_phone_is_sent_by_hashphone(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory)
    hashed = hashlib.sha256(b"84987654321").hexdigest()
    body = {"template_id": OTP, "hash_phone": hashed, "template_data": {"otp": "1234"}}
    status, answer = await send_messages(gate, "hashed", [body])
    assert status == 200, answer
    assert answer["results"][0]["status"] == "sent"
    assert len(z.paths("/message/template/hashphone")) == 1
    [record] = await send_records(gate)
    assert record["send"]["recipient"] == hashed


@pytest.mark.parametrize("backend", ["embedded"])
async def test_messages_that_fail_the_checks_are_rejected_call_nothing_and_take_nothing(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory)
    before = await remaining(gate)
    rejected = [
        message("12ab"),  # not a phone
        message(tracking_id="x" * 49),  # longer than Zalo takes
        message(tracking_id="bad id!"),  # characters Zalo does not take
        message(otp="12"),  # shorter than the template's min_length 4
        message(otp="123456789"),  # longer than its max_length 8
        {"template_id": OTP, "phone": "0987654321", "template_data": {}},  # otp missing
        message(tracking_id="twice"),
        message(tracking_id="twice"),  # the same tracking id twice in one request
    ]
    status, answer = await send_messages(gate, "checks", rejected)
    assert status == 200, answer
    got = [(r["status"], r.get("reason"), r.get("param")) for r in answer["results"]]
    assert got == [
        ("rejected", "invalid_phone", None),
        ("rejected", "invalid_tracking_id", None),
        ("rejected", "invalid_tracking_id", None),
        ("rejected", "invalid_template_data", "otp"),
        ("rejected", "invalid_template_data", "otp"),
        ("rejected", "invalid_template_data", "otp"),
        ("sent", None, None),
        ("rejected", "invalid_tracking_id", None),
    ]
    assert zalo_sends(z) == 1
    assert await remaining(gate) == before - 1  # only the one sent

    # A tracking id a recorded send used already is refused too (Zalo would bill it again).
    status, again = await send_messages(gate, "checks-2", [message(tracking_id="twice")])
    assert (again["results"][0]["status"], again["results"][0]["reason"]) == (
        "rejected",
        "invalid_tracking_id",
    )
    assert zalo_sends(z) == 1
    # Nothing passed, and the decision is written all the same: a repeat answers it again.
    last = (await admissions(gate))[-1]
    assert (last["admission_id"], last["answer"]["granted"]) == (again["admission_id"], 0)
    assert await send_messages(gate, "checks-2", [message(tracking_id="twice")]) == (200, again)


async def test_a_tracking_id_admitted_and_not_sent_yet_is_refused_to_another_request(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory, behaviour={"send": {"delay_s": 0.5}})
    first = asyncio.create_task(send_messages(gate, "first", [message(tracking_id="order-1")]))

    async def at_zalo() -> bool:
        return zalo_sends(z) == 1

    await until(at_zalo)  # admitted, its send under way, nothing recorded yet
    status, other = await send_messages(gate, "other", [message(tracking_id="order-1")])
    assert status == 200
    assert (other["results"][0]["status"], other["results"][0]["reason"]) == (
        "rejected",
        "invalid_tracking_id",
    )
    assert (await first)[1]["results"][0]["status"] == "sent"
    assert zalo_sends(z) == 1


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_body_that_does_not_match_is_422_and_calls_nothing(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory)
    path = f"/v1/oas/{OA}/messages"
    cases: list[Any] = [
        {"messages": [message()]},  # no idempotency_key
        {"idempotency_key": "k", "messages": []},
        {"idempotency_key": "k", "messages": [message()] * 101},
        {"idempotency_key": "k", "messages": [{"template_id": OTP, "template_data": {}}]},
        {
            "idempotency_key": "k",
            "messages": [message(hash_phone=hashlib.sha256(b"1").hexdigest())],  # both
        },
        {"idempotency_key": "k", "messages": [message(), {**message(), "template_id": "231457"}]},
        {"idempotency_key": "k", "messages": [message(tag=4)]},
        {"idempotency_key": "k", "messages": [message()], "mode": "test"},
        {"idempotency_key": "k", "messages": [{**message(), "template_data": {"otp": [1]}}]},
        {"idempotency_key": "k", "messages": [{**message(), "template_data": {"otp": "x" * 2001}}]},
    ]
    for body in cases:
        status, answer = await post(gate.service, path, body)
        assert (status, answer["error"]["code"]) == (422, "invalid_request"), body
    status, answer = await post(gate.service, path, b"{not json")
    assert (status, answer["error"]["code"]) == (400, "malformed_json")
    assert zalo_sends(z) == 0
    assert await admissions(gate) == []


@pytest.mark.parametrize("backend", ["embedded"])
async def test_without_zalo_enabled_the_route_is_404(
    backend: str, service_factory: Any
) -> None:
    service = await service_factory()
    await ready(service)
    body = {"idempotency_key": "k", "messages": [message()]}
    status, answer = await post(service, f"/v1/oas/{OA}/messages", body)
    assert (status, answer["error"]["code"]) == (404, "zalo_disabled")


async def test_denied_messages_take_no_unit_and_call_nothing(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory)
    # The gate knows the day's quota is down to 2.
    sync = {"as_of": _now_ms(), "daily_quota": 500, "remaining_quota": 2}
    assert (await post(gate.service, f"/v1/oas/{OA}/sync", sync))[0] == 200

    async def two_left() -> bool:
        return await remaining(gate) == 2

    await until(two_left)
    status, answer = await send_messages(gate, "denied", [message(p) for p in phones(4)])
    assert status == 200, answer
    got = [(r["status"], r.get("reason"), r.get("zalo_error")) for r in answer["results"]]
    assert got == [("sent", None, None)] * 2 + [("denied", "daily_quota_exhausted", -144)] * 2
    assert zalo_sends(z) == 2
    assert answer["remaining"] == 0


async def test_zalo_errors_fail_the_message_give_the_unit_back_and_have_their_effect(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory)
    before = await remaining(gate)
    await z.control("/errors", {"endpoint": "send", "error": -108, "message": "bad phone"})
    refused, later = phones(2)
    status, answer = await send_messages(gate, "errors", [message(refused), message(later)])
    assert status == 200, answer
    first, second = answer["results"]
    assert (first["status"], first["zalo_error"], first["message"]) == ("failed", -108, "bad phone")
    assert second["status"] == "sent"

    async def unit_back() -> bool:
        return await remaining(gate) == before - 1

    await until(unit_back)

    # -144: Zalo says nothing remains today (section 4.7): the next request is denied
    # before it reaches Zalo.
    await z.control("/errors", {"endpoint": "send", "error": -144})
    status, answer = await send_messages(gate, "errors-2", [message(p) for p in phones(1, 10)])
    assert (answer["results"][0]["status"], answer["results"][0]["zalo_error"]) == ("failed", -144)

    async def exhausted() -> bool:
        return await remaining(gate) == 0

    await until(exhausted)
    calls = zalo_sends(z)
    status, answer = await send_messages(gate, "errors-3", [message(p) for p in phones(1, 20)])
    assert (answer["results"][0]["status"], answer["results"][0]["reason"]) == (
        "denied",
        "daily_quota_exhausted",
    )
    assert zalo_sends(z) == calls


async def test_zalo_out_of_reach_fails_with_zalo_unavailable_and_gives_the_unit_back(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z = await zalo_factory(scenario())
    closed = f"http://127.0.0.1:{_closed_port()}"
    gate = await gate_factory(z, api_url=closed)
    await ready(gate.service)
    before = await remaining(gate)
    status, answer = await send_messages(gate, "away", [message(tag=1)])
    assert status == 200, answer
    [result] = answer["results"]
    assert (result["status"], result["reason"]) == ("failed", "zalo_unavailable")
    [record] = await send_records(gate)
    assert record["send"]["error"] is None
    assert record["send"]["not_sent"] == "zalo_unavailable"

    async def unit_back() -> bool:
        return await remaining(gate) == before

    await until(unit_back)


async def test_without_a_token_every_message_fails_with_no_token_and_nothing_is_written(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z = await zalo_factory(scenario())
    gate = await gate_factory(z, tokens=FakeTokens(z.fake_url, pairs={}))
    await ready(gate.service)
    status, answer = await send_messages(gate, "tokenless", [message(tag=1), message(tag=1)])
    assert status == 200, answer
    assert [(r["status"], r["reason"]) for r in answer["results"]] == [("failed", "no_token")] * 2
    assert answer["admission_id"] is None
    assert zalo_sends(z) == 0
    assert await admissions(gate) == []


async def test_an_expired_token_is_refreshed_once_and_the_message_retried_once(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory)
    await z.control("/errors", {"endpoint": "send", "error": -124})
    status, answer = await send_messages(gate, "expired", [message()])
    assert status == 200, answer
    assert answer["results"][0]["status"] == "sent"
    assert gate.tokens.refreshes == 1
    assert zalo_sends(z) == 2  # the refused one and the retry
    assert [s["error"] for s in await fake_sends(z)] == [0]  # one message went


async def test_a_repeat_answers_the_first_answer_and_calls_zalo_for_nothing(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory)
    wanted = [message(p) for p in phones(5)] + [message("nope")]
    first = await send_messages(gate, "repeat", wanted)
    assert first[0] == 200
    assert zalo_sends(z) == 5
    assert await send_messages(gate, "repeat", wanted) == first
    assert zalo_sends(z) == 5

    # Also once the processor has folded the records (the OA's state answers then), and
    # with the OA's token gone meanwhile: a repeat is answered, not refused for it.
    proxy = gate.app[PROXY]
    pruning = itertools.count()

    async def folded() -> bool:
        # A new request (all rejected: nothing is sent) prunes the answers now folded.
        await send_messages(gate, f"prune-{next(pruning)}", [message("12ab")])
        return proxy.answers_held == 0

    await until(folded)
    assert await send_messages(gate, "repeat", wanted) == first
    gate.tokens.pairs[OA].access = None
    assert await send_messages(gate, "repeat", wanted) == first
    assert zalo_sends(z) == 5

    status, answer = await send_messages(gate, "repeat", wanted[:2])
    assert (status, answer["error"]["code"]) == (409, "idempotency_conflict")
    assert zalo_sends(z) == 5


async def test_ten_concurrent_repeats_make_one_zalo_call_per_message(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory, behaviour={"send": {"delay_s": 0.2}})
    wanted = [message(p) for p in phones(20)]
    answers = await asyncio.gather(*(send_messages(gate, "ten", wanted) for _ in range(10)))
    assert all(a == answers[0] for a in answers)
    assert answers[0][0] == 200
    assert [r["status"] for r in answers[0][1]["results"]] == ["sent"] * 20
    assert zalo_sends(z) == 20
    assert len(await admissions(gate)) == 1


async def test_a_hanging_zalo_gives_unknown_and_the_receipt_settles_it_once(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z = await zalo_factory(scenario(behaviour={"send": {"delay_s": 1.5}}))
    gate = await gate_factory(z, request_timeout_s=0.5)
    await ready(gate.service)
    await templates_known(gate)
    before = await remaining(gate)
    status, answer = await send_messages(gate, "hang", [message()])
    assert status == 200, answer
    [result] = answer["results"]
    assert result == {"tracking_id": "hang-0", "status": "unknown"}
    [record] = await send_records(gate)
    assert record["send"]["error"] is None
    assert "not_sent" not in record["send"]

    # The unit stays taken (the message may have gone) ...
    async def kept() -> bool:
        return await remaining(gate) == before - 1

    await until(kept)
    # ... and is never sent again by a repeat.
    assert await send_messages(gate, "hang", [message()]) == (status, answer)

    # Zalo did take it: its receipt names the tracking id, and settles it as sent.
    async def taken() -> bool:
        return len(await fake_sends(z)) == 1 and "msg_id" in (await fake_sends(z))[0]

    await until(taken)
    [sent] = await fake_sends(z)
    hook = zalo.Webhooks().build(
        "user_received_message",
        message={
            "delivery_time": str(_now_ms()),
            "msg_id": sent["msg_id"],
            "tracking_id": "hang-0",
        },
    )
    assert (await gate.service.post(hook))[0] == 200

    async def delivered() -> bool:
        status, body = await get(gate.service, f"/v1/oas/{OA}/templates/{OTP}")
        return status == 200 and body["counts"]["sent_ok_today"] == 1

    await until(delivered)  # counted for its template: the receipt found the send
    assert await remaining(gate) == before - 1  # once
    status, quality = await get(gate.service, f"/v1/oas/{OA}/quality")
    assert quality["proxy"]["delivered_48h"] == 1


async def test_a_slow_zalo_holds_up_no_webhook_admission_or_read_of_another_oa(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    z, gate = await started(zalo_factory, gate_factory, behaviour={"send": {"delay_s": 3}})
    batch = asyncio.create_task(send_messages(gate, "slow", [message(p) for p in phones(20)]))

    async def waiting_on_zalo() -> bool:
        return zalo_sends(z) > 0

    await until(waiting_on_zalo)
    other = "1234567890"
    admission = {"template_id": "t1", "tag": 1, "count": 1, "idempotency_key": "other"}
    status, _ = await post(gate.service, f"/v1/oas/{other}/admissions", admission)
    assert status == 200
    assert (await get(gate.service, f"/v1/oas/{other}/quota"))[0] == 200
    assert (await gate.service.post(zalo.Webhooks().build("user_feedback")))[0] == 200
    # An admission of the same OA does not wait for the batch's Zalo calls either.
    status, _ = await post(gate.service, f"/v1/oas/{OA}/admissions", {**admission, "tag": 2})
    assert status == 200
    assert not batch.done()
    status, answer = await batch
    assert status == 200
    assert [r["status"] for r in answer["results"]] == ["sent"] * 20


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _closed_port() -> int:
    from tests.serve import free_port

    return free_port()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_simulate_via_messages_sends_through_the_gate_and_zalo_posts_the_receipts(
    backend: str, zalo_factory: ZaloFactory, gate_factory: GateFactory
) -> None:
    # The fake signs its webhooks with the OA secret key the gate's tests configure.
    apps = [{"app_id": zalo.APP_ID, "app_secret": "fake-app-secret", "oa_secret_key": zalo.SECRET}]
    z = await zalo_factory(scenario(apps=apps, receipt_delay_s=0.05))
    gate = await gate_factory(z)
    await ready(gate.service)
    await templates_known(gate)
    target = str(gate.service.client.make_url("")).rstrip("/")
    z.fake.webhooks.point_at(target)
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "simulate",
        "--via",
        "messages",
        "--oa-id",
        OA,
        "--target",
        target,
        "--rate",
        "20",
        "--duration",
        "2",
        "--app-id",
        zalo.APP_ID,
        "--secret",
        zalo.SECRET,
        "--quiet",
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = orjson.loads(done.stdout)
    assert summary["by_kind"] == {"message 200": 40}, summary
    assert len(await fake_sends(z)) == 40

    async def delivered() -> bool:
        status, body = await get(gate.service, f"/v1/oas/{OA}/quality")
        return status == 200 and body["proxy"]["delivered_48h"] == 40

    await until(delivered)  # every receipt Zalo posted was taken and matched
