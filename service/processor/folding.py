"""Folding the records of one `zns.events` partition into the states of its OAs.

`PartitionFolder` is the part the live processor and `zns-gate replay` share:
given records in offset order it keeps the partition's stream clock, skips
what a restored snapshot already includes, folds the rest, and returns the
decision and dead-letter records to write. It does no I/O itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from service.config import Settings
from service.domain.fold import Item, Unprocessable, fold, read_item
from service.domain.index import NEVER
from service.domain.records import DeadLetter, DecisionRecord, Source
from service.domain.rules import RULE_SETS, Thresholds
from service.domain.state import Change, OAState, Policy, core_key, index_key
from service.log.base import LogError, LogUnavailable, Record
from service.logsetup import get_logger
from service.processor.snapshots import PartitionMark
from service.store.stores import IndexStore

_log = get_logger("processor")

Clock = Callable[[], datetime]

CLOCK_AHEAD_MS = 5 * 60 * 1000
"""How far past its log (append) time one record may move the stream clock."""


def wall_clock() -> datetime:
    return datetime.now(UTC)


class PolicyBook:
    """The policy of every OA, from the settings: its rule set, the zone, negative replies."""

    def __init__(self, settings: Settings, thresholds: Thresholds | None = None) -> None:
        self._zone = settings.rules.zone
        self._thresholds = thresholds or Thresholds()
        self._default = Policy(RULE_SETS[settings.rules.default], self._thresholds, self._zone)
        self._by_oa = {
            oa.oa_id: Policy(
                RULE_SETS[oa.rules or settings.rules.default],
                self._thresholds,
                self._zone,
                {template: frozenset(labels) for template, labels in oa.negative_replies.items()},
            )
            for oa in settings.oas
        }

    def for_oa(self, oa_id: str) -> Policy:
        return self._by_oa.get(oa_id, self._default)

    def dedup_ttl_ms(self, oa_id: str) -> int:
        return int(self.for_oa(oa_id).dedup_ttl.total_seconds() * 1000)

    def day(self, moment: datetime) -> int:
        """The local day (ordinal) of `moment` in the zone every OA's days are counted in."""
        return self._default.day(moment)


@dataclass
class Output:
    """Records to write because of the records folded: (topic, key, value)."""

    decisions: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)


