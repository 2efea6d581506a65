"""`zns-gate replay`: rebuild every OA's state from `zns.events`, the source of truth.

Every partition is read from its first record to its end and folded into
fresh states, exactly as the processor folds them. The result is written to
`zns.oa-state` as new snapshots (with `--dry-run`, nothing is written), so a
processor that starts afterwards restores the rebuilt states and goes on from
its committed offset, skipping what they include. Decisions are not written
again: the processor wrote them when it folded the records first, with the same
ids. With `clock = "stream"` the rebuilt states equal what live processing
built; with the wall clock, day changes are evaluated at the time of the replay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.config import Settings
from service.domain.state import OAState, core_entry
from service.log.base import EventLog, TopicPartition
from service.processor.folding import Output, PartitionFolder, PolicyBook
from service.processor.snapshots import encode_mark, encode_state, mark_key
from service.store.stores import IndexStores

READ_BATCH = 2000

Progress = Callable[[int], object]
"""Told how many more records were read."""


@dataclass
class ReplayResult:
    partitions: int = 0
    records: int = 0
    decisions: int = 0
    dead_letters: int = 0
    snapshots_written: int = 0
    seconds: float = 0.0
    states: dict[str, OAState] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {
            "partitions": self.partitions,
            "records": self.records,
            "oas": len(self.states),
            "decisions": self.decisions,
            "dead_letters": self.dead_letters,
            "snapshot_records_written": self.snapshots_written,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.records / self.seconds) if self.seconds else None,
        }


async def total_records(log: EventLog) -> int:
    """An upper bound of the records to replay (offsets; retention may have removed some)."""
    tps = [TopicPartition(log.topics.events, p) for p in range(log.partitions)]
    return sum((await log.end_offsets(tps)).values())


async def replay(
    log: EventLog, settings: Settings, *, write: bool, progress: Progress | None = None
) -> ReplayResult:
    """Fold the whole of `zns.events` into fresh states; write them as snapshots if asked."""
    started = time.monotonic()
    result = ReplayResult(partitions=log.partitions)
    policies = PolicyBook(settings)
    stream_clock = settings.rules.clock == "stream"
    for partition in range(log.partitions):
        tp = TopicPartition(log.topics.events, partition)
        end = (await log.end_offsets([tp]))[tp]
        folder = PartitionFolder(tp.topic, partition, policies, stream_clock=stream_clock)
        offset = 0
        while offset < end:
            records = await log.read(tp, offset, READ_BATCH)
            if not records:
                break
            out = Output()
            for record in records:
                folder.handle(record, out)
            result.decisions += len(out.decisions)
            result.dead_letters += len(out.dead_letters)
            result.records += len(records)
            offset = records[-1].offset + 1
            if progress is not None:
                progress(len(records))
        result.states.update(folder.states)
        if write and folder.position >= 0:
            result.snapshots_written += await _write(log, folder, settings)
    result.seconds = time.monotonic() - started
    return result


async def _write(log: EventLog, folder: PartitionFolder, settings: Settings) -> int:
    """The partition's index entries (in place of what its store held), then its
    snapshots, then (once they are durable) its mark."""
    topic, partition = log.topics.oa_state, folder.partition
    stores = IndexStores(log, state_dir=settings.processor.state_dir, cache_mb=16)
    await stores.start()
    store = stores.store(partition)
    try:
        await store.open(upto=-1, void=[])  # what it holds is superseded: void, then gone
        await store.clear()
        for state in folder.states.values():
            ttl_ms = folder.policies.dedup_ttl_ms(state.oa_id)
            for name in OAState.SHARED_INDEXES:
                getattr(state, name).touch_all()
            changes = list(state.index_changes(ttl_ms).items())
            changes.append(core_entry(state.oa_id, state.core_json()))
            for start in range(0, len(changes), 10_000):
                await store.put(dict(changes[start : start + 10_000]), upto=-1, void=[])
        index_upto, void = store.upto, list(store.void)
    finally:
        await store.close()
        await stores.close()
    records = [
        chunk
        for state in folder.states.values()
        for chunk in encode_state(
            state.core_json(), state.oa_id, state.position, folder.topic, partition, index_upto
        )
    ]
    for start in range(0, len(records), 1000):  # bounded batches of appends in flight
        await asyncio.gather(
            *(
                log.append(topic, key, value, partition=partition)
                for key, value in records[start : start + 1000]
            )
        )
    mark = encode_mark(
        folder.topic, partition, folder.position, folder.clock_ms, [], None, index_upto, void
    )
    await log.append(topic, mark_key(partition), mark, partition=partition)
    return len(records) + 1
