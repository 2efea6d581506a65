"""The aiohttp application of `zns-gate serve`: health, readiness and the shared plumbing.

It owns the life of the event log (opened before the first request, flushed
and closed after the last) and turns every error into the JSON error body of
docs/api.md#errors. Feature routes (receiver, API) are added by their own
modules; nothing here knows about Zalo's payloads.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from service.api.app import access_middleware
from service.api.app import add_routes as add_api_routes
from service.api.decisions import add_routes as add_decision_routes
from service.api.messages import PROXY
from service.api.messages import add_routes as add_message_routes
from service.api.routing import advertised_url, forwarded_middleware
from service.api.zalo import TOKENS
from service.api.zalo import add_routes as add_zalo_routes
from service.config import Settings
from service.http import LOG, SETTINGS, error_response, errors_middleware, json_response
from service.log import create_log
from service.log.base import EventLog, LogUnavailable
from service.logsetup import get_logger
from service.metrics import REGISTRY
from service.notify.notifier import Notifier, Owner
from service.processor.owned import OWNED
from service.processor.runner import Processor, ProcessorOptions
from service.receiver.app import add_routes as add_receiver_routes
from service.ui import add_routes as add_ui_routes
from service.zalo.access import AccessTokens
from service.zalo.client import ZaloClient
from service.zalo.poller import Poller
from service.zalo.proxy import SendProxy
from service.zalo.tokens import TokenKeeper

_log = get_logger("app")

PROCESSOR = web.AppKey("processor", Processor)
"""This instance's processor, for its lifetime and readiness (the API uses `OWNED`)."""

ZALO_TOKENS: web.AppKey[AccessTokens] = web.AppKey("zalo_tokens")
"""The OAs' Zalo access tokens (the token keeper), set by whoever wires the keeper before
the application starts; the poller (and the send proxy) take their tokens from it."""

POLLER = web.AppKey("zalo_poller", Poller)
"""The Zalo poller while `zalo.enabled` and tokens are wired."""

NOTIFIER = web.AppKey("notifier", Notifier)
"""The notifier while `[[notify]]` targets are configured."""


async def healthz(_: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the event log answers now, and the processor has restored its partitions."""
    log = request.app[LOG]
    try:
        await log.check()
    except LogUnavailable as exc:
        return error_response(503, "log_unavailable", str(exc), {"Retry-After": "5"})
    processor = request.app.get(PROCESSOR)
    if processor is not None:
        if not processor.running:
            return error_response(
                503, "processor_stopped", "the processor is not running", {"Retry-After": "5"}
            )
        reason = processor.not_ready()
        if reason is not None:
            return error_response(503, "restoring", reason, {"Retry-After": "1"})

    return json_response({"status": "ready", "log": log.backend})


async def metrics(_: web.Request) -> web.Response:
    """Prometheus metrics of this process."""
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
    )


def build_app(settings: Settings, log: EventLog | None = None) -> web.Application:
    """The application; the log (from the settings unless given) opens with it."""
    app = web.Application(
        middlewares=[errors_middleware, forwarded_middleware, access_middleware],
        client_max_size=settings.receiver.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[LOG] = log if log is not None else create_log(settings.log)
    if settings.api.cluster_secret is not None:
        app[LOG].cluster_secret = settings.api.cluster_secret.get_secret_value().encode()

    async def log_lifetime(app: web.Application) -> AsyncIterator[None]:
        await app[LOG].start()
        yield
        await app[LOG].close()

    async def processor_lifetime(app: web.Application) -> AsyncIterator[None]:
        processor = Processor(
            app[LOG],
            settings,
            ProcessorOptions(
                group_id=f"{app[LOG].topics.prefix}-processor",
                checkpoint_interval_s=settings.processor.checkpoint_interval_s,
                checkpoint_records=settings.processor.checkpoint_records,
                address=advertised_url(settings),
                contact_s=settings.log.session_timeout_ms / 2000,
            ),
        )
        await processor.start()
        app[PROCESSOR] = processor
        app[OWNED] = processor.owned
        keeper = None
        if settings.zalo.enabled:
            # The OAs' Zalo tokens, refreshed by the owner of each OA's partition.
            keeper = TokenKeeper(app[LOG], settings, processor)
            await keeper.start()
            app[TOKENS] = keeper
            processor.oa_gauges.tokens = keeper  # the refresh tokens' expiry, per OA
            if ZALO_TOKENS not in app:  # the poller's tokens, unless given (as tests do)
                app[ZALO_TOKENS] = keeper
        notifier = None
        if settings.notify:
            # The decisions of the partitions this instance owns, to the [[notify]] targets.
            notifier = app[NOTIFIER] = Notifier(app[LOG], settings, Owner(processor))
            await notifier.start()
        yield
        if notifier is not None:
            await notifier.close()
        if keeper is not None:
            await keeper.close()
        await processor.close()

    async def zalo_lifetime(app: web.Application) -> AsyncIterator[None]:
        """The poller and the send proxy, on one client of Zalo's API."""
        tokens = app.get(ZALO_TOKENS)
        if tokens is None:
            _log.warning("zalo.enabled but no token keeper is wired: Zalo is not polled")
            yield
            return
        client = ZaloClient(settings.zalo, tokens)
        await client.start()
        poller = Poller(settings, tokens, app[LOG], client=client)
        await poller.start()
        app[POLLER] = poller
        processor = app.get(PROCESSOR)
        proxy = None
        if processor is not None:
            processor.watchers.append(poller.on_record)
            proxy = app[PROXY] = SendProxy(settings, processor.owned, tokens, client)
        yield
        if proxy is not None:
            await proxy.close()  # the batches under way finish and are recorded
        if processor is not None:
            processor.watchers.remove(poller.on_record)
        await poller.close()
        await client.close()

    app.cleanup_ctx.append(log_lifetime)
    if settings.processor.enabled:
        app.cleanup_ctx.append(processor_lifetime)
    if settings.zalo.enabled:
        app.cleanup_ctx.append(zalo_lifetime)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    add_receiver_routes(app)
    add_api_routes(app)
    add_zalo_routes(app)
    add_message_routes(app)
    add_decision_routes(app)
    add_ui_routes(app)
    return app


YOUNG_COLLECTION_EVERY = 10_000
"""Allocations (less deallocations) between the garbage collector's young collections."""


async def freeze_what_started(_: web.Application) -> None:
    """An `on_startup` hook of a process that runs one application (`zns-gate serve`):
    leave what start-up made (modules, classes, settings, clients) out of every later
    garbage collection. A full collection walks every object it tracks with the event
    loop stopped, and these live as long as the process. (Not for a process that starts
    many applications, as a test run does: what it freezes is never collected.)

    Young collections come every 10,000 allocations instead of 700: the objects of a
    request or a write in flight (futures, records, their values) mostly die by their
    reference counts within that, instead of being promoted and making the full
    collections, the loop's longest stalls, come sooner. Under 2,000 sends a second the
    admission p99 fell by about half in `tests/bench/scale.py`."""
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])
