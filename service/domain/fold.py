"""The fold: how each record of `zns.events` changes the state of its OA (DESIGN.md 3 and 4).

`read_item` turns a record (kind, key, value, headers) into an `Item`, or
raises `Unprocessable` with the reason the processor puts in `zns.dlq`.
`fold(state, item, now, policy)` applies it and returns the changes that
become decision records. The fold is deterministic: given the same state,
item and `now` it makes the same changes, which is what makes a replay equal
to live processing. It changes `state` in place (copying a large OA per record
would cost more than the rest of the work) and does no I/O.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from service.domain.admission import compact
from service.domain.events import (
    EVENT_MODELS,
    ChangeOaDailyQuota,
    ChangeTemplateQuality,
    ChangeTemplateStatus,
    MalformedBody,
    UserClickResponseButton,
    UserFeedback,
    UserReceivedMessage,
    ZaloEvent,
    as_datetime,
    dedup_key,
    find_oa_id,
    parse_body,
    parse_event,
)
from service.domain.records import (
    AdmissionRecord,
    CommandRecord,
    SendRecord,
    SyncRecord,
    recipient_hash,
)
from service.domain.rules import Quota
from service.domain.scoring import Level
from service.domain.state import (
    HOUR_MS,
    MESSAGE_DAYS,
    WINDOW_7D,
    Change,
    Grant,
    Message,
    OAState,
    Policy,
    Template,
)
from service.domain.windows import DailyCounts, day_start, hour_index, month_index

FUTURE_SLACK = timedelta(minutes=5)
"""An event time further ahead of `now` than this is taken as `now`."""

QUIET_DAYS = 10
"""Days after an OA's last record beyond which a day change only prunes. By then the
windows a tier evaluation reads (the 7 days before midnight) are empty, so it moves
nothing, Zalo's levels are stale, and each prune removes a superset of what the prunes
before it removed: the last day's prune alone leaves the state that walking every day
would. (The reach grows with `zalo_quality_ttl` when that is set to days.) A read of an
idle OA advances a copy over the same gap every time, so the walk must stay short."""

NEGATIVE_SEND_ERRORS = frozenset({-141, -139})
"""Send errors that mean the user refused or blocked the OA: negative signals."""

Body = ZaloEvent | SendRecord | AdmissionRecord | SyncRecord | CommandRecord


class Unprocessable(ValueError):
    """A record the fold cannot apply; `reason` is the code `zns.dlq` records."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Item:
    """One record of `zns.events`, parsed."""

    kind: str
    oa_id: str
    body: Body
    at: datetime
    """The event time (DESIGN.md 4): delivery, submit, sent time, or the `timestamp`; for
    a command, when the operator asked (see `has_event_time`)."""
    dedup_key: str | None = None

    @property
    def has_event_time(self) -> bool:
        """False for an operator's command: it takes effect at the OA's "now" and moves no
        clock, so that resuming an OA on a replayed or lagging stream does not jump its day."""
        return self.kind != "command"


_RECORD_MODELS: dict[str, type[SendRecord | AdmissionRecord | SyncRecord | CommandRecord]] = {
    "send": SendRecord,
    "admission": AdmissionRecord,
    "sync": SyncRecord,
    "command": CommandRecord,
}


def read_item(kind: str | None, key: bytes | None, value: bytes, headers: dict[str, str]) -> Item:
    """The record as an `Item`. Raises `Unprocessable` (`unknown_kind`, `no_oa_id`,
    `malformed_record`)."""
    try:
        if kind == "webhook":
            item = _read_webhook(value, headers)
            # The record lands in its key's partition: an event applied to another OA
            # would change a state that partition may not hold (a forged body naming two).
            if key is not None and key.decode(errors="replace") != item.oa_id:
                raise Unprocessable("malformed_record", "the record's key is not its OA")
            return item
        model = _RECORD_MODELS.get(kind or "")
        if model is None:
            raise Unprocessable("unknown_kind", f"no record kind {kind!r}")
        record = model.model_validate_json(value)
        # Inside the `try`: a time no datetime can hold is a malformed record, not an error
        # that would stop the partition at this record after every restart.
        at = as_datetime(_record_time(record))
    except (ValidationError, MalformedBody, ValueError, OverflowError, OSError) as exc:
        if isinstance(exc, Unprocessable):
            raise
        raise Unprocessable("malformed_record", _short(exc)) from exc
    if key is not None and key.decode(errors="replace") != record.oa_id:
        raise Unprocessable("malformed_record", "the record's key is not its oa_id")
    # A repeated sync or command is recognised by its bytes (sends by their tracking id and
    # admissions by their id, in the fold).
    repeat = None
    if isinstance(record, SyncRecord | CommandRecord):
        repeat = f"{kind}:{hashlib.sha256(value).hexdigest()}"
    return Item(kind or "", record.oa_id, record, at, repeat)