class PartitionFolder:
    """The OAs of one partition, brought up to date record by record."""

    def __init__(
        self,
        topic: str,
        partition: int,
        policies: PolicyBook,
        *,
        stream_clock: bool,
        wall: Clock = wall_clock,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.policies = policies
        self.stream_clock = stream_clock
        self.wall = wall
        self.states: dict[str, OAState] = {}
        self.dirty: set[str] = set()
        """OAs changed since the last snapshot."""
        self.position = -1
        """The offset of the last record handled."""
        self.clock_ms: int | None = None
        """The stream clock: the newest event time of an OA's record in the partition."""
        self.included = -1
        """Records up to this offset are in the restored checkpoint (mark)."""
        self.rebuild: set[str] = set()
        """OAs whose snapshots were lost or incomplete: folded again from the start."""
        self.mark: PartitionMark | None = None
        self.clock_history: list[tuple[int, int | None]] = []
        """(position, clock) of the last checkpoints, for the next mark."""
        self.folded = 0
        self.current_ms = 0
        """Wall time (ms) up to which every record of the partition is known to be in
        these states: the newest log time of a record handled, or of the checkpoint."""
        self.store: IndexStore | None = None
        """Where the OAs' index entries are (None: in memory only, as in a replay)."""
        self.expired_day = 0
        """The store has dropped the entries whose expiry day is before this one."""
        self.index_mark: tuple[int, list[tuple[int, int]]] = (-1, [])
        """The index store's `upto` and void ranges in the last mark (restored or written)."""
        self.unwritten: dict[bytes, tuple[bytes | None, int]] = {}
        """Index changes taken by a checkpoint that failed: the next one writes them."""
        self._day_of = (-1, NEVER)
        """(minute of the stream clock, its local day)."""
        self.evicted: set[str] = set()
        """OAs out of memory: their core and indexes are in the store as last checkpointed."""
        self.in_store: set[str] = set()
        """OAs whose core a checkpoint of this folder wrote to the store (may be evicted)."""
        self.used: dict[str, float] = {}
        """OA -> when (monotonic seconds) a record or a request last named it."""

    def restore(
        self,
        states: dict[str, OAState],
        mark: PartitionMark | None,
        store: IndexStore | None = None,
    ) -> None:
        """Take the restored snapshots, the partition's mark and its index store."""
        self.store = store
        if mark is not None:
            self.index_mark = (mark.index_upto, list(mark.index_void))
        for state in states.values():
            self.adopt(state)
        self.states = states
        self.mark = mark
        self.included = -1 if mark is None else mark.position
        self.clock_history = [] if mark is None else list(mark.clocks)
        self.current_ms = 0 if mark is None else mark.written_ms or 0

    def begin(self, start: int) -> None:
        """Folding resumes at offset `start`: the clock is what it was just before it."""
        self.position = start - 1
        if self.mark is None or start == 0:
            self.clock_ms = None
        else:
            self.clock_ms = self.mark.clock_at(start - 1)

    def adopt(self, state: OAState) -> OAState:
        """Bound the state's indexes by what the partition's store keeps, and read their
        entries from the store (if it has one): in memory or not, the same fold."""
        state.bound(self.store_day, self.policies.dedup_ttl_ms(state.oa_id))
        if self.store is not None:
            state.attach(self.store.get)
        return state

    def store_day(self) -> int:
        """The day (ordinal) before which the store may drop an entry: the local day of
        the partition's clock (none yet: nothing dropped)."""
        if not self.stream_clock:
            minute = int(self.wall().timestamp()) // 60
        elif self.clock_ms is None:
            return NEVER
        else:
            minute = self.clock_ms // 60_000
        if minute != self._day_of[0]:  # read for every index entry: once a minute suffices
            moment = datetime.fromtimestamp(minute * 60, tz=UTC)
            self._day_of = (minute, self.policies.day(moment))
        return self._day_of[1]

    def state_of(self, oa_id: str, *, keep: bool = True) -> OAState | None:
        """The OA's state, read back from the store if it was evicted (and held again,
        unless `keep` is false: a listing reads every OA without bringing them back)."""
        state = self.states.get(oa_id)
        if state is None and oa_id in self.evicted and self.store is not None:
            raw = self.store.get(core_key(oa_id))
            if raw is None:  # the partition is taken again from its checkpoint
                raise LogUnavailable(f"the store of partition {self.partition} lost OA {oa_id}")
            state = self.adopt(OAState.from_document(orjson.loads(raw)))
            if keep:
                self.evicted.discard(oa_id)
                self.states[oa_id] = state
        if state is not None and keep:
            self.used[oa_id] = time.monotonic()
        return state

    async def read_evicted(self) -> dict[str, OAState]:
        """The states of the OAs out of memory, read and decoded off the loop (they stay
        out of memory)."""
        if self.store is None or not self.evicted:
            return {}
        found = await self.store.get_many([core_key(oa_id) for oa_id in sorted(self.evicted)])

        def decode() -> list[OAState]:
            return [OAState.from_document(orjson.loads(raw)) for raw in found.values() if raw]

        return {state.oa_id: self.adopt(state) for state in await asyncio.to_thread(decode)}

    def oa_ids(self) -> set[str]:
        """Every OA of the partition, in memory or not."""
        return self.states.keys() | self.evicted

    def evict_idle(self, idle_s: float) -> int:
        """Let OAs unused for `idle_s` leave memory (only those a checkpoint has written
        whole to the store and nothing has changed since); how many left."""
        limit = time.monotonic() - idle_s
        gone = [
            oa_id
            for oa_id, state in self.states.items()
            if oa_id in self.in_store
            and oa_id not in self.dirty
            and self.used.get(oa_id, 0.0) < limit
            and not state.changed()
        ]
        for oa_id in gone:
            del self.states[oa_id]
            self.used.pop(oa_id, None)
            self.evicted.add(oa_id)
        return len(gone)

    def new_state(self, oa_id: str) -> OAState:
        state = self.states[oa_id] = self.adopt(
            OAState.new(oa_id, self.policies.for_oa(oa_id).rules)
        )
        self.used[oa_id] = time.monotonic()
        return state

    async def prefetch(self, oa_id: str, name: str, keys: Iterable[str]) -> None:
        """Read these entries of an OA's index from the store off the loop, so that a
        decision reading many of them (an admission's recipients) costs no point reads."""
        state = self.state_of(oa_id)
        if self.store is None or state is None:
            return
        releases = getattr(state, name).releases
        found = await self.store.get_many([index_key(oa_id, name, key) for key in keys])
        if self.state_of(oa_id) is state:  # not evicted and read back meanwhile
            state.offer(name, found, releases)

    async def whole(self, oa_id: str) -> OAState:
        """The OA's state with every entry of its indexes in memory (from the store): to
        inspect or compare, not for serving."""
        state = self.state_of(oa_id, keep=False)
        if state is None:
            raise KeyError(oa_id)
        if self.store is None:
            return state
        return state.with_entries(await self.store.entries_of(oa_id))

    def now(self) -> datetime:
        if self.stream_clock and self.clock_ms is not None:
            return datetime.fromtimestamp(self.clock_ms / 1000, tz=UTC)
        return self.wall()

    def handle(self, record: Record, out: Output) -> None:
        """Fold one record (records come in offset order)."""
        self.position = max(self.position, record.offset)
        self.current_ms = max(self.current_ms, record.timestamp_ms)
        headers = {name: value.decode(errors="replace") for name, value in record.headers}
        try:
            item = read_item(headers.get("kind"), record.key, record.value, headers)
        except Unprocessable as exc:
            if record.offset > self.included:
                out.dead_letters.append(self.dead_letter(record, headers, exc.reason, str(exc)))
            return
        except Exception as exc:  # a bug in reading must not stop the partition either
            _log.exception("reading a record failed", offset=record.offset)
            if record.offset > self.included:
                letter = self.dead_letter(record, headers, "apply_failed", repr(exc)[:300])
                out.dead_letters.append(letter)
            return
        # Every record with an event time from where folding began moves the clock, also one
        # a snapshot includes, so that a record folded again sees the clock it saw the first time.
        at_ms = int(item.at.timestamp() * 1000)
        if record.timestamp_ms > 0:
            # A record's own time says when it happened, but only the log's time is
            # trusted not to run ahead: one far-future send must not move every OA of the
            # partition to its day. The log time is in the log, so a replay gets the same.
            at_ms = min(at_ms, record.timestamp_ms + CLOCK_AHEAD_MS)
        if item.has_event_time and (self.clock_ms is None or at_ms > self.clock_ms):
            self.clock_ms = at_ms
        state = self.state_of(item.oa_id) or self.new_state(item.oa_id)
        if record.offset <= state.position:
            return  # the OA's snapshot includes it
        self.apply(state, item, record, out)

    def apply(self, state: OAState, item: Item, record: Record, out: Output) -> None:
        policy = self.policies.for_oa(item.oa_id)
        try:
            changes = fold(state, item, self.now(), policy)
            decisions = [
                self.decision(state.oa_id, change, record, index, policy)
                for index, change in enumerate(changes)
            ]
        except LogError:
            raise  # the store could not be read: the partition starts again from its checkpoint
        except Exception as exc:  # a bug must not stop the partition; the record is kept
            _log.exception("fold failed", oa_id=item.oa_id, offset=record.offset)
            headers = {name: value.decode(errors="replace") for name, value in record.headers}
            letter = self.dead_letter(record, headers, "apply_failed", repr(exc)[:300])
            out.dead_letters.append(letter)
            decisions = []
        state.position = record.offset
        self.dirty.add(item.oa_id)
        self.folded += 1
        out.decisions.extend(decisions)

    def apply_ahead(self, item: Item, record: Record, out: Output) -> OAState:
        """Fold `item`, a record of this partition newer than what has been folded, at
        once, without moving the OA's position (an admission's grant): the processor
        meets it again in its turn and recognises it. The caller has the item already,
        so the record's bytes are not read back."""
        policy = self.policies.for_oa(item.oa_id)
        state = self.state_of(item.oa_id) or self.new_state(item.oa_id)
        changes = fold(state, item, self.now(), policy)
        self.dirty.add(item.oa_id)
        for index, change in enumerate(changes):
            out.decisions.append(self.decision(state.oa_id, change, record, index, policy))
        return state

    def decision(
        self, oa_id: str, change: Change, record: Record, index: int, policy: Policy
    ) -> tuple[bytes, bytes]:
        # Partition, offset, rule and the change's place among the record's changes: the
        # same record folded again (after a crash) gives the same ids.
        decision_id = f"{record.partition}-{record.offset}-{index}-{change.rule}"
        value = DecisionRecord(
            decision_id=decision_id,
            oa_id=oa_id,
            template_id=change.template_id,
            kind=change.kind,
            rule=change.rule,
            before=change.before,
            after=change.after,
            inputs=change.inputs,
            at=change.at.astimezone(policy.zone).isoformat(),
            source=Source(topic=record.topic, partition=record.partition, offset=record.offset),
        )
        return oa_id.encode(), orjson.dumps(value.model_dump(mode="json"))

    def dead_letter(
        self, record: Record, headers: dict[str, str], reason: str, error: str
    ) -> tuple[bytes | None, bytes]:
        value = DeadLetter(
            reason=reason,
            error=error,
            source=Source(topic=record.topic, partition=record.partition, offset=record.offset),
            kind=headers.get("kind"),
            key=None if record.key is None else record.key.decode(errors="replace"),
            value=record.value.decode(errors="replace"),
            headers=headers,
        )
        _log.warning(
            "record sent to the dead-letter topic",
            reason=reason,
            offset=record.offset,
            partition=record.partition,
        )
        return record.key, orjson.dumps(value.model_dump(mode="json"))
