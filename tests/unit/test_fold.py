"""The fold, rule by rule (docs/rules.md), with the clock passed in."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from service.domain.fold import Unprocessable, advance, fold, read_item
from service.domain.records import recipient_hash
from service.domain.rules import ZBS_2026, ZNS_2024, RuleSet, Thresholds
from service.domain.state import Change, OAState, Policy
from service.domain.windows import month_index
from tests import feed
from tests.feed import Raw
from tests.zalo import OA_ID

VN = ZoneInfo("Asia/Ho_Chi_Minh")
D = date(2026, 3, 2)  # a Monday; "day D" of the rules


def vn(day: date, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=VN)


def plus(days: int) -> date:
    return D + timedelta(days=days)


class Oa:
    """One OA's state and the records folded into it, with a stream clock."""

    def __init__(
        self,
        rules: RuleSet = ZBS_2026,
        thresholds: Thresholds | None = None,
        negative_replies: dict[str, frozenset[str]] | None = None,
    ) -> None:
        self.policy = Policy(rules, thresholds or Thresholds(), VN, negative_replies or {})
        self.state = OAState.new(OA_ID, rules)
        self.clock: datetime | None = None
        self.changes: list[Change] = []

    def apply(self, raw: Raw, now: datetime | None = None) -> list[Change]:
        item = read_item(raw.kind, raw.key, raw.value, raw.headers)
        self.clock = max(x for x in (now, item.at, self.clock) if x is not None)
        changes = fold(self.state, item, self.clock, self.policy)
        self.changes += changes
        return changes

    def apply_all(self, raws: Iterable[Raw]) -> list[Change]:
        return [change for raw in raws for change in self.apply(raw)]

    def at(self, moment: datetime) -> list[Change]:
        self.clock = moment
        changes = advance(self.state, moment, self.policy)
        self.changes += changes
        return changes

    def remaining(self, moment: datetime) -> int | None:
        self.at(moment)
        return self.state.remaining_today(self.policy.day(moment))

    def of(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]


def receipts(count: int, moment: datetime, prefix: str = "m") -> list[Raw]:
    return [feed.receipt(f"{prefix}{i}", moment) for i in range(count)]


# --- reading records ----------------------------------------------------------------------


def test_a_record_of_an_unknown_kind_or_shape_is_unprocessable_with_a_reason() -> None:
    with pytest.raises(Unprocessable) as unknown:
        read_item("gossip", b"oa", b"{}", {})
    assert unknown.value.reason == "unknown_kind"
    with pytest.raises(Unprocessable) as malformed:
        read_item("send", b"oa", b'{"oa_id": "oa"}', {"kind": "send"})
    assert malformed.value.reason == "malformed_record"
    with pytest.raises(Unprocessable) as no_oa:
        read_item("webhook", b"app", b'{"event_name": "x", "app_id": "1", "timestamp": "1"}', {})
    assert no_oa.value.reason == "no_oa_id"
    raw = feed.send("t1", "track-1", vn(D))
    with pytest.raises(Unprocessable) as wrong_key:
        read_item(raw.kind, b"another-oa", raw.value, raw.headers)
    assert wrong_key.value.reason == "malformed_record"


def test_event_time_is_the_delivery_submit_or_sent_time() -> None:
    delivered, rated = vn(D, 9), vn(D, 10)
    assert read_item(*feed.receipt("m1", delivered)).at == delivered
    assert read_item(*feed.rating("m1", 5, rated)).at == rated
    assert read_item(*feed.send("t", "x", rated)).at == rated


def test_recipients_are_hashed_in_the_84_form() -> None:
    hashed = recipient_hash("84901234567")
    assert recipient_hash("0901234567") == hashed
    assert recipient_hash("+84 90 123 4567") == hashed
    assert recipient_hash(hashed.upper()) == hashed
    with pytest.raises(ValueError, match="phone"):
        recipient_hash("not a phone")


# --- signals and quality ------------------------------------------------------------------


def test_no_deliveries_is_undefined_and_a_delivery_is_high() -> None:
    oa = Oa()
    oa.at(vn(D))
    assert oa.state.proxy_levels(vn(D), oa.policy.thresholds)[1].value == "UNDEFINED"
    oa.apply(feed.receipt("m1", vn(D)))
    assert (oa.state.proxy_48h, oa.state.proxy_7d) == ("HIGH", "HIGH")
    assert [(c.rule, c.before, c.after) for c in oa.of("quality")] == [
        ("proxy_48h", "UNDEFINED", "HIGH"),
        ("proxy_7d", "UNDEFINED", "HIGH"),
    ]


