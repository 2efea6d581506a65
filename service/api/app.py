"""The `/v1` routes of DESIGN.md 5 that read an OA's state or append records for it.

Reads are answered from the state of the instance that owns the OA's
partition, on a copy brought to "now" (the live state is only changed by the
processor). Sends, syncs and operator commands are validated, appended to
`zns.events` (their effect follows when the processor folds them) and
answered once durable. An instance that does not serve the OA's partition (not
assigned here, or still restoring) answers 503 with `Retry-After`.

Access: with `[[api.tokens]]` configured, every request needs a bearer token
with the scope it uses (`read` for GET, `send` for sends, `admin` for sync and
resume); with none, the API is open (the service warns at start).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
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
from service.api.routing import (
    SERVED_BY,
    STALENESS,
    Forward,
    Forwarder,
    OwnerUnreachable,
    advertised_url,
)
from service.domain.admission import AdmissionRequest, decide
from service.domain.fold import advance
from service.domain.records import (
    AdmissionAnswer,
    AdmissionRecord,
    CommandRecord,
    SendOutcome,
    SendRecord,
)
from service.domain.state import OAState, Policy
from service.domain.windows import next_day_start
from service.http import LOG, PROCESSOR, SETTINGS, Handler, error_response, json_response
from service.log.base import Position, Record
from service.logsetup import get_logger
from service.metrics import ADMISSION_UNITS
from service.processor.folding import PartitionFolder

_log = get_logger("api")

FORWARDER = web.AppKey("forwarder", Forwarder)

BodyT = TypeVar("BodyT", bound=BaseModel)

PREFIX = "/v1/"


# --- access ---------------------------------------------------------------------------------


def _scope(request: web.Request) -> str:
    if request.method in {"GET", "HEAD"}:
        return "read"
    if request.path.endswith(("/sends", "/admissions")):
        return "send"
    return "admin"


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(PREFIX):
        return await handler(request)
    refused = _unauthorised(request)
    if refused is not None:
        return refused
    # A browser posts forms and text to any site without asking first; JSON it does not:
    # so no other web page can make a request here, even to an API without tokens.
    if request.method == "POST" and request.content_type != "application/json":
        return error_response(
            415, "unsupported_media_type", "a /v1 POST takes a body of type application/json"
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


class NotServed(Exception):
    """This instance cannot answer for the OA now."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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


@dataclass(frozen=True)
class Served:
    """An OA's state as this instance can answer for it, brought to `now` (a copy)."""

    state: OAState
    now: datetime
    policy: Policy
    staleness_ms: int | None
    """None: the owner's current state; else how much older than now it may be."""


@dataclass(frozen=True)
class Held:
    """The OA's partition is held here: its folder, and how stale it may be (ms; None:
    the owner's current state)."""

    folder: PartitionFolder
    staleness_ms: int | None


def _where(request: web.Request, oa_id: str, *, admit: bool) -> Held | Forward:
    """Answer here (from the states held here) or forward to the OA's owner; NotServed
    when neither can be done now. An admission is decided only from current state, by
    an owner in contact with its group; a read may come from a copy."""
    processor = request.app.get(PROCESSOR)
    if processor is None:
        raise NotServed("processor_disabled", "this instance runs no processor")
    partition = request.app[LOG].partition_for(oa_id.encode())
    held = processor.reader(partition)
    if held is not None and not (admit and partition not in processor.folders):
        folder, staleness_ms = held
        if admit and staleness_ms is not None:
            raise NotServed("restoring", f"partition {partition} is moving to this instance")
        if admit and not processor.in_contact():
            raise NotServed(
                "out_of_contact", "this instance has lost contact with its group; not granting"
            )
        return Held(folder, staleness_ms)
    # Not held here, or only as a copy of a revoked partition: an admission goes to the owner.
    owner = processor.owner_of(partition)
    if owner is None or owner == request.app[FORWARDER].address:
        raise NotServed("restoring", f"partition {partition} is not served yet")
    if request.app[FORWARDER].was_forwarded(request):
        raise NotServed("not_owner", f"partition {partition} moved; ask again")
    return Forward(owner)


