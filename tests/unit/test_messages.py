"""The send proxy's checks and answers (`service/domain/messages.py`) and how the fold keeps
a request's outcomes, counts a send whose outcome is unknown, and settles it by its
receipt's tracking id."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import orjson

from service.domain.messages import (
    TRACKING_ID,
    Checked,
    Outgoing,
    check,
    planned,
    result_of,
    tracking_id_for,
)
from service.domain.records import Denial, PlannedMessage
from tests import feed
from tests.feed import Raw
from tests.unit.test_fold import D, Oa, vn
from tests.zalo import OA_ID

PARAMS: list[dict[str, Any]] = [
    {"name": "otp", "require": True, "min_length": 4, "max_length": 8},
    {"name": "note", "require": False, "accept_null": True},
]


def outgoing(phone: str | None = "0987654321", **fields: Any) -> Outgoing:
    values: dict[str, Any] = {
        "template_id": "t1",
        "phone": phone,
        "hash_phone": None,
        "template_data": {"otp": "1234"},
        "tracking_id": None,
    }
    values.update(fields)
    return Outgoing(**values)


def never(_: str) -> bool:
    return False


def test_a_tracking_id_is_made_from_the_key_and_the_place_within_zalos_limits() -> None:
    assert tracking_id_for("batch-17", 3) == "batch-17-3"
    for key in ("x" * 60, "with spaces and ü", "a/b"):
        made = tracking_id_for(key, 99)
        assert TRACKING_ID.fullmatch(made), made
        assert made == tracking_id_for(key, 99)  # the same on a repeat
        assert made != tracking_id_for(key, 98)


def test_every_common_form_of_a_phone_is_one_recipient_sent_as_84() -> None:
    forms = ["0987654321", "+84 987 654 321", "84987654321", "(098) 765-4321"]
    checked = check([outgoing(p) for p in forms], "k", None, never)
    expected = hashlib.sha256(b"84987654321").hexdigest()
    assert {c.to for c in checked} == {"84987654321"}
    assert {c.recipient for c in checked} == {expected}
    assert all(c.rejected is None for c in checked)


def test_a_hashed_phone_is_sent_as_it_is_lowercased() -> None:
    hashed = hashlib.sha256(b"84987654321").hexdigest()
    [ok, bad] = check(
        [outgoing(None, hash_phone=hashed.upper()), outgoing(None, hash_phone="abc")],
        "k",
        None,
        never,
    )
    assert (ok.recipient, ok.to, ok.rejected) == (hashed, hashed, None)
    assert bad.rejected == "invalid_phone"


def test_template_data_is_checked_against_the_params_zalo_listed() -> None:
    cases = [
        ({"otp": "1234"}, None),
        ({"otp": "1234", "note": ""}, None),  # not required, accepts null
        ({"otp": "123"}, "otp"),  # shorter than min_length
        ({"otp": "123456789"}, "otp"),  # longer than max_length
        ({"otp": ""}, "otp"),  # required, empty
        ({}, "otp"),  # required, missing
    ]
    for data, param in cases:
        [c] = check([outgoing(template_data=data)], "k", PARAMS, never)
        assert c.param == param, data
        assert c.rejected == (None if param is None else "invalid_template_data")
    # Params not known yet: sent as given.
    [c] = check([outgoing(template_data={})], "k", None, never)
    assert c.rejected is None


def test_a_tracking_id_is_refused_when_malformed_repeated_or_already_recorded() -> None:
    messages = [
        outgoing(tracking_id="order-1"),
        outgoing(tracking_id="order-1"),
        outgoing(tracking_id="x" * 49),
        outgoing(tracking_id="no spaces"),
        outgoing(tracking_id="used"),
        outgoing(),
    ]
    checked = check(messages, "k", None, lambda t: t == "used")
    assert [c.rejected for c in checked] == [
        None,
        "invalid_tracking_id",
        "invalid_tracking_id",
        "invalid_tracking_id",
        "invalid_tracking_id",
        None,
    ]
    assert checked[-1].tracking_id == "k-5"


def test_the_plan_puts_the_admissions_outcomes_on_the_messages_that_passed() -> None:
    checked = [
        Checked("a", "r1", "84..1"),
        Checked("b", None, None, "invalid_phone"),
        Checked("c", "r2", "84..2"),
        Checked("d", "r3", "84..3"),
    ]
    quota = Denial(recipient="0" * 64, count=1, reason="daily_quota_exhausted", zalo_error=-144)
    plan = planned(checked, [None, None, quota])
    assert [(p.tracking_id, p.status, p.reason) for p in plan] == [
        ("a", "admitted", None),
        ("b", "rejected", "invalid_phone"),
        ("c", "admitted", None),
        ("d", "denied", "daily_quota_exhausted"),
    ]
    assert plan[3].zalo_error == -144
    # An admitted message without an outcome recorded is unknown, never sent again.
    assert result_of(plan[0], None) == {"tracking_id": "a", "status": "unknown"}
    assert result_of(plan[0], {"status": "sent", "msg_id": "m"}) == {
        "tracking_id": "a",
        "status": "sent",
        "msg_id": "m",
    }


# --- the fold ---------------------------------------------------------------------------------


def proxy_admission(at: datetime, messages: list[PlannedMessage], granted: int) -> Raw:
    raw = feed.admission("a1", "t1", 1, granted, at, key="batch")
    value = orjson.loads(raw.value)
    value["messages"] = [m.model_dump(exclude_none=True) for m in messages]
    return raw._replace(value=orjson.dumps(value))


def proxy_send(index: int, tracking: str, at: datetime, **outcome: Any) -> Raw:
    raw = feed.send("t1", tracking, at, tag=1, admission_id="a1")
    value = orjson.loads(raw.value)
    value["send"].update(outcome)
    value["request"] = {"idempotency_key": "batch", "index": index}
    return raw._replace(value=orjson.dumps(value))


def test_a_requests_outcomes_are_kept_with_its_idempotency_entry() -> None:
    oa = Oa()
    plan = [
        PlannedMessage(tracking_id="t-0", status="admitted"),
        PlannedMessage(tracking_id="t-1", status="rejected", reason="invalid_phone"),
        PlannedMessage(tracking_id="t-2", status="admitted"),
    ]
    oa.apply(proxy_admission(vn(D, 9), plan, 2))
    oa.apply(proxy_send(0, "t-0", vn(D, 9, 1), msg_id="m0"))
    oa.apply(proxy_send(2, "t-2", vn(D, 9, 1), error=-108, zalo_message="bad phone"))
    oa.apply(proxy_send(2, "t-2", vn(D, 9, 2)))  # a duplicate changes nothing
    entry = oa.state.idempotency.peek("batch")
    assert entry is not None
    assert [m["status"] for m in entry[3]] == ["admitted", "rejected", "admitted"]
    assert entry[4] == {
        "0": {"status": "sent", "msg_id": "m0", "sent_time": feed.ms(vn(D, 9, 1))},
        "2": {"status": "failed", "zalo_error": -108, "message": "bad phone"},
    }
    assert oa.remaining(vn(D, 10)) == 20_000 - 1  # the failure gave its unit back


def test_a_send_that_never_reached_zalo_gives_its_unit_back_and_blocks_nothing() -> None:
    oa = Oa()
    plan = [PlannedMessage(tracking_id="t-0", status="admitted")]
    oa.apply(proxy_admission(vn(D, 9), plan, 1))
    assert oa.remaining(vn(D, 9)) == 19_999
    oa.apply(proxy_send(0, "t-0", vn(D, 9, 1), error=None, not_sent="zalo_unavailable"))
    assert oa.remaining(vn(D, 9, 2)) == 20_000
    entry = oa.state.idempotency.peek("batch")
    assert entry is not None
    assert entry[4] == {"0": {"status": "failed", "reason": "zalo_unavailable"}}


def test_an_unknown_outcome_keeps_its_unit_until_its_receipt_or_the_grant_ttl() -> None:
    # Settled by the receipt naming its tracking id: counted once, for its template.
    oa = Oa()
    oa.apply(proxy_admission(vn(D, 9), [PlannedMessage(tracking_id="t-0", status="admitted")], 1))
    oa.apply(proxy_send(0, "t-0", vn(D, 9, 1), error=None))
    assert oa.remaining(vn(D, 9, 2)) == 19_999
    receipt = feed.webhook(
        {
            "event_name": "user_received_message",
            "app_id": "1",
            "timestamp": feed.ms(vn(D, 9, 3)),
            "sender": {"id": OA_ID},
            "recipient": {"id": "84987654321"},
            "message": {
                "delivery_time": feed.ms(vn(D, 9, 3)),
                "msg_id": "m9",
                "tracking_id": "t-0",
            },
        },
        server="ZNS",
    )
    oa.apply(receipt)
    assert oa.remaining(vn(D, 13)) == 19_999  # past grant_ttl: the unit stays, used once
    template = oa.state.templates["t1"]
    assert template.sent_ok.get(oa.policy.day(vn(D, 9))) == 1
    assert template.delivered.within(vn(D, 13), timedelta(days=7)) == 1
    message = oa.state.messages.peek("m9")
    assert message is not None
    assert (message.sent, message.template_id, message.settled) == (True, "t1", "a1")
    oa.apply(receipt)  # Zalo's retry changes nothing
    assert oa.remaining(vn(D, 13)) == 19_999
    assert template.sent_ok.get(oa.policy.day(vn(D, 9))) == 1

    # No receipt: grant_ttl gives the unit back.
    quiet = Oa()
    quiet.apply(
        proxy_admission(vn(D, 9), [PlannedMessage(tracking_id="t-0", status="admitted")], 1)
    )
    quiet.apply(proxy_send(0, "t-0", vn(D, 9, 1), error=None))
    assert quiet.remaining(vn(D, 9, 30)) == 19_999
    assert quiet.remaining(vn(D, 10, 2)) == 20_000