@pytest.mark.parametrize(
    ("rate", "negative", "positive"),
    [(1, 1, 0), (2, 1, 0), (3, 0, 0), (4, 0, 1), (5, 0, 1)],
)
def test_ratings_two_stars_or_fewer_are_negative_four_or_more_positive(
    rate: int, negative: int, positive: int
) -> None:
    oa = Oa()
    oa.apply(feed.receipt("m1", vn(D, 9)))
    oa.apply(feed.rating("m1", rate, vn(D, 10)))
    now = vn(D, 11)
    assert oa.state.negatives.within(now, timedelta(hours=48)) == negative
    assert oa.state.positives.within(now, timedelta(hours=48)) == positive
    assert oa.state.delivered.within(now, timedelta(hours=48)) == 1


def test_a_message_counts_negative_once_and_an_undelivered_negative_adds_a_delivery() -> None:
    oa = Oa(negative_replies={"t1": frozenset({"Ngừng nhận"})})
    oa.apply(feed.send("t1", "tr-1", vn(D, 8), msg_id="m1", tag=2))
    oa.apply(feed.rating("m1", 1, vn(D, 9)))  # before its receipt
    oa.apply(feed.quick_reply("m1", "Ngừng nhận", vn(D, 10)))
    oa.apply(feed.receipt("m1", vn(D, 11)))
    now = vn(D, 12)
    assert oa.state.negatives.within(now, timedelta(hours=48)) == 1
    assert oa.state.delivered.within(now, timedelta(hours=48)) == 1
    template = oa.state.templates["t1"]
    assert template.negatives.within(now, timedelta(days=7)) == 1
    assert template.delivered.within(now, timedelta(days=7)) == 1


def test_a_quick_reply_is_negative_only_with_a_label_configured_for_its_template() -> None:
    oa = Oa(negative_replies={"t1": frozenset({"Ngừng nhận"})})
    oa.apply(feed.send("t1", "tr-1", vn(D, 8), msg_id="m1"))
    oa.apply(feed.send("t2", "tr-2", vn(D, 8), msg_id="m2"))
    oa.apply(feed.send("t1", "tr-3", vn(D, 8), msg_id="m3"))
    oa.apply(feed.quick_reply("m1", "Tiếp tục", vn(D, 9)))
    oa.apply(feed.quick_reply("m2", "Ngừng nhận", vn(D, 9)))  # t2 has no negative labels
    oa.apply(feed.quick_reply("unknown", "Ngừng nhận", vn(D, 9)))  # template unknown
    assert oa.state.negatives_by_day.get(D.toordinal()) == 0
    oa.apply(feed.quick_reply("m1", "Ngừng nhận", vn(D, 10)))  # one answer per message
    assert oa.state.negatives_by_day.get(D.toordinal()) == 0
    oa.apply(feed.quick_reply("m3", "Ngừng nhận", vn(D, 10)))
    assert oa.state.negatives_by_day.get(D.toordinal()) == 1


@pytest.mark.parametrize("error", [-141, -139])
def test_a_refused_or_blocked_send_is_a_negative_and_opts_the_recipient_out(error: int) -> None:
    oa = Oa()
    person = recipient_hash(feed.PHONE)
    oa.apply(feed.send("t1", "tr-1", vn(D, 8), error=error, recipient=person))
    assert oa.state.negatives_by_day.get(D.toordinal()) == 1
    assert oa.state.delivered.within(vn(D, 9), timedelta(hours=48)) == 1
    assert oa.state.recipients[person].opted_out
    oa.apply(feed.send("t1", "tr-2", vn(D, 9), msg_id="m2", recipient=person))
    assert not oa.state.recipients[person].opted_out


def test_a_record_delivered_twice_is_folded_once() -> None:
    oa = Oa()
    raws = [
        feed.receipt("m1", vn(D, 9)),
        feed.rating("m1", 1, vn(D, 10)),
        feed.send("t1", "tr-1", vn(D, 8), msg_id="m2"),
        feed.admission("a1", "t1", 2, 5, vn(D, 9, 30)),
    ]
    for raw in raws:
        oa.apply(raw)
    before = orjson.dumps(oa.state.to_document())
    for raw in raws:
        assert oa.apply(raw) == []
    assert orjson.dumps(oa.state.to_document()) == before


# --- tier: evaluation, wait, penalty, Zalo's values ----------------------------------------


def volume_oa(sent_in_window: int) -> Oa:
    """An OA at 1,000 a day since day D (first send on D), with `sent_in_window` messages
    delivered on D+2 and nothing negative."""
    oa = Oa()
    oa.apply(feed.daily_quota(1_000, vn(D, 8)))
    oa.apply(feed.send("t1", "first", vn(D, 9), msg_id="first", tag=1))
    oa.apply_all(receipts(sent_in_window, vn(plus(2))))
    return oa