def _record_time(record: SendRecord | AdmissionRecord | SyncRecord | CommandRecord) -> str:
    if isinstance(record, SendRecord):
        return record.send.sent_time
    if isinstance(record, SyncRecord):
        return record.as_of
    return record.at


def _read_webhook(value: bytes, headers: dict[str, str]) -> Item:
    fast = _read_known_event(value, headers)
    if fast is not None:
        return fast
    body = parse_body(value)
    oa_id = find_oa_id(body)
    if oa_id is None:
        raise Unprocessable("no_oa_id", "the event names no OA")
    event = parse_event(body, headers.get("server"))
    return Item(
        "webhook",
        oa_id,
        event,
        _event_time(event),
        headers.get("dedup_key") or dedup_key(body, value),
    )


def _read_known_event(value: bytes, headers: dict[str, str]) -> Item | None:
    """The common case, parsed and validated in one step from the bytes; None when the
    event is not one of the known models (or is malformed: the general path says why)."""
    name = headers.get("event_name") or ""
    model = EVENT_MODELS.get(name)
    if model is None or not headers.get("dedup_key"):
        return None
    if model is UserReceivedMessage and headers.get("server", "").upper() != "ZNS":
        return None  # the chat event of the same name
    try:
        event = model.model_validate_json(value)
    except ValidationError:
        return None
    if event.event_name != name:
        return None
    return Item("webhook", _oa_of(event), event, _event_time(event), headers["dedup_key"])


def _oa_of(event: ZaloEvent) -> str:
    if isinstance(event, UserReceivedMessage):
        return event.sender.id
    if isinstance(event, ChangeOaDailyQuota):
        return event.oaId
    oa_id: str = getattr(event, "oa_id")  # noqa: B009 - every other known event has one
    return oa_id


def _event_time(event: ZaloEvent) -> datetime:
    if isinstance(event, UserReceivedMessage):
        return event.message.delivered_at
    if isinstance(event, UserFeedback | UserClickResponseButton):
        return event.message.submitted_at
    return event.emitted_at


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)[:300]


def fold(state: OAState, item: Item, now: datetime, policy: Policy) -> list[Change]:
    """Apply `item` to `state` at `now`; the changes it made, in order."""
    return _Fold(state, policy, now).apply(item)


def advance(state: OAState, now: datetime, policy: Policy) -> list[Change]:
    """Bring `state` to `now` without a record: the day changes, grant expiries, pause
    ends and level changes that became due (a query of an idle OA uses it)."""
    run = _Fold(state, policy, now)
    run.advance()
    run.check_oa_levels()
    return run.changes


