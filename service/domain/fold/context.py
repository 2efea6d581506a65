"""What every rule of the fold shares: the run of one record over one OA's state, and
event times as the milliseconds the state keeps.

No rule is applied here; each module beside this one holds the rules of its part.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.domain.state import Change, OAState, Policy


class Run:
    """One application of one record (or of the clock alone) to one OA's state; `changes`
    collects what it changed, in order: they become the decision records."""

    def __init__(self, state: OAState, policy: Policy, now: datetime) -> None:
        self.state = state
        self.policy = policy
        self.thresholds = policy.thresholds
        self.now = now
        self.changes: list[Change] = []
        self.counts_changed = False
        """The OA's delivered or negative counts moved: its levels may have too."""

    def change(
        self,
        kind: str,
        rule: str,
        before: Any,
        after: Any,
        at: datetime,
        template_id: str | None = None,
        **inputs: Any,
    ) -> None:
        self.changes.append(Change(kind, rule, before, after, at, inputs, template_id))


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat()
