"""`GET /v1/oas/{oa_id}/decisions`: an OA's last decisions, read from the tail of the log.

Decisions are keyed by the OA, so all of an OA's are in one partition of
`zns.decisions`, among those of the partition's other OAs. Any instance can
read them (the log is shared): no forwarding to the OA's owner. The read is
bounded: at most `DECISIONS_SCAN` records at the partition's end, whatever
the log holds, and only the chosen ones are decoded, in a thread. Each answer
carries the sentence `domain.explain.explain` makes of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, get_args

import orjson
from aiohttp import web

from service.api.app import _oa_id
from service.domain.explain import explain
from service.domain.records import DecisionRecord
from service.http import LOG, error_response, json_response
from service.log.base import EventLog, Record, TopicPartition

DECISIONS_SCAN = 5000
"""The most records read at the tail of a `zns.decisions` partition for one answer."""
MAX_LIMIT = 200
DEFAULT_LIMIT = 20
KINDS = frozenset(get_args(DecisionRecord.model_fields["kind"].annotation))
"""The kinds of `zns.decisions` records (DecisionRecord.kind)."""


class _BadQuery(ValueError):
    """A query parameter out of its bounds: 422 `invalid_request` naming it."""


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise _BadQuery(f"limit: an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _kinds(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    wanted = frozenset(raw.split(","))
    if not wanted or not wanted <= KINDS:
        raise _BadQuery(f"kind: one or more of {', '.join(sorted(KINDS))}, comma-separated")
    return wanted


async def tail(log: EventLog, partition: int) -> list[Record]:
    """The last `DECISIONS_SCAN` records (at most) of a `zns.decisions` partition."""
    tp = TopicPartition(log.topics.decisions, partition)
    end = (await log.end_offsets([tp]))[tp]
    start = max(0, end - DECISIONS_SCAN)
    records: list[Record] = []
    while start < end:
        batch = await log.read(tp, start, 500)
        if not batch:
            break
        records.extend(batch)
        start = batch[-1].offset + 1
    return records


def chosen(
    records: Sequence[Record], oa_id: str, kinds: frozenset[str] | None, limit: int
) -> list[dict[str, Any]]:
    """The OA's last `limit` decisions of `kinds` among `records`, newest first, each with
    its explanation. Runs in a thread: it decodes up to `DECISIONS_SCAN` records."""
    key = oa_id.encode()
    out: list[dict[str, Any]] = []
    for record in reversed(records):
        if record.key != key:
            continue
        try:
            decision = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(decision, dict) or (
            kinds is not None and decision.get("kind") not in kinds
        ):
            continue
        decision.pop("source", None)
        decision["explanation"] = explain(decision)
        out.append(decision)
        if len(out) == limit:
            break
    return out


async def get_decisions(request: web.Request) -> web.Response:
    oa_id = _oa_id(request)
    try:
        limit = _limit(request.query.get("limit"))
        kinds = _kinds(request.query.get("kind"))
    except _BadQuery as exc:
        return error_response(422, "invalid_request", str(exc))
    log = request.app[LOG]
    records = await tail(log, log.partition_for(oa_id.encode()))
    decisions = await asyncio.to_thread(chosen, records, oa_id, kinds, limit)
    return json_response({"decisions": decisions, "scanned": len(records)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/oas/{oa_id}/decisions", get_decisions)
