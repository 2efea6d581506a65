"""The fake Zalo's scenario: apps, OAs, templates and scripted behaviour, read from TOML.

Only reads and validates; it holds no running state (that is `state.py`). Codes
Zalo's public texts do not pin down (OAuth errors, the `listParams` checks) are
settings here with the most plausible value as default, so a scenario can match
what a real account answers.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.config import ZaloId, describe

Endpoint = Literal[
    "oauth",
    "send",
    "quota",
    "quality",
    "templates",
    "template_info",
    "template_tag",
    "message_status",
]
"""The fake's endpoints as scripts name them (`send` covers both send calls)."""

Quality = Literal["HIGH", "MEDIUM", "LOW", "UNDEFINED"]
TemplateStatus = Literal["ENABLE", "PENDING_REVIEW", "REJECT", "DISABLE", "DELETE"]
Tag = Annotated[int, Field(ge=1, le=3)]

TEMPLATE_TAG_NAMES: dict[int, str] = {1: "TRANSACTION", 2: "CUSTOMER_CARE", 3: "PROMOTION"}
"""`templateTag` of each tag as ZBS-era template details name it."""

STATUS_FILTER: dict[int, TemplateStatus] = {
    1: "ENABLE",
    2: "PENDING_REVIEW",
    3: "REJECT",
    4: "DISABLE",
}
"""The numeric `status` filter of `GET /template/all`."""

NumberStyle = Literal["as_zalo", "strings", "numbers"]
"""`as_zalo`: strings where Zalo sends strings (send answers, `expires_in`), numbers
where it sends numbers (`/message/quota`); `strings`/`numbers`: every count one way."""


class _Model(BaseModel):
    # A typo in a scenario must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FakeApp(_Model):
    """A Zalo app: OAuth with `app_secret`, webhooks signed with `oa_secret_key`."""

    app_id: ZaloId
    app_secret: str = Field(min_length=1)
    oa_secret_key: str = Field(min_length=1)


class FakeOa(_Model):
    """An Official Account, the app that holds its permission and its numbers at start."""

    oa_id: ZaloId
    app_id: ZaloId
    daily_quota: int = Field(default=500, ge=0)
    remaining_quota: int | None = Field(default=None, ge=0)
    """What is left today at start; the daily quota when left out."""
    monthly_promotion_quota: int = Field(default=125, ge=0)
    remaining_monthly_promotion_quota: int | None = Field(default=None, ge=0)
    estimated_next_month_promotion_quota: int = Field(default=0, ge=0)
    quality_48h: Quality = "HIGH"
    quality_7d: Quality = "HIGH"
    allowed_tags: list[str] = Field(
        default_factory=lambda: ["TRANSACTION", "CUSTOMER_CARE", "PROMOTION"]
    )
    """What `GET /message/template-tag` answers; a send of another tag gets -145."""
    refresh_token: str = Field(min_length=1)
    """The refresh token valid at start, so a client can begin with a known pair."""
    access_token: str | None = None
    """An access token valid at start (for `expires_in` from now), if any."""


class TemplateParam(_Model):
    """One entry of a template's `listParams`."""

    name: str = Field(min_length=1)
    require: bool = True
    type: str = "STRING"
    max_length: int = Field(default=30, ge=0)
    min_length: int = Field(default=0, ge=0)
    accept_null: bool = False


class FakeTemplate(_Model):
    """A ZNS template of one OA (every OA of the scenario when `oa_id` is left out)."""

    template_id: ZaloId
    template_name: str
    oa_id: ZaloId | None = None
    status: TemplateStatus = "ENABLE"
    quality: Quality = "HIGH"
    tag: Tag = 1
    params: list[TemplateParam] = Field(default_factory=list)
    timeout_ms: int | None = None
    """Billing timeout; 15000 for tag 1 (OTP-like) and 7200000 for others when left out."""
    price: str = "300"
    created_time_ms: int = 1_700_000_000_000


class ScriptedError(_Model):
    """Answer `error` on the next `times` calls of `endpoint`, before any other check."""

    endpoint: Endpoint
    error: int
    message: str | None = None
    times: int = Field(default=1, ge=1)


class Behaviour(_Model):
    """How one endpoint misbehaves: a share of calls with `error`, and a delay on each."""

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    error: int = -32
    delay_s: float = Field(default=0.0, ge=0.0)
    """Seconds before answering; longer than a client's timeout is a timeout. A send is
    taken first and answered after the delay (sent, though its caller never hears)."""


class OAuthErrors(_Model):
    """Codes of OAuth v4 refusals. Zalo's public texts do not pin these numbers down."""

    invalid_params: int = -14001
    invalid_app_id: int = -14002
    invalid_secret_key: int = -14003
    invalid_code: int = -14008
    invalid_refresh_token: int = -14014
    invalid_code_verifier: int = -14019


