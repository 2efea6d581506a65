"""Reading a record of `zns.events` into an `Item`: its kind, its OA, its parsed body and
its event time, or `Unprocessable` with the reason `zns.dlq` records.

It changes no state; the fold applies what it reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from service.domain.events import (
    EVENT_MODELS,
    ChangeOaDailyQuota,
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
from service.domain.records import AdmissionRecord, CommandRecord, SendRecord, SyncRecord

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
    """The event time (docs/rules.md#time-and-windows): delivery, submit, sent time, or the
    `timestamp`; for a command, when the operator asked (see `has_event_time`)."""
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
