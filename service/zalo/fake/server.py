"""The fake Zalo's HTTP face: Zalo's OAuth v4 and business API paths on one port.

It translates requests into `FakeZalo` calls and results into Zalo's shapes
(HTTP 200 with `error` != 0 for refusals, counts as strings or numbers by the
scenario), applies the scenario's delays, and hands successful sends to the
webhook poster. It holds no rules of its own; `/_fake/...` is in `control.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from aiohttp import web

from service.logsetup import get_logger
from service.zalo.fake.scenario import TEMPLATE_TAG_NAMES, Endpoint, Scenario
from service.zalo.fake.state import (
    FakeClock,
    FakeZalo,
    OaState,
    Refusal,
    Sent,
    TemplateState,
    fingerprint,
)
from service.zalo.fake.webhooks import WebhookPoster

_log = get_logger("fake_zalo")

Handler = Callable[[web.Request, OaState], Awaitable[Any]]


def json_answer(value: Any, status: int = 200) -> web.Response:
    """A JSON answer encoded by orjson (stdlib json is several times slower on big reads)."""
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


@dataclass(frozen=True)
class Page:
    """A list answer whose `metadata.total` sits beside `data`, as `/template/all` has it."""

    data: list[Any]
    total: int | str | None


class FakeZaloServer:
    """The fake's state, its webhook poster and the handlers that serve them."""

    def __init__(self, scenario: Scenario, gate: str | None, clock: FakeClock | None) -> None:
        self.zalo = FakeZalo(scenario, clock or FakeClock())
        self.webhooks = WebhookPoster(scenario, gate)

    # Shapes

    def number(self, value: int | None, zalo_sends_string: bool) -> int | str | None:
        """A count as the scenario's number style renders it."""
        style = self.zalo.scenario.numbers
        if value is None:
            return None
        if style == "strings" or (style == "as_zalo" and zalo_sends_string):
            return str(value)
        return value

    @staticmethod
    def _answer(data: Any) -> web.Response:
        if isinstance(data, Page):
            return json_answer(
                {
                    "error": 0,
                    "message": "Success",
                    "data": data.data,
                    "metadata": {"total": data.total},
                }
            )
        return json_answer({"error": 0, "message": "Success", "data": data})

    @staticmethod
    def _refused(refusal: Refusal) -> web.Response:
        return json_answer({"error": refusal.code, "message": refusal.message})

    async def _delay(self, endpoint: Endpoint) -> None:
        behaviour = self.zalo.scenario.behaviour.get(endpoint)
        if behaviour is not None and behaviour.delay_s > 0:
            await asyncio.sleep(behaviour.delay_s)

    # OAuth v4

    async def access_token(self, request: web.Request) -> web.Response:
        await self._delay("oauth")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        try:
            scripted = self.zalo.scripted_refusal("oauth")
            if scripted is not None:
                raise scripted
            pair = self.zalo.access_token(form, request.headers.get("secret_key"))
        except Refusal as refusal:
            _log.info("token refused", grant_type=form.get("grant_type"), error=refusal.code)
            # OAuth errors have their own shape: error_name/_reason/_description, no message.
            return json_answer(
                {
                    "error": refusal.code,
                    "error_name": refusal.message,
                    "error_reason": refusal.message,
                    "error_description": refusal.message,
                }
            )
        _log.info(
            "token issued",
            grant_type=form.get("grant_type"),
            access_token=fingerprint(pair.access_token),
        )
        return json_answer(
            {
                "access_token": pair.access_token,
                "refresh_token": pair.refresh_token,
                "expires_in": self.number(pair.expires_in, zalo_sends_string=True),
            }
        )

    async def permission(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        redirect_uri = query.get("redirect_uri", "")
        target = urlsplit(redirect_uri)
        method = query.get("code_challenge_method", "S256")
        try:
            if target.scheme not in ("http", "https") or not target.netloc:
                raise Refusal(self.zalo.scenario.oauth_errors.invalid_params, "Bad redirect_uri")
            if method != "S256":
                raise Refusal(self.zalo.scenario.oauth_errors.invalid_params, "S256 only")
            code, oa_id = self.zalo.permission(
                query.get("app_id", ""), query.get("code_challenge", ""), query.get("oa_id")
            )
        except Refusal as refusal:
            return json_answer({"error": refusal.code, "message": refusal.message}, status=400)
        params = {"code": code, "oa_id": oa_id, "state": query.get("state", "")}
        joined = f"{target.query}&{urlencode(params)}" if target.query else urlencode(params)
        location = urlunsplit(target._replace(query=joined))
        raise web.HTTPFound(location)

    # Business API

    async def _business(
        self, request: web.Request, endpoint: Endpoint, handler: Handler
    ) -> web.Response:
        # A send is taken as it arrives and answered after the delay: a Zalo slow to
        # answer has sent the message all the same (a caller that gives up does not
        # know). Other calls wait first.
        taken_first = endpoint == "send"
        if not taken_first:
            await self._delay(endpoint)
        try:
            scripted = self.zalo.scripted_refusal(endpoint)
            if scripted is not None:
                raise scripted
            oa = self.zalo.oa_of(request.headers.get("access_token"))
            answer = self._answer(await handler(request, oa))
        except Refusal as refusal:
            answer = self._refused(refusal)
        if taken_first:
            await self._delay(endpoint)
        return answer

    @staticmethod
    async def _read_json(request: web.Request) -> Any:
        """The body, or None when it is not JSON (the send refuses it, and records it)."""
        try:
            # orjson, so what is kept of a body can always be written back out.
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None

    async def _send(self, request: web.Request, oa: OaState, hashed: bool) -> dict[str, Any]:
        body = await self._read_json(request)
        sent = self.zalo.send(oa, body, hashed)
        mode = body.get("mode") if isinstance(body, dict) else None
        _log.debug("sent", oa_id=oa.oa_id, msg_id=sent.msg_id, mode=mode or "production")
        self._after_send(sent)
        return {
            "msg_id": sent.msg_id,
            "sent_time": str(sent.sent_time_ms),
            "sending_mode": sent.sending_mode,
            "quota": {
                "dailyQuota": self.number(sent.daily_quota, zalo_sends_string=True),
                "remainingQuota": self.number(sent.remaining_quota, zalo_sends_string=True),
            },
        }

    def _after_send(self, sent: Sent) -> None:
        app = self.zalo.apps[sent.app_id]
        delay = self.zalo.scenario.receipt_delay_s
        receipt = {
            "sender": {"id": sent.oa_id},
            "recipient": {"id": sent.recipient},
            "event_name": "user_received_message",
            "message": {
                "delivery_time": str(sent.delivery_time_ms),
                "msg_id": sent.msg_id,
                "tracking_id": sent.tracking_id,
            },
            "app_id": sent.app_id,
            "timestamp": str(sent.delivery_time_ms),
        }
        self.webhooks.post(app, receipt, delay, zns=True)
        rate = self.zalo.draw_rating()
        if rate is not None:
            submitted = str(sent.delivery_time_ms + 1000)
            rating = {
                "event_name": "user_feedback",
                "app_id": sent.app_id,
                "oa_id": sent.oa_id,
                "timestamp": submitted,
                "message": {
                    "msg_id": sent.msg_id,
                    "tracking_id": sent.tracking_id,
                    "rate": rate,
                    "note": "",
                    "feedbacks": [],
                    "submit_time": submitted,
                },
            }
            # A rating comes after the receipt, never before it.
            self.webhooks.post(app, rating, delay * 2, zns=False)

    async def send(self, request: web.Request) -> web.Response:
        async def handle(r: web.Request, oa: OaState) -> dict[str, Any]:
            return await self._send(r, oa, hashed=False)

        return await self._business(request, "send", handle)

    async def send_hashphone(self, request: web.Request) -> web.Response:
        async def handle(r: web.Request, oa: OaState) -> dict[str, Any]:
            return await self._send(r, oa, hashed=True)

        return await self._business(request, "send", handle)

    async def quota(self, request: web.Request) -> web.Response:
        async def handle(_: web.Request, oa: OaState) -> dict[str, Any]:
            return {
                k: self.number(v, zalo_sends_string=False) for k, v in self.zalo.quota(oa).items()
            }

        return await self._business(request, "quota", handle)

    async def quality(self, request: web.Request) -> web.Response:
        async def handle(_: web.Request, oa: OaState) -> dict[str, Any]:
            return {"oaCurrentQuality": oa.quality_48h, "oa7dayQuality": oa.quality_7d}

        return await self._business(request, "quality", handle)

    def _int_query(self, request: web.Request, name: str, default: int | None) -> int | None:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError as exc:
            invalid = self.zalo.scenario.send_errors.invalid_params
            raise Refusal(invalid, f"{name} is invalid") from exc

    def _template_id(self, template: TemplateState) -> int | str | None:
        # Template ids are digits; Zalo's list and detail answers carry them as numbers.
        if template.template_id.isdigit():
            return self.number(int(template.template_id), zalo_sends_string=False)
        return template.template_id

    async def templates(self, request: web.Request) -> web.Response:
        async def handle(r: web.Request, oa: OaState) -> Page:
            offset = self._int_query(r, "offset", 0) or 0
            limit = self._int_query(r, "limit", 100) or 0
            status = self._int_query(r, "status", None)
            page, total = self.zalo.templates_page(oa, offset, limit, status)
            listed = [
                {
                    "templateId": self._template_id(t),
                    "templateName": t.template_name,
                    "createdTime": t.created_time_ms,
                    "status": t.status,
                    "templateQuality": t.quality,
                }
                for t in page
            ]
            return Page(listed, self.number(total, zalo_sends_string=False))

        return await self._business(request, "templates", handle)

    async def template_info(self, request: web.Request) -> web.Response:
        async def handle(r: web.Request, oa: OaState) -> dict[str, Any]:
            t = self.zalo.template(oa, r.query.get("template_id", ""))
            return {
                "templateId": self._template_id(t),
                "templateName": t.template_name,
                "status": t.status,
                "listParams": [
                    {
                        "name": p.name,
                        "require": p.require,
                        "type": p.type,
                        "maxLength": self.number(p.max_length, zalo_sends_string=False),
                        "minLength": self.number(p.min_length, zalo_sends_string=False),
                        "acceptNull": p.accept_null,
                    }
                    for p in t.params
                ],
                "listButtons": [],
                "timeout": self.number(t.timeout_ms, zalo_sends_string=False),
                "previewUrl": f"https://account.zalo.cloud/znspreview/{t.template_id}",
                "templateQuality": t.quality,
                "templateTag": TEMPLATE_TAG_NAMES[t.tag],
                "price": t.price,
                "applyTemplateQuota": False,
                "templateDailyQuota": None,
                "templateRemainingQuota": None,
            }

        return await self._business(request, "template_info", handle)

    async def template_tag(self, request: web.Request) -> web.Response:
        async def handle(_: web.Request, oa: OaState) -> list[str]:
            return list(oa.allowed_tags)

        return await self._business(request, "template_tag", handle)

    async def message_status(self, request: web.Request) -> web.Response:
        async def handle(r: web.Request, oa: OaState) -> dict[str, Any]:
            status, delivered = self.zalo.message_status(oa, r.query.get("message_id", ""))
            data: dict[str, Any] = {"status": status}
            if delivered is not None:
                data["delivery_time"] = str(delivered)
            return data

        return await self._business(request, "message_status", handle)


FAKE_KEY: web.AppKey[FakeZaloServer] = web.AppKey("fake_zalo", FakeZaloServer)


def build_fake_app(
    scenario: Scenario, gate: str | None = None, clock: FakeClock | None = None
) -> web.Application:
    """The fake as an aiohttp application; `app[FAKE_KEY]` is its state for tests."""
    from service.zalo.fake.control import add_control_routes

    fake = FakeZaloServer(scenario, gate, clock)
    app = web.Application()
    app[FAKE_KEY] = fake
    app.router.add_post("/v4/oa/access_token", fake.access_token)
    app.router.add_get("/v4/oa/permission", fake.permission)
    app.router.add_post("/message/template", fake.send)
    app.router.add_post("/message/template/hashphone", fake.send_hashphone)
    app.router.add_get("/message/quota", fake.quota)
    app.router.add_get("/quality", fake.quality)
    app.router.add_get("/template/all", fake.templates)
    app.router.add_get("/template/info/v2", fake.template_info)
    app.router.add_get("/message/template-tag", fake.template_tag)
    app.router.add_get("/message/status", fake.message_status)
    add_control_routes(app, fake)

    async def webhooks(_: web.Application) -> AsyncIterator[None]:
        await fake.webhooks.start()
        yield
        await fake.webhooks.close()

    app.cleanup_ctx.append(webhooks)
    return app
