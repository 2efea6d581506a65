"""POST /webhooks/zalo on both log backends: every status code, and what reaches the log."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import orjson
import pytest

from tests import zalo
from tests.conftest import RunningService, ServiceFactory

hooks = zalo.Webhooks()
ALL_EVENTS = sorted(zalo.EXAMPLES)


async def test_every_event_is_accepted_and_published_unchanged(service: RunningService) -> None:
    sent = [hooks.build(name) for name in ALL_EVENTS]
    answers = [await service.post(hook) for hook in sent]
    assert all(status == 200 for status, _ in answers), answers
    assert all(body["status"] == "accepted" for _, body in answers)

    records = {r.value: r for r in await service.events()}
    assert len(records) == len(sent)
    for hook, (_, answer) in zip(sent, answers, strict=True):
        record = records[hook.body]  # the raw bytes, unchanged
        assert record.key == zalo.OA_ID.encode()
        assert record.header("kind") == b"webhook"
        assert record.header("event_name") == hook.event_name.encode()
        assert record.header("server") == hook.headers.get("X-ZEvent-Server", "").encode()
        assert record.header("dedup_key") == answer["dedup_key"].encode()
        received_at = int(record.header("received_at") or b"0")
        assert abs(received_at - record.timestamp_ms) < 60_000


@pytest.mark.parametrize(
    ("event_name", "expected"),
    [
        ("user_received_message", "user_received_message:{msg_id}"),
        ("user_feedback", "user_feedback:{msg_id}"),
        ("user_click_response_button", "user_click_response_button:{top_msg_id}"),
        ("change_template_status", "change_template_status:{template_id}:{timestamp}"),
        ("change_template_quality", "change_template_quality:{template_id}:{timestamp}"),
        ("change_oa_daily_quota", "change_oa_daily_quota:{oa_id}:{timestamp}"),
        ("change_oa_template_tags", "change_oa_template_tags:{oa_id}:{timestamp}"),
    ],
)
async def test_dedup_key_follows_the_documented_rule(
    service: RunningService, event_name: str, expected: str
) -> None:
    hook = hooks.build(event_name)
    p = hook.payload
    status, body = await service.post(hook)
    assert status == 200
    assert body["dedup_key"] == expected.format(
        msg_id=p.get("message", {}).get("msg_id"),
        top_msg_id=p.get("msg_id"),
        template_id=p.get("template_id"),
        timestamp=p["timestamp"],
        oa_id=zalo.OA_ID,
    )


async def test_a_duplicate_delivery_is_still_accepted(service: RunningService) -> None:
    hook = hooks.build("user_feedback")
    retried = dict(hook.headers, num_retry="1")
    first = await service.post(hook)
    second = await service.post(zalo.Webhook(hook.body, retried, hook.payload))
    assert first[0] == second[0] == 200
    assert first[1]["dedup_key"] == second[1]["dedup_key"]
    records = await service.events()
    assert [r.header("retry") for r in records] == [None, b"1"]


async def test_unknown_event_and_missing_oa_id_are_kept(service: RunningService) -> None:
    unknown = hooks.from_payload(
        {
            "event_name": "something_new",
            "oa_id": zalo.OA_ID,
            "app_id": zalo.APP_ID,
            "timestamp": "1700000000000",
            "detail": {"x": 1},
        }
    )
    orphan = hooks.from_payload(
        {
            "event_name": "change_template_quality",
            "template_id": "9",
            "quality": "LOW",
            "app_id": zalo.APP_ID,
            "timestamp": "1700000000001",
        }
    )
    nameless = hooks.from_payload({"app_id": zalo.APP_ID, "timestamp": "1700000000002"})
    for hook in (unknown, orphan, nameless):
        status, _ = await service.post(hook)
        assert status == 200
    by_body = {r.value: r for r in await service.events()}
    assert by_body[unknown.body].key == zalo.OA_ID.encode()
    assert by_body[unknown.body].header("event_name") == b"something_new"
    assert by_body[orphan.body].key == zalo.APP_ID.encode()  # keyed by the app: DLQ later
    assert (by_body[nameless.body].header("dedup_key") or b"").startswith(b"sha256:")


async def test_chat_receipt_without_zns_server_is_accepted(service: RunningService) -> None:
    hook = hooks.from_payload(hooks.payload("user_received_message"), server="OA OpenAPI")
    status, _ = await service.post(hook)
    assert status == 200
    [record] = await service.events()
    assert record.header("server") == b"OA OpenAPI"


# --- signatures ------------------------------------------------------------------------------


async def test_rotation_secret_and_prefix_variants_verify(service: RunningService) -> None:
    old = zalo.Webhooks(secret=zalo.OLD_SECRET).build("user_feedback")
    assert (await service.post(old))[0] == 200

    for variant in ("MAC=", "Mac=", ""):
        hook = hooks.build("user_feedback")
        digest = hook.headers["X-ZEvent-Signature"].removeprefix("mac=")
        headers = dict(hook.headers, **{"X-ZEvent-Signature": variant + digest.upper()})
        assert (await service.post(zalo.Webhook(hook.body, headers, hook.payload)))[0] == 200
    assert len(await service.events()) == 4


async def refused(service: RunningService, hook: zalo.Webhook, status: int, code: str) -> None:
    got_status, body = await service.post(hook)
    assert (got_status, body["error"]["code"]) == (status, code), body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def test_forged_and_altered_webhooks_are_refused(service: RunningService) -> None:
    hook = hooks.build("user_feedback")
    wrong_secret = zalo.Webhooks(secret="not-the-secret").build("user_feedback")
    await refused(service, wrong_secret, 401, "invalid_signature")

    unsigned = dict(hook.headers)
    del unsigned["X-ZEvent-Signature"]
    await refused(
        service, zalo.Webhook(hook.body, unsigned, hook.payload), 401, "invalid_signature"
    )

    # The same JSON re-serialised with other whitespace no longer matches the signature.
    spaced = orjson.dumps(hook.payload, option=orjson.OPT_INDENT_2)
    await refused(
        service, zalo.Webhook(spaced, hook.headers, hook.payload), 401, "invalid_signature"
    )

    tampered = hook.body.replace(b'"rate":5', b'"rate":1')
    assert tampered != hook.body
    await refused(
        service, zalo.Webhook(tampered, hook.headers, hook.payload), 401, "invalid_signature"
    )

    garbage = dict(hook.headers, **{"X-ZEvent-Signature": "mac=not-hex-\u00e9"})
    await refused(service, zalo.Webhook(hook.body, garbage, hook.payload), 401, "invalid_signature")

    stranger = zalo.Webhooks(app_id="999").build("user_feedback")
    await refused(service, stranger, 401, "unknown_app")
    assert await service.events() == []


async def test_ids_beyond_64_bits_stay_strings(service: RunningService) -> None:
    huge = "123456789012345678901234567890"  # > 2**63
    as_string = hooks.from_payload(hooks.payload("user_feedback", oa_id=huge, app_id=zalo.APP_ID))
    assert (await service.post(as_string))[0] == 200

    # A sender that writes the ids as JSON numbers: read as their decimal digits.
    ts = "1700000000123"
    raw = (
        b'{"event_name":"change_template_quality","oa_id":'
        + huge.encode()
        + b',"template_id":31239,"quality":"LOW","app_id":'
        + zalo.APP_ID.encode()
        + b',"timestamp":'
        + ts.encode()
        + b"}"
    )
    as_number = hooks.from_payload({"app_id": zalo.APP_ID, "timestamp": ts}, body=raw)
    status, body = await service.post(as_number)
    assert status == 200
    assert body["dedup_key"] == f"change_template_quality:31239:{ts}"
    keys = {r.value: r.key for r in await service.events()}
    assert keys == {as_string.body: huge.encode(), raw: huge.encode()}


# --- malformed input ---------------------------------------------------------------------------


async def post_raw(
    service: RunningService, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with service.client.post("/webhooks/zalo", data=body, headers=headers) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "malformed_json"),
        (b"{", "malformed_json"),
        (b"[1, 2]", "malformed_json"),
        (b'"just a string"', "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        (b'{"app_id": NaN, "timestamp": "1"}', "malformed_json"),
        (b'{"a":' + b"[" * 1000 + b"12345678901234567890" + b"]" * 1000 + b"}", "malformed_json"),
        (b"[" * 5000 + b"]" * 5000, "malformed_json"),
        (b'{"timestamp": "1"}', "missing_field"),
        (b'{"app_id": "2074138120372622546"}', "missing_field"),
        (b'{"app_id": null, "timestamp": "1"}', "missing_field"),
        (b'{"app_id": "", "timestamp": "1"}', "missing_field"),
        (b'{"app_id": ["x"], "timestamp": "1"}', "missing_field"),
        (b'{"app_id": "2074138120372622546", "timestamp": {}}', "missing_field"),
    ],
)
async def test_malformed_bodies_get_400(service: RunningService, body: bytes, code: str) -> None:
    status, answer = await post_raw(
        service, body, {"Content-Type": "application/json", "X-ZEvent-Signature": "mac=00"}
    )
    assert (status, answer["error"]["code"]) == (400, code)
    assert await service.events() == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_other_content_types_get_415(service: RunningService, content_type: str) -> None:
    hook = hooks.build("user_feedback")
    headers = dict(hook.headers, **{"Content-Type": content_type})
    status, answer = await post_raw(service, hook.body, headers)
    assert status == 415
    assert answer["error"]["code"] == "unsupported_media_type"


async def test_json_with_a_charset_is_json(service: RunningService) -> None:
    hook = hooks.build("user_feedback")
    headers = dict(hook.headers, **{"Content-Type": "application/json; charset=utf-8"})
    assert (await post_raw(service, hook.body, headers))[0] == 200


async def test_oversized_bodies_get_413_without_being_read(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(receiver={"max_body_bytes": 4096})
    payload = hooks.payload("user_feedback")
    payload["padding"] = "x" * 5000
    hook = hooks.from_payload(payload)
    status, answer = await post_raw(service, hook.body, hook.headers)
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")

    async def chunks() -> object:  # no Content-Length: the limit applies while reading
        for i in range(0, len(hook.body), 1000):
            yield hook.body[i : i + 1000]

    async with service.client.post("/webhooks/zalo", data=chunks(), headers=hook.headers) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "payload_too_large"
    small = hooks.build("user_feedback")
    assert (await service.post(small))[0] == 200
    assert [r.value for r in await service.events()] == [small.body]


async def test_slow_bodies_get_408(service_factory: ServiceFactory) -> None:
    service = await service_factory(receiver={"read_timeout_s": 0.3})
    hook = hooks.build("user_feedback")
    host, port = service.client.host, service.client.port
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST /webhooks/zalo HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(hook.body)}\r\nX-ZEvent-Signature: "
        f"{hook.headers['X-ZEvent-Signature']}\r\n\r\n"
    )
    writer.write(head.encode() + hook.body[:10])
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), timeout=10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer
    assert await service.events() == []


async def test_stale_timestamps_are_refused_when_configured(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(receiver={"max_age_s": 3600})
    old = hooks.build("user_feedback", timestamp="1602560967477")
    await refused(service, old, 401, "stale_timestamp")
    assert (await service.post(hooks.build("user_feedback")))[0] == 200


async def test_only_genuine_webhooks_reach_the_log(service: RunningService) -> None:
    genuine = [hooks.build(name) for name in ALL_EVENTS]
    for hook in genuine:
        assert (await service.post(hook))[0] == 200
        forged = zalo.Webhooks(secret="forged-secret").build(hook.event_name)
        assert (await service.post(forged))[0] == 401
    assert sorted(r.value for r in await service.events()) == sorted(h.body for h in genuine)


async def test_size_is_checked_before_the_content_type(service_factory: ServiceFactory) -> None:
    service = await service_factory(receiver={"max_body_bytes": 2048})
    status, answer = await post_raw(service, b"x" * 4096, {"Content-Type": "text/plain"})
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")


# --- our own failure ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_locked_database_gets_503_and_loses_nothing_acknowledged(
    service_factory: ServiceFactory,
) -> None:
    """Another process holds SQLite's write lock: the publish deadline passes, Zalo is told 503."""
    service = await service_factory(receiver={"publish_deadline_s": 0.3, "retry_after_s": 7})
    accepted = hooks.build("user_feedback")
    assert (await service.post(accepted))[0] == 200

    path = service.log.path  # type: ignore[attr-defined]
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        delayed = hooks.build("user_feedback")
        async with service.client.post(
            "/webhooks/zalo", data=delayed.body, headers=delayed.headers
        ) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "7"
            assert (await response.json())["error"]["code"] == "log_unavailable"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The write that waited either lands whole or not at all; what was acknowledged stays.
    later = hooks.build("user_feedback")
    for _ in range(50):
        status, _ = await service.post(later)
        if status == 200:
            break
        await asyncio.sleep(0.2)
    values = [r.value for r in await service.events()]
    assert values[0] == accepted.body
    assert later.body in values
    assert set(values) <= {accepted.body, delayed.body, later.body}
