"""zns-gate's own records in `zns.events` (kinds `send`, `admission`, `sync`, `command`), and
what the processor writes to `zns.decisions` and `zns.dlq` (docs/architecture.md#topics).

The receiver writes Zalo's raw bodies (kind `webhook`); the API writes the
records here. Every model is the JSON value of one record; `zns-gate schemas`
turns them into the JSON Schemas in `schemas/topics/`. Recipients are stored
as the sha256 of the normalised phone (`recipient_hash`), never as the phone.
This module does no I/O.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.domain.events import ZaloId, ZaloTime

Tag = Literal[1, 2, 3]

_HASHED = re.compile(r"^[0-9a-f]{64}$")


def normalised_phone(phone: str) -> str:
    """A phone in the `84...` form Zalo sends to (`0987654321`, `+84 987 654 321` and
    `84987654321` are one phone). Raises ValueError for something that is not a phone."""
    digits = re.sub(r"[\s().+-]", "", phone.strip())
    if not digits.isdigit() or not 8 <= len(digits) <= 15:
        raise ValueError("not a phone number")
    if digits.startswith("0"):
        return "84" + digits[1:]
    if not digits.startswith("84"):
        return "84" + digits
    return digits


def recipient_hash(recipient: str) -> str:
    """The sha256 (hex) of a phone normalised to the `84...` form; a 64-hex value is
    taken as already hashed (docs/rules.md#recipients-and-phones). Raises ValueError for something
    that is neither."""
    value = recipient.strip().lower()
    if _HASHED.match(value):
        return value
    try:
        return hashlib.sha256(normalised_phone(value).encode()).hexdigest()
    except ValueError:
        raise ValueError("a recipient is a phone number or the sha256 of one") from None


RecipientHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

MAX_ADMISSION_UNITS = 10_000
"""The most units one admission may ask for: with each a named recipient, its record (one
64-hex hash a unit) stays well under the broker's default limit of about 1 MB."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ZaloQuota(BaseModel):
    """The `quota` object of Zalo's answer to a send, as Zalo names its fields."""

    model_config = ConfigDict(extra="allow", frozen=True)

    dailyQuota: int | None = None
    """null: unlimited."""
    remainingQuota: int | None = None


class SendOutcome(_Record):
    """One send a sender made through Zalo, and what Zalo answered (kind `send`)."""

    template_id: ZaloId
    tag: Tag | None = None
    """The template's tag, if the sender knows it."""
    recipient: RecipientHash | None = None
    """The recipient's hash (the API hashes a phone before it writes the record)."""
    tracking_id: str = Field(min_length=1, max_length=200)
    """The sender's own id of the send (Zalo requires one); duplicates are dropped by it."""
    msg_id: ZaloId | None = None
    """Zalo's message id, when the send succeeded."""
    admission_id: str | None = Field(default=None, max_length=200)
    """The admission whose grant this send used, if any."""
    sent_time: ZaloTime
    """Milliseconds since the epoch."""
    error: int | None
    """Zalo's error code; 0 means sent. null only in a send zns-gate made itself: Zalo
    did not answer (the message may have been sent), or, with `not_sent`, the request
    never left."""
    zalo_message: str | None = Field(default=None, max_length=500)
    """Zalo's `message` with an error."""
    not_sent: Literal["zalo_unavailable", "no_token"] | None = None
    """A send zns-gate made that never reached Zalo: Zalo could not be reached, or the
    OA has no valid token. Its unit goes back."""
    quota: ZaloQuota | None = None


class ProxyRequest(_Record):
    """The `POST /messages` request a send was one message of."""

    idempotency_key: str
    index: int = Field(ge=0)
    """The message's place in the request."""


class SendRecord(_Record):
    """The value of a `send` record."""

    oa_id: ZaloId
    send: SendOutcome
    request: ProxyRequest | None = None
    """Set when zns-gate made the send itself: its outcome is kept with the request's
    answer, so that a repeat of the request answers it again."""


class Denial(_Record):
    recipient: RecipientHash | None = None
    count: int = Field(ge=1)
    reason: str
    zalo_error: int | None = None


class AdmissionAnswer(_Record):
    """The answer an admission request got (`POST /v1/oas/{oa_id}/admissions`), kept
    whole for idempotency."""

    admission_id: str
    granted: int = Field(ge=0)
    denied: list[Denial] = Field(default_factory=list)
    remaining: int | None
    retry_after_s: int | None = None


class PlannedMessage(_Record):
    """One message of a `POST /messages` request, as its admission left it."""

    tracking_id: str
    status: Literal["admitted", "denied", "rejected"]
    """admitted: granted, to be sent; denied: the admission refused it; rejected: it
    failed the checks before the admission."""
    reason: str | None = None
    """Why it was denied (a denial reason) or rejected (`invalid_phone`, ...)."""
    param: str | None = None
    """The param of `template_data` that failed the checks."""
    zalo_error: int | None = None
    """For a denial: the Zalo error the same send would have met."""


class AdmissionRecord(_Record):
    """The value of an `admission` record: one decision, written before it is answered."""

    oa_id: ZaloId
    admission_id: str
    idempotency_key: str
    request_hash: str
    """sha256 of the request body, to tell a repeat from a conflicting reuse of the key."""
    template_id: ZaloId
    tag: Tag
    granted_recipients: list[RecipientHash] = Field(default_factory=list)
    """The granted recipients in order; empty when the request named none."""
    at: ZaloTime
    """When the decision was made (milliseconds since the epoch)."""
    answer: AdmissionAnswer
    messages: list[PlannedMessage] | None = Field(default=None, max_length=100)
    """For an admission made by `POST /messages`: every message of the request, in its
    order; the admitted ones are `granted_recipients`, in the same order."""


class SyncTemplateParam(_Record):
    """One of a template's params as Zalo lists it (`listParams`): what a value of
    `template_data` must be."""

    name: str
    require: bool = True
    type: str | None = None
    """Zalo's type of the value, e.g. `STRING`, `NUMBER`, `DATE`."""
    min_length: int | None = None
    max_length: int | None = None
    accept_null: bool = False


class SyncTemplate(_Record):
    template_id: ZaloId
    status: str | None = None
    quality: str | None = None
    tag: Tag | None = None
    params: list[SyncTemplateParam] | None = Field(default=None, max_length=100)
    """The template's params (left out: not read; a sync with them replaces those known)."""


class SyncRecord(_Record):
    """The value of a `sync` record: values read from Zalo's own API, as of `as_of`.

    A field left out is not known; `daily_quota` given as null means unlimited.
    """

    oa_id: ZaloId
    as_of: ZaloTime
    source: Literal["zalo", "operator"] | None = None
    """Who read the values: zns-gate's poller (`zalo`) or an operator; left out in older
    records (an operator's)."""
    daily_quota: int | None = None
    remaining_quota: int | None = Field(default=None, ge=0)
    quality_48h: str | None = None
    quality_7d: str | None = None
    allowed_tags: list[Tag] | None = None
    monthly_promotion_quota: int | None = Field(default=None, ge=0)
    remaining_monthly_promotion_quota: int | None = Field(default=None, ge=0)
    templates: list[SyncTemplate] = Field(default_factory=list, max_length=1000)

    @field_validator("quality_48h", "quality_7d")
    @classmethod
    def _level(cls, value: str | None) -> str | None:
        if value is not None and value not in {"HIGH", "MEDIUM", "LOW", "UNDEFINED"}:
            raise ValueError("a level is HIGH, MEDIUM, LOW or UNDEFINED")
        return value


class CommandRecord(_Record):
    """The value of a `command` record: an operator's action."""

    oa_id: ZaloId
    action: Literal["resume_oa", "resume_template"]
    template_id: ZaloId | None = None
    at: ZaloTime


class Source(_Record):
    """Where in the log the record that caused something sits."""

    topic: str
    partition: int
    offset: int


class DecisionRecord(_Record):
    """A value of `zns.decisions`: one change of a quality level, a tier, a penalty, a pause,
    a suspension or of an OA's Zalo token (`token_dead`), or a warning (kind `warning`,
    rule `penalty_near`, `tier_down_likely` or `token_expiring`), with what caused it."""

    decision_id: str
    """Made from the source's partition and offset and the rule: the same on a repeat."""
    oa_id: str
    template_id: str | None = None
    kind: Literal[
        "quality", "tier", "penalty", "pause", "suspension", "template", "token", "warning"
    ]
    rule: str
    """What fired, e.g. `evaluation_up`, `penalty`, `zalo_change_oa_daily_quota`."""
    before: Any
    after: Any
    inputs: dict[str, Any]
    """The counts, window bounds and thresholds the rule looked at."""
    at: str
    """When it took effect, ISO 8601 in the configured zone (a day change: its midnight)."""
    source: Source


class DeadLetter(_Record):
    """A value of `zns.dlq`: a record of `zns.events` the processor could not apply."""

    reason: str
    """`no_oa_id`, `malformed_record`, `unknown_kind` or `apply_failed`."""
    error: str
    source: Source
    kind: str | None = None
    key: str | None = None
    value: str
    """The record's value, as text (invalid UTF-8 replaced)."""
    headers: dict[str, str] = Field(default_factory=dict)


class NotifyDeadLetter(_Record):
    """A value of `zns.notify-dlq`: a decision a notification target did not take (2xx)
    within the retry window; its cursor moved on."""

    target: str
    """The target's label (`[[notify]] name`, or the URL's host and port)."""
    url: str
    attempts: int = Field(ge=1)
    first_attempt_at: str
    """ISO 8601 (UTC)."""
    last_error: str
    """The last answer's status (`http_500`), or `timeout` / `unreachable`."""
    source: Source
    """The decision's place in `zns.decisions`."""
    decision: DecisionRecord
