"""The shapes of the `/v1` API (DESIGN.md 5): request bodies and answers, as pydantic models.

Request bodies are validated with these models; answers are built by
`service/api/views.py` as plain JSON and described here, field for field
(`extra="forbid"`: a field the views add without adding it here fails the
contract tests). `service/api/openapi.py` builds `schemas/openapi.json` from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from service.domain.records import (
    MAX_ADMISSION_UNITS,
    AdmissionAnswer,
    GateId,
    SendOutcome,
    Tag,
    recipient_hash,
)

Level = Literal["HIGH", "MEDIUM", "LOW", "UNDEFINED"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)


# --- request bodies -------------------------------------------------------------------------


class SendItem(SendOutcome):
    """A send as a sender reports it: the recipient may be a phone; it is hashed here."""

    recipient: str | None = None
    """The phone number (any common Vietnamese form) or the sha256 of its `84…` form."""

    @field_validator("recipient")
    @classmethod
    def _hashed(cls, value: str | None) -> str | None:
        return None if value is None else recipient_hash(value)


class SendsBody(_Model):
    """`POST /v1/oas/{oa_id}/sends`."""

    sends: list[SendItem] = Field(min_length=1, max_length=1000)


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


# --- answers --------------------------------------------------------------------------------


class ErrorDetail(_Model):
    code: str
    """Machine-readable: `malformed_json`, `invalid_request`, `tag_required`, `restoring`, ..."""
    message: str


class ErrorBody(_Model):
    """Every error answer (DESIGN.md 2)."""

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


__all__ = ["AdmissionAnswer"]