@pytest.mark.parametrize(("sent", "quota_after"), [(2_000, 10_000), (1_999, 1_000)])
def test_an_upgrade_needs_twice_the_quota_sent_first_evaluated_on_d_plus_8(
    sent: int, quota_after: int
) -> None:
    oa = volume_oa(sent)
    oa.at(vn(plus(7), 23, 59))
    assert oa.state.daily_quota == 1_000  # D+7: too early, the volume notwithstanding
    oa.at(vn(plus(8), 0, 30))
    assert oa.state.daily_quota == quota_after
    if quota_after != 1_000:
        (tier,) = oa.of("tier")[1:]  # after Zalo's own setting on day D
        assert (tier.rule, tier.before, tier.after) == ("evaluation_up", 1_000, 10_000)
        assert tier.at == vn(plus(8), 0, 0)
        assert tier.inputs["sent_ok_7d"] == 2_000
        assert tier.inputs["level_7d"] == "HIGH"
        assert tier.inputs["basis"] == "proxy"


def low_quality(oa: Oa, day: date, prefix: str = "bad") -> None:
    """50 of 100 deliveries on `day` rated 1 star."""
    oa.apply_all(receipts(100, vn(day, 9), prefix))
    oa.apply_all(feed.rating(f"{prefix}{i}", 1, vn(day, 10)) for i in range(50))


def test_no_evaluation_moves_the_tier_inside_the_seven_day_wait() -> None:
    oa = Oa()
    oa.apply(feed.send("t1", "first", vn(D, 9), msg_id="first"))
    oa.apply(feed.daily_quota(10_000, vn(plus(5), 9)))  # a change on D+5: wait until D+12
    low_quality(oa, plus(6))
    oa.at(vn(plus(11), 23))
    assert oa.state.daily_quota == 10_000
    oa.at(vn(plus(12), 1))
    assert oa.state.daily_quota == 1_000
    assert [c.rule for c in oa.of("tier")] == ["zalo_change_oa_daily_quota", "evaluation_down"]


def test_the_penalty_comes_on_the_first_negative_beyond_two_percent_once_a_day() -> None:
    oa = Oa(rules=ZNS_2024)  # starts at 5,000: T = 100
    oa.apply_all(receipts(400, vn(D, 8)))
    oa.apply_all(feed.rating(f"m{i}", 1, vn(D, 9)) for i in range(100))
    assert oa.state.daily_quota == 5_000
    assert not oa.of("penalty")
    oa.apply(feed.rating("m100", 1, vn(D, 10)))
    assert oa.state.daily_quota == 2_000
    (penalty,) = oa.of("penalty")
    assert penalty.inputs["negatives_today"] == 101
    assert penalty.inputs["threshold"] == 100
    oa.apply_all(feed.rating(f"m{i}", 1, vn(D, 11)) for i in range(101, 300))
    assert oa.state.daily_quota == 2_000  # at most once a day
    # The next day T = 2 % of 2,000 = 40; the wait after yesterday's change does not matter.
    oa.apply_all(receipts(100, vn(plus(1), 8), "n"))
    oa.apply_all(feed.rating(f"n{i}", 1, vn(plus(1), 9)) for i in range(41))
    assert oa.state.daily_quota == 500
    assert [c.after for c in oa.of("penalty")] == [2_000, 500]


def test_an_unlimited_tier_has_no_penalty() -> None:
    oa = Oa()
    oa.apply(feed.daily_quota(None, vn(D, 7)))
    assert oa.state.daily_quota is None
    oa.at(vn(plus(1), 1))
    oa.apply_all(receipts(10, vn(plus(1), 8)))
    oa.apply_all(feed.rating(f"m{i}", 1, vn(plus(1), 9)) for i in range(10))
    assert oa.state.daily_quota is None
    assert not oa.of("penalty")
    assert oa.state.remaining_today(plus(1).toordinal()) is None


def test_zalo_sets_the_tier_the_latest_event_time_wins_and_off_ladder_values_stay() -> None:
    oa = Oa()
    oa.apply(feed.daily_quota(15_000, vn(D, 10)))
    oa.apply(feed.daily_quota(50_000, vn(D, 9)))  # older: ignored
    assert oa.state.daily_quota == 15_000
    assert oa.state.rule_set().step_down(15_000) == 10_000
    assert oa.state.rule_set().step_up(15_000) == 20_000
    oa.apply(
        feed.send(
            "t1", "tr-1", vn(D, 11), msg_id="m1", quota={"dailyQuota": 10_000, "remainingQuota": 42}
        )
    )
    assert oa.state.daily_quota == 10_000
    assert oa.state.remaining_today(D.toordinal()) == 42
    oa.apply(feed.sync(vn(D, 12), daily_quota=None))
    assert oa.state.daily_quota is None
    assert [c.rule for c in oa.of("tier")] == [
        "zalo_change_oa_daily_quota",
        "zalo_send_quota",
        "sync",
    ]


