"""Admission: how much of a sender's request may be sent now, and why not the rest (docs/api.md).

`decide` looks at an OA's state (brought to `now` with `fold.advance` first) and
answers a request with the units granted and, for each unit denied, the first
reason that applies in the order of docs/rules.md#denial-reasons, with the Zalo error the same send
would have met. Units are granted in the order of the recipients; an answer
names at most 100 denied recipients and counts the other denials by reason. Its
cost follows the recipients named, never `count`. The answer changes nothing:
the caller appends it as an `admission` record, and folding that record applies
the grant. This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from service.domain.governor import Limit, governor
from service.domain.records import AdmissionAnswer, Denial
from service.domain.state import RECIPIENT_DAYS, OAState, Policy
from service.domain.windows import add_months, day_start, month_index, month_start, next_day_start

# The reasons in the order docs/rules.md#denial-reasons gives them, with the Zalo error of each.
ZALO_ERRORS: dict[str, int | None] = {
    "oa_suspended": -1351,
    "template_not_enabled": -131,
    "template_disabled": -146,
    "template_paused": None,
    "tag_not_allowed": -145,
    "night_window": -133,
    "daily_quota_exhausted": -144,
    "template_daily_quota_exhausted": -147,
    "promotion_monthly_quota_exhausted": -1441,
    "governor_throttled": None,
    "recipient_opted_out": -141,
    "recipient_not_eligible": -140,
    "recipient_promotion_limit": -1471,  # -1472 when it is the day's limit
}

NOT_ENABLED = frozenset({"REJECT", "PENDING_REVIEW", "DELETE"})
NIGHT_START, NIGHT_END = time(22, 0), time(6, 0)


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    template_id: str
    tag: int
    """Resolved by the caller: given, or the template's known tag."""
    recipients: tuple[str, ...] = ()
    """Recipients' hashes, in the order units are to be granted."""
    count: int = 1
    """Units asked for; the number of recipients when recipients are given."""


@dataclass(slots=True)
class Admission:
    answer: AdmissionAnswer
    granted_recipients: list[str] = field(default_factory=list)
    each: list[Denial | None] = field(default_factory=list)
    """Recipient by recipient, in the order asked: None when granted, else its denial."""


@dataclass(slots=True)
class _Capacity:
    """A limit on the units of this request, and the reason it gives when it runs out."""

    reason: str
    left: int | None


def decide(
    state: OAState, request: AdmissionRequest, now: datetime, policy: Policy, admission_id: str
) -> Admission:
    """The answer to `request` at `now` (call `fold.advance(state, now, policy)` first).

    Its cost grows with the recipients named, never with `count`: units without
    recipients are decided together, by arithmetic on the limits."""
    blocked = _blocked(state, request, now, policy)
    governed = governor(state, now, policy)[request.tag].remaining
    capacities = _capacities(state, request.tag, request.template_id, now, policy, governed)
    denied = Denials()
    each: list[Denial | None] = []
    if request.recipients:
        granted = _decide_recipients(
            state, request, now, policy, blocked, capacities, denied, each
        )
        granted_count = len(granted)
    else:
        granted = []
        granted_count = _decide_bulk(request.count, blocked, capacities, denied)
    remaining = _remaining(capacities)
    # When waiting helps some of the denied units: the soonest time it does.
    waits = [_retry_after(state, r, request, now, policy) for r in denied.reasons()]
    retry = min((w for w in waits if w is not None), default=None)
    answer = AdmissionAnswer(
        admission_id=admission_id,
        granted=granted_count,
        denied=denied.items(),
        remaining=remaining,
        retry_after_s=retry,
    )
    return Admission(answer, granted, each)


def _decide_bulk(
    count: int, blocked: str | None, capacities: list[_Capacity], denied: Denials
) -> int:
    """Units granted of `count` units without recipients; the rest go to `denied`."""
    reason = blocked or _exhausted(capacities)
    if reason is not None:
        denied.add(None, reason, count)
        return 0
    lefts = [c.left for c in capacities if c.left is not None]
    granted = min([count, *lefts])
    for capacity in capacities:
        if capacity.left is not None:
            capacity.left -= granted
    if granted < count:  # a limit ran out: the first in order names the units left
        ran_out = _exhausted(capacities)
        assert ran_out is not None
        denied.add(None, ran_out, count - granted)
    return granted


