"""An OA's hours for the dashboard's chart, and decisions put in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.domain.explain import explain
from service.domain.history import HISTORY_HOURS, hourly
from service.domain.rules import RULE_SETS
from service.domain.state import OAState

NOW = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)


def test_the_history_is_every_hour_of_7_days_the_current_one_last() -> None:
    state = OAState.new("oa", RULE_SETS["zbs-2026"])
    state.delivered.add_at(NOW, 5)
    state.negatives.add_at(NOW - timedelta(hours=3), 2)
    state.delivered.add_at(NOW - timedelta(days=8), 7)  # older than the window
    hours = hourly(state, NOW)
    assert len(hours) == HISTORY_HOURS == 168
    assert hours[-1].start_s == int(datetime(2026, 3, 10, 9, tzinfo=UTC).timestamp())
    assert hours[0].start_s == hours[-1].start_s - 167 * 3600
    assert (hours[-1].delivered, hours[-1].negatives) == (5, 0)
    assert (hours[-4].delivered, hours[-4].negatives) == (0, 2)
    assert sum(h.delivered for h in hours) == 5


def decision(
    kind: str, rule: str, before: object, after: object, **fields: object
) -> dict[str, object]:
    return {"kind": kind, "rule": rule, "before": before, "after": after, **fields}


def test_each_kind_of_decision_reads_as_a_sentence() -> None:
    evaluation = decision(
        "tier", "evaluation_up", 20_000, 50_000, inputs={"level_7d": "HIGH", "basis": "zalo"}
    )
    assert explain(evaluation) == (
        "The weekly evaluation moved the daily quota from 20,000 to 50,000 "
        "(7-day quality HIGH, judged on zalo)."
    )
    webhook = decision("tier", "zalo_change_oa_daily_quota", 2_000, None)
    assert explain(webhook) == "Zalo's webhook changed the daily quota from 2,000 to unlimited."
    penalty = decision(
        "penalty", "penalty", 20_000, 10_000, inputs={"negatives_today": 401, "threshold": 400}
    )
    assert explain(penalty).startswith("401 negatives today went beyond the threshold of 400")
    template = decision(
        "quality",
        "template_proxy_7d",
        "HIGH",
        "LOW",
        template_id="t1",
        inputs={"delivered": 10, "negatives": 3},
    )
    assert explain(template) == (
        "Template t1's proxy quality over 7d went from HIGH to LOW (3 negatives of 10 delivered)."
    )
    assert "suspended" in explain(decision("suspension", "send_error_-1351", False, True))
    assert "lifted" in explain(decision("suspension", "resume_oa", True, False))
    assert "store a new one" in explain(decision("token", "token_dead", "valid", "dead"))
    paused = explain(decision("pause", "template_paused", "sendable", "paused", template_id="t2"))
    assert paused == "Template t2 went from sendable to paused (template_paused)."
    assert explain({"kind": "something_new"}).startswith("The OA: something_new changed")