def test_zalo_lowering_the_quota_today_is_the_days_penalty() -> None:
    oa = Oa(rules=ZNS_2024)
    oa.apply_all(receipts(200, vn(D, 8)))
    oa.apply(feed.daily_quota(2_000, vn(D, 9)))
    oa.apply_all(feed.rating(f"m{i}", 1, vn(D, 10)) for i in range(150))
    assert oa.state.daily_quota == 2_000
    assert not oa.of("penalty")


def test_zalos_fresh_level_is_the_basis_of_the_evaluation() -> None:
    oa = volume_oa(2_000)  # the proxy says HIGH with the volume of an upgrade
    oa.apply(feed.daily_quota(10_000, vn(D, 9)))
    oa.apply(feed.sync(vn(plus(7), 23), quality_48h="LOW", quality_7d="LOW"))
    oa.at(vn(plus(8), 0, 30))
    tier = oa.of("tier")[-1]
    assert (tier.rule, tier.after, tier.inputs["basis"]) == ("evaluation_down", 1_000, "zalo")


def test_zalos_stale_level_leaves_the_evaluation_to_the_proxy() -> None:
    oa = volume_oa(2_000)
    oa.apply(feed.sync(vn(plus(7), 20), quality_48h="LOW", quality_7d="LOW"))  # 4 h old
    oa.at(vn(plus(8), 0, 30))
    tier = oa.of("tier")[-1]
    assert (tier.rule, tier.after, tier.inputs["basis"]) == ("evaluation_up", 10_000, "proxy")


# --- quota consumption --------------------------------------------------------------------


def test_grants_consume_sends_settle_failures_and_expiry_give_back() -> None:
    oa = Oa()
    oa.apply(feed.admission("a1", "t1", 2, 10, vn(D, 10)))
    assert oa.remaining(vn(D, 10)) == 19_990
    for i in range(3):
        oa.apply(feed.send("t1", f"ok{i}", vn(D, 10, 5), msg_id=f"m{i}", admission_id="a1"))
    assert oa.remaining(vn(D, 10, 6)) == 19_990
    oa.apply(feed.send("t1", "failed", vn(D, 10, 6), error=-124, admission_id="a1"))
    assert oa.remaining(vn(D, 10, 7)) == 19_991
    assert oa.remaining(vn(D, 11, 1)) == 19_997  # grant_ttl: the 6 open units go back
    oa.apply(feed.send("t1", "none", vn(D, 11, 2), msg_id="m9"))  # no admission: consumes 1
    assert oa.remaining(vn(D, 11, 3)) == 19_996
    oa.apply(feed.send("t1", "none-failed", vn(D, 11, 3), error=-124))  # consumes nothing
    assert oa.remaining(vn(D, 11, 4)) == 19_996
    assert oa.state.granted_on(2, D.toordinal()) == 3


def test_grants_folded_out_of_order_make_the_state_the_log_order_makes() -> None:
    """An admission whose record was written late is folded after a newer one that was
    applied ahead: the grants still wait, expire and settle in the order of their times,
    and the state's document is the one the log's order gives."""
    records = [
        feed.admission("a1", "t1", 2, 1, vn(D, 10)),
        feed.admission("a2", "t1", 2, 1, vn(D, 10, 1)),
        feed.admission("a3", "t1", 2, 1, vn(D, 10, 2)),
    ]
    in_order, late = Oa(), Oa()
    in_order.apply_all(records)
    late.apply_all([records[1], records[2], records[0]])
    assert late.state.open_grants == in_order.state.open_grants == ["a1", "a2", "a3"]
    # A receipt with no send settles the oldest open grant of the day in both.
    for oa in (in_order, late):
        oa.apply(feed.receipt("m1", vn(D, 10, 3)))
        assert oa.state.messages["m1"].settled == "a1"
    assert late.state.to_document() == in_order.state.to_document()


def test_a_document_leaves_out_the_grants_closed_since_they_were_made() -> None:
    oa = Oa()
    oa.apply(feed.admission("a1", "t1", 2, 1, vn(D, 10)))
    oa.apply(feed.admission("a2", "t1", 2, 1, vn(D, 10, 1)))
    oa.apply(feed.send("t1", "s2", vn(D, 10, 2), msg_id="m2", admission_id="a2"))
    assert oa.state.open_grants == ["a1", "a2"]  # a2 leaves the list when it is at its front
    assert oa.state.to_document()["open_grants"] == ["a1"]
    assert orjson.loads(oa.state.core_json())["open_grants"] == ["a1"]