def _decide_recipients(
    state: OAState,
    request: AdmissionRequest,
    now: datetime,
    policy: Policy,
    blocked: str | None,
    capacities: list[_Capacity],
    denied: Denials,
    each: list[Denial | None],
) -> list[str]:
    """The recipients granted, in the order given; the others go to `denied`. `each`
    gets every recipient's outcome in order."""
    granted: list[str] = []
    per_recipient: dict[str, int] = {}  # this request's own tag-3 units per recipient
    for recipient in request.recipients:
        reason = blocked or _exhausted(capacities)
        if reason is None:
            reason = _recipient_reason(state, request.tag, recipient, now, policy, per_recipient)
        if reason is not None:
            each.append(denied.add(recipient, reason))
            continue
        each.append(None)
        for capacity in capacities:
            if capacity.left is not None:
                capacity.left -= 1
        granted.append(recipient)
        per_recipient[recipient] = per_recipient.get(recipient, 0) + 1
    return granted


NAMED_DENIALS = 100
"""Denied recipients an answer names one by one; the others are counted by reason, so that
an answer (kept for its idempotency key for 48 h) stays small whatever was asked."""


class Denials:
    """The denied units of one answer: the first `NAMED_DENIALS` recipients by name, then a
    count per reason (and Zalo error) in the order the reasons first came."""

    def __init__(self) -> None:
        self._named: list[Denial] = []
        self._counted: dict[tuple[str, int | None], int] = {}

    def add(self, recipient: str | None, reason: str, count: int = 1) -> Denial:
        """`reason` as `_blocked`, `_capacities` or `_recipient_reason` give it; the
        denial of these units."""
        code = reason.split(":")[0]
        zalo = -1472 if reason == "recipient_promotion_limit:day" else ZALO_ERRORS[code]
        self.add_item(recipient, code, zalo, count)
        return Denial(recipient=recipient, count=count, reason=code, zalo_error=zalo)

    def add_item(self, recipient: str | None, code: str, zalo: int | None, count: int) -> None:
        if recipient is not None and len(self._named) < NAMED_DENIALS:
            self._named.append(
                Denial(recipient=recipient, count=count, reason=code, zalo_error=zalo)
            )
            return
        key = (code, zalo)
        self._counted[key] = self._counted.get(key, 0) + count

    def reasons(self) -> set[str]:
        return {d.reason for d in self._named} | {code for code, _ in self._counted}

    def items(self) -> list[Denial]:
        counted = [
            Denial(count=count, reason=code, zalo_error=zalo)
            for (code, zalo), count in self._counted.items()
        ]
        return [*self._named, *counted]


def compact(answer: AdmissionAnswer) -> AdmissionAnswer:
    """`answer` with at most `NAMED_DENIALS` recipients named (the rest counted by reason):
    what an idempotency key keeps. An answer `decide` gave is compact already."""
    denials = Denials()
    for item in answer.denied:
        denials.add_item(item.recipient, item.reason, item.zalo_error, item.count)
    return answer.model_copy(update={"denied": denials.items()})


def grantable(
    state: OAState, tag: int, now: datetime, policy: Policy, limits: Mapping[int, Limit]
) -> int | None:
    """Units of `tag` an admission could still be granted today, for any template and
    recipient (None: no limit); 0 when the OA cannot send the tag at all. `limits`: the
    governor's at `now`, asked once for every tag of a read."""
    if _blocked(state, AdmissionRequest("", tag), now, policy) is not None:
        return 0
    return _remaining(_capacities(state, tag, "", now, policy, limits[tag].remaining))


def _blocked(
    state: OAState, request: AdmissionRequest, now: datetime, policy: Policy
) -> str | None:
    """A reason that denies every unit of the request, or None."""
    template = state.templates.get(request.template_id)
    today = policy.day(now)
    if state.suspended:
        return "oa_suspended"
    if template is not None and template.status in NOT_ENABLED:
        return "template_not_enabled"
    if template is not None and (
        template.status == "DISABLE" or template.zalo_quality == "LOW" or template.zalo_disabled
    ):
        return "template_disabled"
    if template is not None and template.paused(int(now.timestamp() * 1000)):
        return "template_paused"
    if not state.tag_allowed(request.tag, today):
        return "tag_not_allowed"
    if template is not None and template.night_restricted and _at_night(now, policy):
        return "night_window"
    return None


