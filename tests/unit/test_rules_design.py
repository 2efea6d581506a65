"""The rules of docs/rules.md where they could be read two ways, each pinned
by the sentence that settles it (quoted in the test's docstring)."""

from __future__ import annotations

from datetime import datetime, timedelta

from service.domain.admission import AdmissionRequest, decide
from service.domain.fold import advance, fold, read_item
from service.domain.records import recipient_hash
from service.domain.state import WINDOW_7D, WINDOW_48H
from service.log.base import Record
from service.processor.folding import Output, PartitionFolder, PolicyBook
from tests import feed
from tests.conftest import make_settings
from tests.feed import Raw
from tests.unit.test_fold import D, Oa, plus, vn
from tests.zalo import OA_ID

PERSON = recipient_hash(feed.PHONE)
T0 = vn(D, 10)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def denial(oa: Oa, template_id: str, moment: datetime, tag: int = 2) -> str | None:
    """The reason an admission of one unit at `moment` is denied, or None when granted."""
    advance(oa.state, moment, oa.policy)
    served = oa.state.served_copy()
    answer = decide(served, AdmissionRequest(template_id, tag), moment, oa.policy, "probe").answer
    return answer.denied[0].reason if answer.denied else None


# --- 1. an operator's command has no event time -------------------------------------------


def as_record(raw: Raw, offset: int, appended: datetime) -> Record:
    return Record("events", 0, offset, raw.key, raw.value, raw.log_headers(), ms(appended))


def test_a_command_does_not_move_the_stream_clock() -> None:
    """docs/rules.md#time-and-windows: "Events with no OA id do not move any clock, and neither
    does an operator's `command`: it has no event time, and takes effect at the OA's current
    "now"."""
    folder = PartitionFolder("events", 0, PolicyBook(make_settings()), stream_clock=True)
    out = Output()
    folder.handle(as_record(feed.template_status("t1", "ENABLE", T0), 0, T0), out)
    # The operator acts the next day by the wall clock (the stream is behind it).
    later = T0 + timedelta(days=1, hours=3)
    folder.handle(as_record(feed.command("resume_oa", later), 1, later), out)
    assert folder.clock_ms == ms(T0)
    state = folder.states[OA_ID]
    assert state.today == D.toordinal()  # no day change ran for it


def test_a_command_takes_effect_at_the_oas_now() -> None:
    """docs/rules.md#time-and-windows: an operator's `command` "has no event time, and takes effect
    at the OA's current "now"."""
    oa = Oa()
    oa.apply(feed.send("t1", "s", T0, error=-1351))
    now = T0 + timedelta(hours=2)
    # The command's own `at` (when the operator asked) is earlier than the OA's now.
    command = read_item(*feed.command("resume_oa", T0 + timedelta(minutes=1)))
    changes = fold(oa.state, command, now, oa.policy)
    assert [(c.rule, c.at) for c in changes] == [("resume_oa", now)]


# --- 2. a send naming an admission with no unit left ----------------------------------------


def test_a_tag3_send_after_its_grants_ttl_takes_a_promotion_unit() -> None:
    """docs/rules.md#counting-against-the-quota: "A send that names an admission with no unit left
    in it (its units went back after `grant_ttl`, or sends or receipts settled them all) counts
    like a send without an admission: if it succeeded it consumes a unit on its own day, a tag-3
    unit of the monthly promotion quota included; the recipient's promotion counts were already
    taken at grant time.\""""
    oa = Oa()
    oa.apply(feed.admission("a1", "t3", 3, 1, T0, recipients=(PERSON,)))
    thresholds = oa.policy.thresholds
    assert oa.state.promotion_remaining(D, thresholds) == 9_999
    assert oa.remaining(T0 + timedelta(hours=1, minutes=1)) == 20_000  # the unit went back
    assert oa.state.promotion_remaining(D, thresholds) == 10_000
    late = T0 + timedelta(hours=2)
    oa.apply(feed.send("t3", "s1", late, msg_id="m1", admission_id="a1", recipient=PERSON))
    assert oa.remaining(late) == 19_999
    assert oa.state.promotion_remaining(D, thresholds) == 9_999
    person = oa.state.recipients[PERSON]
    assert (person.promo_day_count, person.promo_month_count) == (1, 1)  # not taken twice


