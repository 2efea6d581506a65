"""Zalo's ZNS webhook events as pydantic models, and the few facts every reader needs.

Zalo sends ids and times as strings (ids are long integers that overflow a
double); the models keep them as strings, accept a JSON number as its decimal
digits, and offer typed accessors (`as_datetime`). Fields Zalo may add later are
kept, never rejected (`extra="allow"`). Payload shapes and their sources are in
docs/rules.md#event-payloads. This module does no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# --- ids and times ---------------------------------------------------------------------


def id_as_string(value: object) -> object:
    """An id or time written as a JSON number becomes its decimal digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# The length comes before the converter: pydantic then checks it in its compiled core after
# the conversion, where after it, it would wrap every id in a Python check (the fold reads
# several ids per record). (ZaloTime's pattern stays after it: its JSON Schema says so.)
ZaloId = Annotated[str, Field(min_length=1), BeforeValidator(id_as_string)]
"""An id as Zalo sends it: a string of (usually) digits, never an int."""

ZaloTime = Annotated[str, BeforeValidator(id_as_string), Field(pattern=r"^-?\d{1,16}$")]
"""Milliseconds since the epoch, as a string of digits."""


def as_datetime(ms: str) -> datetime:
    """A Zalo time (milliseconds since the epoch, as digits) as an aware UTC datetime."""
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


# --- parsing raw bodies ------------------------------------------------------------------


class MalformedBody(ValueError):
    """The body is not a JSON object."""


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# A number token of 19 or more digits: beyond what orjson reads exactly.
_LONG_NUMBER = re.compile(rb"[:\[,]\s*-?\d{19,}")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in `raw`, with every integer exact.

    orjson reads the body. It turns integers beyond 64 bits into floats, which
    loses digits of an id that a sender wrote as a number; a body that may
    hold one is read again by the standard library, whose integers are exact.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(str(exc)) from exc
    if _LONG_NUMBER.search(raw):
        try:
            value = json.loads(raw, parse_constant=_refuse_constant)
        except RecursionError as exc:  # orjson nests deeper than Python's stack allows
            raise MalformedBody("the body nests too deeply") from exc
    if not isinstance(value, dict):
        raise MalformedBody("the body is not a JSON object")
    return value


