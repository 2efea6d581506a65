"""Signals: delivery receipts, ratings and quick replies, what each counts (delivered,
sent OK, negative, positive), once per message, and the OA's proxy quality levels they
move. A signal that arrives before the send record naming its template is kept on its
message and counted for the template when that record arrives.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta

from service.domain.events import UserClickResponseButton, UserFeedback, UserReceivedMessage
from service.domain.fold.context import Run, from_ms, to_ms
from service.domain.fold.grants import settle_unsent
from service.domain.fold.templates import check_template
from service.domain.fold.tier import check_penalty, first_send
from service.domain.records import recipient_hash
from service.domain.state import WINDOW_7D, Message, Template
from service.domain.windows import hour_index, month_index


def receipt(run: Run, event: UserReceivedMessage, at: datetime) -> None:
    state = run.state
    day = run.policy.day(at)
    msg_id = event.message.msg_id
    message = state.messages.get(msg_id)
    if message is not None and message.receipt:
        return
    first_send(run, day)
    if message is None:
        message = state.messages[msg_id] = Message(day, recipient=_hash(event.recipient.id))
    message.receipt = True
    if not message.sent_ok and not message.sent:
        settle_unsent(run, message, day)
    template = _template_of(run, message.template_id)
    if not message.delivered:  # a negative that came first counted it already
        message.delivered = True
        state.delivered.add_at(at)
        run.counts_changed = True
        if template is not None:
            template.delivered.add_at(at)
        else:
            message.delivered_at = to_ms(at)
    if not message.sent_ok:
        message.sent_ok = True
        count_sent_ok(run, day, template, message.tag, message.recipient)
    if template is not None:
        check_template(run, template, at)


def feedback(run: Run, event: UserFeedback, at: datetime) -> None:
    message = _message_for(run, event.message.msg_id, at)
    if message.rated:
        return
    message.rated = True
    rate = event.message.rate
    if rate <= run.thresholds.negative_rating_max:
        negative(run, message, _template_of(run, message.template_id), at, "rating")
    elif rate >= run.thresholds.positive_rating_min:
        run.state.positives.add_at(at)


def quick_reply(run: Run, event: UserClickResponseButton, at: datetime) -> None:
    message = _message_for(run, event.msg_id, at)
    label = event.message.data
    if message.template_id is None:
        # Judged once the send record names the template; a label no template counts as
        # negative never will be, and the label itself is not kept.
        if message.reply is None and any(
            label in labels for labels in run.policy.negative_replies.values()
        ):
            message.reply, message.reply_at = _label_hash(label), to_ms(at)
        return
    negative_labels = run.policy.negative_replies.get(message.template_id, frozenset())
    if label in negative_labels:
        negative(run, message, _template_of(run, message.template_id), at, "quick_reply")


def negative(
    run: Run, message: Message | None, template: Template | None, at: datetime, cause: str
) -> None:
    """A negative signal at `at`; counted once per message, and as delivered if it was not."""
    state = run.state
    if message is not None:
        if message.negative:
            return
        message.negative = True
    if message is None or not message.delivered:
        if message is not None:
            message.delivered = True
        state.delivered.add_at(at)
        if template is not None:
            template.delivered.add_at(at)
        elif message is not None:
            message.delivered_at = to_ms(at)
    state.negatives.add_at(at)
    run.counts_changed = True
    day = run.policy.day(at)
    state.negatives_by_day.add(day)
    if template is not None:
        template.negatives.add_at(at)
        check_template(run, template, at)
    elif message is not None:
        message.negative_at = to_ms(at)
    if day == state.today:
        check_penalty(run, at, cause)


def count_sent_ok(
    run: Run, day: int, template: Template | None, tag: int | None, recipient: str | None
) -> None:
    run.state.sent_ok.add(day)
    if template is not None:
        template.sent_ok.add(day)
    count_tag12(run, day, tag, recipient)


def count_tag12(run: Run, day: int, tag: int | None, recipient: str | None) -> None:
    """A tag 1 or 2 message sent OK: the promotion quota's basis and the recipient's
    eligibility."""
    state = run.state
    if tag in (1, 2):
        state.tag12_ok_month.add(month_index(date.fromordinal(day)))
        if recipient is not None:
            person = state.recipient(recipient, day)
            person.last_tag12_day = max(person.last_tag12_day or day, day)
            person.not_eligible = False


def count_for_template(run: Run, message: Message, template: Template, at: datetime) -> None:
    """The send record names the template of a message whose receipt or rating came
    first: what they counted goes to the template (and the tag) now, at their own event
    times, and the template's pause check runs."""
    if message.sent_ok:
        template.sent_ok.add(message.day)
        count_tag12(run, message.day, message.tag, message.recipient)
    if message.delivered_at is not None or message.negative_at is not None:
        if message.delivered_at is not None:
            template.delivered.add_at(from_ms(message.delivered_at))
        if message.negative_at is not None:
            template.negatives.add_at(from_ms(message.negative_at))
        message.delivered_at = message.negative_at = None
        check_template(run, template, at)
    if message.reply is not None and message.reply_at is not None:
        labels = run.policy.negative_replies.get(template.template_id, frozenset())
        negative_reply = message.reply in {_label_hash(label) for label in labels}
        replied = from_ms(message.reply_at)
        message.reply = message.reply_at = None
        if negative_reply:
            negative(run, message, template, replied, "quick_reply")


def check_oa_levels(run: Run) -> None:
    """Decisions for the OA's proxy levels; they move only with its counts or the hour."""
    state = run.state
    hour = hour_index(run.now)
    if not run.counts_changed and hour == state.levels_hour:
        return
    state.levels_hour = hour
    levels = state.proxy_levels(run.now, run.thresholds)
    for window, level in zip(("48h", "7d"), levels, strict=True):
        attr = f"proxy_{window}"
        before = getattr(state, attr)
        if before != level.value:
            setattr(state, attr, level.value)
            span = timedelta(hours=48) if window == "48h" else WINDOW_7D
            run.change(
                "quality",
                f"proxy_{window}",
                before,
                level.value,
                run.now,
                delivered=state.delivered.within(run.now, span),
                negatives=state.negatives.within(run.now, span),
                z=run.thresholds.quality_z,
                rate_standard=run.thresholds.rate_standard,
                rate_limit=run.thresholds.rate_limit,
            )


def _message_for(run: Run, msg_id: str, at: datetime) -> Message:
    message = run.state.messages.get(msg_id)
    if message is None:
        message = run.state.messages[msg_id] = Message(run.policy.day(at))
    return message


def _template_of(run: Run, template_id: str | None) -> Template | None:
    return None if template_id is None else run.state.template(template_id)


def _hash(recipient: str) -> str | None:
    try:
        return recipient_hash(recipient)
    except ValueError:
        return None


def _label_hash(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()
