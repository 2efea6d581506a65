"""Grants and admissions: what an admission consumes when it is made, the first answer
kept under its idempotency key, the units that go back when no send reported them within
`grant_ttl`, and how sends and receipts settle a grant's units.
"""

from __future__ import annotations

import bisect
import dataclasses
from datetime import date, datetime
from typing import Any

from service.domain.admission import compact
from service.domain.fold.context import Run, to_ms
from service.domain.fold.tier import first_send
from service.domain.records import AdmissionRecord
from service.domain.state import Grant, Message, OAState
from service.domain.windows import DailyCounts, month_index


def admission(run: Run, record: AdmissionRecord, at: datetime) -> None:
    state = run.state
    # The first answer under a key is the answer, kept compact (a record written before
    # answers were compact may name every denied recipient).
    entry: list[Any] = [
        to_ms(at),
        record.request_hash,
        compact(record.answer).model_dump(mode="json"),
    ]
    if record.messages is not None:
        # A send made through zns-gate: its messages, and (as their send records come)
        # their outcomes, so that a repeat of the request is answered from the log.
        entry += [[m.model_dump(exclude_none=True) for m in record.messages], {}]
        if record.idempotency_key not in state.idempotency:
            reserve(state, record, to_ms(at))
    state.idempotency.setdefault(record.idempotency_key, entry)
    granted = record.answer.granted
    if granted == 0 or record.admission_id in state.grants:
        return
    day = run.policy.day(at)
    first_send(run, day)
    state.grants[record.admission_id] = Grant(
        day, record.tag, record.template_id, granted, to_ms(at)
    )
    wait_in_turn(state, record.admission_id)
    consume(run, day, granted)
    state.granted.setdefault(str(record.tag), DailyCounts()).add(day, granted)
    template = state.template(record.template_id)
    if template.tag is None:
        template.tag = record.tag
    if record.tag == 3:
        promotion_used(run, day, granted, record.granted_recipients)


ADMITTED = "admitted:"
"""The dedup key of a tracking id admitted for a send through zns-gate: no later request
may use it again, sent or not yet, also after a crash between the admission and the send
(Zalo would bill the same message twice)."""


def reserve(state: OAState, record: AdmissionRecord, at_ms: int) -> None:
    for message in record.messages or ():
        if message.status == "admitted":
            state.dedup[ADMITTED + message.tracking_id] = at_ms


def consume(run: Run, day: int, units: int) -> None:
    run.state.consumed.add(day, units)


def promotion_used(run: Run, day: int, units: int, recipients: list[str]) -> None:
    """Tag-3 units taken from the month's promotion quota, and from each recipient's day
    and month."""
    state = run.state
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


def expire_grants(run: Run) -> None:
    """Granted units no send has reported within `grant_ttl` go back.

    `open_grants` is in the order of the grants' times (`wait_in_turn`), so only its
    front is looked at: closed grants leave it there, expired ones give their units back.
    """
    state = run.state
    cutoff = to_ms(run.now - run.thresholds.grant_ttl)
    waiting = state.open_grants
    while waiting:
        grant = state.grants.get(waiting[0])
        if grant is not None and grant.open > 0:
            if grant.at_ms > cutoff:
                return
            # A new Grant, not a change to the old: copies of the state made to answer
            # a request share their grants with the live state (`served_copy`).
            grant = state.grants[waiting[0]] = dataclasses.replace(grant)
            give_back(run, grant, grant.open)
        waiting.pop(0)


def reopen(run: Run, admission_id: str, grant: Grant) -> None:
    """A grant has an open unit again: it expires in its turn, by its time."""
    if admission_id not in run.state.open_grants:
        wait_in_turn(run.state, admission_id)


def wait_in_turn(state: OAState, admission_id: str) -> None:
    """Put a grant among the open ones in the order of its time (and id, for grants made
    in the same millisecond). A new grant is almost always the newest; one folded after
    newer ones (its record was written late, or the processor met it after a newer one
    was applied ahead) still goes where the same records in log order put it."""
    waiting, grants = state.open_grants, state.grants

    def turn(key: str) -> tuple[int, str]:
        found = grants.get(key)
        return (found.at_ms if found is not None else 0, key)

    mine = turn(admission_id)
    if not waiting or turn(waiting[-1]) <= mine:
        waiting.append(admission_id)
        return
    turns = [turn(key) for key in waiting]
    waiting.insert(bisect.bisect_right(turns, mine), admission_id)


def give_back(run: Run, grant: Grant, units: int) -> None:
    state = run.state
    grant.returned += units
    state.consumed.add(grant.day, -units)
    if grant.day == state.zalo_remaining_day and grant.at_ms <= state.zalo_remaining_at:
        # Zalo's figure never counted these unsent units: their going back raises nothing.
        state.zalo_remaining_base -= units
    state.granted[str(grant.tag)].add(grant.day, -units)
    if grant.tag == 3:
        state.promo_used_month.add(month_index(date.fromordinal(grant.day)), -units)


def settle_unsent(run: Run, message: Message, day: int) -> None:
    """A receipt with no send record: it settles one open unit of that day's grants,
    or, with none open, consumes a unit itself (docs/rules.md#counting-against-the-quota). Which
    grant it was is not known, so the message does not take the grant's template or tag."""
    grants = run.state.grants
    for admission_id in run.state.open_grants:
        grant = grants.get(admission_id)
        if grant is not None and grant.day == day and grant.open > 0:
            grant.settled += 1
            message.settled = admission_id
            return
    consume(run, day, 1)
    message.consumed = True


def settle_with_grant(
    run: Run, message: Message | None, grant: Grant, admission_id: str, day: int
) -> bool:
    """A send that names its admission uses that grant and consumes nothing more; False
    when the grant has no unit left (it went back, or others settled them all): the send
    then counts as one without an admission, and what its receipt took is undone."""
    if message is not None and message.settled == admission_id:
        return True
    if message is not None and message.settled is not None:
        earlier = run.state.grants.get(message.settled)
        if earlier is not None:
            earlier.settled -= 1  # the receipt guessed another grant; move the unit
            reopen(run, message.settled, earlier)
        message.settled = None
    elif message is not None and message.consumed:
        consume(run, message.day, -1)  # the receipt had consumed a unit for it
        message.consumed = False
    if grant.open <= 0:
        return False
    grant.settled += 1
    if message is not None:
        message.settled = admission_id
    return True
