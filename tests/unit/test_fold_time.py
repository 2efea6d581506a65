"""The fold over time: long gaps, clock steps, and what the state keeps (docs/rules.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.domain.fold import advance, tier
from service.domain.fold.context import Run
from service.domain.records import recipient_hash
from service.domain.state import OAState
from tests import feed
from tests.unit.test_fold import D, Oa, bad_template, plus, vn


def busy_oa() -> Oa:
    """An OA whose first days after its records still change things: a LOW week that
    moves the tier down at the first evaluation, a paused template, an open grant,
    idempotency and dedup keys, recipients for six months."""
    oa = Oa()
    recipient = recipient_hash(feed.PHONE)
    oa.apply(feed.send("t1", "tr-0", vn(D), msg_id="m0", tag=2, recipient=recipient))
    oa.apply(feed.admission("a1", "t2", 2, 5, vn(plus(6), 9), key="k-1"))
    for i in range(40):
        moment = vn(plus(6), 10, i)
        oa.apply(feed.send("t1", f"tr-{i + 1}", moment, msg_id=f"m{i + 1}", tag=2))
        oa.apply(feed.receipt(f"m{i + 1}", moment))
        if i % 2:
            oa.apply(feed.rating(f"m{i + 1}", 1, moment + timedelta(seconds=30)))
    return oa


def walked_and_jumped(days: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Oa, Oa]:
    walked, jumped = busy_oa(), busy_oa()
    later = vn(plus(6 + days), 13)
    with monkeypatch.context() as m:
        m.setattr(tier, "QUIET_DAYS", 10**9)  # every day changed, one by one
        walked.at(later)
    jumped.at(later)
    return walked, jumped


@pytest.mark.parametrize("days", [3, 9, 10, 11, 12, 40, 150, 199, 200, 201, 400])
def test_a_long_gap_ends_as_walking_it_day_by_day_would(
    days: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    walked, jumped = walked_and_jumped(days, monkeypatch)
    assert walked.of("tier"), "the first evaluation in the gap moves the tier"
    assert walked.of("pause"), "the template's pause ends in the gap"
    assert jumped.state.to_document() == walked.state.to_document()
    assert [(c.kind, c.rule, c.before, c.after, c.at) for c in jumped.changes] == [
        (c.kind, c.rule, c.before, c.after, c.at) for c in walked.changes
    ]


def test_a_jump_of_five_hundred_years_changes_a_bounded_number_of_days(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    oa = busy_oa()
    days: list[int] = []
    original = tier.day_change

    def counted(run: Run, day: int) -> None:
        days.append(day)
        original(run, day)

    monkeypatch.setattr(tier, "day_change", counted)
    far = vn(plus(6).replace(year=2526), 13)
    advance(oa.state, far, oa.policy)
    assert oa.state.today == oa.policy.day(far)
    assert days[-1] == oa.policy.day(far)
    assert len(days) <= tier.QUIET_DAYS + 1
    assert oa.state.recipients == {}
    assert oa.state.messages == {}


def test_keys_go_once_older_than_their_ttl_by_the_clock_and_by_the_oas_records() -> None:
    oa = Oa()
    oa.apply(feed.admission("a1", "t1", 1, 1, vn(D, 9), key="k-1"))
    oa.at(vn(plus(4)))
    assert "k-1" in oa.state.idempotency, "no record of the OA came after it"
    oa.apply(feed.receipt("m1", vn(plus(4), 13)))
    oa.at(vn(plus(5)))
    assert "k-1" not in oa.state.idempotency


# --- templates: bounded, and a copy that costs what it reads --------------------------------


def test_templates_unseen_for_eight_days_holding_nothing_zalo_or_the_gate_set_are_forgotten() -> (
    None
):
    oa = Oa()
    oa.apply(feed.send("idle", "tr-idle", vn(D), tag=2, error=-124))  # a failed send: no counts
    oa.apply(feed.send("counted", "tr-c", vn(D), msg_id="mc", tag=2))  # sent OK that day
    oa.apply(feed.send("night", "tr-n", vn(D), tag=2, error=-133))
    oa.apply(feed.template_status("zalo", "ENABLE", vn(D)))
    oa.apply(feed.template_quality("rated", "MEDIUM", vn(D)))
    oa.apply(feed.sync(vn(D), templates=[{"template_id": "tagged", "tag": 1}]))  # Zalo's tag
    bad_template(oa, vn(D, 9), "b")  # t1: paused by zns-gate
    oa.apply(feed.send("recent", "tr-r", vn(plus(5)), tag=2, error=-124))
    oa.at(vn(plus(7), 1))
    assert "idle" in oa.state.templates, "seen 7 days ago: not yet"
    oa.at(vn(plus(8), 1))
    assert sorted(oa.state.templates) == [
        "counted",
        "night",
        "rated",
        "recent",
        "t1",
        "tagged",
        "zalo",
    ]
    oa.at(vn(plus(9), 1))
    assert "counted" not in oa.state.templates, "its day's count left the window"
    assert oa.state.templates["t1"].gate_disabled, "its pauses ran up the ladder meanwhile"
    oa.at(vn(plus(40), 1))
    assert sorted(oa.state.templates) == ["night", "rated", "t1", "tagged", "zalo"]
    assert oa.state.templates["tagged"].tag == 1, "a tag Zalo gave is kept: admissions need it"
    # A forgotten template is a new one again when a record names it.
    oa.apply(feed.send("idle", "tr-idle-2", vn(plus(40), 2), tag=3, error=-124))
    assert oa.state.templates["idle"].tag == 3


def test_a_served_copy_shares_the_templates_it_cannot_change_and_copies_the_held_ones() -> None:
    oa = Oa()
    for i in range(50):
        oa.apply(feed.send(f"x{i}", f"tr-{i}", vn(D), msg_id=f"mx{i}", tag=2))
    bad_template(oa, vn(D, 9), "b")
    assert oa.state.paused_templates == ["t1"]
    live = oa.state
    paused_until = live.templates["t1"].paused_until
    served = live.served_copy()
    assert all(served.templates[f"x{i}"] is live.templates[f"x{i}"] for i in range(50))
    assert served.templates["t1"] is not live.templates["t1"]
    advance(served, vn(plus(9)), oa.policy)  # pauses end, windows are pruned in the copy only
    assert served.templates["t1"].paused_until is None
    assert live.templates["t1"].paused_until == paused_until
    assert live.templates["x1"].sent_ok.get(D.toordinal()) == 1
    assert "x1" not in served.templates or served.templates["x1"] is not live.templates["x1"]


def test_a_resumed_template_leaves_the_index_of_held_templates() -> None:
    oa = Oa()
    bad_template(oa, vn(D, 9), "b")
    oa.apply(feed.command("resume_template", vn(D, 10), "t1"))
    oa.at(vn(D, 11))
    assert oa.state.paused_templates == []


def test_a_state_document_without_the_index_of_held_templates_rebuilds_it() -> None:
    oa = Oa()
    bad_template(oa, vn(D, 9), "b")
    document = oa.state.to_document()
    del document["paused_templates"]
    restored = OAState.from_document(document)
    assert restored.paused_templates == ["t1"]
    changes = advance(restored, vn(D, 13), oa.policy)
    assert "pause_ended" in [c.rule for c in changes]


def test_a_day_change_expires_the_indexes_in_place_and_leaves_nothing_to_write() -> None:
    """Expiry is not a change a checkpoint writes (a store drops the same key ranges), and
    it removes entries from the index the state holds instead of building a new one."""
    oa = busy_oa()
    indexes = (oa.state.messages, oa.state.recipients, oa.state.dedup, oa.state.idempotency)
    for index in indexes:
        index.clear_touched()
    oa.at(vn(plus(15)))
    now = (oa.state.messages, oa.state.recipients, oa.state.dedup, oa.state.idempotency)
    assert all(a is b for a, b in zip(now, indexes, strict=True))
    assert len(oa.state.messages) == 0
    assert len(oa.state.recipients) == 1, "remembered six months"
    assert all(index.touched == set() for index in indexes)