def _served(request: web.Request, oa_id: str, held: Held) -> Served:
    """A copy of the OA's state brought to now (the live state only changes by folding)."""
    policy = request.app[PROCESSOR].policies.for_oa(oa_id)
    live = held.folder.states.get(oa_id)
    state = live.served_copy() if live is not None else OAState.new(oa_id, policy.rules)
    now = held.folder.now()
    advance(state, now, policy)
    return Served(state, now, policy, held.staleness_ms)


def _locate(request: web.Request, oa_id: str, *, admit: bool) -> Served | Forward:
    where = _where(request, oa_id, admit=admit)
    return where if isinstance(where, Forward) else _served(request, oa_id, where)


def _not_served(exc: NotServed) -> web.Response:
    return error_response(503, exc.code, str(exc), {"Retry-After": "1"})


def _answer(request: web.Request, body: object, served: Served, **headers: str) -> web.Response:
    """A JSON answer given here, saying by whom and, for a copy, how stale it may be."""
    extra = {SERVED_BY: request.app[FORWARDER].address or "unknown", **headers}
    if served.staleness_ms is not None:
        extra[STALENESS] = str(served.staleness_ms)
    return json_response(body, headers=extra)


async def _forward(request: web.Request, forward: Forward, body: bytes = b"") -> web.Response:
    try:
        return await request.app[FORWARDER].forward(request, forward.address, body)
    except OwnerUnreachable as exc:
        return error_response(503, "owner_unreachable", str(exc), {"Retry-After": "1"})


# --- reads ------------------------------------------------------------------------------------


async def _reading(request: web.Request) -> Served | web.Response:
    """The OA's state to answer a read from here, or the answer already: the owner's
    (forwarded there) or a 503."""
    try:
        served = _locate(request, _oa_id(request), admit=False)
    except NotServed as exc:
        return _not_served(exc)
    if isinstance(served, Forward):
        return await _forward(request, served)
    return served


def _read(view: Callable[[OAState, datetime, Policy], object]) -> Handler:
    """A GET handler answering `view` of the OA's state."""

    async def handle(request: web.Request) -> web.Response:
        served = await _reading(request)
        if isinstance(served, web.Response):
            return served
        return _answer(request, view(served.state, served.now, served.policy), served)

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
        return _answer(request, views.template(found, now, policy), served)
    body = {"templates": [views.template(t, now, policy) for t in state.templates.values()]}
    return _answer(request, body, served)


async def list_oas(request: web.Request) -> web.Response:
    """Every OA the group holds: this instance's, and (unless this request was forwarded
    here) every other owner's, asked in parallel."""
    processor = request.app.get(PROCESSOR)
    if processor is None:
        return _not_served(NotServed("processor_disabled", "this instance runs no processor"))
    out = []
    partitions = sorted(processor.ready())
    for partition in partitions:
        folder = processor.folders[partition]
        now = folder.now()
        for oa_id in sorted(folder.states):
            # Read as it is (no copy brought to now, which would cost a copy per OA): a
            # day change not yet applied shows at the OA's next record or query.
            policy = processor.policies.for_oa(oa_id)
            out.append(views.summary(folder.states[oa_id], now, policy))
    forwarder = request.app[FORWARDER]
    unreachable: list[str] = []
    if not forwarder.was_forwarded(request):
        others = sorted(set(processor.owners().values()) - {forwarder.address or ""})
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


async def _append(request: web.Request, oa_id: str, kind: str, value: bytes) -> Position:
    log = request.app[LOG]
    return await log.append(
        log.topics.events,
        oa_id.encode(),
        value,
        (("kind", kind.encode()),),
        timeout_s=request.app[SETTINGS].receiver.publish_deadline_s,
    )


_UNFOLDED_SENDS = web.AppKey("unfolded_sends", weakref.WeakKeyDictionary)
"""Per partition: the dedup keys of sends appended here that the processor has not folded
yet -> their offset. A repeat that arrives before the fold is a duplicate too."""


def _unfolded_sends(request: web.Request, folder: PartitionFolder) -> dict[str, int]:
    """The partition's sends appended but not folded yet; the folded ones leave it (they
    are in the OA's state by then). Keys go in in about offset order, so only the front
    is looked at."""
    by_folder: weakref.WeakKeyDictionary[PartitionFolder, dict[str, int]]
    by_folder = request.app[_UNFOLDED_SENDS]
    unfolded = by_folder.setdefault(folder, {})  # a partition restored again starts afresh
    while unfolded:
        key, offset = next(iter(unfolded.items()))
        if offset > folder.position:
            break
        del unfolded[key]
    return unfolded


