"""The aiohttp application of `zns-gate serve`: health, readiness and the shared plumbing.

It owns the life of the event log (opened before the first request, flushed
and closed after the last) and turns every error into the JSON error body of
DESIGN.md section 2. Feature routes (receiver, API) are added by their own
modules; nothing here knows about Zalo's payloads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from service.config import Settings
from service.http import LOG, SETTINGS, error_response, errors_middleware, json_response
from service.log import create_log
from service.log.base import EventLog, LogUnavailable
from service.metrics import REGISTRY
from service.receiver.app import add_routes as add_receiver_routes


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


async def metrics(_: web.Request) -> web.Response:
    """Prometheus metrics of this process."""
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
    )


def build_app(settings: Settings, log: EventLog | None = None) -> web.Application:
    """The application; the log (from the settings unless given) opens with it."""
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=settings.receiver.max_body_bytes
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
    app.router.add_get("/metrics", metrics)
    add_receiver_routes(app)
    return app
