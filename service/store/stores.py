"""Index stores: one per partition of `zns.events`, holding the OAs' large indexes.

A write batch is durable when `write` returns, which reports `upto`, the
highest write id the store holds; the caller puts it in its checkpoint's mark.
`open` is given the mark's `upto` and void ranges: ids the store holds beyond
`upto` came from a checkpoint that never completed, so they join the void
ranges, and a read of such an entry resolves to the value from before it
(`service.store.versions`). A failed write leaves the store unusable until it
is opened again (from the last mark), because what it holds is then unknown.

Work on the local entries runs on the store's own thread, except `get`: a point
read by key, a few microseconds, done on the loop so a fold's cache miss does
not wait for a thread hop. Bulk work goes to the thread in pieces, with the
loop let through between them. The embedded backend writes its rows on the log's
own writer thread instead, in small transactions between the log's appends.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from service.log.base import EventLog, LogError, LogUnavailable, TopicPartition
from service.log.embedded import EmbeddedLog
from service.log.kafka import KafkaLog, StreamedRecord
from service.logsetup import get_logger
from service.store.cache import ValueCache
from service.store.changelog import ChangelogWriter, encode_change
from service.store.local import LocalEntries, RocksEntries, Row, SqliteEntries, read_resolved
from service.store.versions import VoidRanges, add_void, resolve

T = TypeVar("T")

Changes = Mapping[bytes, tuple[bytes | None, bytes | None, int]]
"""key -> (before, after, expiry day) of a write batch."""

PIECE = 5_000
"""Entries per piece of bulk work on the store's thread (rebuild, expiry)."""
INDEX_PIECE = 50_000
"""Entries given their by-day keys per call on the store's thread, after a rebuild."""
LOOP_PIECE = 1_000
"""Entries handled on the loop (cache updates) between yields to it."""
WRITE_PIECE = 200
"""Rows per transaction when an embedded store writes on the log's writer thread (10 to 20
ms each in a table of 10^5 rows or more): what an append may wait for."""

_log = get_logger("store")
_scopes = itertools.count(1)


class IndexStoreError(LogError):
    """The store cannot serve: the mark includes writes it no longer has."""

    retriable = False


