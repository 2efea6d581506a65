"""Sends and their errors: a send outcome a sender reports, deduplicated by `tracking_id`
and `msg_id`; a success counts as sent OK and consumes a unit unless its grant or its
receipt already did; a failure gives its grant's unit back (but -144's) and has the
effect its Zalo error code has, as `SEND_ERROR_EFFECTS` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from service.domain.fold.context import Run, to_ms
from service.domain.fold.grants import consume, give_back, promotion_used, settle_with_grant
from service.domain.fold.signals import count_for_template, count_sent_ok, negative
from service.domain.fold.tier import first_send, set_quota, set_remaining
from service.domain.records import SendOutcome, SendRecord
from service.domain.state import ENTRY_OUTCOMES, Grant, Message, Recipient, Template
from service.domain.windows import month_index


@dataclass(frozen=True, slots=True)
class Report:
    """One send outcome as a sender reported it, with what the fold found for it."""

    outcome: SendOutcome
    day: int
    template: Template
    tag: int | None
    """The outcome's tag, else the one known for its template."""
    grant: Grant | None
    """The grant of the admission the outcome names, while the state keeps it."""
    at: datetime


def send(run: Run, record: SendRecord, at: datetime) -> None:
    state, outcome = run.state, record.send
    tracking_key = "send:" + outcome.tracking_id
    if tracking_key in state.dedup:
        return
    state.dedup[tracking_key] = to_ms(at)
    if record.request is not None:
        keep_for_request(run, record)
    message = state.messages.get(outcome.msg_id) if outcome.msg_id else None
    if message is not None and message.sent:
        return  # the same message reported under another tracking id
    day = run.policy.day(at)
    template = state.template(outcome.template_id)
    if outcome.tag is not None and template.tag is None:
        template.tag = outcome.tag
    tag = outcome.tag or template.tag
    grant = state.grants.get(outcome.admission_id) if outcome.admission_id else None
    report = Report(outcome, day, template, tag, grant, at)
    if outcome.error == 0:
        sent(run, report, message)
    elif outcome.error is None and outcome.not_sent is None:
        sent_maybe(run, report)
    else:
        send_failed(run, report)
    if outcome.quota is not None:
        if "dailyQuota" in outcome.quota.model_fields_set:
            set_quota(run, outcome.quota.dailyQuota, at, "zalo_send_quota")
        if outcome.quota.remainingQuota is not None:
            set_remaining(run, outcome.quota.remainingQuota, at)


def sent(run: Run, report: Report, message: Message | None) -> None:
    state, outcome = run.state, report.outcome
    day, template, tag, grant, at = report.day, report.template, report.tag, report.grant, report.at
    recipient = outcome.recipient
    first_send(run, day)
    signals_first = message is not None and message.template_id is None
    if message is None and outcome.msg_id is not None:
        message = state.messages[outcome.msg_id] = Message(day)
    if message is not None:
        message.sent = True
        message.template_id = template.template_id
        message.tag = tag
        message.recipient = message.recipient or recipient
        if signals_first:
            count_for_template(run, message, template, at)
    settled = (
        grant is not None
        and outcome.admission_id is not None
        and settle_with_grant(run, message, grant, outcome.admission_id, day)
    )
    if not settled and (message is None or not (message.settled or message.consumed)):
        consume(run, day, 1)
        if message is not None:
            message.consumed = True
        if tag == 3:
            # A send naming its admission had its recipient's counts taken at grant time.
            promotion_used(run, day, 1, [recipient] if recipient and grant is None else [])
    if message is None or not message.sent_ok:
        if message is not None:
            message.sent_ok = True
        count_sent_ok(run, day, template, tag, recipient)
    if recipient is not None:
        state.recipient(recipient, day).opted_out = False
    if state.suspended:
        state.suspended = False
        run.change("suspension", "successful_send", True, False, at, reason=state.suspended_reason)
        state.suspended_reason = None


PENDING = "tracking:"
"""The `messages` key of a send whose outcome is unknown, by its tracking id: its receipt
(which names the tracking id) settles it."""


def sent_maybe(run: Run, report: Report) -> None:
    """Zalo did not answer a send zns-gate made: the message may have gone. Its unit stays
    taken; its delivery receipt, found by the tracking id, counts it as sent, and without
    one `grant_ttl` gives the unit back."""
    outcome = report.outcome
    run.state.messages[PENDING + outcome.tracking_id] = Message(
        report.day,
        template_id=report.template.template_id,
        tag=report.tag,
        recipient=outcome.recipient,
        pending=outcome.admission_id,
    )


def settle_maybe_sent(run: Run, tracking_id: str, msg_id: str, at: datetime) -> None:
    """A receipt names the tracking id of a send whose outcome was unknown: that send
    was made. It counts as the send it was (its template, its grant), once."""
    state = run.state
    pending = state.messages.peek(PENDING + tracking_id)
    if pending is None or pending.template_id is None or pending.sent:
        return
    state.messages[PENDING + tracking_id] = Message(pending.day, sent=True)  # settled
    outcome = SendOutcome(
        template_id=pending.template_id,
        tag=pending.tag if pending.tag in (1, 2, 3) else None,
        recipient=pending.recipient,
        tracking_id=tracking_id,
        msg_id=msg_id,
        admission_id=pending.pending,
        sent_time=str(to_ms(at)),
        error=0,
    )
    template = state.template(pending.template_id)
    grant = state.grants.get(pending.pending) if pending.pending else None
    report = Report(outcome, pending.day, template, pending.tag, grant, at)
    sent(run, report, state.messages.get(msg_id))