def test_minus_144_sets_todays_remaining_to_zero_until_the_next_day() -> None:
    oa = Oa()
    oa.apply(feed.admission("a1", "t1", 1, 1, vn(D, 10)))
    oa.apply(feed.send("t1", "x", vn(D, 10, 1), error=-144, admission_id="a1"))
    assert oa.remaining(vn(D, 10, 2)) == 0
    assert oa.remaining(vn(D, 12)) == 0  # the unit was not given back either
    assert oa.remaining(vn(plus(1), 0, 1)) == 20_000


def test_a_receipt_without_a_send_settles_an_open_grant_else_consumes_and_never_twice() -> None:
    oa = Oa()
    oa.apply(feed.admission("a1", "t1", 2, 2, vn(D, 10)))
    oa.apply(feed.receipt("m1", vn(D, 10, 5)))  # settles a unit of a1
    assert oa.state.messages["m1"].settled == "a1"
    assert oa.state.messages["m1"].template_id is None  # which grant it was is a guess
    oa.apply(feed.receipt("m2", vn(D, 10, 5)))
    oa.apply(feed.receipt("m3", vn(D, 10, 5)))  # no open unit left: consumes one
    assert oa.remaining(vn(D, 10, 6)) == 19_997
    assert oa.state.sent_ok.get(D.toordinal()) == 3
    # The sends arrive later: nothing is counted twice.
    oa.apply(feed.send("t1", "s1", vn(D, 10, 1), msg_id="m1", admission_id="a1"))
    oa.apply(feed.send("t1", "s3", vn(D, 10, 1), msg_id="m3"))
    assert oa.remaining(vn(D, 10, 7)) == 19_997
    assert oa.state.sent_ok.get(D.toordinal()) == 3
    assert oa.state.delivered.within(vn(D, 11), timedelta(hours=48)) == 3


def test_zalos_remaining_less_later_grants_caps_the_computed_remaining() -> None:
    oa = Oa()
    oa.apply(feed.sync(vn(D, 9), remaining_quota=100))
    oa.apply(feed.admission("a1", "t1", 1, 30, vn(D, 10)))
    assert oa.remaining(vn(D, 10, 1)) == 70
    assert oa.remaining(vn(plus(1), 0, 1)) == 20_000  # Zalo's figure was for yesterday


# --- days and months in Vietnam --------------------------------------------------------------


def test_the_day_and_month_change_at_vietnams_midnight_not_utcs() -> None:
    oa = Oa()
    before_midnight = datetime(2026, 3, 31, 16, 30, tzinfo=UTC)  # 23:30 on 31 March in Vietnam
    after_midnight = datetime(2026, 3, 31, 17, 10, tzinfo=UTC)  # 00:10 on 1 April, still 31 in UTC
    oa.apply(feed.admission("a1", "t3", 3, 100, before_midnight))
    assert oa.remaining(before_midnight) == 19_900
    assert oa.remaining(after_midnight) == 20_000
    march, april = month_index(date(2026, 3, 1)), month_index(date(2026, 4, 1))
    assert oa.state.promo_used_month.get(march) == 100
    assert oa.state.promo_used_month.get(april) == 0
    thresholds = oa.policy.thresholds
    assert oa.state.promotion_remaining(date(2026, 3, 31), thresholds) == 9_900
    # April is not the OA's first tag-3 month (March was): no bonus, and no tag 1/2 volume.
    assert oa.state.promotion_remaining(date(2026, 4, 1), thresholds) == 0


# --- promotion -------------------------------------------------------------------------------


def test_promotion_quota_from_the_two_months_before_with_the_first_month_bonus() -> None:
    oa = Oa()
    jan, feb, mar = date(2026, 1, 10), date(2026, 2, 10), date(2026, 3, 10)
    oa.apply_all(feed.send("t1", f"j{i}", vn(jan), msg_id=f"j{i}", tag=1) for i in range(30))
    oa.apply_all(feed.send("t2", f"f{i}", vn(feb), msg_id=f"f{i}", tag=2) for i in range(30))
    oa.at(vn(mar))
    promotion = oa.state.promotion(mar, oa.policy.thresholds)
    assert (promotion.monthly_quota, promotion.bonus_applied) == (10 + 10_000, True)
    assert promotion.estimated_next_month == 5  # February and March so far: 30 / 6
    oa.apply(feed.admission("p1", "t3", 3, 1, vn(mar)))
    assert oa.state.promotion(mar, oa.policy.thresholds).bonus_applied  # still its first month
    april = date(2026, 4, 2)
    oa.at(vn(april))
    assert oa.state.promotion(april, oa.policy.thresholds).monthly_quota == 5
    oa.apply(
        feed.sync(vn(april), monthly_promotion_quota=700, remaining_monthly_promotion_quota=600)
    )
    assert oa.state.promotion(april, oa.policy.thresholds).monthly_quota == 700
    assert oa.state.promotion_remaining(april, oa.policy.thresholds) == 600


