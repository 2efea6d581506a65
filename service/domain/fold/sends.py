"""Sends and their errors: a send outcome a sender reports, deduplicated by `tracking_id`
and `msg_id`; a success counts as sent OK and consumes a unit unless its grant or its
receipt already did; a failure gives its grant's unit back (but -144's) and has the
effect its Zalo error code has, as `SEND_ERROR_EFFECTS` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from service.domain.fold.context import Run, to_ms
from service.domain.fold.grants import consume, give_back, promotion_used, settle_with_grant
from service.domain.fold.signals import count_for_template, count_sent_ok, negative
from service.domain.fold.tier import first_send, set_quota, set_remaining
from service.domain.records import SendRecord
from service.domain.state import Grant, Message, Recipient, Template
from service.domain.windows import month_index


def send(run: Run, record: SendRecord, at: datetime) -> None:
    state, outcome = run.state, record.send
    tracking_key = "send:" + outcome.tracking_id
    if tracking_key in state.dedup:
        return
    state.dedup[tracking_key] = to_ms(at)
    message = state.messages.get(outcome.msg_id) if outcome.msg_id else None
    if message is not None and message.sent:
        return  # the same message reported under another tracking id
    day = run.policy.day(at)
    template = state.template(outcome.template_id)
    if outcome.tag is not None and template.tag is None:
        template.tag = outcome.tag
    tag = outcome.tag or template.tag
    grant = state.grants.get(outcome.admission_id) if outcome.admission_id else None
    if outcome.error == 0:
        sent(
            run,
            outcome.msg_id,
            message,
            grant,
            outcome.admission_id,
            day,
            template,
            tag,
            outcome.recipient,
            at,
        )
    else:
        send_failed(run, outcome.error, grant, day, template, tag, outcome.recipient, at)
    if outcome.quota is not None:
        if "dailyQuota" in outcome.quota.model_fields_set:
            set_quota(run, outcome.quota.dailyQuota, at, "zalo_send_quota")
        if outcome.quota.remainingQuota is not None:
            set_remaining(run, outcome.quota.remainingQuota, at)


def sent(
    run: Run,
    msg_id: str | None,
    message: Message | None,
    grant: Grant | None,
    admission_id: str | None,
    day: int,
    template: Template,
    tag: int | None,
    recipient: str | None,
    at: datetime,
) -> None:
    state = run.state
    first_send(run, day)
    signals_first = message is not None and message.template_id is None
    if message is None and msg_id is not None:
        message = state.messages[msg_id] = Message(day)
    if message is not None:
        message.sent = True
        message.template_id = template.template_id
        message.tag = tag
        message.recipient = message.recipient or recipient
        if signals_first:
            count_for_template(run, message, template, at)
    settled = (
        grant is not None
        and admission_id is not None
        and settle_with_grant(run, message, grant, admission_id, day)
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


@dataclass(frozen=True, slots=True)
class Failure:
    """A send that Zalo refused with `error`, as its effect needs it."""

    error: int
    day: int
    template: Template
    tag: int | None
    person: Recipient | None
    """The recipient named, if the send named one."""
    at: datetime


def send_failed(
    run: Run,
    error: int,
    grant: Grant | None,
    day: int,
    template: Template,
    tag: int | None,
    recipient: str | None,
    at: datetime,
) -> None:
    state = run.state
    if grant is not None and grant.open > 0:
        if error == -144:
            grant.settled += 1  # the unit stays used: Zalo says nothing remains
        else:
            give_back(run, grant, 1)
    person = state.recipient(recipient, day) if recipient is not None else None
    effect = SEND_ERROR_EFFECTS.get(error)
    if effect is not None:
        effect(run, Failure(error, day, template, tag, person, at))


def _refused(run: Run, failure: Failure) -> None:
    """The user refused or blocked the OA: a negative signal, and the recipient opted out
    until a later send to them succeeds."""
    if failure.person is not None:
        failure.person.opted_out = True
    negative(run, None, failure.template, failure.at, f"send_error_{failure.error}")


def _daily_quota_exhausted(run: Run, failure: Failure) -> None:
    """Remaining today 0, until a later value from Zalo for today or the next day."""
    run.state.exhausted_day, run.state.exhausted_at = failure.day, to_ms(failure.at)


def _promotion_month_exhausted(run: Run, failure: Failure) -> None:
    run.state.promo_exhausted_month = month_index(date.fromordinal(failure.day))


def _template_disabled(run: Run, failure: Failure) -> None:
    """As Zalo's quality LOW, until Zalo reports the template's quality again."""
    template = failure.template
    if not template.zalo_disabled:
        template.zalo_disabled = True
        run.change(
            "template", "send_error_-146", "enabled", "disabled", failure.at, template.template_id
        )


def _template_day_exhausted(run: Run, failure: Failure) -> None:
    failure.template.exhausted_day = failure.day


def _tag_blocked(run: Run, failure: Failure) -> None:
    """Until the next sync or the next day."""
    if failure.tag is not None:
        run.state.tag_blocked[str(failure.tag)] = failure.day


def _not_eligible(run: Run, failure: Failure) -> None:
    """Until a tag 1 or 2 send to the recipient succeeds."""
    if failure.person is not None:
        failure.person.not_eligible = True


def _promotion_limit_month(run: Run, failure: Failure) -> None:
    if failure.person is not None:
        failure.person.limit_month = month_index(date.fromordinal(failure.day))


def _promotion_limit_day(run: Run, failure: Failure) -> None:
    if failure.person is not None:
        failure.person.limit_day = failure.day


def _night_restricted(run: Run, failure: Failure) -> None:
    """No sends of the template 22:00-06:00."""
    failure.template.night_restricted = True


def _suspended(run: Run, failure: Failure) -> None:
    """Until an operator resumes the OA or a later send succeeds."""
    state = run.state
    if not state.suspended:
        rule = f"send_error_{failure.error}"
        state.suspended, state.suspended_reason = True, rule
        run.change("suspension", rule, False, True, failure.at)


SEND_ERROR_EFFECTS: dict[int, Callable[[Run, Failure], None]] = {
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
