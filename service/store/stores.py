"""Index stores: one per partition of `zns.events`, holding the OAs' large indexes.

A write batch is durable when `write` returns, which reports `upto`, the
highest write id the store holds; the caller puts it in its checkpoint's mark.
`open` is given the mark's `upto` and void ranges: ids the store holds beyond
`upto` came from a checkpoint that never completed, so they join the void
ranges, and a read of such an entry resolves to the value from before it
(`service.store.versions`). A failed write leaves the store unusable until it
is opened again (from the last mark), because what it holds is then unknown.

SQLite work runs on the store's own thread, except `get`: a point read by
primary key on a second connection (WAL), a few microseconds, done on the loop
so a fold's cache miss does not wait for a thread hop. Nothing here may hold the
loop for long: bulk work goes to the thread in pieces.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from service.log.base import EventLog, LogError, LogUnavailable, TopicPartition
from service.log.embedded import EmbeddedLog
from service.log.kafka import KafkaLog
from service.logsetup import get_logger
from service.store import tables
from service.store.cache import ValueCache
from service.store.changelog import ChangelogWriter, encode_change
from service.store.versions import VoidRanges, add_void, resolve

T = TypeVar("T")

Changes = Mapping[bytes, tuple[bytes | None, bytes | None, int]]
"""key -> (before, after, expiry day) of a write batch."""

PIECE = 5_000
"""Entries per piece of bulk work (rebuild, expiry, cache updates) between yields to the loop."""

_log = get_logger("store")
_scopes = itertools.count(1)


class IndexStoreError(LogError):
    """The store cannot serve: the mark includes writes it no longer has."""

    retriable = False


class IndexStore(abc.ABC):
    """The entries of one partition: opaque keys, values and expiry days (day ordinals)."""

    def __init__(
        self, path: Path, topic: str, partition: int, cache: ValueCache, synchronous: str
    ) -> None:
        self.path = path
        self.topic = topic
        """The changelog topic (on the embedded backend, only a name for the tables)."""
        self.partition = partition
        self.cache = cache
        self.upto = -1
        """The highest write id the store holds, every one of them durable."""
        self.void: VoidRanges = []
        self.records_read = 0
        """Changelog records read by the last `open`."""
        self._synchronous = synchronous
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"index-store-{partition}")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._store_id = 0
        self._scope = 0
        self._state = "new"
        self._lock = asyncio.Lock()

    # -- life cycle -------------------------------------------------------------------

    async def open(self, *, upto: int, void: VoidRanges) -> VoidRanges:
        """Restore the store for a mark (`upto` = -1 and no void ranges: no mark yet).

        Returns the void ranges for the caller's next mark.
        """
        if self._state != "new":
            raise IndexStoreError(f"an index store opens once; it is {self._state}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._on_thread(lambda: tables.connect(self.path, self._synchronous))
        self._reader = await self._on_thread(lambda: tables.connect(self.path, self._synchronous))
        written = await self._restore()
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
        for conn in (self._writer, self._reader):
            if conn is not None:
                await self._on_thread(conn.close)
        self._writer = self._reader = None
        self._thread.shutdown(wait=True)

    @abc.abstractmethod
    async def _restore(self) -> int:
        """Make the local tables current; the highest write id the store or its changelog holds."""

    @abc.abstractmethod
    async def _put(self, rows: list[tuple[bytes, bytes | None, bytes | None, int]]) -> int:
        """Make (key, before, after, expiry day) rows durable; the highest write id given."""

    @abc.abstractmethod
    async def _delete(self, keys: list[bytes]) -> None:
        """Delete the entries of `keys` durably."""

    # -- reading ----------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The resolved value of `key`, or None; from the cache, else one point read."""
        hit, value = self.cache.get(self._scope, key)
        if hit:
            return value
        row = tables.read_row(self._live(self._reader), self._store_id, key)
        value = None if row is None else resolve(row[0], row[1], row[2], self.upto, self.void)
        self.cache.put(self._scope, key, value)
        return value

    async def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes | None]:
        """The resolved values of `keys`; those not cached are read on the store's thread."""
        self._live(self._writer)
        out: dict[bytes, bytes | None] = {}
        missing: list[bytes] = []
        for key in keys:
            hit, value = self.cache.get(self._scope, key)
            if hit:
                out[key] = value
            else:
                missing.append(key)
        if missing:
            store, upto, void = self._store_id, self.upto, list(self.void)
            conn = self._live(self._writer)
            read = await self._on_thread(
                lambda: tables.read_resolved(conn, store, missing, upto, void)
            )
            await self._cache_all(read.items())
            out.update(read)
        return out

    # -- writing ----------------------------------------------------------------------

    async def write(self, changes: Changes) -> int:
        """Store a batch of changes durably; `upto` for the caller's mark."""
        self._live(self._writer)
        if not changes:
            return self.upto
        rows = [(key, before, after, day) for key, (before, after, day) in changes.items()]
        async with self._lock:
            try:
                upto = await self._put(rows)
            except Exception as exc:
                self._state = "broken"
                raise LogUnavailable(
                    f"index store {self.partition} could not write: {exc!r}"
                ) from exc
            self.upto = max(self.upto, upto)
        await self._cache_all((key, after) for key, (_, after, _) in changes.items())
        return self.upto

    async def expire(self, before_day: int) -> int:
        """Delete every entry whose expiry day is before `before_day`; how many."""
        conn = self._live(self._writer)
        store = self._store_id
        return await self._delete_chosen(
            lambda: tables.keys_expiring(conn, store, before_day, PIECE)
        )

    async def drop_oa(self, oa_id: str) -> int:
        """Delete every entry of an OA (keys `<oa_id>\\x00...`); how many."""
        conn = self._live(self._writer)
        store, prefix = self._store_id, oa_id.encode() + b"\x00"
        return await self._delete_chosen(
            lambda: tables.keys_with_prefix(conn, store, prefix, PIECE)
        )

    async def _delete_chosen(self, choose: Callable[[], list[bytes]]) -> int:
        deleted = 0
        async with self._lock:
            while keys := await self._on_thread(choose):
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

    async def _cache_all(self, values: Iterable[tuple[bytes, bytes | None]]) -> None:
        for index, (key, value) in enumerate(values, 1):
            self.cache.put(self._scope, key, value)
            if index % PIECE == 0:
                await asyncio.sleep(0)

    def _live(self, conn: sqlite3.Connection | None) -> sqlite3.Connection:
        if self._state != "open" or conn is None:
            raise LogUnavailable(f"index store {self.partition} is {self._state}; open it again")
        return conn

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _writing(self) -> sqlite3.Connection:
        if self._writer is None:
            raise LogUnavailable(f"index store {self.partition} is not open")
        return self._writer


