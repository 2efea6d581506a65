"""The fold's dispatch: each record goes to the rules of its kind, after the OA's state
has been brought to `now` (day changes, grant expiries, pause ends), and the OA's proxy
levels are checked after it. The rules themselves are in the modules beside this one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from service.domain.events import (
    ChangeOaDailyQuota,
    ChangeTemplateQuality,
    ChangeTemplateStatus,
    UserClickResponseButton,
    UserFeedback,
    UserReceivedMessage,
)
from service.domain.fold.context import Run, to_ms
from service.domain.fold.decoding import Item
from service.domain.fold.grants import admission, expire_grants
from service.domain.fold.operator import command
from service.domain.fold.sends import send, settle_maybe_sent
from service.domain.fold.signals import check_oa_levels, feedback, quick_reply, receipt
from service.domain.fold.sync import sync
from service.domain.fold.templates import end_pauses, set_quality, set_status
from service.domain.fold.tier import change_days, set_quota
from service.domain.fold.warnings import check_warnings
from service.domain.records import AdmissionRecord, CommandRecord, SendRecord, SyncRecord
from service.domain.state import Change, OAState, Policy

FUTURE_SLACK = timedelta(minutes=5)
"""An event time further ahead of `now` than this is taken as `now`."""


def fold(state: OAState, item: Item, now: datetime, policy: Policy) -> list[Change]:
    """Apply `item` to `state` at `now`; the changes it made, in order."""
    run = Run(state, policy, now)
    _bring_to_now(run)
    at = item.at if item.has_event_time and item.at <= now + FUTURE_SLACK else now
    if item.has_event_time:
        state.event_ms = max(state.event_ms, to_ms(at))
    if item.dedup_key is not None:
        if item.dedup_key in state.dedup:
            return run.changes
        state.dedup[item.dedup_key] = to_ms(at)
    rule = _RULES.get(type(item.body))
    if rule is not None:
        rule(run, item.body, at)
    check_oa_levels(run)
    check_warnings(run)
    return run.changes


def fold_ahead(state: OAState, item: Item, now: datetime, policy: Policy) -> None:
    """Fold an admission decided but not durable yet into a scratch copy of the state
    (`OAState.served_copy(layered=True)`), so that the next decision counts its units;
    its changes are dropped (the live state makes them once the record is durable). The
    copy shares its templates with the live state, and an admission teaches the one it
    names its tag if it has none: that one is copied first."""
    body = item.body
    if isinstance(body, AdmissionRecord):
        held = state.templates.get(body.template_id)
        if held is not None and held.tag is None:
            state.templates[body.template_id] = copy.deepcopy(held)
    fold(state, item, now, policy)


def advance(state: OAState, now: datetime, policy: Policy) -> list[Change]:
    """Bring `state` to `now` without a record: the day changes, grant expiries, pause
    ends and level changes that became due (a query of an idle OA uses it)."""
    run = Run(state, policy, now)
    _bring_to_now(run)
    check_oa_levels(run)
    return run.changes


def _bring_to_now(run: Run) -> None:
    change_days(run)
    expire_grants(run)
    end_pauses(run)


def _template_status(run: Run, event: ChangeTemplateStatus, at: datetime) -> None:
    template = run.state.template(event.template_id)
    set_status(
        run,
        template,
        event.status.new_status,
        at,
        "zalo_change_template_status",
        reason=event.reason,
    )


def _template_quality(run: Run, event: ChangeTemplateQuality, at: datetime) -> None:
    template = run.state.template(event.template_id)
    set_quality(run, template, event.quality, at, "zalo_change_template_quality")


def _receipt(run: Run, event: UserReceivedMessage, at: datetime) -> None:
    """A receipt that names the tracking id of a send whose outcome was unknown settles
    that send as made first; then it counts as any receipt."""
    message = event.message
    if message.tracking_id and not _sent_known(run, message.msg_id):
        settle_maybe_sent(run, message.tracking_id, message.msg_id, at)
    receipt(run, event, at)


def _sent_known(run: Run, msg_id: str) -> bool:
    known = run.state.messages.peek(msg_id)
    return known is not None and known.sent


def _daily_quota(run: Run, event: ChangeOaDailyQuota, at: datetime) -> None:
    set_quota(run, event.quota.new_value, at, "zalo_change_oa_daily_quota")


_RULES: dict[type, Callable[[Run, Any, datetime], None]] = {
    SendRecord: send,
    AdmissionRecord: admission,
    SyncRecord: sync,
    CommandRecord: command,
    UserReceivedMessage: _receipt,
    UserFeedback: feedback,
    UserClickResponseButton: quick_reply,
    ChangeTemplateStatus: _template_status,
    ChangeTemplateQuality: _template_quality,
    ChangeOaDailyQuota: _daily_quota,
}
"""The rules each kind of record, and each Zalo event, goes to. Other events (tags,
journeys, chat) change nothing zns-gate models."""
