"""The processor: consume `zns.events` in a consumer group, fold, snapshot, commit.

For each partition the group assigns, the processor restores the latest
snapshots from `zns.oa-state`, reads the partition from where the snapshots
and the committed offset leave off, and serves it once it has caught up with
the end offset it saw when it got the partition. Decisions and dead letters
are appended as records are folded. A checkpoint, every few seconds or
records, waits until those appends are durable, writes a snapshot of every
OA that changed and the partition's mark, and only then commits the offsets:
a crash at any point re-folds, from the last commit, records whose effects a
snapshot either includes (skipped by position) or does not (folded again), so
nothing is lost or counted twice, and decisions repeat with the same ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from service.config import Settings
from service.domain.fold import Item
from service.domain.records import AdmissionRecord
from service.domain.state import IndexChanges, core_entry, encode_changes, exact
from service.log.base import (
    EventLog,
    LogConsumer,
    LogError,
    LogUnavailable,
    Record,
    TopicPartition,
)
from service.logsetup import get_logger
from service.metrics import (
    CHECKPOINT_SECONDS,
    CONSUMER_LAG,
    DEAD_LETTERS,
    DECISIONS,
    FOLD_DELAY_SECONDS,
    FOLDED,
    LAST_CHECKPOINT,
    PROCESSOR_ERRORS,
    RESTORE_SECONDS,
)
from service.processor.folding import Clock, Output, PartitionFolder, PolicyBook, wall_clock
from service.processor.oa_metrics import OAGauges
from service.processor.owned import OwnedStates
from service.processor.snapshots import (
    PartitionMark,
    Restorer,
    encode_mark,
    encode_state,
    mark_key,
    next_clocks,
)
from service.store.stores import IndexStore, IndexStores
from service.store.versions import VoidRanges

_log = get_logger("processor")

FOLD_PIECE = 200
"""Records folded between two turns of the event loop (about 10 ms of folding)."""
RESTORE_BATCH = 500
"""Snapshot records read at a time while restoring (the loop runs between reads)."""


@dataclass(frozen=True)
class ProcessorOptions:
    group_id: str = "zns-gate-processor"
    checkpoint_interval_s: float = 5.0
    checkpoint_records: int = 20_000
    fetch_records: int = 1000
    """Records taken from the log at a time (a checkpoint comes between fetches)."""
    compact_every: int = 20
    """Embedded log: compact `zns.oa-state` every this many checkpoints."""
    address: str | None = None
    """Where this instance serves the API, published to the group (see `owner_of`)."""
    drain_timeout_s: float = 5.0
    """How long a revocation waits for admissions still appending their record."""
    contact_s: float = 5.0
    """Without a heartbeat the group acknowledged for this long, stop granting (half the
    session timeout: the group may give the partitions away at the full timeout)."""


class Processor:
    """One member of the processor group, with the states of the partitions it owns."""

    def __init__(
        self,
        log: EventLog,
        settings: Settings,
        options: ProcessorOptions | None = None,
        *,
        wall: Clock = wall_clock,
    ) -> None:
        self.log = log
        self.options = options or ProcessorOptions()
        self.policies = PolicyBook(settings)
        self.stream_clock = settings.rules.clock == "stream"
        self.wall = wall
        self.idle_evict_s = settings.processor.idle_evict_s
        self.stores = IndexStores(
            log, state_dir=settings.processor.state_dir, cache_mb=settings.processor.cache_mb
        )
        self.folders: dict[int, PartitionFolder] = {}
        self.catching_up: dict[int, int] = {}
        """Partition -> the end offset it must reach before it is served."""
        self._consumer: LogConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._output = Output()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._checkpoints = 0
        self._lock = asyncio.Lock()
        self._closing: list[PartitionFolder] = []
        """Folders let go of (`_retake`) whose stores are still to be closed."""
        self.watchers: list[Callable[[Record], None]] = []
        """Called with each record folded (e.g. the Zalo poller, for the webhooks that say
        Zalo changed a number); each must be cheap and must not raise."""
        self._capturing = asyncio.Lock()
        """Held while a checkpoint takes the states' changes and encodes the recipients
        among them, and by a promotion admission applied ahead (the one that changes
        recipients in place): the values taken must not change until encoded."""
        self._stopping = asyncio.Event()
        self._assigned_once = False
        self._unrestored: set[TopicPartition] = set()
        """Assigned partitions not restored yet (or whose restore failed: the loop tries
        again)."""
        self._taking = asyncio.Lock()
        """Held while a partition is restored or partitions are revoked."""
        self._seeks: dict[int, int] = {}
        """Partition -> how often it was moved to where folding resumes. Records of a
        partition that a fetch returned before its latest move may come from another
        offset; they are dropped (the consumer reads again from the new one)."""
        self._admitting: dict[int, int] = {}
        """Partition -> admissions under way (decided, their record being appended)."""
        self._admissions_done = asyncio.Condition()
        self.copies: dict[int, tuple[PartitionFolder, int]] = {}
        """Partitions revoked from this member, with the wall time (ms) they stopped
        following the log: read (with their staleness) until the next assignment."""
        self.owned = OwnedStates(self)
        """What the API reads and decides on: its only way to these states."""
        self.oa_gauges = OAGauges(self)
        """The per-OA gauges of the OAs this member owns."""

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.stores.start()
        self._consumer = self.log.consumer(
            self.options.group_id, [self.log.topics.events], self, address=self.options.address
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="processor")
        self._task.add_done_callback(_report_end)
        self.oa_gauges.start()

    async def close(self) -> None:
        """Stop folding; checkpoint and leave the group (the partitions' revocation)."""
        if self._task is not None:
            self._stopping.set()  # the loop ends after the fetch or checkpoint under way
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=30)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.close()
            self._consumer = None
        await self.oa_gauges.close()
        held = [
            *self.folders.values(),
            *(folder for folder, _ in self.copies.values()),
            *self._closing,
        ]
        self._closing = []
        for folder in held:
            await _close_store(folder)
        await self.stores.close()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def ready(self) -> frozenset[int]:
        """The partitions restored and caught up: their state may be served."""
        return frozenset(p for p in self.folders if p not in self.catching_up)

    def not_ready(self) -> str | None:
        """Why this member cannot serve its partitions yet, or None when it can."""
        if not self._assigned_once or self._consumer is None:
            return "the group has not assigned partitions yet"
        assigned = {tp.partition for tp in self._consumer.assignment()}
        waiting = sorted(assigned - self.ready())
        if waiting:
            return "partitions still restoring: " + ", ".join(str(p) for p in waiting)
        return None

    def owner_of(self, partition: int) -> str | None:
        """The address of the member that owns `partition`, as of the last assignment."""
        return self.owners().get(partition)

    def owners(self) -> Mapping[int, str]:
        """Partition -> its owner's address, as of the last assignment."""
        return {} if self._consumer is None else self._consumer.owners()

    def in_contact(self) -> bool:
        """Whether the group has confirmed this member recently enough for it to grant."""
        return self._consumer is not None and self._consumer.in_contact(self.options.contact_s)

    def reader(self, partition: int) -> tuple[PartitionFolder, int | None] | None:
        """The states of `partition` held here, and how stale they may be (milliseconds;
        None when they are current): its folder while it is restored and catching up,
        or the copy kept since it was revoked. None when there are none."""
        now_ms = int(self.wall().timestamp() * 1000)
        folder = self.folders.get(partition)
        if folder is not None:
            if partition not in self.catching_up:
                return folder, None
            if folder.current_ms == 0:
                return None  # restored from nothing: how old it is is not known either
            return folder, max(0, now_ms - folder.current_ms)
        copy = self.copies.get(partition)
        if copy is not None:
            folder, revoked_ms = copy
            return folder, max(0, now_ms - min(revoked_ms, folder.current_ms))
        return None

    async def apply_ahead(self, item: Item, record: Record) -> None:
        """Fold an admission this instance has just appended (`item`, as `record` in the
        log) into the owner's state at once. A promotion (tag 3) admission changes its
        recipients in place: it waits while a checkpoint encodes the recipients it took."""
        body = item.body
        if isinstance(body, AdmissionRecord) and body.tag == 3 and body.granted_recipients:
            async with self._capturing:
                self._apply_ahead_now(item, record)
        else:
            self._apply_ahead_now(item, record)

    def _apply_ahead_now(self, item: Item, record: Record) -> None:
        folder = self.folders.get(record.partition)
        if folder is not None:
            folder.apply_ahead(item, record, self._output)

    # --- the group's callbacks ----------------------------------------------------------

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        # The consumer may fetch a partition as soon as it is assigned, while this callback
        # still restores it: hold every partition until its state is back and it has
        # been moved to where folding resumes.
        consumer.pause(partitions)
        for tp in partitions:  # its store's files are the ones the restore opens
            copy = self.copies.pop(tp.partition, None)
            if copy is not None:
                await _close_store(copy[0])
        self._assigned_once = True
        self._unrestored |= partitions
        for tp in sorted(partitions):
            try:
                await self._take(tp)
            except Exception as exc:  # the loop tries again; the partition stays held
                _log.warning("restore failed", partition=tp.partition, error=repr(exc))
                self._unrestored.add(tp)
        copies, self.copies = self.copies, {}  # the new owners serve them now
        for folder, _ in copies.values():
            await _close_store(folder)

    async def _take(self, tp: TopicPartition) -> None:
        """Restore one assigned partition, move to where folding resumes, let it be fetched.

        The group's callbacks and the loop's retries both come here: one at a time, and a
        partition taken already is not taken again (a second restore and seek under a
        folder that is already folding would skip records)."""
        async with self._taking:
            if tp in self._unrestored:
                await self._take_now(tp)

    async def _take_now(self, tp: TopicPartition) -> None:
        consumer = self._consumer
        assert consumer is not None
        started = time.monotonic()
        folder = await self._restore(tp.partition)
        try:
            committed = await consumer.committed(tp)
            start = _replay_start(folder, committed)
            end = (await self.log.end_offsets([tp]))[tp]
        except BaseException:
            await _close_store(folder)  # its files are the next try's
            raise
        if tp not in consumer.assignment():
            await _close_store(folder)
            return  # revoked while it was restored
        consumer.seek(tp, start)
        self._seeks[tp.partition] = self._seeks.get(tp.partition, 0) + 1
        folder.begin(start)
        self.folders[tp.partition] = folder
        if start < end:
            self.catching_up[tp.partition] = end
        self._unrestored.discard(tp)
        consumer.resume([tp])
        self.oa_gauges.changed(tp.partition, folder.states)  # restored: shown at once
        RESTORE_SECONDS.observe(time.monotonic() - started)
        _log.info(
            "partition assigned",
            partition=tp.partition,
            oas=len(folder.states),
            committed=committed,
            replay_from=start,
            end_offset=end,
            restore_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        async with self._taking:  # a restore under way ends first, then is revoked
            await self._revoke(partitions)

    @contextlib.asynccontextmanager
    async def admitting(self, partition: int) -> AsyncIterator[None]:
        """Held by an admission from before it checks that it may grant until its record
        is appended: a revocation waits for it, so the next owner, which reads the
        partition to the end it sees when it takes it over, also reads that record."""
        self._admitting[partition] = self._admitting.get(partition, 0) + 1
        try:
            yield
        finally:
            self._admitting[partition] -= 1
            async with self._admissions_done:
                self._admissions_done.notify_all()

    async def _drain(self, partitions: list[int]) -> None:
        def done() -> bool:
            return not any(self._admitting.get(p) for p in partitions)

        try:
            async with self._admissions_done:
                await asyncio.wait_for(
                    self._admissions_done.wait_for(done), self.options.drain_timeout_s
                )
        except TimeoutError:
            _log.warning("admissions still appending at revocation", partitions=partitions)

    async def _revoke(self, partitions: frozenset[TopicPartition]) -> None:
        self._unrestored -= partitions
        mine = [tp.partition for tp in partitions if tp.partition in self.folders]
        if not mine:
            return
        await self._drain(mine)
        try:
            await self.checkpoint()
        except Exception as exc:  # the next owner folds again from the last commit
            _log.warning("checkpoint before revocation failed", error=repr(exc))
        now_ms = int(self.wall().timestamp() * 1000)
        for partition in mine:
            folder = self.folders.pop(partition)
            if self.catching_up.pop(partition, None) is None:
                folder.current_ms = now_ms  # it had everything up to now
            self.copies[partition] = (folder, now_ms)
        for partition in mine:  # another member reports them now
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(str(partition))
                LAST_CHECKPOINT.remove(str(partition))
            self.oa_gauges.forget(partition)
        _log.info("partitions revoked", partitions=mine)

    async def _restore(self, partition: int) -> PartitionFolder:
        topics = self.log.topics
        folder = PartitionFolder(
            topics.events, partition, self.policies, stream_clock=self.stream_clock, wall=self.wall
        )
        tp = TopicPartition(topics.oa_state, partition)
        end = (await self.log.end_offsets([tp]))[tp]
        restorer = Restorer(topics.events, partition)
        offset = 0
        while offset < end:
            records = await self.log.read(tp, offset, RESTORE_BATCH)
            if not records:
                break
            restorer.add(records)
            offset = records[-1].offset + 1
            await asyncio.sleep(0)  # heartbeats and requests run between pieces
        restored = restorer.result()
        mark = restored.mark
        store = await self._open_store(partition, mark)
        try:
            for oa_id in sorted(restored.rebuild):
                await store.drop_oa(oa_id)  # folded again from the start
        except BaseException:
            await store.close()
            raise
        if restored.rebuild:
            _log.warning(
                "snapshots incomplete; rebuilding from the log",
                partition=partition,
                oas=len(restored.rebuild),
            )
        folder.restore(restored.states, mark, store)
        folder.rebuild = restored.rebuild
        return folder

    async def _open_store(self, partition: int, mark: PartitionMark | None) -> IndexStore:
        """The partition's index store as the mark leaves it. Without a mark every OA is
        folded from the start (or has never had an index entry), so the store starts empty."""
        store = self.stores.store(partition)
        try:
            if mark is None:
                await store.open(upto=-1, void=[])
                await store.clear()
            else:
                await store.open(upto=mark.index_upto, void=mark.index_void)
        except BaseException:
            await store.close()
            raise
        return store

    # --- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._consumer is not None
        failures = 0
        while not self._stopping.is_set():
            try:
                while self._closing:
                    await _close_store(self._closing.pop())
                for tp in sorted(self._unrestored & self._consumer.assignment()):
                    await self._take(tp)
                self._unrestored &= self._consumer.assignment()
                records = await self._consumer.fetch(
                    max_records=self.options.fetch_records, timeout_s=0.5
                )
                seeks = dict(self._seeks)  # as the fetch returned (the consumer's own seeks
                # before it are reflected in what it returned)
                async with self._lock:
                    for start in range(0, len(records), FOLD_PIECE):
                        if start:
                            await asyncio.sleep(0)  # requests are answered between pieces
                        self._fold(records[start : start + FOLD_PIECE], seeks)
                if self.catching_up:
                    await self._check_caught_up()
                if self._checkpoint_due():
                    await self.checkpoint()
            except asyncio.CancelledError:
                raise
            except LogError as exc:
                _log.warning("processor waits for the log", error=repr(exc))
                await asyncio.sleep(1.0)
            except Exception:
                # A bug in a restore, a checkpoint or a fetch: nothing folded is committed
                # before its checkpoint succeeds, so going on loses nothing, and stopping
                # would stop every partition of this instance until a restart.
                failures += 1
                PROCESSOR_ERRORS.inc()
                _log.exception("processor loop failed; trying again", failures=failures)
                await asyncio.sleep(min(30.0, 2.0**failures))
            else:
                failures = 0

    async def _check_caught_up(self) -> None:
        """A partition whose records up to its end were deleted (retention) is caught up too."""
        assert self._consumer is not None
        for partition, end in list(self.catching_up.items()):
            tp = TopicPartition(self.log.topics.events, partition)
            position = await self._consumer.position(tp)
            if position is not None and position >= end:
                self.catching_up.pop(partition, None)
                _log.info("partition caught up", partition=partition)

    def _fold(self, records: list[Record], seeks: dict[int, int]) -> None:
        """Fold records fetched when the partitions' seek counts were `seeks`."""
        out = self._output
        for record in records:
            folder = self.folders.get(record.partition)
            if folder is None:
                continue  # revoked meanwhile
            if self._seeks.get(record.partition) != seeks.get(record.partition):
                # Moved (restored again) after this fetch returned: the records may come
                # from before the new position, and folding them could skip some.
                continue
            try:
                folder.handle(record, out)
            except LogError as exc:
                # The store failed a read halfway through a record: what the fold changed
                # is not known, so the partition starts again from its last checkpoint.
                _log.warning("index store read failed", partition=folder.partition, error=repr(exc))
                self._retake(folder)
                continue
            for watch in self.watchers:
                watch(record)
            end = self.catching_up.get(record.partition)
            if end is not None and record.offset + 1 >= end:
                del self.catching_up[record.partition]
                _log.info("partition caught up", partition=record.partition)
        self._since_checkpoint += len(records)
        FOLDED.inc(len(records))
        if records and records[-1].timestamp_ms:
            FOLD_DELAY_SECONDS.observe(max(0.0, time.time() - records[-1].timestamp_ms / 1000))

    def _checkpoint_due(self) -> bool:
        if self._since_checkpoint >= self.options.checkpoint_records:
            return True
        return (
            self._since_checkpoint > 0
            and time.monotonic() - self._last_checkpoint >= self.options.checkpoint_interval_s
        )

    async def checkpoint(self) -> None:
        """Make everything folded so far durable, then commit the offsets.

        In this order, each step only once the one before is durable: decisions and
        dead letters; the snapshots of the OAs that changed; each partition's mark;
        the offsets. A crash in between leaves the offsets where they were, and the
        records after them are folded again (their decisions come again, same ids).
        """
        assert self._consumer is not None
        started = time.monotonic()
        async with self._lock:
            for folder in list(self.folders.values()):
                if folder.store is not None and folder.store.broken:
                    self._retake(folder)
            output, self._output = self._output, Output()
            topics = self.log.topics
            written: list[tuple[PartitionFolder, set[str], tuple[int, VoidRanges]]] = []
            # The folders whose dirty OAs this checkpoint took: given back if it fails.
            swapped: list[tuple[PartitionFolder, set[str]]] = []
            try:
                await self._all(
                    [(topics.decisions, key, value, None) for key, value in output.decisions]
                    + [(topics.dlq, key, value, None) for key, value in output.dead_letters]
                )
                chunks: list[tuple[str, bytes | None, bytes, int | None]] = []
                marks: list[tuple[str, bytes | None, bytes, int | None]] = []
                commits: dict[TopicPartition, int] = {}
                for partition, folder in list(self.folders.items()):
                    if folder.position < 0:
                        continue
                    dirty, folder.dirty = folder.dirty, set()
                    swapped.append((folder, dirty))
                    cores: list[tuple[str, int, bytes]] = []
                    taken: list[tuple[IndexChanges, int]] = []
                    async with self._capturing:
                        for oa_id in dirty:
                            # Each OA's core and index changes are taken at one moment. One
                            # OA at a time: requests are answered between them. Folding
                            # waits (the lock), and so does a promotion admission applied
                            # ahead until the recipients taken are encoded; one applied
                            # before is in this checkpoint, one after in the next.
                            state = folder.states[oa_id]
                            ttl_ms = self.policies.dedup_ttl_ms(oa_id)
                            taken.append((state.take_changes(), ttl_ms))
                            cores.append((oa_id, state.position, exact(state.core_json())))
                            await asyncio.sleep(0)
                        # Only recipients are changed by an admission applied ahead: the
                        # rest is encoded once admissions may go on (folding still waits).
                        mutable, settled = _split(taken, "recipients")
                        encoded = await _encode_off_the_loop(folder, mutable)
                    encoded.update(await _encode_off_the_loop(folder, settled))
                    changes = {**folder.unwritten, **encoded}
                    changes.update(core_entry(oa_id, core) for oa_id, _, core in cores)
                    # Until a mark includes them, they are written again by each checkpoint.
                    folder.unwritten = changes
                    index_upto, void = await self._write_indexes(folder, changes)
                    written.append((folder, dirty, (index_upto, void)))
                    for oa_id, position, core in cores:
                        for key, value in encode_state(
                            core, oa_id, position, topics.events, partition, index_upto
                        ):
                            chunks.append((topics.oa_state, key, value, partition))
                    mark = encode_mark(
                        topics.events,
                        partition,
                        folder.position,
                        folder.clock_ms,
                        folder.clock_history,
                        # What the checkpoint holds is current up to now, unless the
                        # partition is still catching up: then up to its newest record.
                        folder.current_ms
                        if partition in self.catching_up
                        else int(self.wall().timestamp() * 1000),
                        index_upto,
                        void,
                    )
                    marks.append((topics.oa_state, mark_key(partition), mark, partition))
                    commits[TopicPartition(topics.events, partition)] = folder.position + 1
                await self._all(chunks)
                await self._append_marks(written, marks)
                if commits:
                    await self._consumer.commit(commits)
            except BaseException:
                # Nothing is committed: keep the output and the dirty marks, so that the
                # next checkpoint writes them again (a restart folds the records again).
                self._output.decisions[:0] = output.decisions
                self._output.dead_letters[:0] = output.dead_letters
                for folder, dirty in swapped:
                    folder.dirty |= dirty
                raise
            for folder, dirty, _ in written:
                folder.clock_history = next_clocks(
                    folder.clock_history, folder.position, folder.clock_ms
                )
                if folder.store is not None:
                    for state in folder.states.values():
                        state.release()  # what the store holds now leaves memory
                    folder.in_store |= dirty
                    folder.evict_idle(self.idle_evict_s)
                LAST_CHECKPOINT.labels(str(folder.partition)).set(time.time())
                self.oa_gauges.changed(folder.partition, dirty)
            for folder, _, _ in written:
                await self._expire(folder)
            DECISIONS.inc(len(output.decisions))
            DEAD_LETTERS.inc(len(output.dead_letters))
            self._since_checkpoint = 0
            self._last_checkpoint = time.monotonic()
            self._checkpoints += 1
            if self._checkpoints % self.options.compact_every == 0:
                await self._compact()
            with contextlib.suppress(LogError):  # a metric is not worth failing a checkpoint
                await self._measure_lag()
        CHECKPOINT_SECONDS.observe(time.monotonic() - started)

    async def _write_indexes(
        self, folder: PartitionFolder, changes: dict[bytes, tuple[bytes | None, int]]
    ) -> tuple[int, VoidRanges]:
        """Write the index changes; the store's highest write id and void ranges, for the
        snapshots and the mark."""
        store = folder.store
        if store is None:
            raise LogUnavailable(f"partition {folder.partition} has no index store")
        upto, void = folder.index_mark
        index_upto = await store.put(changes, upto=upto, void=void)
        return index_upto, list(store.void)

    async def _append_marks(
        self,
        written: list[tuple[PartitionFolder, set[str], tuple[int, VoidRanges]]],
        marks: list[tuple[str, bytes | None, bytes, int | None]],
    ) -> None:
        """Append the marks (one per folder written, in order). A durable mark is what a
        restore of its partition reads, also when another one failed: what its store
        writes next is relative to it, and its index changes need not be written again."""
        results = await self._each(marks)
        for (folder, _, index_mark), result in zip(written, results, strict=True):
            if not isinstance(result, BaseException):
                folder.index_mark = index_mark
                folder.unwritten = {}
        _raise_first(results)

    def _retake(self, folder: PartitionFolder) -> None:
        """Let the partition go and take it again from its last checkpoint (its snapshots,
        and its store as the mark leaves it), as a new owner would: its store failed, so
        what this folder holds beyond the checkpoint cannot be trusted or written."""
        partition = folder.partition
        if self.folders.get(partition) is folder:
            del self.folders[partition]
        self.catching_up.pop(partition, None)
        self._closing.append(folder)
        tp = TopicPartition(self.log.topics.events, partition)
        if self._consumer is not None and tp in self._consumer.assignment():
            self._consumer.pause([tp])
            self._unrestored.add(tp)
        _log.warning("partition taken again from its last checkpoint", partition=partition)

    async def _expire(self, folder: PartitionFolder) -> None:
        """Drop from the store what every OA of the partition reads as absent by now (see
        `OAState.bound`); the day only moves forward with the stream clock."""
        day = folder.store_day()
        if folder.store is None or day <= folder.expired_day:
            return
        try:
            dropped = await folder.store.expire(day)
        except LogError as exc:  # kept until the next checkpoint's try; reads hide them
            _log.warning("index expiry failed", partition=folder.partition, error=repr(exc))
            return
        folder.expired_day = day
        _log.info("index entries expired", partition=folder.partition, entries=dropped, day=day)

    async def _all(self, records: list[tuple[str, bytes | None, bytes, int | None]]) -> None:
        """Append all, concurrently; raise the first failure once every append has ended."""
        _raise_first(await self._each(records))

    async def _each(
        self, records: list[tuple[str, bytes | None, bytes, int | None]]
    ) -> list[object]:
        """Append all, concurrently: each one's position, or its failure."""
        return await asyncio.gather(
            *(
                self.log.append(topic, key, value, partition=partition)
                for topic, key, value, partition in records
            ),
            return_exceptions=True,
        )

    async def _measure_lag(self) -> None:
        events = [TopicPartition(self.log.topics.events, p) for p in self.folders]
        for tp, end in (await self.log.end_offsets(events)).items():
            folder = self.folders.get(tp.partition)
            if folder is not None:
                CONSUMER_LAG.labels(str(tp.partition)).set(max(0, end - folder.position - 1))

    async def _compact(self) -> None:
        """Every snapshot written so far is complete and committed: drop the superseded."""
        tps = [TopicPartition(self.log.topics.oa_state, p) for p in self.folders]
        for tp, end in (await self.log.end_offsets(tps)).items():
            await self.log.compact(tp, end)


def _raise_first(results: list[object]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result if isinstance(result, LogError) else LogError(repr(result))


def _split(
    taken: list[tuple[IndexChanges, int]], name: str
) -> tuple[list[tuple[IndexChanges, int]], list[tuple[IndexChanges, int]]]:
    """The changes of index `name`, and the others."""
    chosen: list[tuple[IndexChanges, int]] = []
    rest: list[tuple[IndexChanges, int]] = []
    for (oa_id, indexes), ttl_ms in taken:
        chosen.append(((oa_id, [(n, v) for n, v in indexes if n == name]), ttl_ms))
        rest.append(((oa_id, [(n, v) for n, v in indexes if n != name]), ttl_ms))
    return chosen, rest


async def _encode_off_the_loop(
    folder: PartitionFolder, taken: list[tuple[IndexChanges, int]]
) -> dict[bytes, tuple[bytes | None, int]]:
    """Encode index changes taken from the folder's states in a thread (a busy OA has
    tens of thousands between checkpoints); if that fails, they stay to be taken again."""

    def encode() -> dict[bytes, tuple[bytes | None, int]]:
        out: dict[bytes, tuple[bytes | None, int]] = {}
        for changes, ttl_ms in taken:
            out.update(encode_changes(changes, ttl_ms))
        return out

    try:
        return await asyncio.to_thread(encode)
    except BaseException:
        for (oa_id, indexes), _ in taken:
            state = folder.states.get(oa_id)
            if state is not None:
                for name, values in indexes:
                    getattr(state, name).touched |= values.keys()
        raise


async def _close_store(folder: PartitionFolder) -> None:
    if folder.store is not None:
        store, folder.store = folder.store, None
        await store.close()


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Readiness turns 503 (`processor_stopped`); the log line says why.
        _log.error("the processor stopped on an error", error=repr(task.exception()))


def _replay_start(folder: PartitionFolder, committed: int | None) -> int:
    """Where reading resumes: after what the snapshots include and the group committed;
    from the start when an OA's snapshot is lost or incomplete, or every snapshot is
    (offsets committed but no mark), so that the log rebuilds them."""
    if folder.rebuild or (committed is not None and folder.included < 0 and committed > 0):
        return 0
    start = folder.included + 1
    if committed is not None:
        start = min(start, committed)
    return start