class EmbeddedIndexStore(IndexStore):
    """Tables in the embedded log's SQLite file; write ids are a counter kept in the file."""

    def __init__(self, log: EmbeddedLog, partition: int, cache: ValueCache) -> None:
        # FULL: these tables have no changelog; an acknowledged write must survive power loss.
        super().__init__(log.path, log.topics.oa_index, partition, cache, "FULL")
        self._next_id = 0

    async def _restore(self) -> int:
        conn = self._writing()
        found = await self._on_thread(lambda: tables.find_store(conn, self.topic, self.partition))
        if found is None:
            self._store_id = await self._on_thread(
                lambda: tables.reset_store(conn, self.topic, self.partition, "embedded")
            )
        else:
            self._store_id, _, self._next_id = found
        return self._next_id - 1

    async def _put(self, rows: list[tuple[bytes, bytes | None, bytes | None, int]]) -> int:
        first = self._next_id
        stored = [
            (key, first + i, before, after, day) for i, (key, before, after, day) in enumerate(rows)
        ]
        nxt = first + len(rows)
        conn, store = self._writing(), self._store_id
        await self._on_thread(lambda: tables.put_rows(conn, store, stored, nxt))
        self._next_id = nxt
        return nxt - 1

    async def _delete(self, keys: list[bytes]) -> None:
        conn, store = self._writing(), self._store_id
        await self._on_thread(lambda: tables.delete_keys(conn, store, keys, None))


