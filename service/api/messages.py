"""`POST /v1/oas/{oa_id}/messages`: messages sent through Zalo in one call (the send proxy).

The body is checked against its model here (422 naming the field); the OA's owner
answers (another instance forwards the request there); `service/zalo/proxy.py` does
the rest. With `zalo.enabled = false` it answers 404 `zalo_disabled`.
"""

from __future__ import annotations

import hashlib

import orjson
from aiohttp import web

from service.api.app import _answer, _body, _Invalid, _not_served, _oa_id, _unless_owner
from service.api.models import MessageItem, MessagesBody
from service.domain.messages import Outgoing
from service.domain.windows import next_day_start
from service.http import SETTINGS, error_response
from service.processor.owned import Refused, Unserved
from service.zalo.proxy import Request, SendProxy

PROXY = web.AppKey("send_proxy", SendProxy)


async def post_messages(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not settings.zalo.enabled:
        return error_response(404, "zalo_disabled", "the connection to Zalo is off (zalo.enabled)")
    oa_id = _oa_id(request)
    try:
        body = await _body(request, MessagesBody)
    except _Invalid as exc:
        return error_response(exc.status, exc.code, str(exc))
    owned = await _unless_owner(request, oa_id)
    if isinstance(owned, web.Response):
        return owned
    proxy = request.app.get(PROXY)
    if proxy is None:
        return _not_served(Unserved("processor_disabled", "this instance runs no processor"))
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    first = body.messages[0]
    answered = await proxy.send(
        Request(
            oa_id=oa_id,
            idempotency_key=body.idempotency_key,
            request_hash=hashlib.sha256(b"messages:" + canonical).hexdigest(),
            template_id=first.template_id,
            tag=first.tag,
            mode=body.mode or settings.zalo.mode,
            messages=tuple(_outgoing(m) for m in body.messages),
        )
    )
    if isinstance(answered, Unserved):
        return _not_served(answered)
    if isinstance(answered, Refused):
        return error_response(answered.status, answered.code, answered.message)
    now = answered.now
    reset = int((next_day_start(now, answered.zone) - now).total_seconds())
    headers = {"X-RateLimit-Reset": str(max(reset, 0))}
    remaining = answered.body.get("remaining")
    if remaining is not None:
        headers["X-RateLimit-Remaining"] = str(remaining)
    return _answer(request, answered.body, None, **headers)


def _outgoing(message: MessageItem) -> Outgoing:
    return Outgoing(
        template_id=message.template_id,
        phone=message.phone,
        hash_phone=message.hash_phone,
        template_data={k: _as_text(v) for k, v in message.template_data.items()},
        tracking_id=message.tracking_id,
    )


def _as_text(value: str | int | float | bool | None) -> str:
    """A value of `template_data` as Zalo is sent it: a string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/oas/{oa_id}/messages", post_messages)
