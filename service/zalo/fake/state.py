"""The fake Zalo's world in memory: tokens, OAs' quotas, templates and the messages sent.

Plain values and an injected clock, nothing of HTTP: the server turns requests
into these calls and their results into Zalo's shapes. A refusal is a `Refusal`
with Zalo's code; nothing here sleeps, does I/O or talks to a gate.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from service.zalo.fake.scenario import (
    STATUS_FILTER,
    TEMPLATE_TAG_NAMES,
    Endpoint,
    FakeApp,
    Quality,
    Scenario,
    ScriptedError,
    TemplateParam,
    TemplateStatus,
)

PHONE = re.compile(r"^\+?84\d{9}$")
"""A phone as Zalo takes it: country code 84 (with or without `+`), then 9 digits."""
HASH_PHONE = re.compile(r"^[0-9a-fA-F]{64}$")
CODE_TTL_S = 600.0
"""How long an authorization code from the permission page may be exchanged."""

MESSAGES: dict[int, str] = {
    -100: "Invalid parameter",
    -108: "Phone number is invalid",
    -117: "OA or app has no permission on this template",
    -124: "Access token is invalid",
    -131: "Template is not approved",
    -144: "OA has exceeded the daily quota for ZNS",
    -145: "OA is not allowed to send this type of content",
    -146: "Template has been disabled because of its low sending quality",
    -1121: "Missing a required parameter of the template",
    -1122: "A parameter of the template has an invalid length",
    -1441: "OA has exceeded the monthly promotion quota",
}
"""Zalo's messages for the codes the fake answers itself (English, short)."""


def fingerprint(token: str) -> str:
    """A token as logs and the control API show it: a short sha256 prefix, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def s256_challenge(code_verifier: str) -> str:
    """PKCE S256: base64url(sha256(verifier)) without padding (RFC 7636)."""
    digest = hashlib.sha256(code_verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Refusal(Exception):
    """Zalo's answer `error` != 0: `code` and `message` as Zalo sends them."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message or MESSAGES.get(code, "Unknown error")