class KafkaIndexStore(IndexStore):
    """A local SQLite file, disposable, made from the compacted changelog `zns.oa-index`.

    Every batch goes to the changelog first, then to the local file with the
    offset after it (`next_id`); write ids are changelog offsets. On open the
    file reads only the changelog's tail; a file missing, made from another
    cluster or topic, or ahead of the changelog's end is rebuilt from the
    changelog, never trusted.
    """

    def __init__(
        self,
        log: KafkaLog,
        partition: int,
        cache: ValueCache,
        changelog: ChangelogWriter,
        state_dir: Path,
    ) -> None:
        path = state_dir / log.topics.prefix / str(partition) / "index.db"
        # NORMAL: a commit lost to a power cut is read again from the changelog.
        super().__init__(path, log.topics.oa_index, partition, cache, "NORMAL")
        self._log = log
        self._changelog = changelog
        self._next_offset = 0

    @property
    def _source(self) -> str:
        return f"kafka:{self._changelog.cluster_id}:{self.topic}"

    async def _restore(self) -> int:
        conn = self._writing()
        tp = TopicPartition(self.topic, self.partition)
        end = (await self._log.end_offsets([tp]))[tp]
        found = await self._on_thread(lambda: tables.find_store(conn, self.topic, self.partition))
        if found is not None and found[1] == self._source and found[2] <= end:
            self._store_id, _, self._next_offset = found
        else:
            reason = (
                "none"
                if found is None
                else "another source"
                if found[1] != self._source
                else f"ahead of the changelog ({found[2]} > {end})"
            )
            _log.info(
                "index store rebuilt from its changelog",
                partition=self.partition,
                local=reason,
                records=end,
            )
            source = self._source
            self._store_id = await self._on_thread(
                lambda: tables.reset_store(conn, self.topic, self.partition, source)
            )
            self._next_offset = 0
        await self._read_changelog(tp, end)
        return end - 1

    async def _read_changelog(self, tp: TopicPartition, end: int) -> None:
        conn, store = self._writing(), self._store_id
        self.records_read = 0
        while self._next_offset < end:
            records = await self._log.read(tp, self._next_offset, PIECE)
            if not records:
                break
            piece = [(r.offset, r.key or b"", r.value) for r in records]
            nxt = records[-1].offset + 1
            await self._on_thread(partial(tables.apply_changelog, conn, store, piece, nxt))
            self._next_offset = nxt
            self.records_read += len(records)
            await asyncio.sleep(0)  # the loop runs heartbeats between pieces

    async def _put(self, rows: list[tuple[bytes, bytes | None, bytes | None, int]]) -> int:
        records = await self._on_thread(
            lambda: [(key, encode_change(before, after, day)) for key, before, after, day in rows]
        )
        offsets = await self._changelog.send(self.topic, self.partition, records)
        stored = [
            (key, offset, before, after, day)
            for offset, (key, before, after, day) in zip(offsets, rows, strict=True)
        ]
        return await self._record(stored, max(offsets))

    async def _record(self, stored: Sequence[tables.Row], last: int) -> int:
        conn, store, nxt = self._writing(), self._store_id, last + 1
        await self._on_thread(lambda: tables.put_rows(conn, store, stored, nxt))
        self._next_offset = nxt
        return last

    async def _delete(self, keys: list[bytes]) -> None:
        offsets = await self._changelog.send(self.topic, self.partition, [(k, None) for k in keys])
        conn, store, nxt = self._writing(), self._store_id, max(offsets) + 1
        await self._on_thread(lambda: tables.delete_keys(conn, store, keys, nxt))
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
