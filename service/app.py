"""The aiohttp application of `zns-gate serve`: health, readiness and the shared plumbing.

It owns the life of the event log (opened before the first request, flushed
and closed after the last) and turns every error into the JSON error body of
DESIGN.md section 2. Feature routes (receiver, API) are added by their own
modules; nothing here knows about Zalo's payloads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import web

from service.config import Settings
from service.log import create_log
from service.log.base import EventLog, LogUnavailable
from service.logsetup import get_logger

SETTINGS = web.AppKey("settings", Settings)
LOG = web.AppKey("log", EventLog)

_log = get_logger("app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The one error body of the service: {"error": {"code": ..., "message": ...}}."""
    return json_response({"error": {"code": code, "message": message}}, status, headers)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors and anything unexpected, as JSON error bodies."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, headers)
    except LogUnavailable as exc:
        _log.warning("log unavailable", path=request.path, error=str(exc))
        return error_response(
            503, "log_unavailable", "the event log is unavailable", {"Retry-After": "5"}
        )
    except Exception:
        _log.exception("unhandled error", path=request.path, method=request.method)
        return error_response(500, "internal_error", "internal error")


async def healthz(_: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the event log answers now."""
    log = request.app[LOG]
    try:
        await log.check()
    except LogUnavailable as exc:
        return error_response(503, "log_unavailable", str(exc), {"Retry-After": "5"})
    return json_response({"status": "ready", "log": log.backend})


def build_app(settings: Settings, log: EventLog | None = None) -> web.Application:
    """The application; the log (from the settings unless given) opens with it."""
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=settings.server.max_body_bytes
    )
    app[SETTINGS] = settings
    app[LOG] = log if log is not None else create_log(settings.log)

    async def log_lifetime(app: web.Application) -> AsyncIterator[None]:
        await app[LOG].start()
        yield
        await app[LOG].close()

    app.cleanup_ctx.append(log_lifetime)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
