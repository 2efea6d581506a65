"""The embedded event log: one SQLite file, partitioned like Kafka, for one machine.

Appends go through one writer task that commits in groups: every append that
arrives while a transaction is being written waits for the next one, so a burst
costs a few fsyncs rather than one per record. `append` returns only after the
transaction that holds its record has committed (WAL mode, `synchronous=FULL`
by default), so an acknowledged record survives a crash or a power loss.

All SQLite work runs on two dedicated threads (one writes, one reads), never
on the event loop. One process at a time may open a file: a lock file refuses a
second, because two processes would both believe they own every partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TypeVar

import orjson

from service.log.base import (
    Deadlines,
    EventLog,
    Headers,
    LogClosed,
    LogConfigError,
    LogConsumer,
    LogError,
    LogInUse,
    LogUnavailable,
    Position,
    RebalanceListener,
    Record,
    TopicPartition,
    Topics,
    check_record,
    fail_waiting,
)
from service.logsetup import get_logger

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq          INTEGER PRIMARY KEY,
    topic        TEXT    NOT NULL,
    partition    INTEGER NOT NULL,
    offset       INTEGER NOT NULL,
    key          BLOB,
    value        BLOB    NOT NULL,
    headers      BLOB    NOT NULL,
    timestamp_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS records_position ON records (topic, partition, offset);
-- The next offset of every partition; kept apart from `records` so that
-- retention can delete old records without offsets ever being reused.
CREATE TABLE IF NOT EXISTS heads (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id    TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
"""

_log = get_logger("log.embedded")


def _encode_headers(headers: Headers) -> bytes:
    # latin-1 maps every byte to one code point, so any header value round-trips.
    return orjson.dumps([[name, value.decode("latin-1")] for name, value in headers])


def _decode_headers(blob: bytes) -> Headers:
    return tuple((name, value.encode("latin-1")) for name, value in orjson.loads(blob))


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed if the block succeeds, rolled back otherwise."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


STATEMENT_ROWS = 500
"""Rows per statement of `insert_rows` (7 columns: 3,500 parameters, well inside SQLite's
32,766)."""


def insert_rows(
    conn: sqlite3.Connection,
    head: str,
    rows: Sequence[Sequence[object]],
    tail: str = "",
) -> None:
    """`head VALUES (...), (...) tail` for many rows at once. `executemany` steps SQLite
    once a row, letting the GIL go and taking it back each time: while the event loop is
    busy, each take waits for the loop to let go, so a batch of a few hundred rows took
    a hundred milliseconds or more. One statement a piece steps once."""
    if not rows:
        return
    one = "(" + ", ".join("?" * len(rows[0])) + ")"
    for start in range(0, len(rows), STATEMENT_ROWS):
        piece = rows[start : start + STATEMENT_ROWS]
        values = ", ".join([one] * len(piece))
        conn.execute(f"{head} VALUES {values}{tail}", [v for row in piece for v in row])


@dataclass(slots=True)
class _Append:
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: Headers
    done: asyncio.Future[Position]


_STOP = object()


