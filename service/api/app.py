"""The `/v1` routes of docs/api.md that read an OA's state or append records for it.

Reads are answered from the state of the instance that owns the OA's
partition, on a copy brought to "now" (the live state is only changed by the
processor). Sends, syncs and operator commands are validated, appended to
`zns.events` (their effect follows when the processor folds them) and
answered once durable. An instance that does not serve the OA's partition (not
assigned here, or still restoring) answers 503 with `Retry-After`.

Access: with `[[api.tokens]]` configured, every request needs a bearer token
with the scope it uses (`read` for GET, `send` for admissions, sends and
messages, `admin` for sync and resume); with none, the API is open (the service
warns at start).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import (
    BaseModel,
    ValidationError,
)

from service.api import views
from service.api.models import AdmissionBody, SendsBody, SyncBody
from service.api.openapi import document
from service.api.routing import SERVED_BY, STALENESS, Forwarder, OwnerUnreachable, advertised_url
from service.domain.records import CommandRecord, SendOutcome
from service.domain.state import OAState, Policy
from service.domain.windows import next_day_start
from service.http import LOG, SETTINGS, Handler, error_response, json_response
from service.log.base import Position
from service.logsetup import get_logger
from service.processor.owned import (
    OWNED,
    Admitted,
    Ask,
    OwnedStates,
    Owner,
    Unserved,
    View,
)

_log = get_logger("api")

FORWARDER = web.AppKey("forwarder", Forwarder)

BodyT = TypeVar("BodyT", bound=BaseModel)
T = TypeVar("T")

PREFIX = "/v1/"


# --- access ---------------------------------------------------------------------------------


CONNECT = "/zalo/connect"
"""Outside /v1, but it starts an OA's connection: it takes a token of scope admin."""


def _scope(request: web.Request) -> str:
    if request.path == CONNECT:
        return "admin"
    if request.method in {"GET", "HEAD"}:
        return "read"
    if request.path.endswith(("/sends", "/admissions", "/messages")):
        return "send"
    return "admin"


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(PREFIX) and request.path != CONNECT:
        return await handler(request)
    refused = _unauthorised(request)
    if refused is not None:
        return refused
    # A browser posts forms and text to any site without asking first; JSON it does not:
    # so no other web page can make a request here, even to an API without tokens.
    if request.method in {"POST", "PUT"} and request.content_type != "application/json":
        return error_response(
            415,
            "unsupported_media_type",
            f"a /v1 {request.method} takes a body of type application/json",
        )
    return await handler(request)


def _unauthorised(request: web.Request) -> web.Response | None:
    """The 401 or 403 for a request without a token of the scope it uses; None with no
    tokens configured (the API is open) or a fitting token."""
    tokens = request.app[SETTINGS].api.tokens
    if not tokens:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    match = None
    if scheme.lower() == "bearer" and given:
        for token in tokens:
            secret = token.token.get_secret_value().encode()
            if hmac.compare_digest(secret, given.encode("utf-8", "surrogateescape")):
                match = token
    if match is None:
        return error_response(
            401, "unauthenticated", "a valid bearer token is needed", {"WWW-Authenticate": "Bearer"}
        )
    if _scope(request) not in match.scopes:
        return error_response(403, "forbidden", f"the token lacks the {_scope(request)} scope")
    return None


# --- the owner's state ----------------------------------------------------------------------


_PATH_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _path_id(request: web.Request, name: str) -> str:
    """An id of the path (`oa_id`, `template_id`), as the records keep ids: at most 64 of
    `A-Z a-z 0-9 _ . -`; else 400."""
    value = request.match_info[name]
    if not _PATH_ID.fullmatch(value):
        raise web.HTTPBadRequest(reason=f"{name}: at most 64 of A-Z a-z 0-9 _ . -")
    return value


def _oa_id(request: web.Request) -> str:
    return _path_id(request, "oa_id")


_DISABLED = Unserved("processor_disabled", "this instance runs no processor")


def _owned(request: web.Request) -> OwnedStates | None:
    return request.app.get(OWNED)


def _routed(request: web.Request, found: T) -> T | Unserved:
    """A forwarded request is never forwarded again: its owner moved meanwhile."""
    if isinstance(found, Owner) and request.app[FORWARDER].was_forwarded(request):
        return Unserved("not_owner", f"partition {found.partition} moved; ask again")
    return found