def _send_keys(oa_id: str, item: SendOutcome) -> tuple[str, str | None]:
    """The keys of a send among the unfolded ones: its tracking id, and its message."""
    message = None if item.msg_id is None else f"{oa_id}/msg:{item.msg_id}"
    return f"{oa_id}/send:{item.tracking_id}", message


def _recorded(state: OAState | None, item: SendOutcome) -> bool:
    """The OA's dedup index already has the send, by its tracking id or its message."""
    if state is None:
        return False
    if "send:" + item.tracking_id in state.dedup:
        return True
    message = state.messages.peek(item.msg_id) if item.msg_id is not None else None
    return message is not None and message.sent


async def _unless_owner(request: web.Request, oa_id: str) -> web.Response | None:
    """None when this instance owns the OA and may decide for it now; otherwise the answer:
    the owner's (the request forwarded there) or a 503."""
    try:
        where = _where(request, oa_id, admit=True)
    except NotServed as exc:
        return _not_served(exc)
    if isinstance(where, Forward):
        return await _forward(request, where, await request.read())
    return None


def _still_owner(request: web.Request, oa_id: str) -> Held | web.Response:
    """The OA's partition, asked again once its lock is held (the wait may have moved it):
    held here, or a 503 to ask again."""
    try:
        where = _where(request, oa_id, admit=True)
    except NotServed as exc:
        return _not_served(exc)
    if isinstance(where, Forward):
        return _not_served(NotServed("not_owner", "the OA's partition moved; ask again"))
    return where


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
    if (elsewhere := await _unless_owner(request, oa_id)) is not None:
        return elsewhere
    processor = request.app[PROCESSOR]
    partition = request.app[LOG].partition_for(oa_id.encode())
    accepted = duplicates = 0
    # The admissions' guard: a revocation waits for these appends, so the next owner reads them.
    async with _lock(request, "sends:" + oa_id), processor.admitting(partition):
        held = _still_owner(request, oa_id)
        if isinstance(held, web.Response):
            return held
        unfolded = _unfolded_sends(request, held.folder)
        state = held.folder.states.get(oa_id)
        seen: set[str] = set()  # this request's own keys
        new: list[tuple[str, str | None, bytes]] = []
        for item in body.sends:
            # Only the fields given: an explicit `"dailyQuota": null` (unlimited) must survive.
            outcome = SendOutcome.model_validate(item.model_dump(exclude_unset=True))
            tracking, message = _send_keys(oa_id, outcome)
            if (
                tracking in unfolded
                or tracking in seen
                or (message is not None and (message in unfolded or message in seen))
                or _recorded(state, outcome)
            ):
                duplicates += 1
                continue
            sent = message if outcome.error == 0 else None  # a failed send sends no message
            seen.update(key for key in (tracking, sent) if key is not None)
            record = SendRecord(oa_id=oa_id, send=outcome)
            new.append((tracking, sent, record.model_dump_json(exclude_unset=True).encode()))
        # Appended together: each append takes its place in the log before it waits, so the
        # records keep their order and a report of many sends costs about one durable write.
        results = await asyncio.gather(
            *(_append(request, oa_id, "send", value) for _, _, value in new),
            return_exceptions=True,
        )
        failed: BaseException | None = None
        for (tracking, sent, _), result in zip(new, results, strict=True):
            if isinstance(result, BaseException):
                failed = failed or result
                continue
            unfolded[tracking] = result.offset
            if sent is not None:
                unfolded[sent] = result.offset
            accepted += 1
        if failed is not None:
            raise failed  # what did land is known now: a retry finds it a duplicate
    return json_response({"accepted": accepted, "duplicates": duplicates})


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


_LOCKS = web.AppKey("admission_locks", weakref.WeakValueDictionary)


def _lock(request: web.Request, oa_id: str) -> asyncio.Lock:
    """The OA's admission lock. Held weakly: it lives while requests hold or wait for it,
    then goes, so that idle OAs cost nothing here."""
    locks: weakref.WeakValueDictionary[str, asyncio.Lock] = request.app[_LOCKS]
    lock = locks.get(oa_id)
    if lock is None:
        lock = locks[oa_id] = asyncio.Lock()
    return lock


