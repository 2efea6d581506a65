"""The fold's dispatch: each record goes to the rules of its kind, after the OA's state
has been brought to `now` (day changes, grant expiries, pause ends), and the OA's proxy
levels are checked after it. The rules themselves are in the modules beside this one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from service.domain.events import (
    ChangeOaDailyQuota,
    ChangeTemplateQuality,
    ChangeTemplateStatus,
    UserClickResponseButton,
    UserFeedback,
    UserReceivedMessage,
    ZaloEvent,
)
from service.domain.fold.context import Run, to_ms
from service.domain.fold.decoding import Item
from service.domain.fold.grants import admission, expire_grants
from service.domain.fold.operator import command
from service.domain.fold.sends import send
from service.domain.fold.signals import check_oa_levels, feedback, quick_reply, receipt
from service.domain.fold.sync import sync
from service.domain.fold.templates import end_pauses, set_quality, set_status
from service.domain.fold.tier import change_days, set_quota
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
    body = item.body
    if isinstance(body, SendRecord):
        send(run, body, at)
    elif isinstance(body, AdmissionRecord):
        admission(run, body, at)
    elif isinstance(body, SyncRecord):
        sync(run, body, at)
    elif isinstance(body, CommandRecord):
        command(run, body, at)
    else:
        _webhook(run, body, at)
    check_oa_levels(run)
    return run.changes


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


def _webhook(run: Run, event: ZaloEvent, at: datetime) -> None:
    if isinstance(event, UserReceivedMessage):
        receipt(run, event, at)
    elif isinstance(event, UserFeedback):
        feedback(run, event, at)
    elif isinstance(event, UserClickResponseButton):
        quick_reply(run, event, at)
    elif isinstance(event, ChangeTemplateStatus):
        template = run.state.template(event.template_id)
        set_status(
            run,
            template,
            event.status.new_status,
            at,
            "zalo_change_template_status",
            reason=event.reason,
        )
    elif isinstance(event, ChangeTemplateQuality):
        template = run.state.template(event.template_id)
        set_quality(run, template, event.quality, at, "zalo_change_template_quality")
    elif isinstance(event, ChangeOaDailyQuota):
        set_quota(run, event.quota.new_value, at, "zalo_change_oa_daily_quota")
    # Other events (tags, journeys, chat) change nothing zns-gate models.