def test_a_send_naming_a_grant_settled_by_a_receipt_counts_on_its_own() -> None:
    """docs/rules.md#counting-against-the-quota: a send naming an admission whose units "sends or
    receipts settled them all" counts like a send without an admission, a tag-3 unit of the
    promotion quota included."""
    oa = Oa()
    oa.apply(feed.admission("a1", "t3", 3, 1, T0, recipients=(PERSON,)))
    oa.apply(feed.send("t3", "s1", T0, msg_id="m1", admission_id="a1", recipient=PERSON))
    oa.apply(feed.send("t3", "s2", T0, msg_id="m2", admission_id="a1", recipient=PERSON))
    assert oa.remaining(T0 + timedelta(minutes=1)) == 19_998
    assert oa.state.promotion_remaining(D, oa.policy.thresholds) == 9_998


# --- 3. -144 until a later value from Zalo for today -------------------------------------------


def test_after_minus_144_a_later_value_from_zalo_for_today_counts() -> None:
    """docs/rules.md#send-errors: -144 sets "remaining today 0, until a later value from Zalo for
    today (a send's `quota`, a `sync`, `change_oa_daily_quota`) or the next day"."""
    oa = Oa()
    oa.apply(feed.send("t1", "s1", T0, error=-144))
    assert oa.remaining(T0) == 0
    # A value Zalo gave before the -144 does not lift it.
    oa.apply(feed.sync(T0 - timedelta(minutes=1), remaining_quota=700))
    assert oa.remaining(T0 + timedelta(seconds=1)) == 0
    quota = {"dailyQuota": 20_000, "remainingQuota": 300}
    oa.apply(feed.send("t1", "s2", T0 + timedelta(seconds=2), msg_id="m2", quota=quota))
    assert oa.remaining(T0 + timedelta(seconds=3)) == 300


def test_after_minus_144_a_sync_or_a_quota_event_lifts_it() -> None:
    """docs/rules.md#send-errors: -144 holds "until a later value from Zalo for today (a send's
    `quota`, a `sync`, `change_oa_daily_quota`) or the next day"."""
    by_sync = Oa()
    by_sync.apply(feed.send("t1", "s1", T0, error=-144))
    by_sync.apply(feed.sync(T0 + timedelta(seconds=1), daily_quota=20_000))
    assert by_sync.remaining(T0 + timedelta(seconds=2)) == 20_000
    by_event = Oa()
    by_event.apply(feed.send("t1", "s1", T0, error=-144))
    by_event.apply(feed.daily_quota(10_000, T0 + timedelta(seconds=1)))
    assert by_event.remaining(T0 + timedelta(seconds=2)) == 10_000
    next_day = Oa()
    next_day.apply(feed.send("t1", "s1", T0, error=-144))
    assert next_day.remaining(vn(plus(1), 0, 1)) == 20_000


# --- 5. -146 is lifted by Zalo's quality only ------------------------------------------------


def test_minus_146_is_not_lifted_by_a_status_event() -> None:
    """docs/rules.md#send-errors: -146 means "template disabled, as Zalo's quality LOW (Zalo
    disables a template for its quality): until Zalo reports the template's quality again
    (`change_template_quality`, `sync`); a status event does not lift it"."""
    oa = Oa()
    oa.apply(feed.template_status("t1", "ENABLE", T0))
    oa.apply(feed.send("t1", "s1", T0 + timedelta(seconds=1), error=-146))
    assert denial(oa, "t1", T0 + timedelta(seconds=1)) == "template_disabled"
    oa.apply(feed.template_status("t1", "PENDING_REVIEW", T0 + timedelta(seconds=2)))
    oa.apply(feed.template_status("t1", "ENABLE", T0 + timedelta(seconds=3)))
    assert denial(oa, "t1", T0 + timedelta(seconds=4)) == "template_disabled"
    oa.apply(
        feed.sync(T0 + timedelta(seconds=5), templates=[{"template_id": "t1", "status": "ENABLE"}])
    )
    assert denial(oa, "t1", T0 + timedelta(seconds=6)) == "template_disabled"
    oa.apply(feed.template_quality("t1", "HIGH", T0 + timedelta(seconds=7)))
    assert denial(oa, "t1", T0 + timedelta(seconds=8)) is None


