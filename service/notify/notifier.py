"""The notifier: every decision of the partitions this instance owns, delivered at least once
to each `[[notify]]` target that wants its kind or rule.

One stream per target and owned partition of `zns.decisions` (a decision is in the
partition of its OA, the same number as in `zns.events`, so the owner of the OA delivers
it). A stream reads from its durable cursor (`cursors.py`), keeps up to `window`
decisions in flight with at most `concurrency` posts at a time, retries a failed post
with jittered, capped exponential back-off for `retry_for_s`, then writes the decision
to `zns.notify-dlq`, and moves its cursor to the oldest decision still in flight. A
restart (or a new owner) resumes from the cursor: only decisions in flight are posted
again. Each target has its own HTTP session and its own streams, so a target that is
down or slow holds back nobody else, and the processor and the API never wait for any
of it. It changes no OA state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiohttp
import orjson
from pydantic import ValidationError

from service.config import NotifierSettings, NotifyTarget, Settings
from service.domain.records import DecisionRecord, NotifyDeadLetter, Source
from service.log.base import EventLog, LogError, Record, TopicPartition
from service.logsetup import get_logger
from service.metrics import NOTIFY_DELAY_SECONDS, NOTIFY_DELIVERED, NOTIFY_DLQ, NOTIFY_FAILED
from service.notify import payloads
from service.notify.cursors import Cursors

if TYPE_CHECKING:
    from service.processor.runner import Processor

_log = get_logger("notify")

CURSOR_EVERY_S = 0.5
"""A stream writes its cursor at most this often while it moves (and when it stops)."""
OWNERS_EVERY_S = 1.0
"""How often the owned partitions are looked at, to start and stop streams."""


class Owner:
    """Which partitions this instance owns now: those its processor holds. Not also "while
    in contact with the group", as granting is: a moment out of contact would stop and
    restart every stream, posting everything in flight again. A partition that really
    moves leaves the processor's folders at its revocation; until then, at worst, both
    instances post a decision, which at-least-once allows (`webhook-id` is the same)."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def partitions(self) -> frozenset[int]:
        return frozenset(self.processor.folders)


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    error: str | None = None
    """`http_<status>`, `timeout` or `unreachable` when not ok."""


def backoff(attempt: int, options: NotifierSettings, rand: Callable[[], float]) -> float:
    """The wait before retry number `attempt` (1 first): doubling from `backoff_first_s`,
    capped at `backoff_most_s`, jittered to between half and all of it so that the
    streams retrying one target do not come back at the same moment."""
    doublings = min(attempt - 1, 60)  # past that the cap holds anyway; 2.0 ** 1024 overflows
    capped: float = min(options.backoff_first_s * 2.0**doublings, options.backoff_most_s)
    return capped * (0.5 + 0.5 * rand())