async def post_admissions(request: web.Request) -> web.Response:
    """Decide, append the decision, apply it to the owner's state, answer (DESIGN.md 5).

    Decisions for one OA are made one at a time, so concurrent requests never grant
    more than remains. The same idempotency key with the same body gets the first
    answer again (also after a restart: the key is kept in the OA's state).
    """
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
    if (elsewhere := await _unless_owner(request, oa_id)) is not None:
        return elsewhere
    processor = request.app[PROCESSOR]
    partition = request.app[LOG].partition_for(oa_id.encode())
    async with _lock(request, oa_id), processor.admitting(partition):
        held = _still_owner(request, oa_id)
        if isinstance(held, web.Response):
            return held
        served = _served(request, oa_id, held)
        state, now, policy = served.state, served.now, served.policy
        earlier = state.idempotency.peek(body.idempotency_key)
        if earlier is not None:
            if earlier[1] != request_hash:
                return error_response(
                    409, "idempotency_conflict", "this idempotency_key was used with another body"
                )
            return _admission_response(request, earlier[2], served)
        template = state.templates.get(body.template_id)
        tag = body.tag or (template.tag if template is not None else None)
        if tag is None:
            return error_response(
                422, "tag_required", "the template's tag is not known: give `tag`"
            )
        recipients = tuple(body.recipients or ())
        wanted = AdmissionRequest(
            body.template_id, tag, recipients, len(recipients) or body.count or 1
        )
        admission_id = uuid.uuid4().hex
        decided = decide(state, wanted, now, policy, admission_id)
        _count_units(decided.answer)
        record = AdmissionRecord(
            oa_id=oa_id,
            admission_id=admission_id,
            idempotency_key=body.idempotency_key,
            request_hash=request_hash,
            template_id=body.template_id,
            tag=tag,
            granted_recipients=decided.granted_recipients,
            at=str(int(now.timestamp() * 1000)),
            answer=decided.answer,
        )
        value = record.model_dump_json().encode()
        headers = (("kind", b"admission"),)
        log = request.app[LOG]
        position = await log.append(
            log.topics.events,
            oa_id.encode(),
            value,
            headers,
            timeout_s=request.app[SETTINGS].receiver.publish_deadline_s,
        )
        processor.apply_ahead(
            Record(
                position.topic, position.partition, position.offset, oa_id.encode(), value, headers
            )
        )
    return _admission_response(request, decided.answer.model_dump(mode="json"), served)


def _count_units(answer: AdmissionAnswer) -> None:
    if answer.granted:
        ADMISSION_UNITS.labels("granted").inc(answer.granted)
    for denial in answer.denied:
        ADMISSION_UNITS.labels(denial.reason).inc(denial.count)


def _admission_response(
    request: web.Request, answer: dict[str, Any], served: Served
) -> web.Response:
    remaining = answer.get("remaining")
    reset = int((next_day_start(served.now, served.policy.zone) - served.now).total_seconds())
    headers = {"X-RateLimit-Reset": str(max(reset, 0))}
    if remaining is not None:
        headers["X-RateLimit-Remaining"] = str(remaining)
    return _answer(request, answer, served, **headers)


async def get_openapi(_: web.Request) -> web.Response:
    """The OpenAPI 3.1 document (the same as `schemas/openapi.json`)."""
    return json_response(document())


def add_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[_LOCKS] = weakref.WeakValueDictionary()
    app[_UNFOLDED_SENDS] = weakref.WeakKeyDictionary()
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
    r.add_get("/v1/oas/{oa_id}/templates", get_templates)
    r.add_get("/v1/oas/{oa_id}/templates/{template_id}", get_templates)
    r.add_post("/v1/oas/{oa_id}/admissions", post_admissions)
    r.add_post("/v1/oas/{oa_id}/sends", post_sends)
    r.add_post("/v1/oas/{oa_id}/sync", post_sync)
    r.add_post("/v1/oas/{oa_id}/resume", post_resume)
    r.add_post("/v1/oas/{oa_id}/templates/{template_id}/resume", post_template_resume)