class FakeClock:
    """Wall time plus an offset that tests move forward (tokens expire without sleeping)."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.offset_s = 0.0

    def now(self) -> float:
        return self._wall() + self.offset_s

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


@dataclass
class OaState:
    """One OA's live numbers (Zalo's names in `quota()`)."""

    oa_id: str
    app_id: str
    daily_quota: int
    remaining_quota: int
    monthly_promotion_quota: int
    remaining_monthly_promotion_quota: int
    estimated_next_month_promotion_quota: int
    quality_48h: Quality
    quality_7d: Quality
    allowed_tags: list[str]
    day: str = ""
    month: str = ""


@dataclass
class TemplateState:
    """One template of one OA as it is now."""

    template_id: str
    template_name: str
    status: TemplateStatus
    quality: Quality
    tag: int
    params: list[TemplateParam]
    timeout_ms: int
    price: str
    created_time_ms: int


@dataclass
class AccessToken:
    oa_id: str
    app_id: str
    expires_at: float


@dataclass
class RefreshToken:
    oa_id: str
    app_id: str
    expires_at: float
    used_at: float | None = None


@dataclass
class PendingCode:
    """An authorization code the permission page gave, waiting for its exchange."""

    oa_id: str
    app_id: str
    code_challenge: str
    expires_at: float
    used: bool = False


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class Sent:
    """A successful send: what the answer and the webhooks need."""

    oa_id: str
    app_id: str
    msg_id: str
    sent_time_ms: int
    delivery_time_ms: int
    recipient: str
    tracking_id: str
    template_id: str
    daily_quota: int
    remaining_quota: int
    sending_mode: str


@dataclass
class _Script:
    endpoint: Endpoint
    error: int
    message: str | None
    remaining: int


@dataclass
class FakeZalo:
    """The whole fake world, built from a scenario."""

    scenario: Scenario
    clock: FakeClock = field(default_factory=FakeClock)

    def __post_init__(self) -> None:
        limit = self.scenario.history_limit
        self.sends: deque[dict[str, Any]] = deque(maxlen=limit)
        """The newest send calls: what came in and what was answered."""
        self.oauth: deque[dict[str, Any]] = deque(maxlen=limit)
        """The newest token calls: grant type, outcome, fingerprints of tokens used and issued."""
        self._rng = random.Random(self.scenario.seed)  # noqa: S311 (repeatable, not secrets)
        self._zone = ZoneInfo(self.scenario.timezone)
        self.apps: dict[str, FakeApp] = {a.app_id: a for a in self.scenario.apps}
        self.oas: dict[str, OaState] = {}
        self.templates: dict[str, dict[str, TemplateState]] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.codes: dict[str, PendingCode] = {}
        self.messages: dict[str, Sent] = {}
        self._scripts: list[_Script] = []
        now = self.clock.now()
        for oa in self.scenario.oas:
            self.oas[oa.oa_id] = OaState(
                oa_id=oa.oa_id,
                app_id=oa.app_id,
                daily_quota=oa.daily_quota,
                remaining_quota=(
                    oa.daily_quota if oa.remaining_quota is None else oa.remaining_quota
                ),
                monthly_promotion_quota=oa.monthly_promotion_quota,
                remaining_monthly_promotion_quota=(
                    oa.monthly_promotion_quota
                    if oa.remaining_monthly_promotion_quota is None
                    else oa.remaining_monthly_promotion_quota
                ),
                estimated_next_month_promotion_quota=oa.estimated_next_month_promotion_quota,
                quality_48h=oa.quality_48h,
                quality_7d=oa.quality_7d,
                allowed_tags=list(oa.allowed_tags),
            )
            self._roll_over(self.oas[oa.oa_id])
            self.refresh_tokens[oa.refresh_token] = RefreshToken(
                oa.oa_id, oa.app_id, now + self.scenario.refresh_token_ttl_s
            )
            if oa.access_token is not None:
                self.access_tokens[oa.access_token] = AccessToken(
                    oa.oa_id, oa.app_id, now + self.scenario.expires_in
                )
            self.templates[oa.oa_id] = {}
        for t in self.scenario.templates:
            for oa_id in [t.oa_id] if t.oa_id is not None else list(self.oas):
                self.templates[oa_id][t.template_id] = TemplateState(
                    template_id=t.template_id,
                    template_name=t.template_name,
                    status=t.status,
                    quality=t.quality,
                    tag=t.tag,
                    params=list(t.params),
                    timeout_ms=t.timeout_ms or (15000 if t.tag == 1 else 7_200_000),
                    price=t.price,
                    created_time_ms=t.created_time_ms,
                )
        for scripted in self.scenario.errors:
            self.script(scripted)

    # Scripted behaviour

    def script(self, scripted: ScriptedError) -> None:
        """Answer an error on the next calls of an endpoint (after those already scripted)."""
        self._scripts.append(
            _Script(scripted.endpoint, scripted.error, scripted.message, scripted.times)
        )

    def scripted_refusal(self, endpoint: Endpoint) -> Refusal | None:
        """The error this call must answer before any check, if one is scripted or drawn."""
        for script in self._scripts:
            if script.endpoint == endpoint:
                script.remaining -= 1
                if script.remaining == 0:
                    self._scripts.remove(script)
                return Refusal(script.error, script.message)
        behaviour = self.scenario.behaviour.get(endpoint)
        if (
            behaviour is not None
            and behaviour.error_rate > 0
            and self._rng.random() < behaviour.error_rate
        ):
            return Refusal(behaviour.error)
        return None

    def scripts(self) -> list[dict[str, Any]]:
        return [
            {"endpoint": s.endpoint, "error": s.error, "message": s.message, "times": s.remaining}
            for s in self._scripts
        ]

    # OAuth v4

    def _app(self, app_id: str | None, secret_key: str | None) -> FakeApp:
        codes = self.scenario.oauth_errors
        app = self.apps.get(app_id or "")
        if app is None:
            raise Refusal(codes.invalid_app_id, "Invalid app_id")
        if not secret_key or not secrets.compare_digest(
            secret_key.encode(), app.app_secret.encode()
        ):
            raise Refusal(codes.invalid_secret_key, "Invalid secret_key")
        return app

    def permission(self, app_id: str, code_challenge: str, oa_id: str | None) -> tuple[str, str]:
        """The code (and OA) the permission page gives when the OA's admin allows the app."""
        codes = self.scenario.oauth_errors
        if app_id not in self.apps:
            raise Refusal(codes.invalid_app_id, "Invalid app_id")
        if not code_challenge:
            raise Refusal(codes.invalid_params, "code_challenge is required")
        candidates = [o for o in self.oas.values() if o.app_id == app_id]
        chosen = next((o for o in candidates if o.oa_id == oa_id), None) if oa_id else None
        if chosen is None and not oa_id and candidates:
            chosen = candidates[0]
        if chosen is None:
            raise Refusal(codes.invalid_params, "No OA of this app to grant")
        code = secrets.token_urlsafe(24)
        self.codes[code] = PendingCode(
            chosen.oa_id, app_id, code_challenge, self.clock.now() + CODE_TTL_S
        )
        return code, chosen.oa_id

    def _issue(self, oa_id: str, app_id: str) -> TokenPair:
        now = self.clock.now()
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.access_tokens[access] = AccessToken(oa_id, app_id, now + self.scenario.expires_in)
        self.refresh_tokens[refresh] = RefreshToken(
            oa_id, app_id, now + self.scenario.refresh_token_ttl_s
        )
        self._bound(self.access_tokens)
        self._bound(self.refresh_tokens)
        return TokenPair(access, refresh, self.scenario.expires_in)

    def _note(self, grant_type: str, used: str | None, outcome: TokenPair | Refusal) -> None:
        entry: dict[str, Any] = {
            "grant_type": grant_type,
            "at_ms": self.clock.now_ms(),
            "used": fingerprint(used) if used else None,
        }
        if isinstance(outcome, Refusal):
            entry["error"] = outcome.code
        else:
            entry["error"] = 0
            entry["access_token"] = fingerprint(outcome.access_token)
            entry["refresh_token"] = fingerprint(outcome.refresh_token)
        self.oauth.append(entry)

    def access_token(self, form: Mapping[str, str], secret_key: str | None) -> TokenPair:
        """`POST /v4/oa/access_token`: a refresh or a code exchange, by `grant_type`."""
        grant_type = form.get("grant_type", "")
        used = form.get("refresh_token") or form.get("code")
        try:
            pair = self._grant(grant_type, form, secret_key)
        except Refusal as refusal:
            self._note(grant_type, used, refusal)
            raise
        self._note(grant_type, used, pair)
        return pair

    def _grant(self, grant_type: str, form: Mapping[str, str], secret_key: str | None) -> TokenPair:
        codes = self.scenario.oauth_errors
        if grant_type not in ("refresh_token", "authorization_code"):
            raise Refusal(codes.invalid_params, "grant_type is invalid")
        app = self._app(form.get("app_id"), secret_key)
        now = self.clock.now()
        if grant_type == "refresh_token":
            held = self.refresh_tokens.get(form.get("refresh_token", ""))
            if (
                held is None
                or held.app_id != app.app_id
                or held.used_at is not None
                or held.expires_at <= now
            ):
                raise Refusal(codes.invalid_refresh_token, "Invalid refresh token")
            # Single use: the old refresh token dies with this answer.
            held.used_at = now
            return self._issue(held.oa_id, held.app_id)
        pending = self.codes.get(form.get("code", ""))
        if pending is None or pending.used or pending.expires_at <= now:
            raise Refusal(codes.invalid_code, "Invalid authorization code")
        if pending.app_id != app.app_id:
            raise Refusal(codes.invalid_code, "Invalid authorization code")
        verifier = form.get("code_verifier", "")
        if not verifier or not secrets.compare_digest(
            s256_challenge(verifier).encode(), pending.code_challenge.encode()
        ):
            raise Refusal(codes.invalid_code_verifier, "Invalid code verifier")
        pending.used = True
        return self._issue(pending.oa_id, pending.app_id)

    def oa_of(self, access_token: str | None) -> OaState:
        """The OA whose valid access token this is, else -124."""
        held = self.access_tokens.get(access_token or "")
        if held is None or held.expires_at <= self.clock.now():
            raise Refusal(-124)
        oa = self.oas[held.oa_id]
        self._roll_over(oa)
        return oa

    # Quotas

    def oa_now(self, oa_id: str) -> OaState | None:
        """An OA with its quotas as they are at the fake's time (a day or month may have ended)."""
        oa = self.oas.get(oa_id)
        if oa is not None:
            self._roll_over(oa)
        return oa

    def _roll_over(self, oa: OaState) -> None:
        """A new day (in Zalo's zone) gives the daily quota back; a new month the promotion's."""
        local = datetime.fromtimestamp(self.clock.now(), self._zone)
        day, month = local.strftime("%Y-%m-%d"), local.strftime("%Y-%m")
        if oa.day and day != oa.day:
            oa.remaining_quota = oa.daily_quota
        if oa.month and month != oa.month:
            oa.remaining_monthly_promotion_quota = oa.monthly_promotion_quota
        oa.day, oa.month = day, month

    def quota(self, oa: OaState) -> dict[str, int | None]:
        return {
            "dailyQuota": oa.daily_quota,
            "remainingQuota": oa.remaining_quota,
            # Discontinued since 2024-11-01; Zalo answers null.
            "dailyQuotaPromotion": None,
            "remainingQuotaPromotion": None,
            "monthlyPromotionQuota": oa.monthly_promotion_quota,
            "remainingMonthlyPromotionQuota": oa.remaining_monthly_promotion_quota,
            "estimatedNextMonthPromotionQuota": oa.estimated_next_month_promotion_quota,
        }

    # Sending

    def send(self, oa: OaState, body: Any, hashed: bool) -> Sent:
        """`POST /message/template[/hashphone]`: every check of a send, then the send."""
        entry: dict[str, Any] = {"oa_id": oa.oa_id, "at_ms": self.clock.now_ms(), "body": body}
        self.sends.append(entry)
        try:
            sent = self._send(oa, body, hashed)
        except Refusal as refusal:
            entry["error"] = refusal.code
            raise
        entry.update(error=0, msg_id=sent.msg_id, sent_time=sent.sent_time_ms)
        return sent

    def _send(self, oa: OaState, body: Any, hashed: bool) -> Sent:
        codes = self.scenario.send_errors
        if not isinstance(body, dict):
            raise Refusal(codes.invalid_params, "Body must be a JSON object")
        recipient = body.get("hash_phone" if hashed else "phone")
        pattern = HASH_PHONE if hashed else PHONE
        if not isinstance(recipient, str) or not pattern.match(recipient):
            raise Refusal(-108)
        template_id = body.get("template_id")
        if isinstance(template_id, int) and not isinstance(template_id, bool):
            template_id = str(template_id)
        data = body.get("template_data")
        tracking_id = body.get("tracking_id")
        if not isinstance(template_id, str) or not isinstance(data, dict):
            raise Refusal(codes.invalid_params, "template_id and template_data are required")
        if not isinstance(tracking_id, str) or not tracking_id:
            raise Refusal(codes.invalid_params, "tracking_id is required")
        template = self.templates[oa.oa_id].get(template_id)
        if template is None:
            raise Refusal(codes.unknown_template)
        if template.status != "ENABLE":
            low = template.status == "DISABLE" and template.quality == "LOW"
            raise Refusal(-146 if low else -131)
        if TEMPLATE_TAG_NAMES[template.tag] not in oa.allowed_tags:
            raise Refusal(-145)
        self._check_data(template.params, data)
        if oa.remaining_quota <= 0:
            raise Refusal(-144)
        if template.tag == 3 and oa.remaining_monthly_promotion_quota <= 0:
            raise Refusal(-1441)
        oa.remaining_quota -= 1
        if template.tag == 3:
            oa.remaining_monthly_promotion_quota -= 1
        now_ms = self.clock.now_ms()
        sent = Sent(
            oa_id=oa.oa_id,
            app_id=oa.app_id,
            msg_id=f"{self._rng.getrandbits(80):020x}",
            sent_time_ms=now_ms,
            delivery_time_ms=now_ms + int(self.scenario.receipt_delay_s * 1000),
            recipient=recipient.lstrip("+").lower() if hashed else recipient.lstrip("+"),
            tracking_id=tracking_id,
            template_id=template_id,
            daily_quota=oa.daily_quota,
            remaining_quota=oa.remaining_quota,
            sending_mode=str(body.get("sending_mode") or "1"),
        )
        self.messages[sent.msg_id] = sent
        self._bound(self.messages)
        return sent

    def _bound(self, held: MutableMapping[str, Any]) -> None:
        # Dicts keep insertion order: the first entries are the oldest.
        while len(held) > self.scenario.history_limit:
            del held[next(iter(held))]

    def _check_data(self, params: list[TemplateParam], data: dict[str, Any]) -> None:
        codes = self.scenario.send_errors
        for param in params:
            value = data.get(param.name)
            text = "" if value is None else str(value)
            if text == "":
                if param.require and not param.accept_null:
                    raise Refusal(codes.missing_param, f"Missing parameter {param.name}")
                continue
            if not param.min_length <= len(text) <= param.max_length:
                raise Refusal(codes.bad_length, f"Parameter {param.name} has an invalid length")

    def draw_rating(self) -> int | None:
        """Stars of a rating of a message just sent, or None when the recipient does not rate."""
        if self._rng.random() >= self.scenario.rating_rate:
            return None
        return self._rng.choice(self.scenario.ratings)

    # Reading

    def templates_page(
        self, oa: OaState, offset: int, limit: int, status: int | None
    ) -> tuple[list[TemplateState], int]:
        """`GET /template/all`: one page, and how many match in all."""
        wanted = STATUS_FILTER.get(status) if status is not None else None
        if status is not None and wanted is None:
            raise Refusal(self.scenario.send_errors.invalid_params, "status is invalid")
        if offset < 0 or not 1 <= limit <= 100:
            raise Refusal(self.scenario.send_errors.invalid_params, "offset or limit is invalid")
        matching = [
            t for t in self.templates[oa.oa_id].values() if wanted is None or t.status == wanted
        ]
        return matching[offset : offset + limit], len(matching)

    def template(self, oa: OaState, template_id: str) -> TemplateState:
        template = self.templates[oa.oa_id].get(template_id)
        if template is None:
            raise Refusal(self.scenario.send_errors.unknown_template)
        return template

    def message_status(self, oa: OaState, msg_id: str) -> tuple[int, int | None]:
        """`GET /message/status`: -1 unknown, 0 sent and not delivered yet, 1 delivered."""
        sent = self.messages.get(msg_id)
        if sent is None or sent.oa_id != oa.oa_id:
            return -1, None
        if self.clock.now_ms() < sent.delivery_time_ms:
            return 0, None
        return 1, sent.delivery_time_ms