def keep_for_request(run: Run, record: SendRecord) -> None:
    """Keep a send zns-gate made with the answer of its request (the idempotency entry
    its admission made), so that a repeat answers it again. A new entry, not a change
    to the old: copies of the state made to answer requests share the old one."""
    request, outcome = record.request, record.send
    assert request is not None
    entry = run.state.idempotency.peek(request.idempotency_key)
    if entry is None or len(entry) <= ENTRY_OUTCOMES:
        return  # not a request's entry (or it expired)
    outcomes = dict(entry[ENTRY_OUTCOMES])
    outcomes[str(request.index)] = outcome_of(outcome)
    run.state.idempotency[request.idempotency_key] = [*entry[:ENTRY_OUTCOMES], outcomes]


def outcome_of(outcome: SendOutcome) -> dict[str, Any]:
    """A send's entry in its request's answer (`sent_time` in ms)."""
    if outcome.error == 0:
        return {"status": "sent", "msg_id": outcome.msg_id, "sent_time": outcome.sent_time}
    if outcome.not_sent is not None:
        return {"status": "failed", "reason": outcome.not_sent}
    if outcome.error is None:
        return {"status": "unknown"}
    failed: dict[str, Any] = {"status": "failed", "zalo_error": outcome.error}
    if outcome.zalo_message:
        failed["message"] = outcome.zalo_message
    return failed


def send_failed(run: Run, report: Report) -> None:
    error, grant, recipient = report.outcome.error, report.grant, report.outcome.recipient
    if grant is not None and grant.open > 0:
        if error == -144:
            grant.settled += 1  # the unit stays used: Zalo says nothing remains
        else:
            give_back(run, grant, 1)
    person = run.state.recipient(recipient, report.day) if recipient is not None else None
    effect = SEND_ERROR_EFFECTS.get(error) if error is not None else None
    if effect is not None:
        effect(run, report, person)


def _refused(run: Run, report: Report, person: Recipient | None) -> None:
    """The user refused or blocked the OA: a negative signal, and the recipient opted out
    until a later send to them succeeds."""
    if person is not None:
        person.opted_out = True
    negative(run, None, report.template, report.at, f"send_error_{report.outcome.error}")


def _daily_quota_exhausted(run: Run, report: Report, person: Recipient | None) -> None:
    """Remaining today 0, until a later value from Zalo for today or the next day."""
    run.state.exhausted_day, run.state.exhausted_at = report.day, to_ms(report.at)


def _promotion_month_exhausted(run: Run, report: Report, person: Recipient | None) -> None:
    run.state.promo_exhausted_month = month_index(date.fromordinal(report.day))


def _template_disabled(run: Run, report: Report, person: Recipient | None) -> None:
    """As Zalo's quality LOW, until Zalo reports the template's quality again."""
    template = report.template
    if not template.zalo_disabled:
        template.zalo_disabled = True
        run.change(
            "template", "send_error_-146", "enabled", "disabled", report.at, template.template_id
        )


def _template_day_exhausted(run: Run, report: Report, person: Recipient | None) -> None:
    report.template.exhausted_day = report.day


def _tag_blocked(run: Run, report: Report, person: Recipient | None) -> None:
    """Until the next sync or the next day."""
    if report.tag is not None:
        run.state.tag_blocked[str(report.tag)] = report.day


def _not_eligible(run: Run, report: Report, person: Recipient | None) -> None:
    """Until a tag 1 or 2 send to the recipient succeeds."""
    if person is not None:
        person.not_eligible = True


def _promotion_limit_month(run: Run, report: Report, person: Recipient | None) -> None:
    if person is not None:
        person.limit_month = month_index(date.fromordinal(report.day))


def _promotion_limit_day(run: Run, report: Report, person: Recipient | None) -> None:
    if person is not None:
        person.limit_day = report.day


def _night_restricted(run: Run, report: Report, person: Recipient | None) -> None:
    """No sends of the template 22:00-06:00."""
    report.template.night_restricted = True


def _suspended(run: Run, report: Report, person: Recipient | None) -> None:
    """Until an operator resumes the OA or a later send succeeds."""
    state = run.state
    if not state.suspended:
        rule = f"send_error_{report.outcome.error}"
        state.suspended, state.suspended_reason = True, rule
        run.change("suspension", rule, False, True, report.at)


SEND_ERROR_EFFECTS: dict[int, Callable[[Run, Report, Recipient | None], None]] = {
    -144: _daily_quota_exhausted,
    -1441: _promotion_month_exhausted,
    -146: _template_disabled,
    -147: _template_day_exhausted,
    -145: _tag_blocked,
    -141: _refused,
    -139: _refused,
    -140: _not_eligible,
    -1471: _promotion_limit_month,
    -1472: _promotion_limit_day,
    -133: _night_restricted,
    -1351: _suspended,
    -135: _suspended,
}
"""What each error Zalo answers a send with blocks, and until when (the effect's
docstring); an error not listed blocks nothing."""
