"""A client of Zalo's ZNS business API (`api_url`) for one process: the read calls the poller
makes and the send call the send proxy makes, each answer read into a typed value or a
classified `ZaloCallError` (service/zalo/outcomes.py).

It reads Zalo's envelope (`error` != 0 comes with HTTP 200), numbers given as strings or as
numbers, and retries a call once with a refreshed token after -124. It does not decide what
to do about an error beyond that (the poller backs off, the send proxy reports), never
retries a send whose request may have reached Zalo, and never logs or counts a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aiohttp
import orjson

from service.config import ZaloSettings
from service.logsetup import get_logger
from service.metrics import ZALO_CALL_SECONDS, ZALO_CALLS
from service.zalo.access import AccessTokens
from service.zalo.outcomes import TRANSPORT_OUTCOMES, OutcomeClass, Transport, classify

_log = get_logger("zalo.client")

Endpoint = Literal["quota", "quality", "templates", "template_info", "template_tag", "send"]

_PATHS: dict[Endpoint, tuple[str, str]] = {
    "quota": ("GET", "/message/quota"),
    "quality": ("GET", "/quality"),
    "templates": ("GET", "/template/all"),
    "template_info": ("GET", "/template/info/v2"),
    "template_tag": ("GET", "/message/template-tag"),
    "send": ("POST", "/message/template"),
}

TEMPLATE_PAGE = 100
"""Zalo's largest page of `/template/all`."""

TEMPLATE_STATUS_FILTER: dict[str, int] = {
    "ENABLE": 1,
    "PENDING_REVIEW": 2,
    "REJECT": 3,
    "DISABLE": 4,
}
"""The numeric `status` filter of `/template/all` (answers carry the names)."""

LEVELS = frozenset({"HIGH", "MEDIUM", "LOW", "UNDEFINED"})


ReadT = TypeVar("ReadT")

MAYBE_SENT = frozenset({Transport.HTTP_5XX, Transport.NOT_JSON, Transport.MALFORMED})
"""Answers to a send that came after Zalo (or a gateway before it) had the request: the
message may have gone, so the send is unknown, never "not sent" (for a read they are
only transient)."""