def test_minus_146_is_lifted_by_a_syncs_template_quality() -> None:
    """docs/rules.md#send-errors: -146 holds "until Zalo reports the template's quality again
    (`change_template_quality`, `sync`)"."""
    oa = Oa()
    oa.apply(feed.send("t1", "s1", T0, error=-146))
    quality = [{"template_id": "t1", "quality": "MEDIUM"}]
    oa.apply(feed.sync(T0 + timedelta(seconds=1), templates=quality))
    assert denial(oa, "t1", T0 + timedelta(seconds=2)) is None


# --- 6. signals that came before the send record -------------------------------------------


def test_receipts_before_their_send_records_count_for_the_template() -> None:
    """docs/rules.md#signals: "Each signal counts for the message's template as soon as the
    template is known: a receipt, rating or reply that arrives before the send record naming its
    template (Zalo's receipts often come first) is added to that template's counts, at its own event
    time, when the send record arrives.\""""
    counts = []
    for receipts_first in (True, False):
        oa = Oa()
        oa.apply(feed.template_status("931", "ENABLE", T0))
        sends = [
            feed.send("931", f"s{i}", T0 + timedelta(seconds=1), msg_id=f"m{i}", tag=1)
            for i in range(5)
        ]
        receipts = [feed.receipt(f"m{i}", T0 + timedelta(seconds=5)) for i in range(5)]
        oa.apply_all([*receipts, *sends] if receipts_first else [*sends, *receipts])
        template = oa.state.templates["931"]
        now = T0 + timedelta(seconds=6)
        counts.append(
            (
                template.delivered.within(now, WINDOW_7D),
                template.sent_ok.get(D.toordinal()),
                oa.state.delivered.within(now, WINDOW_7D),
                oa.state.sent_ok.get(D.toordinal()),
                oa.state.tag12_ok_month.total(0, 10**6),
            )
        )
    assert counts == [(5, 5, 5, 5, 5), (5, 5, 5, 5, 5)]