class _Fold:
    """One application of one record; `changes` collects what it changed."""

    def __init__(self, state: OAState, policy: Policy, now: datetime) -> None:
        self.state = state
        self.policy = policy
        self.thresholds = policy.thresholds
        self.now = now
        self.changes: list[Change] = []
        self.counts_changed = False
        """The OA's delivered or negative counts moved: its levels may have too."""

    def apply(self, item: Item) -> list[Change]:
        self.advance()
        state = self.state
        at = item.at if item.has_event_time and item.at <= self.now + FUTURE_SLACK else self.now
        if item.has_event_time:
            state.event_ms = max(state.event_ms, _ms(at))
        if item.dedup_key is not None:
            if item.dedup_key in state.dedup:
                return self.changes
            state.dedup[item.dedup_key] = _ms(at)
        body = item.body
        if isinstance(body, SendRecord):
            self.send(body, at)
        elif isinstance(body, AdmissionRecord):
            self.admission(body, at)
        elif isinstance(body, SyncRecord):
            self.sync(body, at)
        elif isinstance(body, CommandRecord):
            self.command(body, at)
        else:
            self.webhook(body, at)
        self.check_oa_levels()
        return self.changes

    def change(
        self,
        kind: str,
        rule: str,
        before: Any,
        after: Any,
        at: datetime,
        template_id: str | None = None,
        **inputs: Any,
    ) -> None:
        self.changes.append(Change(kind, rule, before, after, at, inputs, template_id))

    # --- time ---------------------------------------------------------------------------

    def advance(self) -> None:
        state = self.state
        day = self.policy.day(self.now)
        if state.today is None:
            state.today = day
            state.day_start_quota = state.daily_quota
        # No record came since `state.today` (a record advances its state first), so the
        # days of a long gap after the first QUIET_DAYS change nothing the last one does
        # not: the walk over years (a far-future clock) stays a bounded number of days.
        reach = max(QUIET_DAYS, self.thresholds.zalo_quality_ttl.days + WINDOW_7D.days + 1)
        quiet_from = state.today + reach
        while state.today < day:
            if state.today >= quiet_from:
                state.today = day - 1
            state.today += 1
            self.day_change(state.today)
        self.expire_grants()
        self.end_pauses()

    def day_change(self, day: int) -> None:
        """00:00 of `day`: the tier evaluation if due, then what resets with the day."""
        stamp = day_start(date.fromordinal(day), self.policy.zone)
        self.evaluate_tier(day, stamp)
        state = self.state
        state.day_start_quota = state.daily_quota
        self.prune(day, stamp)

    def evaluate_tier(self, day: int, stamp: datetime) -> None:
        state, t = self.state, self.thresholds
        if state.first_send_day is None or day < state.first_send_day + t.first_evaluation_days:
            return
        if state.tier_changed_day is not None and day < state.tier_changed_day + t.wait_days:
            return
        moment = stamp - timedelta(milliseconds=1)  # the 7 days before midnight
        basis, level = state.tier_level(moment, t)
        sent_ok = state.sent_ok.total(day - 7, day - 1)
        quota = state.daily_quota
        move = state.tier_move(level, sent_ok, t)
        if move is None or move[0] == quota:
            return
        new, rule = move
        state.daily_quota = new
        state.tier_changed_day = day
        self.change(
            "tier",
            rule,
            quota,
            new,
            stamp,
            level_7d=level.value,
            basis=basis,
            sent_ok_7d=sent_ok,
            delivered_7d=state.delivered.within(moment, WINDOW_7D),
            negatives_7d=state.negatives.within(moment, WINDOW_7D),
            window_start=_iso(stamp - WINDOW_7D),
            window_end=_iso(stamp),
            upgrade_needs=None if quota is None else t.upgrade_volume_factor * quota,
        )

    def prune(self, day: int, stamp: datetime) -> None:
        state = self.state
        oldest_hour = stamp - timedelta(days=MESSAGE_DAYS)
        oldest_day = date.fromordinal(day - MESSAGE_DAYS)
        for hourly in (state.delivered, state.negatives, state.positives):
            hourly.forget_before(oldest_hour)
        for daily in (
            state.negatives_by_day,
            state.sent_ok,
            state.consumed,
            *state.granted.values(),
        ):
            daily.forget_before(oldest_day)
        month = month_index(date.fromordinal(day))
        state.tag12_ok_month.prune(month - 2)
        state.promo_used_month.prune(month - 1)
        self.prune_templates(day, stamp)
        state.messages.expire_before(day)  # kept MESSAGE_DAYS days
        state.grants = {k: g for k, g in state.grants.items() if g.day > day - MESSAGE_DAYS}
        state.open_grants = [k for k in state.open_grants if k in state.grants]
        state.recipients.expire_before(day)  # kept RECIPIENT_DAYS after they were last seen
        # Older than the TTL by the clock and by the OA's own records: a wall clock
        # stepped forward (and back) must not forget a key the sender may still repeat.
        # The keys are bucketed by the hour of their time, so the hours before the cutoff's
        # go whole and only the cutoff's own hour is looked at key by key.
        cutoff = min(_ms(stamp), state.event_ms) - int(self.policy.dedup_ttl.total_seconds() * 1000)
        first_kept_hour = -(-cutoff // HOUR_MS)
        state.dedup.expire_before(first_kept_hour, keep_from=cutoff)
        state.idempotency.expire_before(first_kept_hour, keep_from=cutoff)

    def prune_templates(self, day: int, stamp: datetime) -> None:
        """Forget what the templates' windows no longer count, and the templates no record
        named for `MESSAGE_DAYS` that hold nothing Zalo or zns-gate set: an OA whose
        senders name ever new template ids stays bounded. A template is replaced, never
        changed, because a copy of the state shares its templates with the live state."""
        state = self.state
        oldest_hour = hour_index(stamp - timedelta(days=MESSAGE_DAYS))
        oldest_day = day - MESSAGE_DAYS
        lookback = self.thresholds.pause_ladder.lookback
        ladder_from = _ms(stamp) - int(lookback.total_seconds() * 1000)
        forgotten: list[str] = []
        for template_id, template in state.templates.items():
            if (
                template.delivered.oldest() < oldest_hour
                or template.negatives.oldest() < oldest_hour
                or template.sent_ok.oldest() < oldest_day
            ):
                template = state.templates[template_id] = _pruned(template, oldest_hour, oldest_day)
            if template.seen_day <= oldest_day and _forgettable(template, day, ladder_from):
                forgotten.append(template_id)
        for template_id in forgotten:
            del state.templates[template_id]

    def expire_grants(self) -> None:
        """Granted units no send has reported within `grant_ttl` go back.

        `open_grants` is in the order the grants were made, which is their time order
        (one owner decides an OA's admissions one after the other), so only its front
        is looked at: closed grants leave it there, expired ones give their units back.
        """
        state = self.state
        cutoff = _ms(self.now - self.thresholds.grant_ttl)
        waiting = state.open_grants
        while waiting:
            grant = state.grants.get(waiting[0])
            if grant is not None and grant.open > 0:
                if grant.at_ms > cutoff:
                    return
                # A new Grant, not a change to the old: copies of the state made to answer
                # a request share their grants with the live state (`served_copy`).
                grant = state.grants[waiting[0]] = dataclasses.replace(grant)
                self.give_back(grant, grant.open)
            waiting.pop(0)

    def reopen(self, admission_id: str, grant: Grant) -> None:
        """A grant has an open unit again: it expires in its turn, by its time."""
        waiting = self.state.open_grants
        if admission_id in waiting:
            return
        grants = self.state.grants
        times = [grants[k].at_ms if k in grants else 0 for k in waiting]
        waiting.insert(bisect.bisect_right(times, grant.at_ms), admission_id)

    def give_back(self, grant: Grant, units: int) -> None:
        state = self.state
        grant.returned += units
        state.consumed.add(grant.day, -units)
        if grant.day == state.zalo_remaining_day and grant.at_ms <= state.zalo_remaining_at:
            # Zalo's figure never counted these unsent units: their going back raises nothing.
            state.zalo_remaining_base -= units
        state.granted[str(grant.tag)].add(grant.day, -units)
        if grant.tag == 3:
            state.promo_used_month.add(month_index(date.fromordinal(grant.day)), -units)

    def end_pauses(self) -> None:
        """Pauses that ended by now; one that ends while the proxy is still LOW starts the
        next, which may itself have ended by now. Only the templates zns-gate holds are
        visited, so that bringing an OA to now costs the same with any number of templates."""
        state = self.state
        if not state.paused_templates:
            return
        now_ms = _ms(self.now)
        held: list[str] = []
        for template_id in list(state.paused_templates):
            template = state.templates.get(template_id)
            if template is None or (template.paused_until is None and not template.gate_disabled):
                continue  # resumed or forgotten since
            while template.paused_until is not None and template.paused_until <= now_ms:
                ended = _at(template.paused_until)
                template.paused_until = None
                self.change(
                    "pause", "pause_ended", "paused", "sendable", ended, template.template_id
                )
                if template.proxy_level(ended, self.thresholds) is Level.LOW:
                    self.pause(template, ended)
            if template.gate_disabled or template.paused_until is not None:
                held.append(template_id)
        state.paused_templates = held

    # --- quota and tier -----------------------------------------------------------------

    def first_send(self, day: int) -> None:
        if self.state.first_send_day is None:
            self.state.first_send_day = day

    def consume(self, day: int, units: int) -> None:
        self.state.consumed.add(day, units)

    def set_quota(self, value: Quota, at: datetime, rule: str) -> None:
        """Zalo's own daily quota: the latest event time wins."""
        self.zalo_counted(at)
        state = self.state
        at_ms = _ms(at)
        if at_ms < state.quota_at:
            return
        state.quota_at = at_ms
        before = state.daily_quota
        if value == before:
            return
        state.daily_quota = value
        day = self.policy.day(at)
        state.tier_changed_day = day
        lowered = before is None or (value is not None and value < before)
        if lowered and day == state.today:
            state.penalty_day = day  # Zalo lowered it today: that is the day's penalty
        self.change("tier", rule, before, value, at)

    def set_remaining(self, value: int, at: datetime) -> None:
        self.zalo_counted(at)
        state = self.state
        at_ms = _ms(at)
        if at_ms < state.zalo_remaining_at:
            return
        day = self.policy.day(at)
        state.zalo_remaining_at = at_ms
        state.zalo_remaining = value
        state.zalo_remaining_day = day
        state.zalo_remaining_base = state.consumed.get(day)

    def zalo_counted(self, at: datetime) -> None:
        """A value of the quota from Zalo, later than today's -144 and for that day, ends the
        -144's 0: Zalo's own count is newer than the refusal."""
        state = self.state
        if state.exhausted_day == self.policy.day(at) and _ms(at) > state.exhausted_at:
            state.exhausted_day = None

    def negative(
        self, message: Message | None, template: Template | None, at: datetime, cause: str
    ) -> None:
        """A negative signal at `at`; counted once per message, and as delivered if it was not."""
        state = self.state
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
                message.delivered_at = _ms(at)
        state.negatives.add_at(at)
        self.counts_changed = True
        day = self.policy.day(at)
        state.negatives_by_day.add(day)
        if template is not None:
            template.negatives.add_at(at)
            self.check_template(template, at)
        elif message is not None:
            message.negative_at = _ms(at)
        if day == state.today:
            self.check_penalty(at, cause)

    def check_penalty(self, at: datetime, cause: str) -> None:
        state = self.state
        threshold = state.penalty_threshold(self.policy)
        if threshold is None or state.penalty_day == state.today or state.today is None:
            return
        negatives = state.negatives_by_day.get(state.today)
        if negatives <= threshold:
            return
        state.penalty_day = state.today
        before = state.daily_quota
        after = state.rule_set().step_down(before)
        if after == before:
            return
        state.daily_quota = after
        state.tier_changed_day = state.today
        self.change(
            "penalty",
            "penalty",
            before,
            after,
            at,
            negatives_today=negatives,
            threshold=threshold,
            day_start_quota=state.day_start_quota,
            penalty_rate=self.thresholds.penalty_rate,
            last_signal=cause,
        )

    def check_oa_levels(self) -> None:
        """Decisions for the OA's proxy levels; they move only with its counts or the hour."""
        state = self.state
        hour = hour_index(self.now)
        if not self.counts_changed and hour == state.levels_hour:
            return
        state.levels_hour = hour
        levels = state.proxy_levels(self.now, self.thresholds)
        for window, level in zip(("48h", "7d"), levels, strict=True):
            attr = f"proxy_{window}"
            before = getattr(state, attr)
            if before != level.value:
                setattr(state, attr, level.value)
                span = timedelta(hours=48) if window == "48h" else WINDOW_7D
                self.change(
                    "quality",
                    f"proxy_{window}",
                    before,
                    level.value,
                    self.now,
                    delivered=state.delivered.within(self.now, span),
                    negatives=state.negatives.within(self.now, span),
                    z=self.thresholds.quality_z,
                    rate_standard=self.thresholds.rate_standard,
                    rate_limit=self.thresholds.rate_limit,
                )

    # --- templates ----------------------------------------------------------------------

    def check_template(self, template: Template, at: datetime) -> None:
        """Its proxy level after its counts changed; a turn to LOW pauses it (DESIGN.md 4.5)."""
        level = template.proxy_level(self.now, self.thresholds)
        before = template.proxy_7d
        if level.value == before:
            return
        template.proxy_7d = level.value
        self.change(
            "quality",
            "template_proxy_7d",
            before,
            level.value,
            at,
            template.template_id,
            delivered=template.delivered.within(self.now, WINDOW_7D),
            negatives=template.negatives.within(self.now, WINDOW_7D),
        )
        if level is Level.LOW and not template.paused(_ms(at)):
            self.pause(template, at)

    def pause(self, template: Template, at: datetime) -> None:
        ladder = self.thresholds.pause_ladder
        start = _ms(at)
        recent = [p for p in template.pauses if p > start - ladder.lookback.total_seconds() * 1000]
        length = ladder.next_pause(len(recent))
        template.pauses = [*recent, start]
        if template.template_id not in self.state.paused_templates:
            self.state.paused_templates.append(template.template_id)
        if length is None:
            template.gate_disabled = True
            self.change(
                "pause",
                "template_disabled",
                "sendable",
                "disabled",
                at,
                template.template_id,
                pauses_in_lookback=len(recent),
            )
        else:
            template.paused_until = start + int(length.total_seconds() * 1000)
            self.change(
                "pause",
                "template_paused",
                "sendable",
                "paused",
                at,
                template.template_id,
                pause_s=int(length.total_seconds()),
                until=_iso(_at(template.paused_until)),
                pauses_in_lookback=len(recent),
            )

    def template_of(self, template_id: str | None) -> Template | None:
        return None if template_id is None else self.state.template(template_id)

    # --- the records --------------------------------------------------------------------

    def webhook(self, event: ZaloEvent, at: datetime) -> None:
        if isinstance(event, UserReceivedMessage):
            self.receipt(event, at)
        elif isinstance(event, UserFeedback):
            self.feedback(event, at)
        elif isinstance(event, UserClickResponseButton):
            self.quick_reply(event, at)
        elif isinstance(event, ChangeTemplateStatus):
            template = self.state.template(event.template_id)
            if _ms(at) >= template.status_at:
                before = template.status
                # A -146 stays: it is Zalo's quality, which a status does not report.
                template.status, template.status_at = event.status.new_status, _ms(at)
                if before != template.status:
                    self.change(
                        "template",
                        "zalo_change_template_status",
                        before,
                        template.status,
                        at,
                        template.template_id,
                        reason=event.reason,
                    )
        elif isinstance(event, ChangeTemplateQuality):
            self.template_quality(
                self.state.template(event.template_id),
                event.quality,
                at,
                "zalo_change_template_quality",
            )
        elif isinstance(event, ChangeOaDailyQuota):
            self.set_quota(event.quota.new_value, at, "zalo_change_oa_daily_quota")
        # Other events (tags, journeys, chat) change nothing zns-gate models.

    def template_quality(self, template: Template, quality: str, at: datetime, rule: str) -> None:
        if _ms(at) < template.zalo_quality_at:
            return
        before = template.zalo_quality
        template.zalo_quality, template.zalo_quality_at = quality, _ms(at)
        if quality != "LOW":
            template.zalo_disabled = False
        if before != quality:
            self.change("template", rule, before, quality, at, template.template_id)

    def receipt(self, event: UserReceivedMessage, at: datetime) -> None:
        state = self.state
        day = self.policy.day(at)
        msg_id = event.message.msg_id
        message = state.messages.get(msg_id)
        if message is not None and message.receipt:
            return
        self.first_send(day)
        if message is None:
            message = state.messages[msg_id] = Message(day, recipient=_hash(event.recipient.id))
        message.receipt = True
        if not message.sent_ok and not message.sent:
            self.settle_unsent(message, day)
        template = self.template_of(message.template_id)
        if not message.delivered:  # a negative that came first counted it already
            message.delivered = True
            state.delivered.add_at(at)
            self.counts_changed = True
            if template is not None:
                template.delivered.add_at(at)
            else:
                message.delivered_at = _ms(at)
        if not message.sent_ok:
            message.sent_ok = True
            self.count_sent_ok(day, template, message.tag, message.recipient)
        if template is not None:
            self.check_template(template, at)

    def settle_unsent(self, message: Message, day: int) -> None:
        """A receipt with no send record: it settles one open unit of that day's grants,
        or, with none open, consumes a unit itself (DESIGN.md 3). Which grant it was is
        not known, so the message does not take the grant's template or tag."""
        grants = self.state.grants
        for admission_id in self.state.open_grants:
            grant = grants.get(admission_id)
            if grant is not None and grant.day == day and grant.open > 0:
                grant.settled += 1
                message.settled = admission_id
                return
        self.consume(day, 1)
        message.consumed = True

    def count_sent_ok(
        self, day: int, template: Template | None, tag: int | None, recipient: str | None
    ) -> None:
        self.state.sent_ok.add(day)
        if template is not None:
            template.sent_ok.add(day)
        self.count_tag12(day, tag, recipient)

    def count_tag12(self, day: int, tag: int | None, recipient: str | None) -> None:
        """A tag 1 or 2 message sent OK: the promotion quota's basis and the recipient's
        eligibility."""
        state = self.state
        if tag in (1, 2):
            state.tag12_ok_month.add(month_index(date.fromordinal(day)))
            if recipient is not None:
                person = state.recipient(recipient, day)
                person.last_tag12_day = max(person.last_tag12_day or day, day)
                person.not_eligible = False

    def feedback(self, event: UserFeedback, at: datetime) -> None:
        message = self.message_for(event.message.msg_id, at)
        if message.rated:
            return
        message.rated = True
        rate = event.message.rate
        if rate <= self.thresholds.negative_rating_max:
            self.negative(message, self.template_of(message.template_id), at, "rating")
        elif rate >= self.thresholds.positive_rating_min:
            self.state.positives.add_at(at)

    def quick_reply(self, event: UserClickResponseButton, at: datetime) -> None:
        message = self.message_for(event.msg_id, at)
        label = event.message.data
        if message.template_id is None:
            # Judged once the send record names the template; a label no template counts as
            # negative never will be, and the label itself is not kept.
            if message.reply is None and any(
                label in labels for labels in self.policy.negative_replies.values()
            ):
                message.reply, message.reply_at = _label_hash(label), _ms(at)
            return
        negative_labels = self.policy.negative_replies.get(message.template_id, frozenset())
        if label in negative_labels:
            self.negative(message, self.template_of(message.template_id), at, "quick_reply")

    def message_for(self, msg_id: str, at: datetime) -> Message:
        message = self.state.messages.get(msg_id)
        if message is None:
            message = self.state.messages[msg_id] = Message(self.policy.day(at))
        return message

    def admission(self, record: AdmissionRecord, at: datetime) -> None:
        state = self.state
        # The first answer under a key is the answer, kept compact (a record written before
        # answers were compact may name every denied recipient).
        state.idempotency.setdefault(
            record.idempotency_key,
            [_ms(at), record.request_hash, compact(record.answer).model_dump(mode="json")],
        )
        granted = record.answer.granted
        if granted == 0 or record.admission_id in state.grants:
            return
        day = self.policy.day(at)
        self.first_send(day)
        state.grants[record.admission_id] = Grant(
            day, record.tag, record.template_id, granted, _ms(at)
        )
        state.open_grants.append(record.admission_id)
        self.consume(day, granted)
        state.granted.setdefault(str(record.tag), DailyCounts()).add(day, granted)
        template = state.template(record.template_id)
        if template.tag is None:
            template.tag = record.tag
        if record.tag == 3:
            self.promotion_used(day, granted, record.granted_recipients)

    def promotion_used(self, day: int, units: int, recipients: list[str]) -> None:
        state = self.state
        month = month_index(date.fromordinal(day))
        state.promo_used_month.add(month, units)
        if state.first_tag3_month is None or month < state.first_tag3_month:
            state.first_tag3_month = month
        for key in recipients:
            person = state.recipient(key, day)
            if person.promo_day != day:
                person.promo_day, person.promo_day_count = day, 0
            if person.promo_month != month:
                person.promo_month, person.promo_month_count = month, 0
            person.promo_day_count += 1
            person.promo_month_count += 1

    def send(self, record: SendRecord, at: datetime) -> None:
        state, outcome = self.state, record.send
        tracking_key = "send:" + outcome.tracking_id
        if tracking_key in state.dedup:
            return
        state.dedup[tracking_key] = _ms(at)
        message = state.messages.get(outcome.msg_id) if outcome.msg_id else None
        if message is not None and message.sent:
            return  # the same message reported under another tracking id
        day = self.policy.day(at)
        template = state.template(outcome.template_id)
        if outcome.tag is not None and template.tag is None:
            template.tag = outcome.tag
        tag = outcome.tag or template.tag
        grant = state.grants.get(outcome.admission_id) if outcome.admission_id else None
        if outcome.error == 0:
            self.sent(
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
            self.send_failed(outcome.error, grant, day, template, tag, outcome.recipient, at)
        if outcome.quota is not None:
            if "dailyQuota" in outcome.quota.model_fields_set:
                self.set_quota(outcome.quota.dailyQuota, at, "zalo_send_quota")
            if outcome.quota.remainingQuota is not None:
                self.set_remaining(outcome.quota.remainingQuota, at)

    def sent(
        self,
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
        state = self.state
        self.first_send(day)
        signals_first = message is not None and message.template_id is None
        if message is None and msg_id is not None:
            message = state.messages[msg_id] = Message(day)
        if message is not None:
            message.sent = True
            message.template_id = template.template_id
            message.tag = tag
            message.recipient = message.recipient or recipient
            if signals_first:
                self.count_for_template(message, template, at)
        settled = (
            grant is not None
            and admission_id is not None
            and self.settle_with_grant(message, grant, admission_id, day)
        )
        if not settled and (message is None or not (message.settled or message.consumed)):
            self.consume(day, 1)
            if message is not None:
                message.consumed = True
            if tag == 3:
                # A send naming its admission had its recipient's counts taken at grant time.
                self.promotion_used(day, 1, [recipient] if recipient and grant is None else [])
        if message is None or not message.sent_ok:
            if message is not None:
                message.sent_ok = True
            self.count_sent_ok(day, template, tag, recipient)
        if recipient is not None:
            state.recipient(recipient, day).opted_out = False
        if state.suspended:
            state.suspended = False
            self.change(
                "suspension", "successful_send", True, False, at, reason=state.suspended_reason
            )
            state.suspended_reason = None

    def count_for_template(self, message: Message, template: Template, at: datetime) -> None:
        """The send record names the template of a message whose receipt or rating came
        first: what they counted goes to the template (and the tag) now, at their own event
        times, and the template's pause check runs."""
        if message.sent_ok:
            template.sent_ok.add(message.day)
            self.count_tag12(message.day, message.tag, message.recipient)
        if message.delivered_at is not None or message.negative_at is not None:
            if message.delivered_at is not None:
                template.delivered.add_at(_at(message.delivered_at))
            if message.negative_at is not None:
                template.negatives.add_at(_at(message.negative_at))
            message.delivered_at = message.negative_at = None
            self.check_template(template, at)
        if message.reply is not None and message.reply_at is not None:
            labels = self.policy.negative_replies.get(template.template_id, frozenset())
            negative = message.reply in {_label_hash(label) for label in labels}
            replied = _at(message.reply_at)
            message.reply = message.reply_at = None
            if negative:
                self.negative(message, template, replied, "quick_reply")

    def settle_with_grant(
        self, message: Message | None, grant: Grant, admission_id: str, day: int
    ) -> bool:
        """A send that names its admission uses that grant and consumes nothing more; False
        when the grant has no unit left (it went back, or others settled them all): the send
        then counts as one without an admission, and what its receipt took is undone."""
        if message is not None and message.settled == admission_id:
            return True
        if message is not None and message.settled is not None:
            earlier = self.state.grants.get(message.settled)
            if earlier is not None:
                earlier.settled -= 1  # the receipt guessed another grant; move the unit
                self.reopen(message.settled, earlier)
            message.settled = None
        elif message is not None and message.consumed:
            self.consume(message.day, -1)  # the receipt had consumed a unit for it
            message.consumed = False
        if grant.open <= 0:
            return False
        grant.settled += 1
        if message is not None:
            message.settled = admission_id
        return True

    def send_failed(
        self,
        error: int,
        grant: Grant | None,
        day: int,
        template: Template,
        tag: int | None,
        recipient: str | None,
        at: datetime,
    ) -> None:
        state = self.state
        if grant is not None and grant.open > 0:
            if error == -144:
                grant.settled += 1  # the unit stays used: Zalo says nothing remains
            else:
                self.give_back(grant, 1)
        person = state.recipient(recipient, day) if recipient is not None else None
        if error in NEGATIVE_SEND_ERRORS:
            if person is not None:
                person.opted_out = True
            self.negative(None, template, at, f"send_error_{error}")
        elif error == -144:
            state.exhausted_day, state.exhausted_at = day, _ms(at)
        elif error == -1441:
            state.promo_exhausted_month = month_index(date.fromordinal(day))
        elif error == -146:
            if not template.zalo_disabled:
                template.zalo_disabled = True
                self.change(
                    "template", "send_error_-146", "enabled", "disabled", at, template.template_id
                )
        elif error == -147:
            template.exhausted_day = day
        elif error == -145 and tag is not None:
            state.tag_blocked[str(tag)] = day
        elif error == -140 and person is not None:
            person.not_eligible = True
        elif error == -1471 and person is not None:
            person.limit_month = month_index(date.fromordinal(day))
        elif error == -1472 and person is not None:
            person.limit_day = day
        elif error == -133:
            template.night_restricted = True
        elif error in (-1351, -135) and not state.suspended:
            state.suspended, state.suspended_reason = True, f"send_error_{error}"
            self.change("suspension", f"send_error_{error}", False, True, at)

    def sync(self, record: SyncRecord, at: datetime) -> None:
        state = self.state
        given = record.model_fields_set
        if "daily_quota" in given:
            self.set_quota(record.daily_quota, at, "sync")
        if record.remaining_quota is not None:
            self.set_remaining(record.remaining_quota, at)
        if (record.quality_48h or record.quality_7d) and _ms(at) >= state.zalo_quality_at:
            state.zalo_quality_48h = record.quality_48h or state.zalo_quality_48h
            state.zalo_quality_7d = record.quality_7d or state.zalo_quality_7d
            state.zalo_quality_at = _ms(at)
        if record.allowed_tags is not None:
            state.allowed_tags = sorted(set(record.allowed_tags))
        state.tag_blocked.clear()
        month = month_index(date.fromordinal(self.policy.day(at)))
        if record.monthly_promotion_quota is not None or (
            record.remaining_monthly_promotion_quota is not None
        ):
            state.zalo_promo_month = month
            state.zalo_promo_quota = record.monthly_promotion_quota
            state.zalo_promo_remaining = record.remaining_monthly_promotion_quota
            state.zalo_promo_base = state.promo_used_month.get(month)
        for item in record.templates:
            template = state.template(item.template_id)
            if item.tag is not None:
                template.tag, template.zalo_tag = item.tag, True
            if item.status is not None and _ms(at) >= template.status_at:
                before = template.status
                template.status, template.status_at = item.status, _ms(at)  # a -146 stays
                if before != item.status:
                    self.change("template", "sync", before, item.status, at, item.template_id)
            if item.quality is not None:
                self.template_quality(template, item.quality, at, "sync")

    def command(self, record: CommandRecord, at: datetime) -> None:
        state = self.state
        if record.action == "resume_oa":
            if state.suspended:
                state.suspended = False
                self.change(
                    "suspension", "resume_oa", True, False, at, reason=state.suspended_reason
                )
                state.suspended_reason = None
        elif record.template_id is not None:
            template = state.template(record.template_id)
            if template.gate_disabled or template.paused_until is not None:
                before = "disabled" if template.gate_disabled else "paused"
                template.paused_until = None
                template.gate_disabled = False
                self.change("pause", "resume_template", before, "sendable", at, record.template_id)


def _pruned(template: Template, oldest_hour: int, oldest_day: int) -> Template:
    """A copy of `template` without the window buckets before those."""
    delivered, negatives = copy.deepcopy(template.delivered), copy.deepcopy(template.negatives)
    sent_ok = copy.deepcopy(template.sent_ok)
    delivered.prune(oldest_hour)
    negatives.prune(oldest_hour)
    sent_ok.prune(oldest_day)
    return dataclasses.replace(template, delivered=delivered, negatives=negatives, sent_ok=sent_ok)


def _forgettable(template: Template, day: int, ladder_from_ms: int) -> bool:
    """Nothing in `template` that Zalo or zns-gate set, nor counts: a new one is the same."""
    return (
        template.status is None
        and template.zalo_quality is None
        and not template.zalo_tag
        and not template.zalo_disabled
        and not template.night_restricted
        and not template.gate_disabled
        and template.paused_until is None
        and (template.exhausted_day is None or template.exhausted_day < day)
        and all(paused <= ladder_from_ms for paused in template.pauses)
        and not (template.delivered or template.negatives or template.sent_ok)
    )


def _hash(recipient: str) -> str | None:
    try:
        return recipient_hash(recipient)
    except ValueError:
        return None


def _label_hash(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat()