def test_per_recipient_promotion_counts_and_six_month_eligibility() -> None:
    oa = Oa()
    person = recipient_hash(feed.PHONE)
    oa.apply(feed.send("t1", "otp", vn(D, 8), msg_id="m1", tag=1, recipient=person))
    assert oa.state.recipients[person].last_tag12_day == D.toordinal()
    oa.apply(feed.admission("p1", "t3", 3, 1, vn(D, 9), recipients=(person,)))
    oa.apply(feed.send("t3", "promo-2", vn(D, 10), msg_id="m2", tag=3, recipient=person))
    person_state = oa.state.recipients[person]
    today, month = D.toordinal(), month_index(D)
    assert person_state.promotions_today(today) == 2
    assert person_state.promotions_this_month(month) == 2
    assert person_state.promotions_today(today + 1) == 0
    # Remembered about 6 months, then forgotten.
    oa.at(vn(D + timedelta(days=185)))
    assert person in oa.state.recipients
    oa.at(vn(D + timedelta(days=190)))
    assert person not in oa.state.recipients


# --- templates: status, Zalo quality, pauses -------------------------------------------------


def bad_template(oa: Oa, moment: datetime, prefix: str) -> None:
    for i in range(5):
        oa.apply(feed.send("t1", f"{prefix}s{i}", moment, msg_id=f"{prefix}{i}", tag=2))
        oa.apply(feed.receipt(f"{prefix}{i}", moment))
    for i in range(5):
        oa.apply(feed.rating(f"{prefix}{i}", 1, moment))


def test_the_pause_ladder_three_hours_six_hours_then_disabled() -> None:
    oa = Oa()
    start = vn(D, 9)
    bad_template(oa, start, "a")
    template = oa.state.templates["t1"]
    assert template.paused_until == int((start + timedelta(hours=3)).timestamp() * 1000)
    oa.at(start + timedelta(hours=3, minutes=1))  # still LOW at its end: the 6 h pause
    assert template.paused_until == int((start + timedelta(hours=9)).timestamp() * 1000)
    oa.at(start + timedelta(hours=9, minutes=1))  # and again: the third time disables
    assert template.gate_disabled
    assert template.paused_until is None
    assert [c.rule for c in oa.of("pause")] == [
        "template_paused",
        "pause_ended",
        "template_paused",
        "pause_ended",
        "template_disabled",
    ]
    oa.apply(feed.command("resume_template", start + timedelta(hours=10), "t1"))
    assert not template.gate_disabled


def test_the_pause_ladder_forgets_pauses_older_than_thirty_days() -> None:
    oa = Oa()
    bad_template(oa, vn(D, 9), "a")
    oa.apply(feed.command("resume_template", vn(D, 10), "t1"))
    oa.at(vn(D + timedelta(days=31), 9))  # proxy back to UNDEFINED
    bad_template(oa, vn(D + timedelta(days=31), 10), "b")
    last = oa.of("pause")[-1]
    assert (last.rule, last.inputs["pause_s"]) == ("template_paused", 3 * 3600)


def test_template_status_and_quality_follow_zalo() -> None:
    oa = Oa()
    oa.apply(feed.template_status("t1", "ENABLE", vn(D, 9)))
    oa.apply(feed.template_quality("t1", "LOW", vn(D, 10)))
    oa.apply(feed.template_status("t1", "REJECT", vn(D, 8)))  # older: ignored
    template = oa.state.templates["t1"]
    assert (template.status, template.zalo_quality) == ("ENABLE", "LOW")
    oa.apply(
        feed.sync(
            vn(D, 11),
            templates=[{"template_id": "t1", "quality": "HIGH", "status": "DISABLE", "tag": 2}],
        )
    )
    assert (template.status, template.zalo_quality, template.tag) == ("DISABLE", "HIGH", 2)


# --- send errors fed back (docs/rules.md#send-errors) ------------------------------------------

PERSON = recipient_hash(feed.PHONE)


def state_after_error(error: int, tag: int = 3) -> tuple[Oa, OAState]:
    oa = Oa()
    oa.apply(feed.send("t1", "x", vn(D, 10), error=error, tag=tag, recipient=PERSON))
    return oa, oa.state


def test_send_error_minus_1441_empties_the_months_promotion() -> None:
    oa, state = state_after_error(-1441)
    assert state.promotion_remaining(D, oa.policy.thresholds) == 0


def test_send_error_minus_146_disables_the_template() -> None:
    _, state = state_after_error(-146)
    assert state.templates["t1"].zalo_disabled
    oa = Oa()
    oa.apply(feed.send("t1", "x", vn(D, 10), error=-146))
    oa.apply(feed.template_quality("t1", "MEDIUM", vn(D, 11)))
    assert not oa.state.templates["t1"].zalo_disabled


