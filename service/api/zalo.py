"""The routes of an OA's Zalo token: store, read and delete it, and connect an OA to an app.

`PUT`, `GET`, `DELETE /v1/oas/{oa_id}/zalo/token` are answered by the OA's
owner (forwarded there like the other OA routes); `GET /zalo/connect` sends an
OA admin to Zalo's permission page with PKCE and a signed state, and
`GET /zalo/callback` takes Zalo's code back, on the owner too. With
`zalo.enabled = false` every one answers 404 `zalo_disabled`. Bad input is a
4xx with a code and changes nothing. No answer ever holds a token or a code.
"""

from __future__ import annotations

import html
import time

from aiohttp import web

from service.api.app import (
    _PATH_ID,
    _answer,
    _body,
    _forward,
    _Invalid,
    _not_served,
    _oa_id,
    _owned,
    _routed,
    _unless_owner,
)
from service.api.models import TokenBody
from service.http import SETTINGS, error_response
from service.processor.owned import Owner, Unserved
from service.zalo.connect import BadState, Connector
from service.zalo.tokens import TokenKeeper, TokenUnavailable

TOKENS = web.AppKey("zalo_tokens", TokenKeeper)
CONNECTOR = web.AppKey("zalo_connector", Connector)


def _keeper(request: web.Request) -> TokenKeeper | web.Response:
    if not request.app[SETTINGS].zalo.enabled:
        return error_response(404, "zalo_disabled", "the connection to Zalo is off (zalo.enabled)")
    keeper = request.app.get(TOKENS)
    if keeper is None:
        return _not_served(Unserved("processor_disabled", "this instance runs no processor"))
    return keeper


def _app_refused(request: web.Request, app_id: str, oa_id: str | None) -> web.Response | None:
    """A 422 unless `app_id` is configured with an app_secret (and may hold `oa_id`)."""
    settings = request.app[SETTINGS]
    if settings.app_secrets(app_id) is None:
        return error_response(422, "unknown_app", f"app {app_id} is not among [[apps]]")
    if not any(a.app_id == app_id and a.app_secret is not None for a in settings.apps):
        return error_response(422, "no_app_secret", f"app {app_id} has no app_secret configured")
    if oa_id is not None and not settings.app_signs_for(app_id, oa_id):
        return error_response(422, "unknown_app", f"OA {oa_id} is not one of app {app_id}'s")
    return None


def _unavailable(exc: TokenUnavailable) -> web.Response:
    if exc.retry:
        return error_response(
            503, "zalo_unavailable", f"Zalo did not answer now ({exc.code})", {"Retry-After": "5"}
        )
    return error_response(422, "token_refused", f"Zalo refused the token ({exc.code})")


async def put_token(request: web.Request) -> web.Response:
    keeper = _keeper(request)
    if isinstance(keeper, web.Response):
        return keeper
    oa_id = _oa_id(request)
    try:
        body = await _body(request, TokenBody)
    except _Invalid as exc:
        return error_response(exc.status, exc.code, str(exc))
    if (refused := _app_refused(request, body.app_id, oa_id)) is not None:
        return refused
    owned = await _unless_owner(request, oa_id)
    if isinstance(owned, web.Response):
        return owned
    try:
        status = await keeper.store(
            oa_id, body.app_id, body.refresh_token, body.access_token, body.expires_in
        )
    except TokenUnavailable as exc:
        return _unavailable(exc)
    return _answer(request, status.answer(), None)


async def get_token(request: web.Request) -> web.Response:
    keeper = _keeper(request)
    if isinstance(keeper, web.Response):
        return keeper
    oa_id = _oa_id(request)
    owned = _owned(request)
    if owned is None:
        return _not_served(Unserved("processor_disabled", "this instance runs no processor"))
    found = _routed(request, owned.where(oa_id))
    if isinstance(found, Unserved):
        return _not_served(found)
    if isinstance(found, Owner):
        return await _forward(request, found)
    return _answer(request, keeper.status(oa_id).answer(), None)


async def delete_token(request: web.Request) -> web.Response:
    keeper = _keeper(request)
    if isinstance(keeper, web.Response):
        return keeper
    oa_id = _oa_id(request)
    owned = await _unless_owner(request, oa_id)
    if isinstance(owned, web.Response):
        return owned
    return _answer(request, (await keeper.forget(oa_id)).answer(), None)


async def connect(request: web.Request) -> web.Response:
    keeper = _keeper(request)
    if isinstance(keeper, web.Response):
        return keeper
    app_id = request.query.get("app_id", "")
    if not _PATH_ID.fullmatch(app_id):
        return error_response(400, "invalid_request", "app_id: the app to connect an OA to")
    if (refused := _app_refused(request, app_id, None)) is not None:
        return refused
    zalo = request.app[SETTINGS].zalo
    if zalo.callback_url is None:
        return error_response(
            422, "no_callback_url", "zalo.callback_url (this service's /zalo/callback) is not set"
        )
    visit = request.app[CONNECTOR].start(
        zalo.permission_url, app_id, zalo.callback_url, time.time()
    )
    raise web.HTTPFound(visit.url)


async def callback(request: web.Request) -> web.Response:
    keeper = _keeper(request)
    if isinstance(keeper, web.Response):
        return keeper
    query = request.query
    code, oa_id, state = query.get("code", ""), query.get("oa_id", ""), query.get("state", "")
    if not code or len(code) > 2048 or not _PATH_ID.fullmatch(oa_id):
        return error_response(400, "invalid_request", "code and oa_id are needed")
    try:
        app_id, verifier = request.app[CONNECTOR].check(state, time.time())
    except BadState as exc:
        return error_response(400, "invalid_state", str(exc))
    if (refused := _app_refused(request, app_id, oa_id)) is not None:
        return refused
    owned = await _unless_owner(request, oa_id)
    if isinstance(owned, web.Response):
        return owned
    try:
        status = await keeper.exchange(oa_id, app_id, code, verifier)
    except TokenUnavailable as exc:
        return _unavailable(exc)
    page = (
        '<!doctype html><html lang="en"><meta charset="utf-8"><title>OA connected</title>'
        f"<p>Zalo OA <b>{html.escape(oa_id)}</b> is connected to app {html.escape(app_id)}"
        f" (token {html.escape(status.state)}).</p></html>"
    )
    return web.Response(text=page, content_type="text/html")


def add_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    if settings.zalo.token_key is not None:
        app[CONNECTOR] = Connector(settings.zalo.key())
    r = app.router
    r.add_put("/v1/oas/{oa_id}/zalo/token", put_token)
    r.add_get("/v1/oas/{oa_id}/zalo/token", get_token)
    r.add_delete("/v1/oas/{oa_id}/zalo/token", delete_token)
    r.add_get("/zalo/connect", connect)
    r.add_get("/zalo/callback", callback)
