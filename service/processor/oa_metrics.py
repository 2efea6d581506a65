"""The per-OA gauges of `/metrics` (`zns_gate_oa_*`), for the OAs this instance owns.

An OA's gauges are set from its state when a checkpoint has written it (the OAs
that changed), and every `sweep_s` for the OAs held in memory (time alone moves a
day or a quality window), in slices of 2 ms between which the event loop runs; never at
scrape time and never for every record. Each figure comes from the same domain
functions `GET /quota` and `GET /quality` answer with, on a copy brought to now as
those reads do. An OA whose partition is revoked loses its gauges; one evicted
from memory keeps its last values until then. It changes no state and does no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Gauge

from service.domain.fold import advance
from service.domain.forecast import forecast
from service.domain.scoring import Level
from service.domain.state import OAState, Policy
from service.logsetup import get_logger
from service.metrics import (
    OA_DAILY_QUOTA,
    OA_NEGATIVES_TODAY,
    OA_PENALTY_THRESHOLD,
    OA_QUALITY,
    OA_REMAINING_TODAY,
    OA_TIER_DOWN_LIKELY,
    OA_TOKEN_EXPIRES_SECONDS,
)

if TYPE_CHECKING:
    from service.processor.folding import PartitionFolder
    from service.processor.runner import Processor
    from service.zalo.vault import TokenStatus

_log = get_logger("processor")

LEVEL_VALUES: dict[Level, int] = {
    Level.UNDEFINED: 0,
    Level.LOW: 1,
    Level.MEDIUM: 2,
    Level.HIGH: 3,
}
"""`zns_gate_oa_quality`'s value for each of Zalo's levels."""

WINDOWS = ("48h", "7d")
"""`zns_gate_oa_quality`'s `window` label, in the order `effective_levels` returns them."""

SLICE_S = 0.002
"""The event loop runs again after this long of setting gauges (an OA takes about
0.1-0.2 ms: its copy brought to now, the forecast, eight gauges)."""

OPTIONAL = (OA_DAILY_QUOTA, OA_REMAINING_TODAY, OA_PENALTY_THRESHOLD)
"""The gauges an unlimited daily quota leaves absent (no number to show or alert on)."""


class TokenStatuses(Protocol):
    """What the gauges read of an OA's Zalo token (the token keeper has it)."""

    def status(self, oa_id: str) -> TokenStatus: ...


@dataclass(frozen=True, slots=True)
class Figures:
    """One OA's gauge values at one moment (None: the gauge is absent)."""

    daily_quota: int | None
    remaining_today: int | None
    penalty_threshold: int | None
    negatives_today: int
    quality: tuple[int, int]
    """48h, 7d."""
    tier_down_likely: bool


def figures(state: OAState, now: datetime, policy: Policy) -> Figures:
    """The gauges of an OA whose state is brought to `now` (as the API's reads do)."""
    today = policy.day(now)
    ahead = forecast(state, now, policy)
    levels = state.effective_levels(now, policy.thresholds)
    daily, projected = state.daily_quota, ahead.projected_daily_quota
    # A step down: a finite quota below today's (unlimited counts as above any number).
    down = projected is not None and (daily is None or projected < daily)
    return Figures(
        daily_quota=daily,
        remaining_today=state.remaining_today(today),
        penalty_threshold=state.penalty_threshold(policy),
        negatives_today=ahead.negatives_today,
        quality=(LEVEL_VALUES[levels[0]], LEVEL_VALUES[levels[1]]),
        tier_down_likely=down,
    )