def test_send_error_minus_147_empties_the_templates_day() -> None:
    _, state = state_after_error(-147)
    assert state.templates["t1"].exhausted_day == D.toordinal()


def test_send_error_minus_145_blocks_the_tag_until_a_sync() -> None:
    oa, state = state_after_error(-145, tag=3)
    assert state.tag_blocked == {"3": D.toordinal()}
    oa.apply(feed.sync(vn(D, 11), allowed_tags=[1, 2, 3]))
    assert state.tag_blocked == {}


def test_send_error_minus_140_makes_the_recipient_ineligible_until_a_tag12_success() -> None:
    oa, state = state_after_error(-140)
    assert state.recipients[PERSON].not_eligible
    oa.apply(feed.send("t2", "y", vn(D, 11), msg_id="m1", tag=1, recipient=PERSON))
    assert not state.recipients[PERSON].not_eligible


@pytest.mark.parametrize(("error", "field"), [(-1471, "limit_month"), (-1472, "limit_day")])
def test_send_errors_of_the_recipients_promotion_limit(error: int, field: str) -> None:
    _, state = state_after_error(error)
    expected = month_index(D) if field == "limit_month" else D.toordinal()
    assert getattr(state.recipients[PERSON], field) == expected


def test_send_error_minus_133_marks_the_template_night_restricted() -> None:
    _, state = state_after_error(-133)
    assert state.templates["t1"].night_restricted


@pytest.mark.parametrize("error", [-1351, -135])
def test_suspension_until_resumed_or_a_later_successful_send(error: int) -> None:
    oa, state = state_after_error(error)
    assert state.suspended
    assert state.suspended_reason == f"send_error_{error}"
    oa.apply(feed.command("resume_oa", vn(D, 11)))
    assert not state.suspended
    oa.apply(feed.send("t1", "again", vn(D, 12), error=error))
    oa.apply(feed.send("t1", "ok", vn(D, 13), msg_id="m1"))
    assert not state.suspended
    assert [c.rule for c in oa.of("suspension")] == [
        f"send_error_{error}",
        "resume_oa",
        f"send_error_{error}",
        "successful_send",
    ]


# --- rule sets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "start", "penalised"),
    [(ZBS_2026, 20_000, 10_000), (ZNS_2024, 5_000, 2_000)],
)
def test_each_rule_set_starts_and_steps_down_on_its_own_ladder(
    rules: RuleSet, start: int, penalised: int
) -> None:
    oa = Oa(rules=rules)
    threshold = int(start * 0.02)
    oa.apply_all(receipts(threshold + 1, vn(D, 8)))
    assert oa.state.daily_quota == start
    oa.apply_all(feed.rating(f"m{i}", 1, vn(D, 9)) for i in range(threshold + 1))
    assert oa.state.daily_quota == penalised


# --- snapshots --------------------------------------------------------------------------------


def test_the_state_document_round_trips_and_folds_on_the_same() -> None:
    oa = Oa(negative_replies={"t1": frozenset({"Không"})})
    low_quality(oa, D)
    oa.apply(feed.admission("a1", "t1", 3, 4, vn(D, 11), recipients=(PERSON,)))
    oa.apply(feed.send("t1", "s", vn(D, 11), msg_id="s", error=-1471, recipient=PERSON))
    oa.apply(feed.sync(vn(D, 11), quality_7d="MEDIUM", allowed_tags=[1, 2]))
    document = orjson.loads(orjson.dumps(oa.state.to_document()))
    copy = OAState.from_document(document)
    assert copy.to_document() == oa.state.to_document()
    tail = [feed.receipt("late", vn(plus(1), 9)), feed.rating("late", 1, vn(plus(1), 10))]
    twin = Oa(negative_replies={"t1": frozenset({"Không"})})
    twin.state, twin.clock = copy, oa.clock
    assert [c.rule for c in oa.apply_all(tail)] == [c.rule for c in twin.apply_all(tail)]
    assert twin.state.to_document() == oa.state.to_document()


# --- orders of arrival -------------------------------------------------------------------------


@pytest.mark.parametrize("rating_first", [False, True])
def test_a_receipt_counts_the_same_before_or_after_a_negative_rating(rating_first: bool) -> None:
    oa = Oa()
    raws = [feed.receipt("m1", vn(D, 9)), feed.rating("m1", 1, vn(D, 9, 30))]
    oa.apply_all(reversed(raws) if rating_first else raws)
    today = D.toordinal()
    assert oa.state.consumed.get(today) == 1
    assert oa.state.sent_ok.get(today) == 1
    assert oa.state.delivered.within(vn(D, 10), timedelta(hours=48)) == 1
    assert oa.state.negatives.within(vn(D, 10), timedelta(hours=48)) == 1
    assert oa.state.first_send_day == today


