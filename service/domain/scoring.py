"""Proxy quality: a level from the negatives among the delivered messages of a window.

The level uses the lower bound of the Wilson score interval of k/n (plain, no
continuity correction), so that a handful of complaints on a tiny volume does
not condemn an OA, while a real problem at volume shows at once
(docs/rules.md#quality-level). `score` is a number for dashboards. This module does no I/O.
"""

from __future__ import annotations

import functools
import math
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from service.domain.rules import Thresholds


class Level(StrEnum):
    """Zalo's quality levels; UNDEFINED means there is nothing to judge by."""

    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"
    UNDEFINED = "UNDEFINED"


_RANK = {Level.HIGH: 0, Level.MEDIUM: 1, Level.LOW: 2}


def wilson_lower_bound(negatives: int, delivered: int, z: float) -> float:
    """Lower bound of the Wilson score interval of negatives/delivered (0 when delivered is 0)."""
    if not 0 <= negatives <= max(delivered, 0):
        raise ValueError(f"negatives must be within 0..{delivered}, got {negatives}")
    if negatives == 0:
        return 0.0  # exactly, where the formula would leave rounding noise
    p = negatives / delivered
    z2 = z * z
    centre = p + z2 / (2 * delivered)
    spread = z * math.sqrt(p * (1 - p) / delivered + z2 / (4 * delivered * delivered))
    return max(0.0, (centre - spread) / (1 + z2 / delivered))


@functools.lru_cache(maxsize=65_536)
def quality_level(negatives: int, delivered: int, thresholds: Thresholds) -> Level:
    """UNDEFINED with nothing delivered; else LOW above `rate_limit`, MEDIUM above
    `rate_standard`, HIGH otherwise, judged by the Wilson lower bound.

    A window can hold a negative whose delivery is already outside it (a rating
    47 hours after the message); such a message still counts as delivered, so
    `delivered` is at least `negatives`.
    """
    delivered = max(delivered, negatives)
    if delivered == 0:
        return Level.UNDEFINED
    bound = wilson_lower_bound(negatives, delivered, thresholds.quality_z)
    if bound > thresholds.rate_limit:
        return Level.LOW
    if bound > thresholds.rate_standard:
        return Level.MEDIUM
    return Level.HIGH


def score(negatives: int, delivered: int, thresholds: Thresholds) -> int | None:
    """100 x (1 - min(1, rate / (2 x rate_limit))), rounded half up; None with nothing delivered.

    100 is spotless; 50 sits exactly at the LOW limit; 0 is twice that or worse.
    As in `quality_level`, `delivered` is at least `negatives`.
    """
    delivered = max(delivered, negatives)
    if delivered == 0:
        return None
    rate = negatives / delivered
    value = 100 * (1 - min(1.0, rate / (2 * thresholds.rate_limit)))
    # Decimal from the float's repr, so that 62.5 rounds to 63 and not by binary noise.
    return int(Decimal(repr(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def worse(a: Level, b: Level) -> Level:
    """The worse of two levels, where UNDEFINED counts as no information."""
    if a is Level.UNDEFINED:
        return b
    if b is Level.UNDEFINED:
        return a
    return a if _RANK[a] >= _RANK[b] else b