class IndexStore(abc.ABC):
    """The entries of one partition: opaque keys, values and expiry days (day ordinals)."""

    def __init__(self, topic: str, partition: int, cache: ValueCache) -> None:
        self.topic = topic
        """The changelog topic (on the embedded backend, only the name of the store)."""
        self.partition = partition
        self.cache = cache
        self.upto = -1
        """The highest write id the store holds, every one of them durable."""
        self.void: VoidRanges = []
        self.records_read = 0
        """Changelog records read by the last `open`."""
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"index-store-{partition}")
        self._entries: LocalEntries | None = None
        self._scope = 0
        self._state = "new"
        self._lock = asyncio.Lock()
        self._changing_keys: Collection[bytes] = ()
        """The keys of the write or deletion under way (one at a time, under `_lock`)."""
        self._readers: dict[int, list[Collection[bytes]]] = {}
        """Per `get_many` reading or caching: the keys of the writes and deletions under way
        since it began. A value it read of such a key may be older than the one cached by
        the write, so it is not cached; the others are current, whatever else was written."""
        self._reads = itertools.count()

    # -- life cycle -------------------------------------------------------------------

    async def open(self, *, upto: int, void: VoidRanges) -> VoidRanges:
        """Restore the store for a mark (`upto` = -1 and no void ranges: no mark yet).

        Returns the void ranges for the caller's next mark.
        """
        if self._state != "new":
            raise IndexStoreError(f"an index store opens once; it is {self._state}")
        self._state = "opening"
        self._entries = await self._on_thread(self._local)
        written = await self._restore(self._entries)
        if upto > written:
            raise IndexStoreError(
                f"the mark of partition {self.partition} includes index writes up to {upto}, "
                f"the store holds only up to {written}: its state cannot be restored from it"
            )
        self.void = add_void(void, upto=upto, written=written)
        self.upto = max(upto, written)
        self._scope = next(_scopes)
        self._state = "open"
        return list(self.void)

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        if self._entries is not None:
            await self._on_thread(self._entries.close)
            self._entries = None
        self._thread.shutdown(wait=True)

    @abc.abstractmethod
    def _local(self) -> LocalEntries:
        """Open the local entries (on the store's thread)."""

    @abc.abstractmethod
    async def _restore(self, entries: LocalEntries) -> int:
        """Make the local entries current; the highest write id they or the changelog hold."""

    @abc.abstractmethod
    async def _put(self, rows: list[tuple[bytes, bytes | None, bytes | None, int]]) -> int:
        """Make (key, before, after, expiry day) rows durable; the highest write id given."""

    @abc.abstractmethod
    async def _delete(self, keys: list[bytes]) -> None:
        """Delete the entries of `keys` durably."""

    # -- reading ----------------------------------------------------------------------

    @property
    def broken(self) -> bool:
        """A write failed: reads go on (the local entries are as before it), writes wait
        until the store is opened again from the last mark."""
        return self._state == "broken"

    def get(self, key: bytes) -> bytes | None:
        """The resolved value of `key`, or None; from the cache, else one point read."""
        entries = self._readable()
        hit, value = self.cache.get(self._scope, key)
        if hit:
            return value
        row = entries.read_row(key)
        value = None if row is None else resolve(row[0], row[1], row[2], self.upto, self.void)
        self.cache.put(self._scope, key, value)
        return value

    async def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes | None]:
        """The resolved values of `keys`; those not cached are read on the store's thread."""
        entries = self._readable()
        out: dict[bytes, bytes | None] = {}
        missing: list[bytes] = []
        for key in keys:
            hit, value = self.cache.get(self._scope, key)
            if hit:
                out[key] = value
            else:
                missing.append(key)
        if missing:
            changed = [self._changing_keys]
            reader = next(self._reads)
            self._readers[reader] = changed
            try:
                read = await self._on_thread(
                    partial(read_resolved, entries, missing, self.upto, list(self.void))
                )
                await self._cache_all(read.items(), unless_in=changed)
            finally:
                del self._readers[reader]
            out.update(read)
        return out

    async def entries_of(self, oa_id: str) -> dict[bytes, bytes]:
        """Every entry of an OA the store holds, as resolved, all at once on the store's
        thread: for inspecting an OA and for tests, not for serving."""
        entries = self._readable()
        prefix = oa_id.encode() + b"\x00"

        def read() -> dict[bytes, bytes]:
            keys = entries.keys_with_prefix(prefix, 1 << 62)
            found = read_resolved(entries, keys, self.upto, list(self.void))
            return {key: value for key, value in found.items() if value is not None}

        return await self._on_thread(read)

    # -- writing ----------------------------------------------------------------------

    async def write(self, changes: Changes) -> int:
        """Store a batch of changes durably; `upto` for the caller's mark."""
        self._live()
        if not changes:
            return self.upto
        async with self._lock:
            await self._write_locked(changes)
        return self.upto

    async def put(
        self, values: Mapping[bytes, tuple[bytes | None, int]], *, upto: int, void: VoidRanges
    ) -> int:
        """Store the newest values (None: absent) and expiry days of entries durably; an
        entry whose value is what the store holds already is not written. `upto` and
        `void` are the caller's last durable mark: each entry's `before` is its value as
        that mark includes it, so that however many writes no mark ever included come
        before a crash, a restore from that mark reads what the mark saw. Returns the
        store's `upto` for the caller's next mark."""
        entries = self._live()
        async with self._lock:
            current_upto, current_void = self.upto, list(self.void)

            def choose() -> Changes:
                changes: dict[bytes, tuple[bytes | None, bytes | None, int]] = {}
                rows = entries.read_rows(list(values))
                for key, (after, day) in values.items():
                    row = rows.get(key)
                    if row is None:
                        if after is not None:
                            changes[key] = (None, after, day)
                        continue
                    if resolve(*row, current_upto, current_void) != after:
                        changes[key] = (resolve(*row, upto, void), after, day)
                return changes

            await self._write_locked(await self._on_thread(choose))
        return self.upto

    async def _write_locked(self, changes: Changes) -> None:
        if not changes:
            return
        rows = [(key, before, after, day) for key, (before, after, day) in changes.items()]
        with self._changing(changes.keys()):
            upto = await self._put_or_break(rows)
            self.upto = max(self.upto, upto)
            # Under the lock: a later write's values must not be cached over by this one's.
            await self._cache_all((key, after) for key, (_, after, _) in changes.items())

    async def _put_or_break(self, rows: list[tuple[bytes, bytes | None, bytes | None, int]]) -> int:
        try:
            return await self._put(rows)
        except Exception as exc:
            self._state = "broken"
            raise LogUnavailable(f"index store {self.partition} could not write: {exc!r}") from exc

    async def expire(self, before_day: int) -> int:
        """Delete every entry whose expiry day is before `before_day`; how many."""
        entries = self._live()
        return await self._delete_chosen(partial(entries.keys_expiring, before_day, PIECE))

    async def drop_oa(self, oa_id: str) -> int:
        """Delete every entry of an OA (keys `<oa_id>\\x00...`); how many."""
        entries = self._live()
        prefix = oa_id.encode() + b"\x00"
        return await self._delete_chosen(partial(entries.keys_with_prefix, prefix, PIECE))

    async def clear(self) -> int:
        """Delete every entry; how many."""
        return await self.expire(2**31 - 1)  # every expiry day is before the last one

    async def _delete_chosen(self, choose: Callable[[], list[bytes]]) -> int:
        deleted = 0
        async with self._lock:
            while keys := await self._on_thread(choose):
                with self._changing(set(keys)):
                    try:
                        await self._delete(keys)
                    except Exception as exc:
                        self._state = "broken"
                        raise LogUnavailable(
                            f"index store {self.partition} could not delete: {exc!r}"
                        ) from exc
                    for key in keys:
                        self.cache.pop(self._scope, key)
                    deleted += len(keys)
                    await asyncio.sleep(0)
        return deleted

    # -- helpers ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _changing(self, keys: Collection[bytes]) -> Iterator[None]:
        """A write or deletion of `keys` is under way: reads running now do not cache them."""
        self._changing_keys = keys
        for changed in self._readers.values():
            changed.append(keys)
        try:
            yield
        finally:
            self._changing_keys = ()

    async def _cache_all(
        self,
        values: Iterable[tuple[bytes, bytes | None]],
        unless_in: list[Collection[bytes]] | None = None,
    ) -> None:
        """Cache `values`, in pieces; not those whose keys are in one of `unless_in` when
        they come (a list a change under way may add to meanwhile)."""
        for index, (key, value) in enumerate(values):
            if index and index % LOOP_PIECE == 0:
                await asyncio.sleep(0)
            if unless_in is None or not any(key in keys for keys in unless_in):
                self.cache.put(self._scope, key, value)

    def _live(self) -> LocalEntries:
        if self._state != "open" or self._entries is None:
            raise LogUnavailable(f"index store {self.partition} is {self._state}; open it again")
        return self._entries

    def _readable(self) -> LocalEntries:
        if self._state not in ("open", "broken") or self._entries is None:
            raise LogUnavailable(f"index store {self.partition} is {self._state}; open it again")
        return self._entries

    def _opened(self) -> LocalEntries:
        """The local entries, also while opening."""
        if self._entries is None:
            raise LogUnavailable(f"index store {self.partition} is not open")
        return self._entries

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)


