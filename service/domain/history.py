"""What an OA's recent past looks like: the hourly counts of its windows.

The dashboard shows an OA's last 7 days hour by hour, answered here from the
state's hourly buckets; nothing here reads the log or the clock. The series
costs one look-up per hour of the span, whatever the state's size. Its last
decisions are put in words by `service.domain.explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.domain.state import WINDOW_7D, OAState
from service.domain.windows import HOUR_S, hour_index

HISTORY_HOURS = int(WINDOW_7D.total_seconds()) // HOUR_S
"""The hours an OA's history covers: the 7-day window, to the current hour."""


@dataclass(frozen=True, slots=True)
class Hour:
    """One hour of an OA's history: delivered messages and negative signals (the proxy)."""

    start_s: int
    """The hour's start, seconds since the epoch."""
    delivered: int
    negatives: int


def hourly(state: OAState, now: datetime, hours: int = HISTORY_HOURS) -> list[Hour]:
    """The last `hours` hours up to `now` (the current hour last), empty hours included."""
    last = hour_index(now)
    return [
        Hour(key * HOUR_S, state.delivered.get(key), state.negatives.get(key))
        for key in range(last - hours + 1, last + 1)
    ]