def text_of(value: object) -> str | None:
    """A string field, or an integer written as a number, as a non-empty string; else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _nested(body: dict[str, Any], outer: str, inner: str) -> object:
    part = body.get(outer)
    return part.get(inner) if isinstance(part, dict) else None


def find_oa_id(body: dict[str, Any]) -> str | None:
    """The OA id, wherever this event puts it: `oa_id`, `oaId` or `sender.id`.

    Feedback, quick replies and template events use `oa_id`; the daily-quota
    event uses `oaId`; a delivery receipt names the OA as its `sender`. Only a
    receipt: in the chat events a user sends, the sender is the user.
    """
    named = oa_ids_named(body)
    return named[0] if named else None


def oa_ids_named(body: dict[str, Any]) -> list[str]:
    """Every OA id the event names, in the order `find_oa_id` looks (distinct). More than
    one is a body no Zalo event has: the receiver refuses it, since the record's key and
    the OA the fold applies it to could differ."""
    candidates = [body.get("oa_id"), body.get("oaId")]
    if body.get("event_name") == "user_received_message":
        candidates.append(_nested(body, "sender", "id"))
    named: list[str] = []
    for candidate in candidates:
        found = text_of(candidate)
        if found is not None and found not in named:
            named.append(found)
    return named


def find_msg_id(body: dict[str, Any]) -> str | None:
    """The message id: `message.msg_id`, or the top-level `msg_id` of a quick reply."""
    return text_of(_nested(body, "message", "msg_id")) or text_of(body.get("msg_id"))


def dedup_key(body: dict[str, Any], raw: bytes) -> str:
    """The key under which duplicates of this delivery are recognised
    (docs/rules.md#webhook-retries-and-dedup-keys).

    Message events: event name and message id. Management events: event name,
    template or OA id, and timestamp. Anything else: the sha256 of the body.
    """
    event_name = text_of(body.get("event_name"))
    if event_name is not None:
        msg_id = find_msg_id(body)
        if msg_id is not None:
            return f"{event_name}:{msg_id}"
        subject = text_of(body.get("template_id")) or find_oa_id(body)
        timestamp = text_of(body.get("timestamp"))
        if subject is not None and timestamp is not None:
            return f"{event_name}:{subject}:{timestamp}"
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# --- the events ------------------------------------------------------------------------


class _Part(BaseModel):
    """A nested object of a payload; unknown fields are kept."""

    model_config = ConfigDict(extra="allow", frozen=True, use_attribute_docstrings=True)


class ZaloEvent(_Part):
    """Fields every Zalo webhook carries."""

    event_name: str
    app_id: ZaloId
    """The app the webhook belongs to (its secret signs the body)."""
    timestamp: ZaloTime
    """When Zalo emitted the event (not when the user acted)."""

    @property
    def emitted_at(self) -> datetime:
        return as_datetime(self.timestamp)


class Party(_Part):
    id: ZaloId


class DeliveryMessage(_Part):
    delivery_time: ZaloTime
    """When the handset received the message: the event time of a receipt."""
    msg_id: ZaloId
    tracking_id: str | None = None
    """The sender's own id for the send (`tracking_id` of the send request)."""

    @property
    def delivered_at(self) -> datetime:
        return as_datetime(self.delivery_time)


class UserReceivedMessage(ZaloEvent):
    """A ZNS delivery receipt (`X-ZEvent-Server: ZNS`): the message reached the handset."""

    event_name: Literal["user_received_message"]
    sender: Party
    """The OA that sent the message."""
    recipient: Party
    """The recipient's phone (84...) or its sha256, as the send named it."""
    message: DeliveryMessage


class FeedbackMessage(_Part):
    msg_id: ZaloId
    tracking_id: str | None = None
    rate: int = Field(ge=1, le=5)
    """Stars given, 1 to 5."""
    note: str | None = None
    """The user's free text. Never logged, never kept in state."""
    feedbacks: list[str] = Field(default_factory=list)
    """Answer chips the user ticked. Never logged, never kept in state."""
    submit_time: ZaloTime
    rating_type: str | None = None
    option: str | None = None

    @property
    def submitted_at(self) -> datetime:
        return as_datetime(self.submit_time)


class UserFeedback(ZaloEvent):
    """A star rating of a rating template (at most one per message)."""

    event_name: Literal["user_feedback"]
    oa_id: ZaloId
    message: FeedbackMessage


class QuickReplyMessage(_Part):
    submit_time: ZaloTime
    button_type: str | None = None
    data: str
    """The label of the button the user pressed."""
    tracking_id: str | None = None

    @property
    def submitted_at(self) -> datetime:
        return as_datetime(self.submit_time)


class UserClickResponseButton(ZaloEvent):
    """A quick-reply answer; its message id sits at the top level."""

    event_name: Literal["user_click_response_button"]
    oa_id: ZaloId
    msg_id: ZaloId
    message: QuickReplyMessage


class StatusChange(_Part):
    prev_status: str | None = None
    new_status: str
    """One of ENABLE, PENDING_REVIEW, REJECT, DISABLE, DELETE (DRAFT seen once)."""


class ChangeTemplateStatus(ZaloEvent):
    event_name: Literal["change_template_status"]
    oa_id: ZaloId
    template_id: ZaloId
    status: StatusChange
    reason: str | None = None


class ChangeTemplateQuality(ZaloEvent):
    event_name: Literal["change_template_quality"]
    oa_id: ZaloId
    template_id: ZaloId
    quality: str
    """HIGH, MEDIUM, LOW or UNDEFINED (kept as sent should Zalo add a value)."""


class QuotaChange(_Part):
    prev_value: int | None = None
    new_value: int | None = None
    """The new daily quota (messages a day)."""


class ChangeOaDailyQuota(ZaloEvent):
    """The OA's daily quota moved (evaluation, penalty or a manual change). Note `oaId`."""

    event_name: Literal["change_oa_daily_quota"]
    oaId: ZaloId
    quota: QuotaChange


class GenericEvent(ZaloEvent):
    """An event whose payload is only partly known (or not known at all); every field is kept.

    Covers `change_oa_template_tags`, `change_template_quota`,
    `event_journey_acknowledged`, `event_journey_time_out`, `oa_send_template`,
    `permission_revoked`, chat receipts without `X-ZEvent-Server: ZNS`, and
    any name Zalo adds later.
    """


EVENT_MODELS: dict[str, type[ZaloEvent]] = {
    "user_received_message": UserReceivedMessage,
    "user_feedback": UserFeedback,
    "user_click_response_button": UserClickResponseButton,
    "change_template_status": ChangeTemplateStatus,
    "change_template_quality": ChangeTemplateQuality,
    "change_oa_daily_quota": ChangeOaDailyQuota,
}


def parse_event(body: dict[str, Any], server: str | None = None) -> ZaloEvent:
    """The model of this event. Raises pydantic's ValidationError if a known event is malformed.

    `user_received_message` is a ZNS receipt only with `X-ZEvent-Server: ZNS`;
    the chat event of the same name becomes a `GenericEvent`.
    """
    name = body.get("event_name")
    model = EVENT_MODELS.get(name) if isinstance(name, str) else None
    if model is UserReceivedMessage and (server or "").upper() != "ZNS":
        model = None
    return (model or GenericEvent).model_validate(body)
