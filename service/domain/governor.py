"""The governor: the limits zns-gate adds on top of Zalo's, per tag (docs/rules.md#governor).

Tag 1 (transactions, OTP) is never throttled here. With T the penalty
threshold (2 % of the day's starting quota) and counts since 00:00 today:

| row                 | condition                        | tag 3             | tag 2             |
|---------------------|----------------------------------|-------------------|-------------------|
| `negatives_block3`  | negatives today >= 50 % of T     | blocked           |                   |
| `negatives_block2`  | negatives today >= 80 % of T     | blocked           | blocked           |
| `quality_medium`    | quality_48h MEDIUM               | <= 10 % of quota  |                   |
| `quality_low`       | quality_48h LOW                  | blocked           | <= 25 % of quota  |

quality_48h is the worse of Zalo's (while fresh) and the proxy. A cap counts
the tag's grants today (less the units given back) against a share of the
current daily quota. When several rows apply, the strictest wins. The shares
are settings (`Thresholds`). This module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.domain.scoring import Level
from service.domain.state import OAState, Policy


@dataclass(frozen=True, slots=True)
class Limit:
    """What the governor lets one tag be granted for the rest of today."""

    tag: int
    remaining: int | None
    """Units it may still grant today; None: the governor sets no limit."""
    rule: str | None = None
    """The row that set the limit (the strictest when several apply)."""
    inputs: dict[str, Any] = field(default_factory=dict)


def governor(state: OAState, now: datetime, policy: Policy) -> dict[int, Limit]:
    """The governor's limit of each tag at `now` (call `fold.advance` first)."""
    t = policy.thresholds
    today = policy.day(now)
    threshold = state.penalty_threshold(policy)
    negatives = state.negatives_by_day.get(today)
    quality_48h = state.effective_levels(now, t)[0]
    quota = state.daily_quota
    inputs = {
        "negatives_today": negatives,
        "penalty_threshold": threshold,
        "quality_48h": quality_48h.value,
        "daily_quota": quota,
    }
    # Each row: (rule, tag, share of the quota that may be granted today; 0 blocks).
    rows: list[tuple[str, int, float]] = []
    if threshold is not None:
        if negatives >= t.governor_block_tag3_share * threshold:
            rows.append(("negatives_block3", 3, 0.0))
        if negatives >= t.governor_block_tag2_share * threshold:
            rows += [("negatives_block2", 3, 0.0), ("negatives_block2", 2, 0.0)]
    if quality_48h is Level.MEDIUM:
        rows.append(("quality_medium", 3, t.governor_medium_tag3_share))
    elif quality_48h is Level.LOW:
        rows += [("quality_low", 3, 0.0), ("quality_low", 2, t.governor_low_tag2_share)]

    limits = {tag: Limit(tag, None) for tag in (1, 2, 3)}
    for rule, tag, share in rows:
        if share == 0.0:
            remaining = 0
        elif quota is None:
            continue  # a share of an unlimited quota limits nothing
        else:
            remaining = max(0, int(share * quota) - state.granted_on(tag, today))
        current = limits[tag].remaining
        if current is None or remaining < current:
            limits[tag] = Limit(tag, remaining, rule, {**inputs, "share": share})
    return limits