class EmbeddedIndexStore(IndexStore):
    """Tables in the embedded log's SQLite file; write ids are a counter kept in the file."""

    def __init__(self, log: EmbeddedLog, partition: int, cache: ValueCache) -> None:
        super().__init__(log.topics.oa_index, partition, cache)
        self.path = log.path
        self._log = log
        self._next_id = 0

    def _local(self) -> LocalEntries:
        # FULL: these tables have no changelog; an acknowledged write must survive power loss.
        return SqliteEntries(self.path, self.topic, self.partition, "FULL")

    async def _restore(self, entries: LocalEntries) -> int:
        found = await self._on_thread(entries.find)
        if found is None:
            await self._on_thread(partial(entries.reset, "embedded"))
        else:
            self._next_id = found[1]
        return self._next_id - 1

    async def _put(self, rows: list[tuple[bytes, bytes | None, bytes | None, int]]) -> int:
        # In pieces on the log's writer thread, each with its own next id: an append waits
        # for one piece at most. A crash between pieces leaves some of the batch written
        # beyond the mark, which a restore treats as any write no mark included.
        for start in range(0, len(rows), WRITE_PIECE):
            first = self._next_id
            stored = [
                (key, first + i, before, after, day)
                for i, (key, before, after, day) in enumerate(rows[start : start + WRITE_PIECE])
            ]
            nxt = first + len(stored)
            await self._log.on_writer(partial(self._opened().put_rows, stored, nxt))
            self._next_id = nxt
        return self._next_id - 1

    async def _delete(self, keys: list[bytes]) -> None:
        entries = self._opened()
        for start in range(0, len(keys), WRITE_PIECE):
            piece = keys[start : start + WRITE_PIECE]
            await self._log.on_writer(partial(entries.delete_keys, piece, None))