class Stream:
    """The decisions of one partition for one target."""

    def __init__(
        self,
        notifier: Notifier,
        target: NotifyTarget,
        session: aiohttp.ClientSession,
        partition: int,
    ) -> None:
        self.notifier = notifier
        self.target = target
        self.label = target.label
        self.session = session
        self.partition = partition
        self.options = notifier.options
        self._key = target.key()
        self._pending: dict[int, asyncio.Task[None]] = {}
        """Offset -> its delivery, for the decisions in flight."""
        self._next = 0
        """The next offset to read."""
        self._saved: int | None = None
        self._posts = asyncio.Semaphore(self.options.concurrency)
        self._room = asyncio.Event()
        self._room.set()
        self.following = False
        """The cursor is loaded (or, for a new target, written): decisions from it on are
        this stream's."""

    @property
    def cursor(self) -> int:
        """Below it, every decision has been delivered, dead-lettered or skipped."""
        return min(self._pending, default=self._next)

    async def run(self) -> None:
        cursors = self.notifier.cursors
        tp = TopicPartition(self.notifier.log.topics.decisions, self.partition)
        start = await cursors.load(self.label, self.partition)
        if start is None:  # a new target: from the decisions written from now on
            start = (await self.notifier.log.end_offsets([tp]))[tp]
            await cursors.save(self.label, self.partition, start)
        self._next = self._saved = start
        self.following = True
        last_save = time.monotonic()
        try:
            while True:
                await self._room.wait()
                room = self.options.window - len(self._pending)
                batch = await self.notifier.log.read(tp, self._next, min(room, 200))
                for record in batch:
                    self._take(record)
                    self._next = record.offset + 1
                if time.monotonic() - last_save >= CURSOR_EVERY_S:
                    await self._save()
                    last_save = time.monotonic()
                if not batch:
                    await asyncio.sleep(self.options.poll_s)
        finally:
            for task in self._pending.values():
                task.cancel()

    async def stop(self) -> None:
        """Write the cursor as it is (the decisions in flight are posted again later)."""
        with contextlib.suppress(LogError):
            await self._save()

    async def _save(self) -> None:
        cursor = self.cursor
        if cursor != self._saved:
            await self.notifier.cursors.save(self.label, self.partition, cursor)
            self._saved = cursor

    def _take(self, record: Record) -> None:
        try:
            decision = DecisionRecord.model_validate_json(record.value)
        except ValidationError:
            _log.warning("a decision that does not parse is skipped", offset=record.offset)
            return
        if not self.target.wants(decision.kind, decision.rule):
            return
        self._start(record, decision)
        if len(self._pending) >= self.options.window:
            self._room.clear()

    def _start(self, record: Record, decision: DecisionRecord, after_s: float = 0.0) -> None:
        task = asyncio.create_task(self._deliver(record, decision, after_s))
        self._pending[record.offset] = task
        task.add_done_callback(lambda done: self._done(record.offset, record, decision, done))

    def _done(
        self, offset: int, record: Record, decision: DecisionRecord, task: asyncio.Task[None]
    ) -> None:
        if task.cancelled():
            return  # stopped in flight: the cursor stays before it, it is posted again
        if task.exception() is not None:
            # A bug, not the target: never let the cursor pass an undelivered decision.
            _log.error(
                "a notify delivery failed; trying it again",
                error=repr(task.exception()),
                target=self.label,
                offset=offset,
            )
            self._start(record, decision, after_s=self.options.backoff_most_s)
            return
        self._pending.pop(offset, None)
        self._room.set()

    async def _deliver(self, record: Record, decision: DecisionRecord, after_s: float) -> None:
        """Post until a 2xx or the end of the retry window, then the dead-letter topic;
        first wait `after_s` (a delivery tried again after a failure of its own)."""
        if after_s:
            await asyncio.sleep(after_s)
        body = payloads.body(decision, self.target.format)
        first = time.time()
        # The retry window runs from the decision's append, not from this first try: a
        # target down for days, or a restart, does not stretch it.
        since = record.timestamp_ms / 1000 if record.timestamp_ms else first
        attempts = 0
        while True:
            attempts += 1
            async with self._posts:
                outcome = await self._post(decision.decision_id, body)
            if outcome.ok:
                NOTIFY_DELIVERED.labels(self.label).inc()
                if record.timestamp_ms:
                    delay = max(0.0, time.time() - record.timestamp_ms / 1000)
                    NOTIFY_DELAY_SECONDS.labels(self.label).observe(delay)
                return
            NOTIFY_FAILED.labels(self.label).inc()
            left = since + self.options.retry_for_s - time.time()
            if left <= 0:
                await self._dead_letter(record, decision, attempts, first, outcome.error)
                return
            await asyncio.sleep(min(left, backoff(attempts, self.options, random.random)))

    async def _post(self, msg_id: str, body: bytes) -> Attempt:
        headers = payloads.headers(self._key, msg_id, int(time.time()), body)
        try:
            async with self.session.post(
                self.target.url, data=body, headers=headers, allow_redirects=False
            ) as answer:
                # Only the status counts; the body is not read (it may be of any size).
                if 200 <= answer.status < 300:
                    return Attempt(True)
                return Attempt(False, f"http_{answer.status}")
        except TimeoutError:
            return Attempt(False, "timeout")
        except aiohttp.ClientError:
            return Attempt(False, "unreachable")

    async def _dead_letter(
        self,
        record: Record,
        decision: DecisionRecord,
        attempts: int,
        first: float,
        error: str | None,
    ) -> None:
        """Keep the decision in `zns.notify-dlq`; until the log takes it, keep trying (the
        cursor cannot pass it before)."""
        value = NotifyDeadLetter(
            target=self.label,
            url=self.target.origin,
            attempts=attempts,
            first_attempt_at=datetime.fromtimestamp(first, UTC).isoformat(),
            last_error=error or "unknown",
            source=Source(topic=record.topic, partition=record.partition, offset=record.offset),
            decision=decision,
        )
        data = orjson.dumps(value.model_dump(mode="json"))
        wait = self.options.backoff_first_s
        while True:
            try:
                await self.notifier.log.append(
                    self.notifier.log.topics.notify_dlq,
                    decision.oa_id.encode(),
                    data,
                    timeout_s=10.0,
                )
                break
            except LogError as exc:
                _log.warning("the notify dead letter could not be written yet", error=str(exc))
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.options.backoff_most_s)
        NOTIFY_DLQ.labels(self.label).inc()
        _log.warning(
            "decision dead-lettered for a target",
            target=self.label,
            decision_id=decision.decision_id,
            attempts=attempts,
            error=error,
        )