def _not_served(unserved: Unserved) -> web.Response:
    return error_response(503, unserved.code, unserved.message, {"Retry-After": "1"})


def _answer(
    request: web.Request, body: object, staleness_ms: int | None, **headers: str
) -> web.Response:
    """A JSON answer given here, saying by whom and, for a copy, how stale it may be."""
    extra = {SERVED_BY: request.app[FORWARDER].address or "unknown", **headers}
    if staleness_ms is not None:
        extra[STALENESS] = str(staleness_ms)
    return json_response(body, headers=extra)


async def _forward(request: web.Request, owner: Owner, body: bytes = b"") -> web.Response:
    try:
        return await request.app[FORWARDER].forward(request, owner.address, body)
    except OwnerUnreachable as exc:
        return error_response(503, "owner_unreachable", str(exc), {"Retry-After": "1"})


# --- reads ------------------------------------------------------------------------------------


async def _reading(request: web.Request) -> View | web.Response:
    """The OA's state to answer a read from here, or the answer already: the owner's
    (forwarded there) or a 503."""
    oa_id = _oa_id(request)
    owned = _owned(request)
    if owned is None:
        return _not_served(_DISABLED)
    found = _routed(request, owned.read(oa_id))
    if isinstance(found, Unserved):
        return _not_served(found)
    if isinstance(found, Owner):
        return await _forward(request, found)
    return found


def _read(view: Callable[[OAState, datetime, Policy], object]) -> Handler:
    """A GET handler answering `view` of the OA's state."""

    async def handle(request: web.Request) -> web.Response:
        served = await _reading(request)
        if isinstance(served, web.Response):
            return served
        body = view(served.state, served.now, served.policy)
        return _answer(request, body, served.staleness_ms)

    return handle


async def get_templates(request: web.Request) -> web.Response:
    wanted = _path_id(request, "template_id") if "template_id" in request.match_info else None
    served = await _reading(request)
    if isinstance(served, web.Response):
        return served
    state, now, policy = served.state, served.now, served.policy
    if wanted is not None:
        found = state.templates.get(wanted)
        if found is None:
            return error_response(404, "unknown_template", "no record names this template")
        return _answer(request, views.template(found, now, policy), served.staleness_ms)
    body = {"templates": [views.template(t, now, policy) for t in state.templates.values()]}
    return _answer(request, body, served.staleness_ms)


async def list_oas(request: web.Request) -> web.Response:
    """Every OA the group holds: this instance's, and (unless this request was forwarded
    here) every other owner's, asked in parallel."""
    owned = _owned(request)
    if owned is None:
        return _not_served(_DISABLED)
    held = await owned.listing(views.summary)
    out, partitions = held.oas, held.partitions
    forwarder = request.app[FORWARDER]
    unreachable: list[str] = []
    if not forwarder.was_forwarded(request):
        others = owned.other_owners()
        answers = await asyncio.gather(
            *(forwarder.forward(request, address, b"") for address in others),
            return_exceptions=True,
        )
        for address, answer in zip(others, answers, strict=True):
            listing = _listing(answer)
            if listing is None:
                unreachable.append(address)
                continue
            out.extend(listing["oas"])
            partitions.extend(listing["partitions"])
    out.sort(key=lambda summary: str(summary["oa_id"]))
    return json_response({"oas": out, "partitions": sorted(partitions), "unreachable": unreachable})


def _listing(answer: object) -> dict[str, list[Any]] | None:
    """Another owner's `GET /v1/oas` answer, if it is one."""
    if not isinstance(answer, web.Response) or answer.status != 200:
        return None
    try:
        theirs = orjson.loads(answer.body) if isinstance(answer.body, bytes) else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(theirs, dict):
        return None
    oas, partitions = theirs.get("oas"), theirs.get("partitions")
    if not isinstance(oas, list) or not isinstance(partitions, list):
        return None
    return {"oas": oas, "partitions": partitions}


# --- writes -----------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


LARGE_BODY = 32 * 1024
"""A body at least this large is parsed and validated in a thread: validating 10,000
recipients (each phone hashed) takes longer than the event loop may be held."""