class EmbeddedLog(EventLog):
    """The SQLite backend of `EventLog`."""

    def __init__(
        self,
        path: str | Path,
        topics: Topics | None = None,
        partitions: int = 12,
        *,
        synchronous: str = "FULL",
        group_commit_max: int = 1000,
        retention_days: int = 200,
    ) -> None:
        super().__init__(topics or Topics(), partitions)
        self.path = Path(path)
        self._synchronous = synchronous
        self._group_commit_max = group_commit_max
        self._retention_ms = retention_days * 86_400_000
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock_file: IO[str] | None = None
        self._queue: asyncio.Queue[_Append | object] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._heads: dict[TopicPartition, int] = {}
        self._appended = asyncio.Event()
        self._groups: dict[str, EmbeddedConsumer] = {}
        self._deadlines = Deadlines()
        self._state = "new"
        self._identity: tuple[int, int] | None = None
        """(device, inode) of the file as opened: a file deleted or replaced under a
        running process would take every later commit with it, unseen."""
        self._lost: str | None = None

    @property
    def backend(self) -> str:
        return "embedded"

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise LogError(f"embedded log cannot start from state {self._state!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._take_lock()
        try:
            self._identity = await self._on_writer(self._create_private)
            self._writer = await self._on_writer(self._open)
            self._reader = await self._on_reader(self._open)
            await self._on_writer(self._prepare)
            heads = await self._on_reader(self._read_heads)
        except BaseException:
            await self._release()
            raise
        self._heads = heads
        self._state = "open"
        self._writer_task = asyncio.create_task(self._write_loop(), name="sqlite-writer")
        self._retention_task = asyncio.create_task(self._retention_loop(), name="sqlite-retention")
        self._deadlines.start()
        _log.info("embedded log open", path=str(self.path), partitions=self.partitions)

    async def close(self) -> None:
        if self._state in ("closing", "closed"):
            return
        was_open = self._state == "open"
        self._state = "closing"
        try:
            if self._retention_task is not None:
                self._retention_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._retention_task
            if was_open and self._writer_task is not None:
                # Everything queued before the stop marker is still written.
                self._queue.put_nowait(_STOP)
                await self._writer_task
        finally:
            self._appended.set()
            await self._deadlines.stop()
            await self._release()
            self._state = "closed"
        _log.info("embedded log closed", path=str(self.path))

    def _take_lock(self) -> IO[str]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        handle = lock_path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LogInUse(
                f"{self.path} is in use by {holder}; the embedded log serves one process"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        return handle

    async def _release(self) -> None:
        for conn, thread in (
            (self._writer, self._writer_thread),
            (self._reader, self._reader_thread),
        ):
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(thread, conn.close)
        self._writer = self._reader = None
        self._writer_thread.shutdown(wait=True)
        self._reader_thread.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the flock
            self._lock_file = None

    # -- SQLite, on its threads ------------------------------------------------------

    async def _on_writer(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, fn)

    async def on_writer(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the thread that writes the file, after the writes queued before it.
        Other writers of the same file (the index stores' tables) go through here, in
        small pieces: on a thread of their own they would take turns with the log at
        SQLite's lock, and the one waiting sleeps in steps of up to 100 ms, so an append
        would wait for a whole checkpoint and then for the sleep."""
        return await self._on_writer(fn)

    async def _on_reader(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader_thread, fn)

    def _create_private(self) -> tuple[int, int]:
        """Create the file readable by its owner only (SQLite gives its WAL the same
        mode); an existing file keeps the mode its operator chose. Its identity."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            found = os.fstat(fd)
        finally:
            os.close(fd)
        return found.st_dev, found.st_ino

    def _check_file(self) -> None:
        """Raise LogUnavailable, for good, once the file opened is no longer at its path."""
        if self._lost is None:
            try:
                found = os.stat(self.path)
            except FileNotFoundError:
                self._lost = f"{self.path} was deleted while open"
            else:
                if (found.st_dev, found.st_ino) != self._identity:
                    self._lost = f"{self.path} was replaced while open"
            if self._lost is not None:
                _log.error("embedded log file lost; no more writes", reason=self._lost)
        if self._lost is not None:
            raise LogUnavailable(f"{self._lost}; restart once the file is restored")

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and committed explicitly.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _prepare(self) -> None:
        conn = self._conn(self._writer)
        conn.executescript(_SCHEMA)
        with transaction(conn):
            stored = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            if "partitions" in stored and int(stored["partitions"]) != self.partitions:
                raise LogConfigError(
                    f"{self.path} was created with {stored['partitions']} partitions, "
                    f"the configuration says {self.partitions}; keys would land elsewhere"
                )
            conn.executemany(
                "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)",
                [("partitions", str(self.partitions)), ("schema_version", str(SCHEMA_VERSION))],
            )

    def _read_heads(self) -> dict[TopicPartition, int]:
        rows = self._conn(self._reader).execute("SELECT topic, partition, next_offset FROM heads")
        return {TopicPartition(topic, partition): nxt for topic, partition, nxt in rows}

    @staticmethod
    def _conn(conn: sqlite3.Connection | None) -> sqlite3.Connection:
        if conn is None:
            raise LogClosed("the embedded log is not open")
        return conn

    def _write_batch(
        self, rows: list[tuple[object, ...]], heads: dict[TopicPartition, int]
    ) -> None:
        conn = self._conn(self._writer)
        self._check_file()  # a stat per commit group: committing to a deleted file loses it
        with transaction(conn):
            insert_rows(
                conn,
                "INSERT INTO records (topic, partition, offset, key, value, headers, timestamp_ms)",
                rows,
            )
            insert_rows(
                conn,
                "INSERT INTO heads (topic, partition, next_offset)",
                [(tp.topic, tp.partition, nxt) for tp, nxt in heads.items()],
                " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            )

    # -- appending ---------------------------------------------------------------------

    def place(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers = (),
        timeout_s: float | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Position]:
        if self._state != "open":
            raise LogClosed("the embedded log is not open")
        if self._lost is not None:
            raise LogUnavailable(self._lost)
        check_record(key, value, headers)
        partition = self.choose_partition(key, partition)
        done: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        item = _Append(topic, partition, key, value, tuple(headers), done)
        self._queue.put_nowait(item)
        # A record given up on while still queued is dropped (it was never
        # acknowledged: Zalo sends it again); one already being written lands
        # whole, and the duplicate is removed downstream.
        return self._deadlines.watch(done, timeout_s)

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: list[_Append] = []
            for item in self._drain(first):
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Append):
                    batch.append(item)
            if batch:
                try:
                    await self._commit_batch(batch)
                except Exception as exc:
                    _log.exception("embedded log batch failed", records=len(batch))
                    fail_waiting(
                        batch, LogUnavailable(f"the embedded log could not write: {exc!r}")
                    )

    def _drain(self, first: object) -> Iterable[object]:
        yield first
        taken = 1
        while taken < self._group_commit_max:
            try:
                yield self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            taken += 1

    async def _commit_batch(self, batch: list[_Append]) -> None:
        # A record whose caller gave up (the deadline passed) was never acknowledged:
        # Zalo sends it again, so it is not written late, ahead of fresher ones.
        batch = [item for item in batch if not item.done.done()]
        if not batch:
            return
        now_ms = int(time.time() * 1000)
        heads: dict[TopicPartition, int] = {}
        rows: list[tuple[object, ...]] = []
        positions: list[Position] = []
        for item in batch:
            tp = TopicPartition(item.topic, item.partition)
            offset = heads.get(tp, self._heads.get(tp, 0))
            heads[tp] = offset + 1
            rows.append(
                (
                    item.topic,
                    item.partition,
                    offset,
                    item.key,
                    item.value,
                    _encode_headers(item.headers),
                    now_ms,
                )
            )
            positions.append(Position(item.topic, item.partition, offset))
        try:
            await self._on_writer(lambda: self._write_batch(rows, heads))
        except Exception as exc:
            _log.error("embedded log write failed", error=repr(exc), records=len(batch))
            failure = LogUnavailable(f"the embedded log could not write: {exc}")
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(failure)
            return
        self._heads.update(heads)
        for item, position in zip(batch, positions, strict=True):
            if not item.done.done():
                item.done.set_result(position)
        # Wake every consumer waiting for new records.
        woken, self._appended = self._appended, asyncio.Event()
        woken.set()

    # -- reading -----------------------------------------------------------------------

    def _read(self, wanted: list[tuple[TopicPartition, int]], max_records: int) -> list[Record]:
        conn = self._conn(self._reader)
        out: list[Record] = []
        for tp, start in wanted:
            rows = conn.execute(
                "SELECT offset, key, value, headers, timestamp_ms FROM records"
                " WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (tp.topic, tp.partition, start, max_records - len(out)),
            ).fetchall()
            out.extend(
                Record(tp.topic, tp.partition, offset, key, value, _decode_headers(headers), ts)
                for offset, key, value, headers, ts in rows
            )
            if len(out) >= max_records:
                break
        return out

    async def read(self, tp: TopicPartition, start: int, max_records: int = 500) -> list[Record]:
        """Records of one partition from `start` on, outside any group (for tools and tests)."""
        if self._state != "open":
            raise LogClosed("the embedded log is not open")
        return await self._on_reader(lambda: self._read([(tp, start)], max_records))

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._heads.get(tp, 0) for tp in partitions}

    async def check(self) -> None:
        if self._state != "open":
            raise LogUnavailable("the embedded log is not open")
        if self._writer_task is None or self._writer_task.done():
            raise LogUnavailable("the embedded log's writer has stopped")
        try:
            await asyncio.wait_for(self._on_reader(self._answers), timeout=2.0)
        except (TimeoutError, sqlite3.Error) as exc:
            raise LogUnavailable(f"the embedded log does not answer: {exc!r}") from exc

    def _answers(self) -> None:
        self._check_file()
        self._conn(self._reader).execute("SELECT 1").fetchone()

    # -- consumer groups ---------------------------------------------------------------

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        listener: RebalanceListener | None = None,
        address: str | None = None,
    ) -> EmbeddedConsumer:
        return EmbeddedConsumer(self, group_id, tuple(topics), listener, address)

    def _join(self, member: EmbeddedConsumer) -> None:
        # One process owns the file, so one member owns a group's partitions.
        current = self._groups.get(member.group_id)
        if current is not None and current is not member:
            raise LogConfigError(
                f"group {member.group_id!r} already has a member; with the embedded log "
                "one member reads all partitions"
            )
        self._groups[member.group_id] = member

    def _leave(self, member: EmbeddedConsumer) -> None:
        if self._groups.get(member.group_id) is member:
            del self._groups[member.group_id]

    def _commit_sync(self, group_id: str, offsets: list[tuple[TopicPartition, int]]) -> None:
        conn = self._conn(self._writer)
        with transaction(conn):
            conn.executemany(
                "INSERT INTO group_offsets (group_id, topic, partition, next_offset)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (group_id, topic, partition)"
                " DO UPDATE SET next_offset = excluded.next_offset",
                [(group_id, tp.topic, tp.partition, nxt) for tp, nxt in offsets],
            )

    def _committed_sync(self, group_id: str) -> dict[TopicPartition, int]:
        rows = self._conn(self._reader).execute(
            "SELECT topic, partition, next_offset FROM group_offsets WHERE group_id = ?",
            (group_id,),
        )
        return {TopicPartition(topic, partition): nxt for topic, partition, nxt in rows}

    # -- retention -----------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        while True:
            try:
                deleted = await self.purge_expired()
                if deleted:
                    _log.info("retention removed old records", records=deleted)
            except sqlite3.Error as exc:
                _log.warning("retention failed", error=repr(exc))
            await asyncio.sleep(3600)

    async def purge_expired(self, now_ms: int | None = None) -> int:
        """Delete records of the events topic older than the retention period; how many.

        Runs hourly by itself. Offsets are never reused: the next record of a
        partition still gets the offset after the newest one ever written.
        """
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        # The heads are copied here, on the loop, which alone changes them.
        purge = partial(self._purge_sync, dict(self._heads), now_ms - self._retention_ms)
        return await self._on_writer(purge)

    def _purge_sync(self, heads: dict[TopicPartition, int], cutoff: int) -> int:
        conn = self._conn(self._writer)
        deleted = 0
        for tp, head in heads.items():
            if tp.topic != self.topics.events:
                continue
            # Offsets grow with time in a partition: find the first record to keep.
            row = conn.execute(
                "SELECT offset FROM records WHERE topic = ? AND partition = ?"
                " AND timestamp_ms >= ? ORDER BY offset LIMIT 1",
                (tp.topic, tp.partition, cutoff),
            ).fetchone()
            keep_from = row[0] if row is not None else head
            with transaction(conn):
                cursor = conn.execute(
                    "DELETE FROM records WHERE topic = ? AND partition = ? AND offset < ?",
                    (tp.topic, tp.partition, keep_from),
                )
            deleted += cursor.rowcount
        return deleted

    async def compact(self, tp: TopicPartition, below: int) -> int:
        if tp.topic not in self.topics.compacted():
            raise ValueError(f"{tp.topic} is not a compacted topic")
        return await self._on_writer(partial(self._compact_sync, tp, below))

    def _compact_sync(self, tp: TopicPartition, below: int) -> int:
        conn = self._conn(self._writer)
        with transaction(conn):
            cursor = conn.execute(
                "DELETE FROM records WHERE topic = ?1 AND partition = ?2 AND offset < ?3"
                " AND offset NOT IN (SELECT MAX(offset) FROM records WHERE topic = ?1"
                " AND partition = ?2 AND offset < ?3 GROUP BY key)",
                (tp.topic, tp.partition, below),
            )
        return cursor.rowcount


class EmbeddedConsumer(LogConsumer):
    """The only member of its group in this process: it reads every partition of its topics."""

    def __init__(
        self,
        log: EmbeddedLog,
        group_id: str,
        topics: tuple[str, ...],
        listener: RebalanceListener | None,
        address: str | None = None,
    ) -> None:
        self._log = log
        self.group_id = group_id
        self._topics = topics
        self._listener = listener
        self._address = address
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._positions: dict[TopicPartition, int] = {}
        self._rotation = 0
        self._paused: set[TopicPartition] = set()
        self._started = False

    async def start(self) -> None:
        if self._log._state != "open":
            raise LogClosed("the embedded log is not open")
        assigned = frozenset(
            TopicPartition(topic, p) for topic in self._topics for p in range(self._log.partitions)
        )
        committed = await self._log._on_reader(lambda: self._log._committed_sync(self.group_id))
        self._log._join(self)
        self._started = True
        self._positions = {tp: committed.get(tp, 0) for tp in assigned}
        self._assigned = assigned
        if self._listener is not None:
            await self._listener.on_assigned(assigned)

    async def close(self) -> None:
        if not self._started:
            return
        try:
            # Still a member here: the listener may snapshot and commit what it holds.
            if self._listener is not None and self._assigned:
                await self._listener.on_revoked(self._assigned)
        finally:
            self._started = False
            self._assigned = frozenset()
            self._log._leave(self)

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assigned

    async def fetch(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if not self._started or self._log._state != "open":
                raise LogClosed("the consumer is closed")
            woken = self._log._appended  # taken before looking, so no append is missed
            wanted = self._wanted()
            if wanted:
                read = await self._log._on_reader(partial(self._log._read, wanted, max_records))
                if not read:
                    # The wanted range was removed by retention: skip to the head (unless
                    # a partition was sought elsewhere meanwhile).
                    for tp, start in wanted:
                        if self._positions.get(tp) == start:
                            self._positions[tp] = max(start, self._log._heads.get(tp, 0))
                    continue
                # A partition sought elsewhere during the read keeps its new position.
                unmoved = {tp for tp, start in wanted if self._positions.get(tp) == start}
                records = [r for r in read if r.topic_partition in unmoved]
                if records:
                    for record in records:
                        self._positions[record.topic_partition] = record.offset + 1
                    return records
                continue  # everything read was of partitions sought meanwhile: read again
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=remaining)

    def _wanted(self) -> list[tuple[TopicPartition, int]]:
        """Partitions with unread records, starting at a rotating one for fairness."""
        ordered = sorted(self._assigned)
        if not ordered:
            return []
        self._rotation = (self._rotation + 1) % len(ordered)
        ordered = ordered[self._rotation :] + ordered[: self._rotation]
        heads = self._log._heads
        return [
            (tp, self._positions[tp])
            for tp in ordered
            if self._positions[tp] < heads.get(tp, 0) and tp not in self._paused
        ]

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not self._started:
            raise LogClosed("the consumer is closed")
        items = list(offsets.items())
        try:
            await self._log._on_writer(lambda: self._log._commit_sync(self.group_id, items))
        except sqlite3.Error as exc:
            raise LogUnavailable(f"could not commit positions: {exc}") from exc

    async def committed(self, tp: TopicPartition) -> int | None:
        stored = await self._log._on_reader(lambda: self._log._committed_sync(self.group_id))
        return stored.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._assigned:
            raise LogError(f"{tp} is not assigned to this consumer")
        self._positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int | None:
        return self._positions.get(tp)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused |= set(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused -= set(partitions)

    def owners(self) -> dict[int, str]:
        # The only member: every partition is served where it is.
        if not self._started or self._address is None:
            return {}
        return {p: self._address for p in range(self._log.partitions)}

    def in_contact(self, within_s: float) -> bool:
        return self._started  # no group coordinator to lose: membership is this process
