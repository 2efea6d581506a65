"""The shapes of the `/v1` API (docs/api.md): request bodies and answers, as pydantic models.

Request bodies are validated with these models; answers are built by
`service/api/views.py` as plain JSON and described here, field for field
(`extra="forbid"`: a field the views add without adding it here fails the
contract tests). `service/api/openapi.py` builds `schemas/openapi.json` from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from service.domain.events import id_as_string
from service.domain.records import (
    MAX_ADMISSION_UNITS,
    AdmissionAnswer,
    SendOutcome,
    SyncRecord,
    SyncTemplate,
    SyncTemplateParam,
    Tag,
    ZaloQuota,
    recipient_hash,
)

Level = Literal["HIGH", "MEDIUM", "LOW", "UNDEFINED"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)


# --- the bounds of what the API takes -------------------------------------------------------
#
# Every value that reaches the fold through the API is bounded here, at the door, so that no
# request can write a record that stops the processor or grants without end. The records'
# own models (service/domain/records.py) stay as lenient as they always were: records
# already in the log must fold the same way on a replay.

GateId = Annotated[
    str,
    BeforeValidator(id_as_string),
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"),
]
"""An OA or template id: at most 64 of `A-Z a-z 0-9 _ . -`, so that it is safe in a path,
a key and a log line."""

TrackingId = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9_.:-]+$")]
"""A sender's id of one send, as Zalo restricts it: at most 48 of `A-Z a-z 0-9 _ . : -`."""

MAX_QUOTA = 10_000_000
QuotaValue = Annotated[int, Field(ge=0, le=MAX_QUOTA)]
"""A quota or what remains of one, in messages: far above any tier Zalo gives, so a wrong
value cannot grant without end."""

SyncText = Annotated[str, Field(max_length=64)]
"""A value read from Zalo in a sync (a status, a level): Zalo's are short words."""


def _remaining_within(daily: int | None, remaining: int | None, field: str) -> None:
    if daily is not None and remaining is not None and remaining > daily:
        raise ValueError(f"{field}: what remains is above the daily quota")


# --- request bodies -------------------------------------------------------------------------


class SendQuota(ZaloQuota):
    """The `quota` Zalo answered a send with, as the sender reports it."""

    dailyQuota: QuotaValue | None = None
    """null: unlimited."""
    remainingQuota: QuotaValue | None = None

    @model_validator(mode="after")
    def _within(self) -> SendQuota:
        _remaining_within(self.dailyQuota, self.remainingQuota, "remainingQuota")
        return self


class SendItem(SendOutcome):
    """A send as a sender reports it: the recipient may be a phone; it is hashed here."""

    template_id: GateId
    tracking_id: TrackingId
    """The sender's own id of the send (Zalo requires one); duplicates are dropped by it."""
    quota: SendQuota | None = None
    error: int
    """Zalo's error code; 0 means sent."""
    not_sent: None = None
    """Only in the sends zns-gate makes itself."""

    recipient: str | None = None
    """The phone number (any common Vietnamese form) or the sha256 of its `84…` form."""

    @field_validator("recipient")
    @classmethod
    def _hashed(cls, value: str | None) -> str | None:
        return None if value is None else recipient_hash(value)


class SendsBody(_Model):
    """`POST /v1/oas/{oa_id}/sends`."""

    sends: list[SendItem] = Field(min_length=1, max_length=1000)


class SyncTemplateParamBody(SyncTemplateParam):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    type: SyncText | None = None
    min_length: Annotated[int, Field(ge=0, le=100_000)] | None = None
    max_length: Annotated[int, Field(ge=0, le=100_000)] | None = None


class SyncTemplateBody(SyncTemplate):
    template_id: GateId
    status: SyncText | None = None
    quality: SyncText | None = None
    params: list[SyncTemplateParamBody] | None = Field(default=None, max_length=100)  # type: ignore[assignment]


class SyncBody(SyncRecord):
    """`POST /v1/oas/{oa_id}/sync` (the OA is the path's)."""

    oa_id: GateId
    daily_quota: QuotaValue | None = None
    remaining_quota: QuotaValue | None = None
    monthly_promotion_quota: QuotaValue | None = None
    remaining_monthly_promotion_quota: QuotaValue | None = None
    templates: list[SyncTemplateBody] = Field(default_factory=list, max_length=1000)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _within(self) -> SyncBody:
        _remaining_within(self.daily_quota, self.remaining_quota, "remaining_quota")
        return self