async def _raw_body(request: web.Request) -> bytes:
    """The body; one that does not arrive within `api.read_timeout_s` is a 408 (a slow or
    stalled client does not hold a handler)."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].api.read_timeout_s):
            return await request.read()
    except TimeoutError as exc:
        raise _Invalid(408, "request_timeout", "the body arrived too slowly") from exc


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Invalid(400, "malformed_json", "the body is not JSON") from exc


def _validate(raw: bytes, model: type[BodyT]) -> BodyT:
    try:
        return model.model_validate(_parse(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise _Invalid(422, "invalid_request", f"{where}: {first['msg']}") from exc


async def _json_body(request: web.Request) -> Any:
    """The body as JSON (400 `malformed_json` when it is not)."""
    raw = await _raw_body(request)
    if len(raw) >= LARGE_BODY:
        return await asyncio.to_thread(_parse, raw)
    return _parse(raw)


async def _body(request: web.Request, model: type[BodyT]) -> BodyT:
    """The body as `model` (422 `invalid_request` naming the first field that is wrong)."""
    raw = await _raw_body(request)
    if len(raw) >= LARGE_BODY:
        return await asyncio.to_thread(_validate, raw, model)
    return _validate(raw, model)


def _time_refused(request: web.Request, times: list[tuple[str, str]]) -> web.Response | None:
    """A 422 naming the first of `times` (field, milliseconds) outside
    [now - log.retention_days, now + api.max_future_s] of this instance's wall clock, or
    None. A time outside would fall out of the log's retention, or move an OA's clock ahead
    of every other record (and reset its quotas) by itself."""
    settings = request.app[SETTINGS]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    earliest = now_ms - settings.log.retention_days * 86_400_000
    latest = now_ms + settings.api.max_future_s * 1000
    for field, ms in times:
        if not earliest <= int(ms) <= latest:
            return error_response(
                422,
                "invalid_request",
                f"{field}: a time within the last {settings.log.retention_days} days "
                f"and at most {settings.api.max_future_s} s ahead",
            )
    return None


def _publish_deadline(request: web.Request) -> float:
    return request.app[SETTINGS].receiver.publish_deadline_s


async def _append(request: web.Request, oa_id: str, kind: str, value: bytes) -> Position:
    log = request.app[LOG]
    return await log.append(
        log.topics.events,
        oa_id.encode(),
        value,
        (("kind", kind.encode()),),
        timeout_s=_publish_deadline(request),
    )


async def _unless_owner(request: web.Request, oa_id: str) -> OwnedStates | web.Response:
    """The OA's states when this instance owns the OA and may decide for it now; otherwise
    the answer: the owner's (the request forwarded there) or a 503."""
    owned = _owned(request)
    if owned is None:
        return _not_served(_DISABLED)
    found = _routed(request, owned.where(oa_id, admit=True))
    if isinstance(found, Unserved):
        return _not_served(found)
    if isinstance(found, Owner):
        return await _forward(request, found, await request.read())
    return owned


async def post_sends(request: web.Request) -> web.Response:
    """Append each send outcome not recorded yet; answer how many were new and how many
    were duplicates.

    The OA's owner decides, from the OA's dedup index, the sends appended here but not yet
    folded and the earlier items of the request, one request of the OA at a time so that
    concurrent repeats find each other. Duplicates are not appended: the fold would drop
    them anyway.
    """
    oa_id = _oa_id(request)
    try:
        body = await _body(request, SendsBody)
    except _Invalid as exc:
        return error_response(exc.status, exc.code, str(exc))
    times = [(f"sends.{i}.sent_time", item.sent_time) for i, item in enumerate(body.sends)]
    if (refused := _time_refused(request, times)) is not None:
        return refused
    owned = await _unless_owner(request, oa_id)
    if isinstance(owned, web.Response):
        return owned
    # Only the fields given: an explicit `"dailyQuota": null` (unlimited) must survive.
    outcomes = [
        SendOutcome.model_validate(item.model_dump(exclude_unset=True)) for item in body.sends
    ]
    recorded = await owned.record_sends(oa_id, outcomes, timeout_s=_publish_deadline(request))
    if isinstance(recorded, Unserved):
        return _not_served(recorded)
    return json_response({"accepted": recorded.accepted, "duplicates": recorded.duplicates})


