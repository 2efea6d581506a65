"""`POST /webhooks/zalo`: verify a Zalo webhook and publish it, unchanged, to the event log.

The order of checks is docs/api.md#webhook-receiver: size, content type, JSON, the two
fields the signature needs, the signature, then one durable append. Bad input
gets a 4xx and reaches nothing; a log that cannot take the record in time gets
a 503 so that Zalo retries. The body is never re-serialised (the signature and
the analysts both need the bytes Zalo sent), and the user's free text in it is
never logged. Duplicates are answered 200 and removed downstream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from aiohttp import web
from prometheus_client import Counter, Histogram

from service.domain.events import MalformedBody, dedup_key, oa_ids_named, parse_body, text_of
from service.http import LOG, SETTINGS, error_response, json_response
from service.log.base import Headers, LogError
from service.logsetup import get_logger
from service.metrics import PUBLISH_SECONDS, WEBHOOKS
from service.receiver.signature import verify

PATH = "/webhooks/zalo"

# Zalo's redelivery counter (docs/rules.md#webhook-retries-and-dedup-keys; its name is not
# confirmed first-hand).
RETRY_HEADER = "num_retry"

_log = get_logger("receiver")
_DEBUG = logging.getLogger("receiver")  # the standard library logger behind _log, for its level


# labels() takes a lock and builds a tuple on every call: keep the children. Event names
# reach these only after the signature is verified, so they are a small set.
@functools.cache
def _accepted(event_name: str) -> Counter:
    return WEBHOOKS.labels(outcome="accepted", event_name=event_name)


@functools.cache
def _publish_seconds(backend: str) -> Histogram:
    return PUBLISH_SECONDS.labels(backend=backend)


def _refuse(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    **context: object,
) -> web.Response:
    WEBHOOKS.labels(outcome=code, event_name="").inc()
    _log.warning("webhook refused", code=code, status=status, remote=request.remote, **context)
    return error_response(status, code, message, headers)


async def receive_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    limits = settings.receiver

    # 1. Size and type, before a byte of the body is read.
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        return _refuse(
            request,
            413,
            "payload_too_large",
            f"the body is larger than {limits.max_body_bytes} bytes",
            length=request.content_length,
        )
    if request.content_type != "application/json":
        return _refuse(
            request,
            415,
            "unsupported_media_type",
            "the body must be application/json",
            content_type=request.content_type,
        )
    try:
        raw = await _read_body(request, limits.read_timeout_s)
    except TimeoutError:
        return _refuse(request, 408, "request_timeout", "the body arrived too slowly")

    # 2. Just enough JSON for the signature.
    try:
        body = parse_body(raw)
    except MalformedBody:
        return _refuse(request, 400, "malformed_json", "the body is not a JSON object")
    app_id = text_of(body.get("app_id"))
    timestamp = text_of(body.get("timestamp"))
    if app_id is None or timestamp is None:
        absent = "app_id" if app_id is None else "timestamp"
        return _refuse(request, 400, "missing_field", f"{absent} is missing or not a string")

    # 3. The signature, with the secrets of this app.
    secrets = settings.app_secrets(app_id)
    if secrets is None:
        return _refuse(
            request,
            401,
            "unknown_app",
            "no secret is configured for this app_id",
            app_id=app_id[:64],  # not authenticated: keep what reaches the log short
        )
    if not verify(request.headers.get("X-ZEvent-Signature"), app_id, raw, timestamp, secrets):
        return _refuse(
            request, 401, "invalid_signature", "the signature does not match", app_id=app_id
        )
    if limits.max_age_s is not None and not _fresh(timestamp, limits.max_age_s):
        return _refuse(request, 401, "stale_timestamp", "the timestamp is too old", app_id=app_id)
    named = oa_ids_named(body)
    if len(named) > 1:
        return _refuse(
            request, 400, "conflicting_oa_id", "the event names more than one OA", app_id=app_id
        )
    oa_id = named[0] if named else None
    # A genuine signature of one app says nothing about OAs of another app.
    if oa_id is not None and not settings.app_signs_for(app_id, oa_id):
        return _refuse(
            request,
            401,
            "unknown_app",
            "this app_id is not configured for this OA",
            app_id=app_id,
            oa_id=oa_id[:64],
        )

    # 4. Classify.
    event_name = text_of(body.get("event_name")) or ""
    # Request headers are not signed: keep them short.
    server = request.headers.get("X-ZEvent-Server", "")[:64]
    dedup = dedup_key(body, raw)
    headers: Headers = (
        ("kind", b"webhook"),
        ("event_name", event_name.encode()),
        # aiohttp decoded header bytes that are not UTF-8 as surrogates: give them back.
        ("server", server.encode("utf-8", "surrogateescape")),
        ("received_at", str(int(time.time() * 1000)).encode()),
        ("dedup_key", dedup.encode()),
    )
    retry = request.headers.get(RETRY_HEADER)
    if retry is not None:
        headers += (("retry", retry[:16].encode("utf-8", "surrogateescape")),)

    # 5. One durable append, or a 503 that makes Zalo try again.
    log = request.app[LOG]
    # With no OA id the record is keyed by its app; the processor sends it to the DLQ.
    key = (oa_id or app_id).encode()
    started = time.perf_counter()
    try:
        position = await log.append(
            log.topics.events, key, raw, headers, timeout_s=limits.publish_deadline_s
        )
    except LogError as exc:
        WEBHOOKS.labels(outcome="log_unavailable", event_name=event_name).inc()
        _log.error("webhook not published", error=repr(exc), oa_id=oa_id, event_name=event_name)
        return error_response(
            503,
            "log_unavailable",
            "the event log did not accept the webhook in time; retry later",
            {"Retry-After": str(limits.retry_after_s)},
        )
    _publish_seconds(log.backend).observe(time.perf_counter() - started)
    _accepted(event_name).inc()
    if _DEBUG.isEnabledFor(logging.DEBUG):  # every webhook passes here: skip the work when off
        _log.debug(
            "webhook accepted",
            oa_id=oa_id,
            event_name=event_name,
            dedup_key=dedup,
            partition=position.partition,
            offset=position.offset,
        )
    return json_response({"status": "accepted", "dedup_key": dedup})


async def _read_body(request: web.Request, timeout_s: float) -> bytes:
    """The whole body; bodies without a Content-Length stop at client_max_size with a 413."""
    if request.content.is_eof():  # usually all of it came with the headers: no timer needed
        return await request.read()
    async with asyncio.timeout(timeout_s):
        return await request.read()


def _fresh(timestamp: str, max_age_s: float) -> bool:
    try:
        emitted_ms = int(timestamp)
    except ValueError:
        return False
    return time.time() * 1000 - emitted_ms <= max_age_s * 1000


def add_routes(app: web.Application) -> None:
    app.router.add_post(PATH, receive_webhook)