class AdmissionBody(_Model):
    """`POST /v1/oas/{oa_id}/admissions`."""

    template_id: GateId
    tag: Tag | None = None
    """1, 2 or 3; may be left out when the template's tag is known."""
    recipients: list[str] | None = Field(default=None, max_length=MAX_ADMISSION_UNITS)
    """Phones or sha256 hashes of phones, in the order they should be granted (at most
    `api.max_admission_units`)."""
    count: int | None = Field(default=None, ge=1, le=MAX_ADMISSION_UNITS)
    """Units asked for (at most `api.max_admission_units`); default the number of
    recipients, or 1."""
    idempotency_key: str = Field(min_length=1, max_length=200)
    """The same key with the same body gets the first answer again."""

    @field_validator("recipients")
    @classmethod
    def _hashed(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [recipient_hash(r) for r in value]

    @model_validator(mode="after")
    def _count_matches(self) -> AdmissionBody:
        given = self.recipients is not None and self.count is not None
        if given and self.count != len(self.recipients or ()):
            raise ValueError("count differs from the number of recipients")
        return self


TemplateValue = (
    Annotated[str, Field(max_length=2000)]
    | int
    | Annotated[float, Field(allow_inf_nan=False)]
    | bool
    | None
)
"""A value of `template_data`: sent to Zalo as a string (true/false as `true`/`false`, a
number as Python writes it, e.g. `1e+16`: send a string to choose the form)."""


class MessageItem(_Model):
    """One message of `POST /v1/oas/{oa_id}/messages`."""

    template_id: GateId
    tag: Tag | None = None
    """May be left out when the template's tag is known."""
    phone: Annotated[str, Field(max_length=32)] | None = None
    """The recipient's phone, in any common form; it is sent as `84…`."""
    hash_phone: Annotated[str, Field(max_length=64)] | None = None
    """Instead of `phone`: the sha256 (hex) of the `84…` phone (sent by `/hashphone`)."""
    template_data: dict[Annotated[str, Field(max_length=64)], TemplateValue] = Field(
        max_length=100
    )
    tracking_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """Your id of the message (at most 48 of `A-Z a-z 0-9 _ . : -`); made from the
    idempotency key and the message's place when left out."""

    @model_validator(mode="after")
    def _one_recipient(self) -> MessageItem:
        if (self.phone is None) == (self.hash_phone is None):
            raise ValueError("give phone or hash_phone, one of them")
        return self


class MessagesBody(_Model):
    """`POST /v1/oas/{oa_id}/messages`: messages of one template, sent through Zalo."""

    idempotency_key: str = Field(min_length=1, max_length=200)
    """The same key with the same body gets the first answer again, and sends nothing."""
    mode: Literal["development", "production"] | None = None
    """Zalo's mode (development sends reach only the app's admins); default `zalo.mode`."""
    messages: list[MessageItem] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one_template(self) -> MessagesBody:
        first = self.messages[0]
        for i, message in enumerate(self.messages):
            if message.template_id != first.template_id or message.tag != first.tag:
                raise ValueError(
                    f"messages.{i}: one template and tag per request (they share one admission)"
                )
        return self


# --- answers --------------------------------------------------------------------------------


class ErrorDetail(_Model):
    code: str
    """Machine-readable: `malformed_json`, `invalid_request`, `tag_required`, `restoring`, ..."""
    message: str


class ErrorBody(_Model):
    """Every error answer: `{"error": {"code", "message"}}`, the code machine-readable."""

    error: ErrorDetail


class ByTag(_Model):
    """What each tag may still be granted today, after the governor (null: no limit)."""

    tag1: int | None = Field(alias="1")
    tag2: int | None = Field(alias="2")
    tag3: int | None = Field(alias="3")


class Promotion(_Model):
    monthly_quota: int | None
    remaining_month: int | None
    estimated_next_month: int | None


class Penalty(_Model):
    """A limit in force now, with its reason."""

    kind: Literal["suspension", "penalty", "governor", "template_disabled", "template_paused"]
    reason: str | None
    tag: int | None = None
    remaining: int | None = None
    template_id: str | None = None
    until: AwareDatetime | None = None


class QuotaAnswer(_Model):
    """`GET /v1/oas/{oa_id}/quota`."""

    oa_id: str
    rules: str
    daily_quota: int | None
    """null: unlimited."""
    remaining_today: int | None
    resets_at: AwareDatetime
    tier_changed_at: AwareDatetime | None
    next_evaluation_at: AwareDatetime | None
    allowed_tags: list[int]
    by_tag: ByTag
    promotion: Promotion
    suspended: bool
    penalties: list[Penalty]


class ZaloQuotaData(_Model):
    dailyQuota: int | None
    remainingQuota: int | None
    dailyQuotaPromotion: int | None
    remainingQuotaPromotion: int | None
    monthlyPromotionQuota: int | None
    remainingMonthlyPromotionQuota: int | None
    estimatedNextMonthPromotionQuota: int | None


class ZaloQuotaAnswer(_Model):
    """`GET /v1/oas/{oa_id}/message/quota`: the shape of Zalo's own quota endpoint."""

    error: int
    message: str
    data: ZaloQuotaData


class ProxyQuality(_Model):
    delivered_48h: int
    negatives_48h: int
    delivered_7d: int
    negatives_7d: int
    quality_48h: Level
    quality_7d: Level


class ZaloQuality(_Model):
    quality_48h: str | None
    quality_7d: str | None
    as_of: AwareDatetime | None
    fresh: bool


class Rates(_Model):
    rate_48h: float | None = Field(alias="48h")
    rate_7d: float | None = Field(alias="7d")


class QualityThresholds(_Model):
    z: float
    rate_standard: float
    rate_limit: float
    penalty_threshold_today: int | None


class Forecast(_Model):
    next_evaluation_at: AwareDatetime | None
    projected_daily_quota: int | None
    negatives_today: int
    negatives_before_penalty: int | None


class QualityAnswer(_Model):
    """`GET /v1/oas/{oa_id}/quality`."""

    oa_id: str
    quality_48h: Level
    quality_7d: Level
    tier_basis: Literal["zalo", "proxy"]
    score: int | None
    proxy: ProxyQuality
    zalo: ZaloQuality
    used: Literal["worse_of_zalo_and_proxy", "proxy"]
    rates: Rates
    thresholds: QualityThresholds
    explanation: list[str]
    forecast: Forecast


class TemplateCounts(_Model):
    delivered_7d: int
    negatives_7d: int
    sent_ok_today: int


class TemplateParamAnswer(_Model):
    """One of the template's params as Zalo lists them (`listParams`)."""

    name: str
    require: bool
    type: str | None
    min_length: int | None
    max_length: int | None
    accept_null: bool


class TemplateAnswer(_Model):
    """`GET /v1/oas/{oa_id}/templates/{template_id}`."""

    template_id: str
    tag: int | None
    status: str | None
    zalo_quality: str | None
    proxy_quality_7d: Level
    paused: bool
    paused_until: AwareDatetime | None
    disabled_by_gate: bool
    disabled_by_send_error: bool
    night_restricted: bool
    params: list[TemplateParamAnswer] | None
    """Zalo's params of the template from the last sync that read them; null while unknown."""
    counts: TemplateCounts


class TemplatesAnswer(_Model):
    """`GET /v1/oas/{oa_id}/templates`."""

    templates: list[TemplateAnswer]


class OASummary(_Model):
    oa_id: str
    rules: str
    daily_quota: int | None
    remaining_today: int | None
    quality_48h: Level
    quality_7d: Level
    suspended: bool
    templates: int
    negatives_today: int
    """Negative signals counted today (the proxy)."""
    penalty_threshold_today: int | None
    """T: the tier drops one step on the first negative beyond it (null: unlimited)."""


class HistoryHour(_Model):
    at: AwareDatetime
    """The hour's start."""
    delivered: int
    negatives: int


class HistoryZalo(_Model):
    quality_48h: str | None
    quality_7d: str | None
    as_of: AwareDatetime | None


class HistoryAnswer(_Model):
    """`GET /v1/oas/{oa_id}/history`: the last 7 days hour by hour (168 hours, oldest first),
    Zalo's levels and the tier as they are now; their changes are the OA's decisions."""

    oa_id: str
    hours: list[HistoryHour]
    zalo: HistoryZalo
    daily_quota: int | None
    tier_changed_at: AwareDatetime | None


class DecisionAnswer(_Model):
    """One record of `zns.decisions`, with a sentence saying what it changed and why."""

    decision_id: str
    oa_id: str
    template_id: str | None = None
    kind: str
    rule: str
    before: Any
    after: Any
    inputs: dict[str, Any]
    at: AwareDatetime
    explanation: str


class DecisionsAnswer(_Model):
    """`GET /v1/oas/{oa_id}/decisions`: the OA's last decisions, newest first."""

    decisions: list[DecisionAnswer]
    scanned: int
    """How many records at the tail of the OA's `zns.decisions` partition were read: older
    decisions of a busy partition may lie beyond them."""


class OAList(_Model):
    """`GET /v1/oas`: every OA the group holds."""

    oas: list[OASummary]
    partitions: list[int]
    """The partitions whose OAs are listed."""
    unreachable: list[str]
    """Instances that own partitions but did not answer."""


class WebhookAccepted(_Model):
    """`POST /webhooks/zalo`: the event is durable in the log."""

    status: Literal["accepted"]
    dedup_key: str
    """The key under which a repeat of this event is recognised."""


class SendsAnswer(_Model):
    accepted: int
    duplicates: int
    """Items already recorded (by `tracking_id` or `msg_id`), in this request or an earlier one."""


class Accepted(_Model):
    """A sync or an operator command, appended to the log."""

    accepted: int
    action: Literal["resume_oa", "resume_template"] | None = None


class MessageResult(_Model):
    """One message's outcome in the answer of `POST /v1/oas/{oa_id}/messages`."""

    tracking_id: str
    status: Literal["sent", "denied", "rejected", "failed", "unknown"]
    """sent: Zalo took it; denied: the admission refused it; rejected: it failed the
    checks; failed: Zalo refused it or it never reached Zalo; unknown: it may have been
    sent (no answer came); it is never sent again."""
    msg_id: str | None = None
    sent_time: AwareDatetime | None = None
    reason: str | None = None
    """denied: the denial reason; rejected: `invalid_phone`, `invalid_tracking_id` or
    `invalid_template_data`; failed: `zalo_unavailable` or `no_token` when it never
    reached Zalo."""
    param: str | None = None
    """The param of `template_data` that failed the checks."""
    zalo_error: int | None = None
    message: str | None = None
    """Zalo's message with its error."""


class MessagesAnswer(_Model):
    """`POST /v1/oas/{oa_id}/messages`."""

    admission_id: str | None
    """None when nothing was decided: the OA has no valid Zalo token."""
    remaining: int | None
    """What the template's tag may still be granted today, after this admission (null:
    unlimited)."""
    results: list[MessageResult]
    """One per message, in the order given."""


__all__ = ["AdmissionAnswer"]


class TokenBody(_Model):
    """An OA's Zalo token pair to keep (`PUT /v1/oas/{oa_id}/zalo/token`), e.g. from Zalo's
    API Explorer."""

    app_id: Annotated[str, Field(min_length=1, max_length=64), BeforeValidator(id_as_string)]
    """One of the configured `[[apps]]`, with its `app_secret`."""
    refresh_token: str = Field(min_length=1, max_length=2048)
    access_token: str | None = Field(default=None, min_length=1, max_length=2048)
    """Without it, the refresh token is used at once for a new pair."""
    expires_in: int | None = Field(default=None, ge=1, le=10_000_000)
    """Seconds the access token has left (Zalo's `expires_in`, a string or a number);
    needed with `access_token`."""

    @model_validator(mode="after")
    def _expiry_with_access_token(self) -> TokenBody:
        if (self.access_token is None) != (self.expires_in is None):
            raise ValueError("access_token and expires_in come together")
        return self


class TokenAnswer(_Model):
    """An OA's Zalo token as it may be shown: its state and times, never the token."""

    oa_id: str
    app_id: str | None
    state: Literal["valid", "expiring", "dead", "missing"]
    """`valid`; `expiring`: less than zalo.refresh_margin_s left (refreshed soon); `dead`:
    Zalo refused its refresh, store a new one; `missing`: none stored."""
    access_expires_at: AwareDatetime | None
    refresh_expires_at: AwareDatetime | None
    refreshed_at: AwareDatetime | None
    last_error: str | None = None
    """The code of the last failed refresh (e.g. `zalo_-14014`, `rate_limited`)."""