class Notifier:
    """Starts and stops the streams as this instance gains and loses partitions."""

    def __init__(
        self, log: EventLog, settings: Settings, owner: Owner | Callable[[], frozenset[int]]
    ) -> None:
        self.log = log
        self.targets = list(settings.notify)
        self.options = settings.notifier
        self.cursors = Cursors(log)
        self._owned = owner.partitions if isinstance(owner, Owner) else owner
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._streams: dict[tuple[str, int], tuple[Stream, asyncio.Task[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.options.timeout_s)
        for target in self.targets:
            # One session (one connection pool) per target: a slow one cannot take the
            # connections another needs.
            self._sessions[target.label] = aiohttp.ClientSession(timeout=timeout)
        self._task = asyncio.create_task(self._run(), name="notifier")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for key in list(self._streams):
            await self._stop(key)
        for session in self._sessions.values():
            await session.close()
        self._sessions = {}

    def following(self) -> frozenset[tuple[str, int]]:
        """(target label, partition) of the streams that follow their cursor now."""
        return frozenset(key for key, (stream, _) in self._streams.items() if stream.following)

    async def _run(self) -> None:
        while True:
            owned = self._owned()
            for key in [key for key in self._streams if key[1] not in owned]:
                await self._stop(key)
            for partition in sorted(owned):
                for target in self.targets:
                    key = (target.label, partition)
                    running = self._streams.get(key)
                    if running is None or running[1].done():
                        self._begin(target, partition)
            await asyncio.sleep(OWNERS_EVERY_S)

    def _begin(self, target: NotifyTarget, partition: int) -> None:
        stream = Stream(self, target, self._sessions[target.label], partition)
        task = asyncio.create_task(stream.run(), name=f"notify-{target.label}-{partition}")
        task.add_done_callback(_report_end)
        self._streams[(target.label, partition)] = (stream, task)

    async def _stop(self, key: tuple[str, int]) -> None:
        stream, task = self._streams.pop(key)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await stream.stop()


def _report_end(task: asyncio.Task[None]) -> None:
    """A stream that failed (the log unreachable) is started again by the next look."""
    if not task.cancelled() and task.exception() is not None:
        _log.warning("a notify stream stopped", task=task.get_name(), error=repr(task.exception()))
