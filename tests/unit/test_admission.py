"""Admission decisions (docs/rules.md#denial-reasons): every denial reason, its order, partial
grants."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson
import pytest

from service.domain.admission import AdmissionRequest, decide
from service.domain.fold import advance
from service.domain.records import recipient_hash
from service.domain.rules import ZNS_2024
from tests import feed
from tests.unit.test_fold import D, Oa, plus, receipts, vn
from tests.unit.test_governor import CALM

ALICE, BOB, CAROL = (recipient_hash(p) for p in ("84900000001", "84900000002", "84900000003"))


def ask(
    oa: Oa,
    now: datetime,
    tag: int = 2,
    template: str = "t1",
    count: int = 1,
    recipients: tuple[str, ...] = (),
) -> tuple[int, list[tuple[str | None, int, str, int | None]], int | None, int | None]:
    advance(oa.state, now, oa.policy)
    request = AdmissionRequest(template, tag, recipients, len(recipients) or count)
    answer = decide(oa.state, request, now, oa.policy, "adm-1").answer
    denied = [(d.recipient, d.count, d.reason, d.zalo_error) for d in answer.denied]
    return answer.granted, denied, answer.remaining, answer.retry_after_s


def test_a_new_oa_is_granted_on_its_rule_sets_defaults() -> None:
    granted, denied, remaining, retry = ask(Oa(), vn(D, 10), count=5)
    assert (granted, denied, remaining, retry) == (5, [], 19_995, None)


def test_an_unlimited_oa_has_no_remaining_number() -> None:
    oa = Oa()
    oa.apply(feed.sync(vn(D, 9), daily_quota=None))
    assert ask(oa, vn(D, 10), count=3)[2] is None


@pytest.mark.parametrize(
    ("setup", "reason", "zalo"),
    [
        (lambda oa: oa.apply(feed.send("t9", "x", vn(D, 9), error=-1351)), "oa_suspended", -1351),
        (
            lambda oa: oa.apply(feed.template_status("t1", "REJECT", vn(D, 9))),
            "template_not_enabled",
            -131,
        ),
        (
            lambda oa: oa.apply(feed.template_status("t1", "PENDING_REVIEW", vn(D, 9))),
            "template_not_enabled",
            -131,
        ),
        (
            lambda oa: oa.apply(feed.template_status("t1", "DISABLE", vn(D, 9))),
            "template_disabled",
            -146,
        ),
        (
            lambda oa: oa.apply(feed.template_quality("t1", "LOW", vn(D, 9))),
            "template_disabled",
            -146,
        ),
        (
            lambda oa: oa.apply(feed.send("t1", "x", vn(D, 9), error=-146)),
            "template_disabled",
            -146,
        ),
        (lambda oa: oa.apply(feed.sync(vn(D, 9), allowed_tags=[1])), "tag_not_allowed", -145),
        (
            lambda oa: oa.apply(feed.send("t1", "x", vn(D, 9), error=-145, tag=2)),
            "tag_not_allowed",
            -145,
        ),
        (
            lambda oa: oa.apply(feed.sync(vn(D, 9), remaining_quota=0)),
            "daily_quota_exhausted",
            -144,
        ),
        (
            lambda oa: oa.apply(feed.send("t1", "x", vn(D, 9), error=-144)),
            "daily_quota_exhausted",
            -144,
        ),
        (
            lambda oa: oa.apply(feed.send("t1", "x", vn(D, 9), error=-147)),
            "template_daily_quota_exhausted",
            -147,
        ),
    ],
)
def test_each_reason_that_denies_the_whole_request(setup, reason: str, zalo: int) -> None:  # type: ignore[no-untyped-def]
    oa = Oa()
    setup(oa)
    granted, denied, _, _ = ask(oa, vn(D, 10), count=2)
    assert granted == 0
    assert denied == [(None, 2, reason, zalo)]


def test_the_first_reason_in_the_documented_order_is_given() -> None:
    oa = Oa()
    oa.apply(feed.template_quality("t1", "LOW", vn(D, 9)))
    oa.apply(feed.sync(vn(D, 9), remaining_quota=0))
    oa.apply(feed.send("t9", "x", vn(D, 9), error=-1351))
    assert ask(oa, vn(D, 10))[1][0][2] == "oa_suspended"
    oa.apply(feed.command("resume_oa", vn(D, 10)))
    assert ask(oa, vn(D, 10, 1))[1][0][2] == "template_disabled"


def test_a_paused_template_waits_for_the_end_of_its_pause() -> None:
    oa = Oa()
    for i in range(5):
        oa.apply(feed.send("t1", f"s{i}", vn(D, 9), msg_id=f"p{i}", tag=2))
        oa.apply(feed.rating(f"p{i}", 1, vn(D, 9)))
    granted, denied, _, retry = ask(oa, vn(D, 10))
    assert (granted, denied[0][2], denied[0][3]) == (0, "template_paused", None)
    assert retry == 2 * 3600  # the 3 h pause began at 09:00
    assert ask(oa, vn(D, 10), template="t2")[0] == 1  # other templates go on


def test_the_night_window_of_a_minus_133_template_ends_at_six() -> None:
    oa = Oa()
    oa.apply(feed.send("t1", "x", vn(D, 9), error=-133))
    assert ask(oa, vn(D, 21, 59))[0] == 1
    granted, denied, _, retry = ask(oa, vn(D, 23))
    assert (granted, denied[0][2], denied[0][3]) == (0, "night_window", -133)
    assert retry == 7 * 3600
    assert ask(oa, vn(plus(1), 6, 0))[0] == 1


def test_tag3_is_not_allowed_below_the_zns_2024_threshold() -> None:
    oa = Oa(rules=ZNS_2024)  # starts at 5,000; tag 3 from 20,000
    assert ask(oa, vn(D, 10), tag=3)[1][0][2] == "tag_not_allowed"
    oa.apply(feed.daily_quota(20_000, vn(D, 10)))
    assert ask(oa, vn(D, 10, 1), tag=3)[1] == []


def test_a_partial_grant_follows_the_order_of_the_recipients() -> None:
    oa = Oa()
    oa = Oa(thresholds=CALM)  # the refusal is a negative; keep quality out of this test
    oa.apply(feed.send("t9", "x", vn(D, 9), error=-141, recipient=BOB))
    oa.apply(feed.sync(vn(D, 9, 30), remaining_quota=1))
    granted, denied, remaining, retry = ask(oa, vn(D, 10), recipients=(BOB, ALICE, CAROL))
    assert granted == 1  # Alice's
    assert denied == [
        (BOB, 1, "recipient_opted_out", -141),
        (CAROL, 1, "daily_quota_exhausted", -144),
    ]
    assert remaining == 0
    assert retry == 14 * 3600  # until midnight in Vietnam; opted out does not end by itself


def test_the_promotion_month_and_the_governor_limit_tag3() -> None:
    oa = Oa()
    oa.apply(feed.send("t3", "x", vn(D, 9), error=-1441, tag=3))
    assert ask(oa, vn(D, 10), tag=3, template="t3")[1][0][2:] == (
        "promotion_monthly_quota_exhausted",
        -1441,
    )
    calm = Oa(thresholds=CALM)
    calm.apply_all(receipts(200, vn(D, 8)))
    calm.apply_all(feed.rating(f"m{i}", 1, vn(D, 9)) for i in range(200))  # 50 % of T = 400
    assert ask(calm, vn(D, 10), tag=3, template="t3")[1][0][2:] == ("governor_throttled", None)
    assert ask(calm, vn(D, 10), tag=2)[0] == 1


def test_promotion_needs_a_tag12_message_in_the_last_six_months() -> None:
    oa = Oa()
    assert ask(oa, vn(D, 10), tag=3, template="t3", recipients=(ALICE,))[1][0][2:] == (
        "recipient_not_eligible",
        -140,
    )
    oa.apply(feed.send("t1", "otp", vn(D, 10), msg_id="m1", tag=1, recipient=ALICE))
    assert ask(oa, vn(D, 10, 1), tag=3, template="t3", recipients=(ALICE,))[0] == 1
    assert (
        ask(oa, vn(D + timedelta(days=186), 10), tag=3, template="t3", recipients=(ALICE,))[1][0][2]
        == "recipient_not_eligible"
    )
    oa.apply(feed.send("t1", "otp2", vn(D, 11), msg_id="m2", tag=1, recipient=BOB))
    oa.apply(feed.send("t3", "no", vn(D, 11), error=-140, tag=3, recipient=BOB))
    assert ask(oa, vn(D, 12), tag=3, template="t3", recipients=(BOB,))[1][0][2] == (
        "recipient_not_eligible"
    )


def test_zbs_2026_allows_one_promotion_a_day_per_recipient() -> None:
    oa = Oa()
    oa.apply(feed.send("t1", "otp", vn(D, 9), msg_id="m1", tag=1, recipient=ALICE))
    # Twice in one request: the second unit meets the day's cap.
    granted, denied, _, retry = ask(oa, vn(D, 10), tag=3, template="t3", recipients=(ALICE, ALICE))
    assert granted == 1
    assert denied == [(ALICE, 1, "recipient_promotion_limit", -1472)]
    assert retry == 14 * 3600
    oa.apply(feed.admission("a1", "t3", 3, 1, vn(D, 10), recipients=(ALICE,)))
    assert ask(oa, vn(D, 10, 1), tag=3, template="t3", recipients=(ALICE,))[1][0][3] == -1472
    assert ask(oa, vn(plus(1), 10), tag=3, template="t3", recipients=(ALICE,))[0] == 1
    oa.apply(feed.send("t3", "lim", vn(plus(1), 11), error=-1471, tag=3, recipient=ALICE))
    assert ask(oa, vn(plus(2), 10), tag=3, template="t3", recipients=(ALICE,))[1][0][3] == -1471


def test_a_folded_grant_is_what_remains_less() -> None:
    oa = Oa()
    oa.apply(feed.sync(vn(D, 9), remaining_quota=10))
    assert ask(oa, vn(D, 10), count=6)[0:3:2] == (6, 4)
    oa.apply(feed.admission("a1", "t1", 2, 6, vn(D, 10)))
    granted, denied, remaining, _ = ask(oa, vn(D, 10, 1), count=6)
    assert (granted, remaining) == (4, 0)
    assert denied == [(None, 2, "daily_quota_exhausted", -144)]


def test_units_without_recipients_are_decided_in_bulk_whatever_the_count() -> None:
    # Far more units than could ever be held one by one: decided by arithmetic on the limits.
    oa = Oa()
    granted, denied, remaining, _ = ask(oa, vn(D, 10), count=10**12)
    assert (granted, remaining) == (20_000, 0)
    assert denied == [(None, 10**12 - 20_000, "daily_quota_exhausted", -144)]
    blocked = Oa()
    blocked.apply(feed.send("t9", "x", vn(D, 9), error=-1351))
    assert ask(blocked, vn(D, 10), count=10**12)[1] == [(None, 10**12, "oa_suspended", -1351)]


def test_the_first_reason_to_run_out_names_the_units_denied_in_bulk() -> None:
    oa = Oa(thresholds=CALM)
    oa.apply(feed.sync(vn(D, 9), remaining_quota=5_000))
    # Tag 3: the promotion month (10,000) is not the limit; the daily remaining is.
    granted, denied, remaining, _ = ask(oa, vn(D, 10), tag=3, template="t3", count=7_000)
    assert (granted, remaining) == (5_000, 0)
    assert denied == [(None, 2_000, "daily_quota_exhausted", -144)]


def many(count: int) -> tuple[str, ...]:
    return tuple(recipient_hash(f"849{i:08d}") for i in range(count))


def test_an_answer_names_at_most_100_denied_recipients_and_counts_the_rest_by_reason() -> None:
    oa = Oa(thresholds=CALM)
    people = many(300)
    for person in people[::2]:  # every other one opted out
        oa.apply(feed.send("t9", "x" + person[:8], vn(D, 9), error=-141, recipient=person))
    oa.apply(feed.sync(vn(D, 9, 30), remaining_quota=145))
    granted, denied, remaining, _ = ask(oa, vn(D, 10), recipients=people)
    assert (granted, remaining) == (145, 0)  # the odd ones up to the 290th
    assert denied == [
        *((p, 1, "recipient_opted_out", -141) for p in people[0:200:2]),
        (None, 45, "recipient_opted_out", -141),
        (None, 10, "daily_quota_exhausted", -144),
    ]


def test_a_folded_admission_keeps_a_compact_answer_for_its_idempotency_key() -> None:
    # A record written before answers were compact: its stored answer is compacted.
    oa = Oa()
    raw = feed.admission("a1", "t1", 2, 0, vn(D, 10), key="k")
    value = orjson.loads(raw.value)
    people = many(250)
    value["answer"]["denied"] = [
        {"recipient": p, "count": 1, "reason": "daily_quota_exhausted", "zalo_error": -144}
        for p in people
    ]
    oa.apply(raw._replace(value=orjson.dumps(value)))
    stored = oa.state.idempotency["k"][2]
    assert [d.get("recipient") for d in stored["denied"]] == [*people[:100], None]
    assert stored["denied"][-1] == {
        "recipient": None,
        "count": 150,
        "reason": "daily_quota_exhausted",
        "zalo_error": -144,
    }