class ZaloCallError(Exception):
    """A call that did not give `error: 0`: Zalo's code, or the transport case, classified."""

    def __init__(
        self,
        endpoint: Endpoint,
        outcome: OutcomeClass,
        *,
        code: int | None = None,
        transport: Transport | None = None,
        message: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.outcome = outcome
        self.code = code
        self.transport = transport
        self.message = message[:200]
        what = f"error {code}" if code is not None else (transport or "no_token")
        super().__init__(f"{endpoint}: {what} ({outcome.value}) {self.message}".rstrip())

    @property
    def retriable(self) -> bool:
        return self.outcome.retriable or self.outcome is OutcomeClass.UNKNOWN


class MalformedAnswer(ValueError):
    """`data` is not of the shape Zalo documents."""


# --- reading Zalo's values ------------------------------------------------------------------


def count(value: Any) -> int | None:
    """A count as Zalo gives it: a number, a string of digits, or null."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise MalformedAnswer(f"not a count: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise MalformedAnswer(f"not a count: {value!r}")


def text(value: Any) -> str | None:
    """An id or a name: Zalo sends template ids as numbers; ids stay strings here."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedAnswer(f"not a text: {value!r}")
    return str(value)


def level(value: Any) -> str | None:
    """A quality level; anything but Zalo's four words reads as not known."""
    return value if isinstance(value, str) and value in LEVELS else None


def flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MalformedAnswer("data is not an object")
    return value


# --- typed answers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quota:
    """`GET /message/quota`: the OA's tier and what is left today, and the month's tag 3."""

    daily_quota: int | None
    remaining_quota: int | None
    daily_quota_promotion: int | None
    remaining_quota_promotion: int | None
    monthly_promotion_quota: int | None
    remaining_monthly_promotion_quota: int | None
    estimated_next_month_promotion_quota: int | None

    @classmethod
    def read(cls, data: Any) -> Quota:
        d = _object(data)
        return cls(
            daily_quota=count(d.get("dailyQuota")),
            remaining_quota=count(d.get("remainingQuota")),
            daily_quota_promotion=count(d.get("dailyQuotaPromotion")),
            remaining_quota_promotion=count(d.get("remainingQuotaPromotion")),
            monthly_promotion_quota=count(d.get("monthlyPromotionQuota")),
            remaining_monthly_promotion_quota=count(d.get("remainingMonthlyPromotionQuota")),
            estimated_next_month_promotion_quota=count(d.get("estimatedNextMonthPromotionQuota")),
        )


@dataclass(frozen=True, slots=True)
class Quality:
    """`GET /quality`: `oaCurrentQuality` (48 hours) and `oa7dayQuality` (7 days)."""

    quality_48h: str | None
    quality_7d: str | None

    @classmethod
    def read(cls, data: Any) -> Quality:
        d = _object(data)
        return cls(level(d.get("oaCurrentQuality")), level(d.get("oa7dayQuality")))


@dataclass(frozen=True, slots=True)
class TemplateSummary:
    """One row of `GET /template/all`."""

    template_id: str
    template_name: str | None
    created_time: int | None
    status: str | None
    quality: str | None

    @classmethod
    def read(cls, row: Any) -> TemplateSummary:
        d = _object(row)
        template_id = text(d.get("templateId"))
        if not template_id:
            raise MalformedAnswer("a template without templateId")
        return cls(
            template_id=template_id,
            template_name=text(d.get("templateName")),
            created_time=count(d.get("createdTime")),
            status=text(d.get("status")),
            quality=level(d.get("templateQuality")),
        )


@dataclass(frozen=True, slots=True)
class TemplatePage:
    templates: list[TemplateSummary]
    total: int | None


@dataclass(frozen=True, slots=True)
class TemplateParam:
    """One of a template's `listParams`: what a value of `template_data` must be."""

    name: str
    require: bool
    type: str | None
    min_length: int | None
    max_length: int | None
    accept_null: bool

    @classmethod
    def read(cls, row: Any) -> TemplateParam:
        d = _object(row)
        name = text(d.get("name"))
        if not name:
            raise MalformedAnswer("a param without name")
        return cls(
            name=name,
            require=flag(d.get("require", True)),
            type=text(d.get("type")),
            min_length=count(d.get("minLength")),
            max_length=count(d.get("maxLength")),
            accept_null=flag(d.get("acceptNull", False)),
        )


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """`GET /template/info/v2`: a template's detail."""

    template_id: str
    template_name: str | None
    status: str | None
    quality: str | None
    template_tag: str | None
    """Zalo's content type (`TRANSACTION`, `CUSTOMER_CARE`, `PROMOTION` or a legacy name)."""
    params: list[TemplateParam]
    timeout_ms: int | None
    apply_template_quota: bool
    template_daily_quota: int | None
    template_remaining_quota: int | None

    @classmethod
    def read(cls, data: Any) -> TemplateInfo:
        d = _object(data)
        template_id = text(d.get("templateId"))
        if not template_id:
            raise MalformedAnswer("a template without templateId")
        params = d.get("listParams") or []
        if not isinstance(params, list):
            raise MalformedAnswer("listParams is not a list")
        return cls(
            template_id=template_id,
            template_name=text(d.get("templateName")),
            status=text(d.get("status")),
            quality=level(d.get("templateQuality")),
            template_tag=text(d.get("templateTag")),
            params=[TemplateParam.read(p) for p in params],
            timeout_ms=count(d.get("timeout")),
            apply_template_quota=flag(d.get("applyTemplateQuota", False)),
            template_daily_quota=count(d.get("templateDailyQuota")),
            template_remaining_quota=count(d.get("templateRemainingQuota")),
        )


@dataclass(frozen=True, slots=True)
class Sent:
    """Zalo took the message (`error: 0`)."""

    msg_id: str
    sent_time: str
    """Milliseconds since the epoch, as Zalo's string."""
    sending_mode: str | None
    daily_quota: int | None
    remaining_quota: int | None


@dataclass(frozen=True, slots=True)
class NotSent:
    """Zalo refused the message, or it never left: `reason` is `zalo_error` (then `error`
    is Zalo's code), `zalo_unavailable` or `no_token`."""

    reason: Literal["zalo_error", "zalo_unavailable", "no_token"]
    outcome: OutcomeClass
    error: int | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class SendUnknown:
    """The request may have reached Zalo but no answer came: the message may be sent."""

    detail: str


SendResult = Sent | NotSent | SendUnknown


# --- the client -----------------------------------------------------------------------------


class ZaloClient:
    """One `aiohttp.ClientSession` to `api_url` for every OA; tokens come from `tokens`."""

    def __init__(self, settings: ZaloSettings, tokens: AccessTokens) -> None:
        self.settings = settings
        self.tokens = tokens
        self.base = settings.api_url
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=self.settings.request_timeout_s, sock_connect=self.settings.request_timeout_s
            )
            # No limit on connections in all: each OA's sends are limited on their own
            # (`send_concurrency`), and a shared limit would let one OA's slow calls hold
            # up every other OA's.
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                json_serialize=lambda v: orjson.dumps(v).decode(),
                connector=aiohttp.TCPConnector(limit=0),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # The read calls

    async def quota(self, oa_id: str) -> Quota:
        return await self._read(oa_id, "quota", Quota.read)

    async def quality(self, oa_id: str) -> Quality:
        return await self._read(oa_id, "quality", Quality.read)

    async def templates_page(
        self, oa_id: str, offset: int = 0, limit: int = TEMPLATE_PAGE, status: str | None = None
    ) -> TemplatePage:
        """One page of `/template/all`; `status` is a name of `TEMPLATE_STATUS_FILTER`."""
        params: dict[str, str] = {"offset": str(offset), "limit": str(limit)}
        if status is not None:
            params["status"] = str(TEMPLATE_STATUS_FILTER[status])
        data, envelope = await self.call_envelope(oa_id, "templates", params=params)
        if not isinstance(data, list):
            raise self._malformed("templates", "data is not a list")
        try:
            rows = [TemplateSummary.read(row) for row in data]
            metadata = envelope.get("metadata")
            total = count(metadata.get("total")) if isinstance(metadata, dict) else None
        except MalformedAnswer as exc:
            raise self._malformed("templates", str(exc)) from exc
        return TemplatePage(rows, total)

    async def templates(self, oa_id: str, status: str | None = None) -> list[TemplateSummary]:
        """Every template of the OA (pages of 100), in Zalo's order."""
        out: list[TemplateSummary] = []
        seen: set[str] = set()
        offset = 0
        while True:
            page = await self.templates_page(oa_id, offset, TEMPLATE_PAGE, status)
            new = 0
            for row in page.templates:
                if row.template_id not in seen:
                    seen.add(row.template_id)
                    out.append(row)
                    new += 1
            offset += len(page.templates)
            # A short page ends the list; so does `total` when Zalo gives it, and a page
            # with nothing new (an offset not taken would otherwise page for ever).
            short = len(page.templates) < TEMPLATE_PAGE
            if short or new == 0 or (page.total is not None and offset >= page.total):
                return out

    async def template_info(self, oa_id: str, template_id: str) -> TemplateInfo:
        params = {"template_id": template_id}
        return await self._read(oa_id, "template_info", TemplateInfo.read, params)

    async def _read(
        self,
        oa_id: str,
        endpoint: Endpoint,
        read: Callable[[Any], ReadT],
        params: Mapping[str, str] | None = None,
    ) -> ReadT:
        """One read call's `data` as `read` types it; a shape it cannot read is a
        `ZaloCallError` of the malformed kind."""
        data = await self.call(oa_id, endpoint, params=params)
        try:
            return read(data)
        except MalformedAnswer as exc:
            raise self._malformed(endpoint, str(exc)) from exc

    async def template_tags(self, oa_id: str) -> list[str]:
        """`GET /message/template-tag`: the content types the OA may send."""
        data = await self.call(oa_id, "template_tag")
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise self._malformed("template_tag", "data is not a list of names")
        return list(data)

    # The send call

    async def send(
        self, oa_id: str, body: Mapping[str, Any], *, hashed: bool = False
    ) -> SendResult:
        """`POST /message/template` (`/hashphone` when `hashed`) with Zalo's body. Never
        raises for Zalo's answers: each is a `Sent`, `NotSent` or `SendUnknown`."""
        path = "/message/template/hashphone" if hashed else "/message/template"
        try:
            data = await self.call(oa_id, "send", json=body, path=path)
        except ZaloCallError as exc:
            if exc.outcome is OutcomeClass.UNKNOWN or exc.transport in MAYBE_SENT:
                return SendUnknown(exc.transport.value if exc.transport else exc.message)
            if exc.code is not None:
                return NotSent("zalo_error", exc.outcome, exc.code, exc.message)
            if exc.transport is None:
                return NotSent("no_token", exc.outcome)
            return NotSent("zalo_unavailable", exc.outcome, message=exc.transport.value)
        try:
            d = _object(data)
            quota = d.get("quota")
            q = quota if isinstance(quota, dict) else {}
            msg_id = text(d.get("msg_id"))
            if not msg_id:
                raise MalformedAnswer("no msg_id")
            return Sent(
                msg_id=msg_id,
                sent_time=str(count(d.get("sent_time")) or int(time.time() * 1000)),
                sending_mode=text(d.get("sending_mode")),
                daily_quota=count(q.get("dailyQuota")),
                remaining_quota=count(q.get("remainingQuota")),
            )
        except MalformedAnswer as exc:
            # `error: 0` came, so Zalo took it; what it said of it cannot be read.
            return SendUnknown(f"malformed answer: {exc}")

    # The envelope, the token and the -124 rule

    async def call(
        self,
        oa_id: str,
        endpoint: Endpoint,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        path: str | None = None,
    ) -> Any:
        """Zalo's `data` of one call, or a `ZaloCallError`."""
        data, _ = await self.call_envelope(oa_id, endpoint, params=params, json=json, path=path)
        return data

    async def call_envelope(
        self,
        oa_id: str,
        endpoint: Endpoint,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        path: str | None = None,
    ) -> tuple[Any, Mapping[str, Any]]:
        """`data` and the whole envelope; after -124 one refresh and one retry."""
        token = await self.tokens.access_token(oa_id)
        if token is None:
            ZALO_CALLS.labels(endpoint, "no_token").inc()
            raise ZaloCallError(endpoint, OutcomeClass.NEEDS_HUMAN, message="no access token")
        try:
            return await self._once(endpoint, token, params, json, path)
        except ZaloCallError as exc:
            if exc.outcome is not OutcomeClass.AUTH:
                raise
            retry_with = await self.tokens.refused(oa_id, token)
            if retry_with is None:
                raise
            _log.info("access token refused; retrying once with a refreshed one", oa_id=oa_id)
        return await self._once(endpoint, retry_with, params, json, path)

    async def _once(
        self,
        endpoint: Endpoint,
        token: str,
        params: Mapping[str, str] | None,
        json: Any,
        path: str | None,
    ) -> tuple[Any, Mapping[str, Any]]:
        if self._session is None:
            raise RuntimeError("ZaloClient.start() was not awaited")
        method, default_path = _PATHS[endpoint]
        url = f"{self.base}{path or default_path}"
        started = time.perf_counter()
        outcome = "transient"
        try:
            try:
                async with self._session.request(
                    method, url, params=params, json=json, headers={"access_token": token}
                ) as answer:
                    status = answer.status
                    raw = await answer.read()
            except aiohttp.ConnectionTimeoutError as exc:
                raise self._transport(endpoint, Transport.TIMEOUT_BEFORE_SENT) from exc
            except aiohttp.ClientConnectorError as exc:
                raise self._transport(endpoint, Transport.CONNECT) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise self._transport(endpoint, Transport.NO_ANSWER, type(exc).__name__) from exc
            if status != 200:
                case = (
                    Transport.HTTP_429
                    if status == 429
                    else Transport.HTTP_5XX
                    if status >= 500
                    else Transport.HTTP_4XX
                )
                raise self._transport(endpoint, case, f"HTTP {status}")
            try:
                envelope = orjson.loads(raw)
                code = count(envelope.get("error")) if isinstance(envelope, dict) else None
            except (orjson.JSONDecodeError, MalformedAnswer):
                code = None
            if code is None:
                raise self._transport(endpoint, Transport.NOT_JSON, "not Zalo's envelope")
            meaning = classify(code)
            outcome = meaning.outcome.value
            if meaning.outcome is not OutcomeClass.OK:
                message = envelope.get("message")
                raise ZaloCallError(
                    endpoint,
                    meaning.outcome,
                    code=code,
                    message=message if isinstance(message, str) else meaning.name,
                )
            return envelope.get("data"), envelope
        except ZaloCallError as exc:
            outcome = exc.outcome.value
            raise
        finally:
            ZALO_CALLS.labels(endpoint, outcome).inc()
            ZALO_CALL_SECONDS.labels(endpoint).observe(time.perf_counter() - started)

    @staticmethod
    def _transport(endpoint: Endpoint, case: Transport, message: str = "") -> ZaloCallError:
        return ZaloCallError(
            endpoint, TRANSPORT_OUTCOMES[case], transport=case, message=message or case.value
        )

    @staticmethod
    def _malformed(endpoint: Endpoint, message: str) -> ZaloCallError:
        return ZaloCallError(
            endpoint,
            TRANSPORT_OUTCOMES[Transport.MALFORMED],
            transport=Transport.MALFORMED,
            message=message,
        )