def test_a_rating_before_its_send_record_counts_for_the_template_and_pauses_it() -> None:
    """docs/rules.md#signals: a rating "that arrives before the send record naming its template ...
    is added to that template's counts, at its own event time, when the send record arrives";
    docs/rules.md#templates: the pause is "checked when a record changes the template's counts"."""
    oa = Oa()
    delivered, rated = T0 + timedelta(seconds=5), T0 + timedelta(seconds=9)
    for i in range(5):
        oa.apply(feed.receipt(f"m{i}", delivered))
        oa.apply(feed.rating(f"m{i}", 1, rated))
    assert "t1" not in oa.state.templates
    reported = T0 + timedelta(minutes=1)
    for i in range(5):
        oa.apply(feed.send("t1", f"s{i}", T0, msg_id=f"m{i}", tag=2))
    template = oa.state.templates["t1"]
    assert template.delivered.within(reported, WINDOW_7D) == 5
    assert template.negatives.within(reported, WINDOW_7D) == 5
    assert template.delivered.get(ms(delivered) // 3_600_000) == 5  # at the receipts' hour
    assert oa.state.negatives.within(reported, WINDOW_7D) == 5  # the OA's, still once
    [pause] = oa.of("pause")
    assert (pause.rule, pause.template_id, pause.at) == ("template_paused", "t1", T0)


# --- 7. Zalo's remainingQuota less all consumed after it -------------------------------------


def test_zalos_remaining_is_reduced_by_all_consumed_after_it() -> None:
    """docs/rules.md#tier-daily-quota: "remaining is the smaller of that figure minus all that was
    consumed today after it (section 3: grants made after it less their units that went back, and
    successful sends or receipts that no grant covers), and the computed one.\""""
    oa = Oa()
    quota = {"dailyQuota": 20_000, "remainingQuota": 500}
    oa.apply(feed.send("t1", "s0", T0, msg_id="m0", quota=quota))
    oa.apply(feed.send("t1", "s1", T0 + timedelta(seconds=1), msg_id="m1"))  # no admission
    assert oa.remaining(T0 + timedelta(seconds=2)) == 499
    oa.apply(feed.receipt("m2", T0 + timedelta(seconds=3)))  # no send, no grant
    assert oa.remaining(T0 + timedelta(seconds=4)) == 498
    oa.apply(feed.admission("a1", "t1", 2, 10, T0 + timedelta(seconds=5)))
    oa.apply(feed.send("t1", "s3", T0 + timedelta(seconds=6), msg_id="m3", admission_id="a1"))
    assert oa.remaining(T0 + timedelta(seconds=7)) == 488
    assert oa.remaining(T0 + timedelta(hours=1, seconds=6)) == 497  # 9 units went back


# --- also written in docs/rules.md ----------------------------------------------------------------


def test_windows_are_whole_hour_buckets() -> None:
    """docs/rules.md#time-and-windows: "Windows are bucketed counters of whole hours: the 48 h
    window at "now" is the bucket of now's hour and the 47 before it (7 days: 168 buckets); the
    tier evaluation at 00:00 uses the 168 hours before midnight.\""""
    oa = Oa()
    oa.apply(feed.receipt("early", vn(D, 10, 59)))
    oa.apply(feed.receipt("on-the-hour", vn(D, 11, 0)))
    delivered = oa.state.delivered
    assert delivered.within(vn(plus(2), 10, 30), WINDOW_48H) == 1  # 10:59 two days ago is out
    assert delivered.within(vn(plus(2), 10, 59), WINDOW_48H) == 1
    assert delivered.within(vn(plus(2), 11, 0), WINDOW_48H) == 0
    assert delivered.within(vn(D, 11, 59), WINDOW_48H) == 2
    assert delivered.within(vn(plus(7), 10, 0), WINDOW_7D) == 1


def test_the_evaluation_at_midnight_uses_the_168_hours_before_it() -> None:
    """docs/rules.md#time-and-windows: "the tier evaluation at 00:00 uses the 168 hours before
    midnight"."""
    oa = Oa()
    oa.apply(feed.daily_quota(1_000, vn(D, 8)))
    oa.apply(feed.send("t1", "first", vn(D, 9), msg_id="first", tag=1))
    oa.apply(feed.receipt("first", vn(D, 9)))
    oa.apply(feed.receipt("edge", vn(plus(1), 0, 0)))  # the first hour of the 168
    oa.apply_all(feed.receipt(f"m{i}", vn(plus(7), 23, 59)) for i in range(2_000))
    oa.apply(feed.rating("late", 1, vn(plus(8), 0, 0)))  # after midnight: not in it
    [tier] = oa.of("tier")[1:]
    assert (tier.rule, tier.at) == ("evaluation_up", vn(plus(8), 0, 0))
    assert (tier.inputs["delivered_7d"], tier.inputs["negatives_7d"]) == (2_001, 0)


def test_a_receipt_runs_the_templates_pause_check() -> None:
    """docs/rules.md#templates: zns-gate pauses a template whose proxy quality_7d turns LOW
    "(checked when a record changes the template's counts and when a pause ends, never at
    admission)"; a receipt is such a record."""
    oa = Oa()
    for i in range(1_000):
        oa.apply(feed.send("t1", f"old{i}", vn(D, 9), msg_id=f"old{i}", tag=2))
        oa.apply(feed.receipt(f"old{i}", vn(D, 9)))
    oa.apply(feed.send("t1", "bad", vn(plus(5), 9), msg_id="bad", tag=2))
    oa.apply(feed.receipt("bad", vn(plus(5), 9)))
    oa.apply(feed.rating("bad", 1, vn(plus(5), 9, 5)))
    assert oa.state.templates["t1"].proxy_7d != "LOW"
    # Day D's deliveries leave the window: LOW at the next record that changes the counts.
    oa.apply(feed.send("t1", "new", vn(plus(8), 9), msg_id="new", tag=2))
    assert oa.of("pause") == []
    oa.apply(feed.receipt("new", vn(plus(8), 9, 1)))
    [pause] = oa.of("pause")
    assert (pause.rule, pause.at) == ("template_paused", vn(plus(8), 9, 1))


def test_an_operators_resume_holds_while_the_proxy_stays_low() -> None:
    """docs/rules.md#templates: "`POST /v1/oas/{oa_id}/templates/{template_id}/resume` lifts a
    pause or zns-gate's disable; the resume holds while the proxy stays LOW: the template is paused
    again only after its proxy quality_7d has left LOW and turned LOW again.\""""
    oa = Oa()
    for i in range(3):
        oa.apply(feed.send("t1", f"s{i}", T0, msg_id=f"m{i}", tag=2))
        oa.apply(feed.receipt(f"m{i}", T0))
        oa.apply(feed.rating(f"m{i}", 1, T0))
    template = oa.state.templates["t1"]
    assert template.paused(ms(T0))
    oa.apply(feed.command("resume_template", T0, "t1"), now=T0 + timedelta(minutes=1))
    assert not template.paused(ms(T0 + timedelta(minutes=1)))
    oa.apply(feed.send("t1", "s3", T0 + timedelta(minutes=2), msg_id="m3", tag=2))
    oa.apply(feed.receipt("m3", T0 + timedelta(minutes=2)))
    oa.apply(feed.rating("m3", 1, T0 + timedelta(minutes=3)))
    oa.at(T0 + timedelta(hours=4))
    assert template.proxy_7d == "LOW"
    assert not template.paused(ms(T0 + timedelta(hours=4)))
    assert [c.rule for c in oa.of("pause")] == ["template_paused", "resume_template"]
    # Left LOW (many good deliveries), then LOW again: paused again.
    good = T0 + timedelta(hours=5)
    for i in range(5_000):
        oa.apply(feed.send("t1", f"g{i}", good, msg_id=f"g{i}", tag=2))
        oa.apply(feed.receipt(f"g{i}", good))
    assert template.proxy_7d != "LOW"
    bad = T0 + timedelta(hours=6)
    for i in range(60):
        oa.apply(feed.rating(f"g{i}", 1, bad))
    assert template.proxy_7d == "LOW"
    assert [c.rule for c in oa.of("pause")][-1] == "template_paused"


def test_a_reply_before_its_send_record_is_judged_by_the_template_it_names() -> None:
    """docs/rules.md#signals: "a receipt, rating or reply that arrives before the send record
    naming its template (Zalo's receipts often come first) is added to that template's counts, at
    its own event time, when the send record arrives"; a quick-reply answer is negative when
    "its label is configured as negative for its template"."""
    oa = Oa(negative_replies={"t1": frozenset({"Ngừng nhận"})})
    delivered, replied = T0 + timedelta(seconds=5), T0 + timedelta(seconds=9)
    for i, label in enumerate(["Ngừng nhận", "OK"]):
        oa.apply(feed.receipt(f"m{i}", delivered))
        oa.apply(feed.quick_reply(f"m{i}", label, replied))
    assert oa.state.negatives.within(replied, WINDOW_7D) == 0  # not judged yet
    for i in range(2):
        oa.apply(feed.send("t1", f"s{i}", T0, msg_id=f"m{i}", tag=2))
    template = oa.state.templates["t1"]
    reported = T0 + timedelta(minutes=1)
    assert template.negatives.within(reported, WINDOW_7D) == 1
    assert template.negatives.get(ms(replied) // 3_600_000) == 1  # at the reply's hour
    assert oa.state.negatives.within(reported, WINDOW_7D) == 1
    assert oa.state.negatives_by_day.get(D.toordinal()) == 1
    assert template.delivered.within(reported, WINDOW_7D) == 2
    oa.apply(feed.quick_reply("m0", "Ngừng nhận", replied + timedelta(seconds=1)))
    assert oa.state.negatives.within(reported, WINDOW_7D) == 1  # a message counts once
    assert oa.state.negatives.within(reported, WINDOW_7D) == 1


def test_units_of_an_earlier_grant_going_back_do_not_raise_zalos_remaining() -> None:
    """docs/rules.md#tier-daily-quota: Zalo's `remainingQuota` less "all that was consumed today
    after it (section 3: grants made after it less their units that went back, ...)": the units of
    a grant made before it are not in Zalo's figure, so their going back adds nothing."""
    oa = Oa()
    oa.apply(feed.admission("a1", "t1", 2, 10, T0))
    oa.apply(feed.sync(T0 + timedelta(minutes=1), remaining_quota=500))
    assert oa.remaining(T0 + timedelta(minutes=2)) == 500
    assert oa.remaining(T0 + timedelta(hours=1, minutes=1)) == 500  # a1's 10 units went back
    oa.apply(feed.admission("a2", "t1", 2, 10, T0 + timedelta(hours=2)))
    assert oa.remaining(T0 + timedelta(hours=2)) == 490
    assert oa.remaining(T0 + timedelta(hours=3, minutes=1)) == 500  # a2's went back
