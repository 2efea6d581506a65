"""Event models and the facts the receiver reads from a raw body."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from service.domain import events
from service.domain.events import (
    ChangeOaDailyQuota,
    ChangeTemplateQuality,
    ChangeTemplateStatus,
    GenericEvent,
    MalformedBody,
    UserClickResponseButton,
    UserFeedback,
    UserReceivedMessage,
    as_datetime,
    dedup_key,
    find_oa_id,
    parse_body,
    parse_event,
)
from tests import zalo

hooks = zalo.Webhooks()

EXPECTED_MODEL = {
    "user_received_message": UserReceivedMessage,
    "user_feedback": UserFeedback,
    "user_click_response_button": UserClickResponseButton,
    "change_template_status": ChangeTemplateStatus,
    "change_template_quality": ChangeTemplateQuality,
    "change_oa_daily_quota": ChangeOaDailyQuota,
    "change_oa_template_tags": GenericEvent,
    "change_template_quota": GenericEvent,
    "event_journey_acknowledged": GenericEvent,
    "event_journey_time_out": GenericEvent,
}


@pytest.mark.parametrize("name", sorted(zalo.EXAMPLES))
def test_every_documented_payload_parses_into_its_model(name: str) -> None:
    hook = hooks.build(name)
    event = parse_event(parse_body(hook.body), hook.headers.get("X-ZEvent-Server"))
    assert type(event) is EXPECTED_MODEL[name]
    assert event.event_name == name
    assert event.app_id == zalo.APP_ID
    assert find_oa_id(parse_body(hook.body)) == zalo.OA_ID


def test_typed_accessors() -> None:
    receipt = parse_event(parse_body(hooks.build("user_received_message", fresh=False).body), "ZNS")
    assert isinstance(receipt, UserReceivedMessage)
    assert receipt.message.delivered_at == datetime(2020, 10, 17, 18, 47, 47, 432000, tzinfo=UTC)
    assert receipt.sender.id == zalo.OA_ID
    feedback = parse_event(parse_body(hooks.build("user_feedback", fresh=False).body))
    assert isinstance(feedback, UserFeedback)
    assert feedback.message.rate == 5
    assert feedback.message.submitted_at == as_datetime("1616673095659")
    assert as_datetime("0") == datetime(1970, 1, 1, tzinfo=UTC)


def test_unknown_fields_are_kept() -> None:
    payload = hooks.payload("user_feedback")
    payload["new_top_level"] = {"x": 1}
    payload["message"]["receiver_device"] = "phone"
    event = parse_event(payload)
    assert isinstance(event, UserFeedback)
    assert event.model_extra == {"new_top_level": {"x": 1}}
    assert event.message.model_extra == {"receiver_device": "phone"}
    dumped = event.model_dump()
    assert dumped["message"]["receiver_device"] == "phone"


def test_ids_written_as_numbers_become_their_digits() -> None:
    raw = (
        b'{"event_name":"change_oa_daily_quota","app_id":2074138120372622546,'
        b'"oaId":123456789012345678901234567890,"timestamp":1700000000000,'
        b'"quota":{"prev_value":5000,"new_value":10000}}'
    )
    body = parse_body(raw)
    assert find_oa_id(body) == "123456789012345678901234567890"
    event = parse_event(body)
    assert isinstance(event, ChangeOaDailyQuota)
    assert event.oaId == "123456789012345678901234567890"
    assert event.app_id == "2074138120372622546"
    assert event.timestamp == "1700000000000"
    assert event.quota.new_value == 10000


def test_a_chat_receipt_is_not_a_zns_receipt() -> None:
    body = parse_body(hooks.build("user_received_message").body)
    assert isinstance(parse_event(body, "OA OpenAPI"), GenericEvent)
    assert isinstance(parse_event(body, None), GenericEvent)
    assert isinstance(parse_event(body, "zns"), UserReceivedMessage)


def test_a_malformed_known_event_is_a_validation_error() -> None:
    payload = hooks.payload("user_feedback")
    payload["message"]["rate"] = 9
    with pytest.raises(ValidationError):
        parse_event(payload)


@pytest.mark.parametrize(
    ("body", "oa_id"),
    [
        ({"oa_id": "1"}, "1"),
        ({"oaId": "2"}, "2"),
        ({"event_name": "user_received_message", "sender": {"id": "3"}}, "3"),
        ({"event_name": "user_send_text", "sender": {"id": "a-user"}}, None),
        ({"oa_id": 4}, "4"),
        ({"oa_id": "", "oaId": "5"}, "5"),
        ({"sender": "not an object"}, None),
        ({"oa_id": None, "oaId": True}, None),
        ({}, None),
    ],
)
def test_find_oa_id_looks_everywhere(body: dict[str, Any], oa_id: str | None) -> None:
    assert find_oa_id(body) == oa_id


def test_dedup_key_without_anything_to_go_by_is_the_body_hash() -> None:
    raw = b'{"app_id":"1","timestamp":"2"}'
    key = dedup_key(parse_body(raw), raw)
    assert key.startswith("sha256:")
    assert len(key) == len("sha256:") + 64
    assert dedup_key(parse_body(raw), raw) == key


@pytest.mark.parametrize("raw", [b"", b"nul", b"[]", b"1", b'{"a":NaN}', b'{"a":1}x', b"\xff"])
def test_parse_body_refuses_anything_but_an_object(raw: bytes) -> None:
    with pytest.raises(MalformedBody):
        parse_body(raw)


def test_parse_body_keeps_long_integers_exact_even_inside_nesting() -> None:
    raw = b'{"a":[1,99999999999999999999999],"b":{"c":-12345678901234567890}, "d": 1.5}'
    assert parse_body(raw) == {
        "a": [1, 99999999999999999999999],
        "b": {"c": -12345678901234567890},
        "d": 1.5,
    }
    assert parse_body(orjson.dumps({"s": "x: 12345678901234567890"})) == {
        "s": "x: 12345678901234567890"
    }


def test_deep_nesting_with_a_long_number_is_malformed_not_a_crash() -> None:
    deep = b"[" * 1000 + b"12345678901234567890" + b"]" * 1000
    with pytest.raises(MalformedBody):
        parse_body(b'{"a":' + deep + b"}")


def test_every_model_is_published() -> None:
    assert set(events.EVENT_MODELS) == {
        name for name, model in EXPECTED_MODEL.items() if model is not GenericEvent
    }