def test_a_unit_moved_off_a_closed_grant_still_expires() -> None:
    oa = Oa()
    oa.apply(feed.admission("e", "t1", 2, 2, vn(D, 10)))
    oa.apply(feed.receipt("m1", vn(D, 10, 1)))  # settles a unit of e
    oa.apply(feed.admission("a", "t1", 2, 1, vn(D, 10, 2)))
    oa.apply(feed.receipt("m2", vn(D, 10, 3)))  # settles e's second unit: e is closed
    assert oa.remaining(vn(D, 10, 4)) == 20_000 - 3
    # The send of m1 names grant a: the unit moves from e to a, and e has one open again.
    oa.apply(feed.send("t1", "s1", vn(D, 10, 5), msg_id="m1", admission_id="a"))
    assert oa.remaining(vn(D, 10, 6)) == 20_000 - 3
    assert oa.remaining(vn(D, 11, 1)) == 20_000 - 2  # e's reopened unit went back on time


def test_a_sync_with_only_the_48h_level_leaves_the_evaluation_to_the_proxy() -> None:
    oa = volume_oa(2_000)
    oa.apply(feed.sync(vn(plus(7), 23), quality_48h="LOW"))
    oa.at(vn(plus(8), 0, 30))
    tier = oa.of("tier")[-1]
    assert (tier.rule, tier.after, tier.inputs["basis"]) == ("evaluation_up", 10_000, "proxy")


def test_a_sync_lifts_minus_146_by_the_templates_quality_not_its_status() -> None:
    oa = Oa()
    oa.apply(feed.send("t1", "x", vn(D, 10), error=-146))
    oa.apply(feed.sync(vn(D, 11), templates=[{"template_id": "t1", "status": "ENABLE"}]))
    assert oa.state.templates["t1"].zalo_disabled  # a status does not lift it (docs/rules.md)
    oa.apply(feed.sync(vn(D, 12), templates=[{"template_id": "t1", "quality": "HIGH"}]))
    assert not oa.state.templates["t1"].zalo_disabled


@pytest.mark.parametrize("time", ["9999999999999999", "-62135596800001", "1" + "0" * 30])
def test_a_record_whose_time_no_datetime_holds_is_malformed(time: str) -> None:
    outcome = {"template_id": "t1", "tracking_id": "tr", "sent_time": time, "error": 0}
    records = [
        ("send", orjson.dumps({"oa_id": OA_ID, "send": outcome})),
        ("sync", orjson.dumps({"oa_id": OA_ID, "as_of": time})),
    ]
    for kind, value in records:
        with pytest.raises(Unprocessable) as raised:
            read_item(kind, OA_ID.encode(), value, {"kind": kind})
        assert raised.value.reason == "malformed_record"


def test_records_the_api_would_refuse_now_still_fold() -> None:
    """The API bounds what it takes; records already in the log (written before the bounds,
    or by an older instance during a rolling upgrade) must fold as they always did, or a
    replay would no longer equal the live state."""
    outcome = {
        "template_id": "tpl:1",
        "tracking_id": "order/77 with a space and more than forty-eight characters",
        "sent_time": str(int(vn(D, 10).timestamp() * 1000)),
        "error": 0,
        "quota": {"dailyQuota": 50_000_000, "remainingQuota": 60_000_000},
    }
    sync = {"oa_id": OA_ID, "as_of": "1774321200000", "daily_quota": 100, "remaining_quota": 500}
    for kind, value in [
        ("send", orjson.dumps({"oa_id": OA_ID, "send": outcome})),
        ("sync", orjson.dumps(sync)),
    ]:
        item = read_item(kind, OA_ID.encode(), value, {"kind": kind})
        assert item.oa_id == OA_ID
    oa = Oa()
    value = orjson.dumps({"oa_id": OA_ID, "send": outcome})
    oa.apply(Raw("send", OA_ID.encode(), value, {"kind": "send"}))
    assert oa.state.templates["tpl:1"].sent_ok.get(oa.policy.day(vn(D, 10))) == 1
    assert oa.state.daily_quota == 50_000_000


def test_a_webhook_keyed_for_another_oa_than_it_names_is_malformed() -> None:
    """A record's key decides its partition and its OA's state; a webhook that the fold
    would apply to another OA than its key (a forged body naming two) changes nothing."""
    raw = feed.daily_quota(2000, vn(D, 10))
    with pytest.raises(Unprocessable) as raised:
        read_item(raw.kind, b"488613280878808646", raw.value, raw.headers)
    assert raised.value.reason == "malformed_record"
    assert read_item(raw.kind, raw.key, raw.value, raw.headers).oa_id == OA_ID