class KafkaIndexStore(IndexStore):
    """A local RocksDB database, disposable, made from the compacted changelog `zns.oa-index`.

    Every batch goes to the changelog first, then to the local database with the
    offset after it (`next_id`); write ids are changelog offsets. On open the
    database reads only the changelog's tail; one missing, made from another
    cluster or topic, or ahead of the changelog's end is rebuilt from the
    changelog, never trusted. The changelog is read as one stream (`KafkaLog.stream`),
    and a rebuild writes the entries alone, their by-day keys once at the end
    (`RocksEntries.rebuild`); one cut short goes on the same way when opened again.
    """

    def __init__(
        self,
        log: KafkaLog,
        partition: int,
        cache: ValueCache,
        changelog: ChangelogWriter,
        state_dir: Path,
    ) -> None:
        super().__init__(log.topics.oa_index, partition, cache)
        self.path = state_dir / log.topics.prefix / str(partition)
        self._log = log
        self._changelog = changelog
        self._next_offset = 0

    @property
    def _source(self) -> str:
        return f"kafka:{self._changelog.cluster_id}:{self.topic}"

    def _local(self) -> LocalEntries:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return RocksEntries(self.path)

    async def _restore(self, entries: LocalEntries) -> int:
        rocks = entries
        if not isinstance(rocks, RocksEntries):
            raise TypeError(f"a Kafka index store keeps its entries in RocksDB, not {rocks!r}")
        tp = TopicPartition(self.topic, self.partition)
        end = (await self._log.end_offsets([tp]))[tp]
        found = await self._on_thread(entries.find)
        if found is not None and found[0] == self._source and found[1] <= end:
            self._next_offset = found[1]
        else:
            if found is None:
                reason = "none"
            elif found[0] != self._source:
                reason = "another source"
            else:
                reason = f"ahead of the changelog ({found[1]} > {end})"
            _log.info(
                "index store rebuilt from its changelog",
                partition=self.partition,
                local=reason,
                records=end,
            )
            await self._on_thread(partial(rocks.rebuild, self._source))
            self._next_offset = 0
        await self._read_changelog(entries, tp, end)
        while not await self._on_thread(partial(rocks.index_days, INDEX_PIECE)):
            pass  # between pieces the loop runs
        return end - 1

    async def _read_changelog(self, entries: LocalEntries, tp: TopicPartition, end: int) -> None:
        """Apply the changelog from `_next_offset` up to `end`: one stream of pieces, each
        applied on the store's thread while the loop reads the next one."""
        self.records_read = 0

        def apply(records: list[StreamedRecord], nxt: int) -> int:
            entries.apply_changelog(records, nxt)
            return nxt

        applying: asyncio.Future[int] | None = None
        stream = self._log.stream(tp, self._next_offset, end, PIECE)
        async with contextlib.aclosing(stream) as pieces:
            try:
                async for records in pieces:
                    if applying is not None:
                        self._next_offset = await applying
                    applying = asyncio.ensure_future(
                        self._on_thread(partial(apply, records, records[-1][0] + 1))
                    )
                    self.records_read += len(records)
            finally:
                if applying is not None:
                    self._next_offset = await applying

    async def _put(self, rows: list[tuple[bytes, bytes | None, bytes | None, int]]) -> int:
        records = await self._on_thread(
            lambda: [(key, encode_change(before, after, day)) for key, before, after, day in rows]
        )
        offsets = await self._changelog.send(self.topic, self.partition, records)
        stored: list[Row] = [
            (key, offset, before, after, day)
            for offset, (key, before, after, day) in zip(offsets, rows, strict=True)
        ]
        nxt = max(offsets) + 1
        await self._on_thread(partial(self._opened().put_rows, stored, nxt))
        self._next_offset = nxt
        return nxt - 1

    async def _delete(self, keys: list[bytes]) -> None:
        offsets = await self._changelog.send(self.topic, self.partition, [(k, None) for k in keys])
        nxt = max(offsets) + 1
        await self._on_thread(partial(self._opened().delete_keys, keys, nxt))
        self._next_offset = nxt
        self.upto = max(self.upto, nxt - 1)


class IndexStores:
    """The index stores of one process: their shared cache, on Kafka the changelog's producer."""

    def __init__(self, log: EventLog, *, state_dir: Path, cache_mb: int) -> None:
        self.log = log
        self.state_dir = state_dir
        self.cache = ValueCache(cache_mb * 1024 * 1024)
        self._changelog: ChangelogWriter | None = None

    async def start(self) -> None:
        if isinstance(self.log, KafkaLog):
            changelog = ChangelogWriter(self.log.bootstrap_servers)
            await changelog.start()
            self._changelog = changelog

    async def close(self) -> None:
        if self._changelog is not None:
            await self._changelog.close()
            self._changelog = None

    def store(self, partition: int) -> IndexStore:
        """A new store of `partition`, to be opened with the partition's mark."""
        if isinstance(self.log, EmbeddedLog):
            return EmbeddedIndexStore(self.log, partition, self.cache)
        if isinstance(self.log, KafkaLog):
            if self._changelog is None:
                raise LogUnavailable("the index stores are not started")
            return KafkaIndexStore(self.log, partition, self.cache, self._changelog, self.state_dir)
        raise TypeError(f"no index store for a {self.log.backend} log")