class OAGauges:
    """Keeps the `zns_gate_oa_*` gauges of the OAs of the partitions a processor owns."""

    def __init__(self, processor: Processor, *, sweep_s: float = 60.0) -> None:
        self._processor = processor
        self.sweep_s = sweep_s
        self.tokens: TokenStatuses | None = None
        """Set by whoever wires the token keeper: the token gauge needs it."""
        self._pending: dict[int, set[str]] = {}
        """Partition -> OAs to set at the next pass."""
        self._shown: dict[int, set[str]] = {}
        """Partition -> OAs that have gauges now."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- life ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="oa-gauges")

    async def close(self) -> None:
        """Stop, and remove every gauge this instance set (it owns nothing any more)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for partition in list(self._shown):
            self.forget(partition)

    # --- the processor's hooks ----------------------------------------------------------

    def changed(self, partition: int, oa_ids: Iterable[str]) -> None:
        """A checkpoint wrote these OAs of `partition`: set their gauges soon."""
        self._pending.setdefault(partition, set()).update(oa_ids)
        self._wake.set()

    def forget(self, partition: int) -> None:
        """The partition moved away: its OAs' gauges go (the new owner shows them)."""
        self._pending.pop(partition, None)
        for oa_id in self._shown.pop(partition, set()):
            remove(oa_id)

    # --- inside -------------------------------------------------------------------------

    async def _run(self) -> None:
        next_sweep = time.monotonic() + self.sweep_s
        while True:
            timeout = max(0.0, next_sweep - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.sweep_s
                self._sweep()
            await self.update()

    def _sweep(self) -> None:
        """Every OA held in memory (and every one shown) is set again at the next pass:
        a day change or the windows move its figures without a record."""
        for partition in self._processor.ready():
            folder = self._processor.folders.get(partition)
            if folder is not None:
                pending = self._pending.setdefault(partition, set())
                pending.update(folder.states)
                pending.update(self._shown.get(partition, ()))

    async def update(self) -> int:
        """Set the gauges of the OAs pending, SLICE_S at a time; how many were set."""
        done = 0
        while self._pending:
            partition = next(iter(self._pending))
            oa_ids = self._pending.pop(partition)
            since = time.perf_counter()
            for oa_id in oa_ids:
                folder = self._processor.folders.get(partition)
                if folder is None:
                    break  # revoked meanwhile: `forget` removed its gauges
                try:
                    done += self._set(folder, oa_id)
                except Exception:  # one OA's failure must not leave the others unset
                    _log.exception("per-OA gauges failed", oa_id=oa_id)
                if time.perf_counter() - since >= SLICE_S:
                    await asyncio.sleep(0)
                    since = time.perf_counter()
        return done

    def _set(self, folder: PartitionFolder, oa_id: str) -> bool:
        state = folder.states.get(oa_id)
        if state is None:
            return False  # out of memory: its last values stay until the partition moves
        policy = self._processor.policies.for_oa(oa_id)
        now = folder.now()
        copy = state.served_copy()
        advance(copy, now, policy)
        show(oa_id, figures(copy, now, policy), self._token_left(oa_id, now))
        self._shown.setdefault(folder.partition, set()).add(oa_id)
        return True

    def _token_left(self, oa_id: str, now: datetime) -> float | None:
        return None if self.tokens is None else token_left(self.tokens.status(oa_id), now)


def token_left(status: TokenStatus, now: datetime) -> float | None:
    """Seconds until the OA's refresh token expires (0 once dead), None without one."""
    if status.state == "missing":
        return None
    if status.state == "dead" or status.refresh_expires_at is None:
        return 0.0
    return max(0.0, status.refresh_expires_at / 1000 - now.timestamp())


def show(oa_id: str, values: Figures, token_left: float | None) -> None:
    """Set the OA's gauges to `values`; an absent value removes its gauge."""
    optional: tuple[tuple[Gauge, int | None], ...] = (
        (OA_DAILY_QUOTA, values.daily_quota),
        (OA_REMAINING_TODAY, values.remaining_today),
        (OA_PENALTY_THRESHOLD, values.penalty_threshold),
    )
    for gauge, value in optional:
        if value is None:
            with contextlib.suppress(KeyError):
                gauge.remove(oa_id)
        else:
            gauge.labels(oa_id).set(value)
    OA_NEGATIVES_TODAY.labels(oa_id).set(values.negatives_today)
    for window, level in zip(WINDOWS, values.quality, strict=True):
        OA_QUALITY.labels(oa_id, window).set(level)
    OA_TIER_DOWN_LIKELY.labels(oa_id).set(1 if values.tier_down_likely else 0)
    if token_left is None:
        with contextlib.suppress(KeyError):
            OA_TOKEN_EXPIRES_SECONDS.remove(oa_id)
    else:
        OA_TOKEN_EXPIRES_SECONDS.labels(oa_id).set(token_left)


def remove(oa_id: str) -> None:
    for gauge in (
        *OPTIONAL,
        OA_NEGATIVES_TODAY,
        OA_TIER_DOWN_LIKELY,
        OA_TOKEN_EXPIRES_SECONDS,
    ):
        with contextlib.suppress(KeyError):
            gauge.remove(oa_id)
    for window in WINDOWS:
        with contextlib.suppress(KeyError):
            OA_QUALITY.remove(oa_id, window)