def _capacities(
    state: OAState,
    tag: int,
    template_id: str,
    now: datetime,
    policy: Policy,
    governed: int | None,
) -> list[_Capacity]:
    """The limits on units in the order of their reasons; `left` None is no limit.
    `governed`: what the governor still lets the tag be granted today."""
    today = policy.day(now)
    template = state.templates.get(template_id)
    limits = [
        _Capacity("daily_quota_exhausted", state.remaining_today(today)),
        _Capacity(
            "template_daily_quota_exhausted",
            0 if template is not None and template.exhausted_day == today else None,
        ),
    ]
    if tag == 3:
        local = date.fromordinal(today)
        limits.append(
            _Capacity(
                "promotion_monthly_quota_exhausted",
                state.promotion_remaining(local, policy.thresholds),
            )
        )
    limits.append(_Capacity("governor_throttled", governed))
    return limits


def _exhausted(capacities: list[_Capacity]) -> str | None:
    for capacity in capacities:
        if capacity.left is not None and capacity.left <= 0:
            return capacity.reason
    return None


def _remaining(capacities: list[_Capacity]) -> int | None:
    lefts = [c.left for c in capacities if c.left is not None]
    return max(0, min(lefts)) if lefts else None


def _recipient_reason(
    state: OAState,
    tag: int,
    recipient: str,
    now: datetime,
    policy: Policy,
    this_request: dict[str, int],
) -> str | None:
    person = state.recipients.get(recipient)
    today = policy.day(now)
    if person is not None and person.opted_out:
        return "recipient_opted_out"
    if tag != 3:
        return None
    rules, t = state.rule_set(), policy.thresholds
    if person is not None and person.not_eligible:
        return "recipient_not_eligible"
    if t.promotion_needs_tag12 and (
        person is None
        or person.last_tag12_day is None
        or person.last_tag12_day <= today - RECIPIENT_DAYS
    ):
        return "recipient_not_eligible"
    assert person is not None
    month = month_index(date.fromordinal(today))
    extra = this_request.get(recipient, 0)
    if person.limit_month == month or (
        person.promotions_this_month(month) + extra >= rules.promotion_per_recipient_month
    ):
        return "recipient_promotion_limit"
    day_cap = rules.promotion_per_recipient_day
    if person.limit_day == today or (
        day_cap is not None and person.promotions_today(today) + extra >= day_cap
    ):
        return "recipient_promotion_limit:day"
    return None


def _at_night(now: datetime, policy: Policy) -> bool:
    local = now.astimezone(policy.zone).time()
    return local >= NIGHT_START or local < NIGHT_END


def _retry_after(
    state: OAState, reason: str, request: AdmissionRequest, now: datetime, policy: Policy
) -> int | None:
    """Seconds after which asking again can help, for the reasons that end by themselves."""
    zone = policy.zone
    until: datetime | None = None
    if reason in {
        "daily_quota_exhausted",
        "template_daily_quota_exhausted",
        "governor_throttled",
        "tag_not_allowed",
        "recipient_promotion_limit",
    }:
        until = next_day_start(now, zone)
    elif reason == "night_window":
        local = now.astimezone(zone)
        morning = day_start(local.date(), zone) + timedelta(hours=NIGHT_END.hour)
        until = morning if local.time() < NIGHT_END else morning + timedelta(days=1)
    elif reason == "template_paused":
        template = state.templates[request.template_id]
        if template.paused_until is not None and not template.gate_disabled:
            until = datetime.fromtimestamp(template.paused_until / 1000, tz=zone)
    elif reason == "promotion_monthly_quota_exhausted":
        first = add_months(month_start(now.astimezone(zone).date()), 1)
        until = day_start(first, zone)
    if until is None:
        return None
    return max(1, int((until - now).total_seconds() + 0.999))
