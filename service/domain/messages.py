"""The send proxy's messages (`POST /v1/oas/{oa_id}/messages`): the checks a message passes
before it takes a unit, its tracking id, and its answer, rebuilt from what the log holds.

A message is checked for its phone (normalised to `84...`, or a sha256 given as
`hash_phone`), its tracking id (made from the idempotency key when not given; at most
48 of `A-Z a-z 0-9 _ . : -`, once per request, and not used by a send already
recorded) and its `template_data` against the template's `params` as the poller read
them from Zalo (a template whose params are not known is sent as given). The checks
are the ones Zalo makes (-108, -1121, -1122), so a message that fails them is refused
before Zalo charges or rejects it. This module does no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.domain.records import Denial, PlannedMessage, normalised_phone, recipient_hash

TRACKING_ID = re.compile(r"[A-Za-z0-9_.:-]{1,48}")
"""What Zalo takes as a tracking id (it asks for at most 48 characters and no special ones)."""

HASH_PHONE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message as the sender asked for it."""

    template_id: str
    phone: str | None
    hash_phone: str | None
    template_data: Mapping[str, str]
    """Values as strings, as they are sent."""
    tracking_id: str | None


@dataclass(frozen=True, slots=True)
class Checked:
    """One message after the checks: `rejected` is None when it passed."""

    tracking_id: str
    recipient: str | None
    """The sha256 of the phone (what the records keep); None when rejected."""
    to: str | None
    """What Zalo is sent: the normalised phone, or the hash for `/hashphone`."""
    rejected: str | None = None
    param: str | None = None


def tracking_id_for(idempotency_key: str, index: int) -> str:
    """The tracking id of the message at `index` of a request that gave none: the key and
    the index when they fit Zalo's limits, else a hash of the key and the index."""
    made = f"{idempotency_key}-{index}"
    if TRACKING_ID.fullmatch(made):
        return made
    return f"zg-{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}-{index}"


def check(
    messages: Sequence[Outgoing],
    idempotency_key: str,
    params: list[dict[str, Any]] | None,
    recorded: Callable[[str], bool],
) -> list[Checked]:
    """Each message checked, in order. `params`: the template's known `listParams`
    (None: not known); `recorded(tracking_id)`: a send with it is recorded already."""
    out: list[Checked] = []
    seen: set[str] = set()
    for index, message in enumerate(messages):
        tracking = message.tracking_id or tracking_id_for(idempotency_key, index)
        reason, param = _tracking_refused(tracking, seen, recorded)
        seen.add(tracking)
        recipient = to = None
        if reason is None:
            recipient, to = _recipient(message)
            if recipient is None:
                reason = "invalid_phone"
        if reason is None and params is not None:
            param = _data_refused(message.template_data, params)
            if param is not None:
                reason = "invalid_template_data"
        if reason is not None:
            out.append(Checked(tracking, None, None, reason, param))
        else:
            out.append(Checked(tracking, recipient, to))
    return out


def _tracking_refused(
    tracking: str, seen: set[str], recorded: Callable[[str], bool]
) -> tuple[str | None, None]:
    if not TRACKING_ID.fullmatch(tracking) or tracking in seen or recorded(tracking):
        return "invalid_tracking_id", None
    return None, None


def _recipient(message: Outgoing) -> tuple[str | None, str | None]:
    """(the hash the records keep, what Zalo is sent), or (None, None) for a bad phone."""
    if message.hash_phone is not None:
        hashed = message.hash_phone.strip().lower()
        return (hashed, hashed) if HASH_PHONE.fullmatch(hashed) else (None, None)
    if message.phone is None:
        return None, None
    try:
        phone = normalised_phone(message.phone)
    except ValueError:
        return None, None
    return recipient_hash(phone), phone


def _data_refused(data: Mapping[str, str], params: list[dict[str, Any]]) -> str | None:
    """The first param `data` does not satisfy, as Zalo checks them: a required one
    missing or empty (unless it accepts null), a value too short or too long."""
    for param in params:
        name = str(param.get("name", ""))
        text = data.get(name) or ""
        if text == "":
            if param.get("require", True) and not param.get("accept_null", False):
                return name
            continue
        shortest, longest = param.get("min_length"), param.get("max_length")
        if (shortest is not None and len(text) < shortest) or (
            longest is not None and len(text) > longest
        ):
            return name
    return None


def planned(checked: Sequence[Checked], each: Sequence[Denial | None]) -> list[PlannedMessage]:
    """Every message as the admission leaves it: `each` holds the admission's outcome of
    every message that passed the checks, in order (None: granted)."""
    outcomes = iter(each)
    out: list[PlannedMessage] = []
    for message in checked:
        if message.rejected is not None:
            out.append(
                PlannedMessage(
                    tracking_id=message.tracking_id,
                    status="rejected",
                    reason=message.rejected,
                    param=message.param,
                )
            )
            continue
        denial = next(outcomes)
        if denial is None:
            out.append(PlannedMessage(tracking_id=message.tracking_id, status="admitted"))
        else:
            out.append(
                PlannedMessage(
                    tracking_id=message.tracking_id,
                    status="denied",
                    reason=denial.reason,
                    zalo_error=denial.zalo_error,
                )
            )
    return out


def result_of(message: PlannedMessage, outcome: Mapping[str, Any] | None) -> dict[str, Any]:
    """A message's entry of the answer: from its plan, and for an admitted one from its
    recorded outcome (`outcome_of`); an admitted one with no outcome recorded is
    `unknown` (zns-gate may have sent it before it stopped: it never sends it again)."""
    if message.status == "rejected":
        return _without_none(
            tracking_id=message.tracking_id,
            status="rejected",
            reason=message.reason,
            param=message.param,
        )
    if message.status == "denied":
        return _without_none(
            tracking_id=message.tracking_id,
            status="denied",
            reason=message.reason,
            zalo_error=message.zalo_error,
        )
    if outcome is None:
        return {"tracking_id": message.tracking_id, "status": "unknown"}
    return {"tracking_id": message.tracking_id, **outcome}


def _without_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
