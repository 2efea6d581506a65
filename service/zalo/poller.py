"""The poller: for each OA this instance may call Zalo for, it reads Zalo's own numbers (the
quota, the quality levels, the templates with their params, the allowed tags) on a schedule
and soon after a webhook says one changed, and appends what it read to `zns.events` as a
`sync` record (`"source": "zalo"`, `as_of` = when it asked), which the fold applies like any.

It runs as its own tasks with a bounded number of calls in flight and every call under the
client's timeout, so a slow or failing Zalo never holds up a webhook or an admission; on an
error it backs off per OA and read. It never polls an OA the token keeper does not list as
callable now, never changes a state itself, and never logs a token.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from pydantic import ValidationError

from service.config import Settings
from service.domain.records import SyncRecord, SyncTemplate, SyncTemplateParam
from service.log.base import EventLog, LogError, Record
from service.logsetup import get_logger
from service.metrics import ZALO_SYNCS
from service.zalo.access import AccessTokens
from service.zalo.client import (
    TemplateInfo,
    TemplateParam,
    TemplateSummary,
    ZaloCallError,
    ZaloClient,
)

_log = get_logger("zalo.poller")


class Read(StrEnum):
    """What the poller reads of an OA, each on its own schedule."""

    QUOTA = "quota"
    QUALITY = "quality"
    TEMPLATES = "templates"
    TEMPLATE_TAG = "template_tag"


WEBHOOK_READS: dict[str, tuple[Read, ...]] = {
    "change_oa_daily_quota": (Read.QUOTA,),
    "change_template_status": (Read.TEMPLATES,),
    "change_template_quality": (Read.TEMPLATES,),
    "change_template_quota": (Read.TEMPLATES,),
    "change_oa_template_tags": (Read.TEMPLATE_TAG,),
}
"""A webhook of this name for an OA this instance polls -> what to read again soon."""

TEMPLATES_PER_RECORD = 100
"""A sync record holds at most this many templates (the record's bound); more make more."""

MIDNIGHT_DELAY = timedelta(minutes=1)
"""The quota is read again this long after local midnight, when Zalo's day has turned."""


@dataclass(frozen=True, slots=True)
class PollerOptions:
    """How the poller paces itself (the intervals are `[zalo]` settings)."""

    concurrency: int = 4
    """Reads in flight at once, over every OA."""
    backoff_base_s: float = 5.0
    backoff_cap_s: float = 900.0
    """After n failures in a row a read waits base * 2^(n-1), at most the cap, times a
    random factor in [0.5, 1] (so OAs that failed together do not ask again together)."""
    webhook_delay_s: float = 1.0
    """A webhook's read waits this long: Zalo's own numbers may lag its webhook a moment."""
    template_tag_s: float = 86_400.0
    """`/message/template-tag` is read once a day."""
    tick_s: float = 1.0
    """The scheduler looks at the OAs at least this often (for OAs that became callable)."""


@dataclass(slots=True)
class _Schedule:
    due: float = 0.0
    """Monotonic time the read is due."""
    failures: int = 0
    retry_at: float = 0.0
    """Monotonic time a back-off ends (a webhook does not cut it short)."""
    running: bool = False


@dataclass(slots=True)
class _OA:
    reads: dict[Read, _Schedule] = field(default_factory=lambda: {r: _Schedule() for r in Read})
    templates: dict[str, tuple[str | None, str | None, int | None]] = field(default_factory=dict)
    """Template id -> (status, quality, created time) as last read with its detail."""


def wall_clock() -> datetime:
    return datetime.now(UTC)


class Poller:
    """Reads Zalo for the callable OAs and appends `sync` records; `start`, then `close`."""

    def __init__(
        self,
        settings: Settings,
        tokens: AccessTokens,
        log: EventLog,
        *,
        options: PollerOptions | None = None,
        client: ZaloClient | None = None,
        wall: Callable[[], datetime] = wall_clock,
    ) -> None:
        self.settings = settings
        self.zalo = settings.zalo
        self.tokens = tokens
        self.log = log
        self.options = options or PollerOptions()
        self.client = client or ZaloClient(settings.zalo, tokens)
        self._own_client = client is None
        self.wall = wall
        self.zone = settings.rules.zone
        self.intervals: dict[Read, float] = {
            Read.QUOTA: float(self.zalo.poll_quota_s),
            Read.QUALITY: float(self.zalo.poll_quality_s),
            Read.TEMPLATES: float(self.zalo.poll_templates_s),
            Read.TEMPLATE_TAG: self.options.template_tag_s,
        }
        self.oas: dict[str, _OA] = {}
        self._slots = asyncio.Semaphore(self.options.concurrency)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reads: set[asyncio.Task[None]] = set()
        self._midnight = self._next_midnight(self.wall())
        self.in_flight = 0
        """Reads waiting for Zalo now."""

    # --- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._own_client:
            await self.client.start()
        self._task = asyncio.create_task(self._run(), name="zalo-poller")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._reads) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self._own_client:
            await self.client.close()

    # --- what makes a read due --------------------------------------------------------------

    def on_record(self, record: Record) -> None:
        """The processor folded `record`: a webhook that says Zalo changed a number makes
        its read due soon. Cheap: it runs for every record folded; it never raises."""
        try:
            self._on_record(record)
        except Exception:  # the processor's loop must not stop for the poller
            _log.exception("poller hook failed", offset=record.offset)

    def _on_record(self, record: Record) -> None:
        kind = event_name = None
        for name, value in record.headers:
            if name == "kind":
                kind = value
            elif name == "event_name":
                event_name = value
        if kind != b"webhook" or event_name is None or record.key is None:
            return
        reads = WEBHOOK_READS.get(event_name.decode(errors="replace"))
        if reads:
            self.soon(record.key.decode(errors="replace"), reads)

    def soon(self, oa_id: str, reads: tuple[Read, ...]) -> None:
        """Read these of the OA after `webhook_delay_s`, if this instance polls it."""
        if oa_id not in self.tokens.callable_oas():
            return
        oa = self.oas.setdefault(oa_id, _OA())
        at = time.monotonic() + self.options.webhook_delay_s
        for read in reads:
            schedule = oa.reads[read]
            schedule.due = min(schedule.due, max(at, schedule.retry_at))
        self._wake.set()

    def _next_midnight(self, now: datetime) -> datetime:
        local = now.astimezone(self.zone)
        start = datetime.combine(local.date(), datetime.min.time(), self.zone) + MIDNIGHT_DELAY
        if start <= local:
            start = datetime.combine(
                local.date() + timedelta(days=1), datetime.min.time(), self.zone
            ) + MIDNIGHT_DELAY
        return start

    # --- the scheduler ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                wait = self._pass()
            except Exception:  # a bug here must not end the polling for good
                _log.exception("poller pass failed")
                wait = self.options.tick_s
            self._wake.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _pass(self) -> float:
        """Start the reads that are due; return how long to wait for the next."""
        callable_oas = set(self.tokens.callable_oas())
        for gone in self.oas.keys() - callable_oas:
            del self.oas[gone]  # not ours any more (or no token): forget its schedule
        for oa_id in callable_oas - self.oas.keys():
            self.oas[oa_id] = _OA()  # every read due at once
        now = time.monotonic()
        if self.wall() >= self._midnight:
            self._midnight = self._next_midnight(self.wall())
            for oa in self.oas.values():
                quota = oa.reads[Read.QUOTA]
                quota.due = min(quota.due, max(now, quota.retry_at))
        wait = self.options.tick_s
        for oa_id, oa in self.oas.items():
            for read, schedule in oa.reads.items():
                if schedule.running:
                    continue
                if schedule.due <= now:
                    # Not due again until this read ends (`_read` sets when), unless a
                    # webhook arrives meanwhile and brings the next one forward (`soon`).
                    schedule.running, schedule.due = True, float("inf")
                    task = asyncio.create_task(self._read(oa_id, oa, read, schedule))
                    self._reads.add(task)
                    task.add_done_callback(self._reads.discard)
                else:
                    wait = min(wait, schedule.due - now)
        until_midnight = (self._midnight - self.wall()).total_seconds()
        return max(0.01, min(wait, until_midnight))

    async def _read(self, oa_id: str, oa: _OA, read: Read, schedule: _Schedule) -> None:
        try:
            async with self._slots:
                if oa_id not in self.tokens.callable_oas():
                    return  # it left this instance while the read waited for a slot
                self.in_flight += 1
                try:
                    await self._do(oa_id, oa, read)
                finally:
                    self.in_flight -= 1
        except (ZaloCallError, LogError, ValidationError) as exc:
            schedule.failures += 1
            delay = min(
                self.options.backoff_cap_s,
                self.options.backoff_base_s * 2 ** (schedule.failures - 1),
            ) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)
            schedule.retry_at = time.monotonic() + delay
            schedule.due = schedule.retry_at
            _log.warning(
                "zalo read failed; backing off",
                oa_id=oa_id,
                read=read.value,
                error=str(exc)[:200],
                failures=schedule.failures,
                retry_in_s=round(delay, 3),
            )
        except Exception:
            schedule.failures += 1
            schedule.retry_at = schedule.due = time.monotonic() + self.options.backoff_cap_s
            _log.exception("zalo read failed unexpectedly", oa_id=oa_id, read=read.value)
        else:
            schedule.failures = 0
            schedule.retry_at = 0.0
            # A webhook during the read may have asked for an earlier one; keep that.
            schedule.due = min(schedule.due, time.monotonic() + self.intervals[read])
        finally:
            schedule.running = False
            self._wake.set()

    # --- the reads --------------------------------------------------------------------------

    async def _do(self, oa_id: str, oa: _OA, read: Read) -> None:
        as_of = self._as_of()
        if read is Read.QUOTA:
            q = await self.client.quota(oa_id)
            values: dict[str, Any] = {
                "daily_quota": q.daily_quota,
                "remaining_quota": q.remaining_quota,
                "monthly_promotion_quota": q.monthly_promotion_quota,
                "remaining_monthly_promotion_quota": q.remaining_monthly_promotion_quota,
            }
            await self._append(oa_id, read, self._record(oa_id, as_of, values))
        elif read is Read.QUALITY:
            quality = await self.client.quality(oa_id)
            values = {"quality_48h": quality.quality_48h, "quality_7d": quality.quality_7d}
            await self._append(oa_id, read, self._record(oa_id, as_of, values))
        elif read is Read.TEMPLATE_TAG:
            names = await self.client.template_tags(oa_id)
            known = self.zalo.template_tag_names
            tags = sorted({known[n] for n in names if n in known})
            if names and not tags:
                _log.warning("no allowed tag name is known", oa_id=oa_id, names=names[:10])
                return
            await self._append(oa_id, read, self._record(oa_id, as_of, {"allowed_tags": tags}))
        else:
            await self._templates(oa_id, oa, as_of)

    async def _templates(self, oa_id: str, oa: _OA, as_of: str) -> None:
        listed = await self.client.templates(oa_id)
        changed = [t for t in listed if oa.templates.get(t.template_id) != _seen(t)]
        details: dict[str, TemplateInfo] = {}
        trouble: ZaloCallError | None = None
        for summary in changed:
            try:
                details[summary.template_id] = await self.client.template_info(
                    oa_id, summary.template_id
                )
            except ZaloCallError as exc:
                # Its detail is read again next time (it stays "changed").
                _log.info(
                    "template detail not read",
                    oa_id=oa_id,
                    template_id=summary.template_id,
                    error=str(exc)[:200],
                )
                if exc.retriable:
                    trouble = exc  # Zalo is in trouble: keep what was read, back off
                    break
        names = self.zalo.template_tag_names
        items: list[dict[str, Any]] = []
        for summary in listed:
            item: dict[str, Any] = {"template_id": summary.template_id}
            if summary.status is not None:
                item["status"] = summary.status
            if summary.quality is not None:
                item["quality"] = summary.quality
            info = details.get(summary.template_id)
            if info is not None:
                tag = names.get(info.template_tag or "")
                if tag is not None:
                    item["tag"] = tag
                item["params"] = [_param(p) for p in info.params]
            items.append(item)
        chunks = [
            items[i : i + TEMPLATES_PER_RECORD] for i in range(0, len(items), TEMPLATES_PER_RECORD)
        ]

        def encode() -> list[bytes]:
            return [
                self._record(oa_id, as_of, {}, [SyncTemplate.model_validate(t) for t in chunk])
                for chunk in chunks
            ]

        # Many templates take a while to validate and encode: off the loop.
        records = await asyncio.to_thread(encode) if len(items) > 100 else encode()
        for value in records:
            await self._append(oa_id, Read.TEMPLATES, value)
        for summary in listed:
            if summary.template_id in details:
                oa.templates[summary.template_id] = _seen(summary)
        for gone in oa.templates.keys() - {t.template_id for t in listed}:
            del oa.templates[gone]
        if trouble is not None:
            raise trouble

    def _as_of(self) -> str:
        return str(int(self.wall().timestamp() * 1000))

    @staticmethod
    def _record(
        oa_id: str,
        as_of: str,
        values: dict[str, Any],
        templates: list[SyncTemplate] | None = None,
    ) -> bytes:
        given = {k: v for k, v in values.items() if v is not None}
        if templates is not None:
            given["templates"] = templates
        record = SyncRecord(oa_id=oa_id, as_of=as_of, source="zalo", **given)
        return orjson.dumps(record.model_dump(mode="json", exclude_unset=True))

    async def _append(self, oa_id: str, read: Read, value: bytes) -> None:
        await self.log.append(
            self.log.topics.events,
            oa_id.encode(),
            value,
            (("kind", b"sync"),),
            timeout_s=self.settings.receiver.publish_deadline_s,
        )
        ZALO_SYNCS.labels(read.value).inc()


def _seen(summary: TemplateSummary) -> tuple[str | None, str | None, int | None]:
    return summary.status, summary.quality, summary.created_time


def _param(param: TemplateParam) -> SyncTemplateParam:
    return SyncTemplateParam(
        name=param.name,
        require=param.require,
        type=param.type,
        min_length=param.min_length,
        max_length=param.max_length,
        accept_null=param.accept_null,
    )