async def post_sync(request: web.Request) -> web.Response:
    oa_id = _oa_id(request)
    try:
        raw = await _json_body(request)
    except _Invalid as exc:
        return error_response(exc.status, exc.code, str(exc))
    if not isinstance(raw, dict) or "oa_id" in raw:
        return error_response(422, "invalid_request", "body: an object, the OA from the path")
    try:
        record = SyncBody.model_validate({**raw, "oa_id": oa_id})  # written as a SyncRecord
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return error_response(422, "invalid_request", f"{where}: {first['msg']}")
    if (refused := _time_refused(request, [("as_of", record.as_of)])) is not None:
        return refused
    await _append(request, oa_id, "sync", record.model_dump_json(exclude_unset=True).encode())
    return json_response({"accepted": 1})


async def _command(
    request: web.Request, action: Literal["resume_oa", "resume_template"], template_id: str | None
) -> web.Response:
    oa_id = _oa_id(request)
    now_ms = str(int(datetime.now(UTC).timestamp() * 1000))
    record = CommandRecord(oa_id=oa_id, action=action, template_id=template_id, at=now_ms)
    await _append(request, oa_id, "command", record.model_dump_json(exclude_none=True).encode())
    return json_response({"accepted": 1, "action": action})


async def post_resume(request: web.Request) -> web.Response:
    return await _command(request, "resume_oa", None)


async def post_template_resume(request: web.Request) -> web.Response:
    return await _command(request, "resume_template", _path_id(request, "template_id"))


async def post_admissions(request: web.Request) -> web.Response:
    """Decide, append the decision, apply it to the owner's state, answer
    (docs/api.md#the-admission-flow): the OA's owner does all of it, one decision of the OA at a
    time."""
    oa_id = _oa_id(request)
    try:
        body = await _body(request, AdmissionBody)
    except _Invalid as exc:
        return error_response(exc.status, exc.code, str(exc))
    most = request.app[SETTINGS].api.max_admission_units
    for field, units in (("recipients", len(body.recipients or ())), ("count", body.count or 0)):
        if units > most:
            return error_response(422, "invalid_request", f"{field}: at most {most} units")
    request_hash = hashlib.sha256(
        orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    owned = await _unless_owner(request, oa_id)
    if isinstance(owned, web.Response):
        return owned
    recipients = tuple(body.recipients or ())
    ask = Ask(
        body.template_id, body.tag, recipients, body.count, body.idempotency_key, request_hash
    )
    admitted = await owned.admit(oa_id, ask, timeout_s=_publish_deadline(request))
    if isinstance(admitted, Unserved):
        return _not_served(admitted)
    if not isinstance(admitted, Admitted):
        return error_response(admitted.status, admitted.code, admitted.message)
    return _admission_response(request, admitted)


def _admission_response(request: web.Request, admitted: Admitted) -> web.Response:
    now, zone = admitted.now, admitted.policy.zone
    remaining = admitted.answer.get("remaining")
    reset = int((next_day_start(now, zone) - now).total_seconds())
    headers = {"X-RateLimit-Reset": str(max(reset, 0))}
    if remaining is not None:
        headers["X-RateLimit-Remaining"] = str(remaining)
    # An admission is decided only from the owner's current state: never stale.
    return _answer(request, admitted.answer, None, **headers)


async def get_openapi(_: web.Request) -> web.Response:
    """The OpenAPI 3.1 document (the same as `schemas/openapi.json`)."""
    return json_response(document())


def add_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[FORWARDER] = Forwarder(advertised_url(settings), settings.api.forward_timeout_s)

    async def close_forwarder(app: web.Application) -> None:
        await app[FORWARDER].close()

    app.on_cleanup.append(close_forwarder)
    r = app.router
    r.add_get("/openapi.json", get_openapi)
    r.add_get("/v1/oas", list_oas)
    r.add_get("/v1/oas/{oa_id}/quota", _read(views.quota))
    r.add_get("/v1/oas/{oa_id}/message/quota", _read(views.zalo_quota))
    r.add_get("/v1/oas/{oa_id}/quality", _read(views.quality))
    r.add_get("/v1/oas/{oa_id}/history", _read(views.history))
    r.add_get("/v1/oas/{oa_id}/templates", get_templates)
    r.add_get("/v1/oas/{oa_id}/templates/{template_id}", get_templates)
    r.add_post("/v1/oas/{oa_id}/admissions", post_admissions)
    r.add_post("/v1/oas/{oa_id}/sends", post_sends)
    r.add_post("/v1/oas/{oa_id}/sync", post_sync)
    r.add_post("/v1/oas/{oa_id}/resume", post_resume)
    r.add_post("/v1/oas/{oa_id}/templates/{template_id}/resume", post_template_resume)