class SendErrors(_Model):
    """Codes of the send checks whose numbers Zalo's table leaves open."""

    invalid_params: int = -100
    missing_param: int = -1121
    """A required `listParams` entry missing or empty in `template_data`."""
    bad_length: int = -1122
    """A `template_data` value shorter than `min_length` or longer than `max_length`."""
    unknown_template: int = -117


class Scenario(_Model):
    """Everything the fake starts from."""

    apps: list[FakeApp] = Field(min_length=1)
    oas: list[FakeOa] = Field(min_length=1)
    templates: list[FakeTemplate] = Field(default_factory=list)
    errors: list[ScriptedError] = Field(default_factory=list)
    behaviour: dict[Endpoint, Behaviour] = Field(default_factory=dict)
    expires_in: int = Field(default=90000, gt=0)
    """Lifetime of an access token in seconds (Zalo: 25 h)."""
    refresh_token_ttl_s: int = Field(default=90 * 86400, gt=0)
    """Lifetime of a refresh token (Zalo: 3 months)."""
    numbers: NumberStyle = "as_zalo"
    receipt_delay_s: float = Field(default=0.2, ge=0.0)
    rating_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """The share of successful sends that the recipient rates (a `user_feedback`)."""
    ratings: list[Annotated[int, Field(ge=1, le=5)]] = Field(
        default_factory=lambda: [5, 5, 5, 4, 4, 3, 2, 1], min_length=1
    )
    """Stars drawn from (uniformly) for each rating."""
    webhook_timeout_s: float = Field(default=2.0, gt=0)
    """Zalo waits 2 s for the gate's answer."""
    webhook_retry_delays_s: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0]
    )
    """Seconds before each redelivery (Zalo: 30 s, 5 min, 15 min, 30 min, 1 h)."""
    timezone: str = "Asia/Ho_Chi_Minh"
    """Where the daily quota's day ends."""
    seed: int = 1
    history_limit: int = Field(default=10_000, ge=1)
    """How many sends, token calls, tokens, messages and webhooks are remembered (the
    newest); memory stays bounded however long the fake runs."""
    oauth_errors: OAuthErrors = OAuthErrors()
    send_errors: SendErrors = SendErrors()

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        apps = [a.app_id for a in self.apps]
        oas = [o.oa_id for o in self.oas]
        for name, ids in (("app_id", apps), ("oa_id", oas)):
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            if repeated:
                raise ValueError(f"{name} listed more than once: {', '.join(repeated)}")
        for oa in self.oas:
            if oa.app_id not in apps:
                raise ValueError(f"OA {oa.oa_id} names app {oa.app_id}, which is not listed")
        for template in self.templates:
            if template.oa_id is not None and template.oa_id not in oas:
                raise ValueError(
                    f"template {template.template_id} names OA {template.oa_id}, "
                    "which is not listed"
                )
        return self


class ScenarioError(Exception):
    """A scenario file is missing, not TOML or invalid. `str()` says where."""


def parse_scenario(values: dict[str, Any]) -> Scenario:
    try:
        return Scenario.model_validate(values)
    except ValidationError as exc:
        raise ScenarioError(describe(exc, "scenario", "(scenario)")) from exc


def load_scenario(path: str | Path) -> Scenario:
    """The scenario of a TOML file."""
    file = Path(path)
    try:
        values = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ScenarioError(f"scenario file {str(file)!r} not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {str(file)!r}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {str(file)!r} is not TOML: {exc}") from exc
    return parse_scenario(values)


DEFAULT_APP_ID = "2074138120372622546"
DEFAULT_OA_ID = "388613280878808645"


def default_scenario() -> Scenario:
    """One app, one OA and a few templates: what `fake-zalo` serves without `--config`."""
    return parse_scenario(
        {
            "apps": [
                {
                    "app_id": DEFAULT_APP_ID,
                    "app_secret": "fake-app-secret",
                    "oa_secret_key": "fake-oa-secret-key",
                }
            ],
            "oas": [
                {
                    "oa_id": DEFAULT_OA_ID,
                    "app_id": DEFAULT_APP_ID,
                    "refresh_token": "fake-refresh-token",
                    "access_token": "fake-access-token",
                }
            ],
            "templates": [
                {
                    "template_id": "231456",
                    "template_name": "OTP",
                    "tag": 1,
                    "params": [{"name": "otp", "min_length": 4, "max_length": 8}],
                },
                {
                    "template_id": "231457",
                    "template_name": "Order shipped",
                    "tag": 2,
                    "params": [
                        {"name": "customer_name", "max_length": 30},
                        {"name": "order_code", "max_length": 20},
                        {"name": "note", "require": False, "accept_null": True},
                    ],
                },
                {
                    "template_id": "231458",
                    "template_name": "Rate our service",
                    "tag": 2,
                    "params": [{"name": "order_code", "max_length": 20}],
                },
                {
                    "template_id": "231459",
                    "template_name": "Year-end offer",
                    "tag": 3,
                    "params": [{"name": "customer_name", "max_length": 30}],
                },
            ],
        }
    )
