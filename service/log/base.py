"""The event log interface that both backends (embedded SQLite, Apache Kafka) implement.

The rest of zns-gate speaks only to `EventLog` and `LogConsumer`; the backend
is chosen by configuration. Both backends partition by the same function
(`partition_for`, Kafka's default partitioner), keep records in order per
partition, return from `append` only once the record is durable, and keep
consumer-group positions across restarts. Nothing here knows about Zalo.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import heapq
import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka.partitioner import murmur2

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Position:
    """Where `append` put a record."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Record:
    """One record read from the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = ()
    timestamp_ms: int = 0
    """When the log accepted the record (milliseconds since the epoch)."""

    def header(self, name: str) -> bytes | None:
        """The value of the first header called `name`, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of zns-gate's topics under one prefix (default `zns`)."""

    prefix: str = "zns"
    events: str = field(init=False)
    oa_state: str = field(init=False)
    oa_index: str = field(init=False)
    """The changelog of the OAs' index stores: compacted, partitioned as `events`."""
    decisions: str = field(init=False)
    dlq: str = field(init=False)
    tokens: str = field(init=False)
    """The OAs' Zalo tokens, encrypted: compacted, one record per OA (key = OA id)."""
    notify_cursor: str = field(init=False)
    """The notifier's cursors: compacted, one record per target and partition of
    `decisions`, in that partition (key = `<target>/<partition>`)."""
    notify_dlq: str = field(init=False)
    """Decisions a notification target did not take within the retry window."""

    def __post_init__(self) -> None:
        for name, suffix in (
            ("events", "events"),
            ("oa_state", "oa-state"),
            ("oa_index", "oa-index"),
            ("decisions", "decisions"),
            ("dlq", "dlq"),
            ("tokens", "tokens"),
            ("notify_cursor", "notify-cursor"),
            ("notify_dlq", "notify-dlq"),
        ):
            object.__setattr__(self, name, f"{self.prefix}.{suffix}")

    def all(self) -> tuple[str, ...]:
        return (
            self.events,
            self.oa_state,
            self.oa_index,
            self.decisions,
            self.dlq,
            self.tokens,
            self.notify_cursor,
            self.notify_dlq,
        )

    def compacted(self) -> frozenset[str]:
        return frozenset({self.oa_state, self.oa_index, self.tokens, self.notify_cursor})


@functools.lru_cache(maxsize=65_536)
def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner: murmur2 of the key, made positive, modulo the count.

    The Java client and aiokafka compute the same number, so an OA lands in the
    same partition in both backends and in any other Kafka client. murmur2 is
    pure Python here and the same OA ids come back all day, hence the cache.
    """
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


def check_record(key: bytes | None, value: bytes, headers: Headers) -> None:
    """Refuse, at the caller, a record no backend can store (a programming error)."""
    if not isinstance(value, bytes) or not (key is None or isinstance(key, bytes)):
        raise TypeError("a record's key and value are bytes")
    for name, header in headers:
        if not isinstance(name, str) or not isinstance(header, bytes):
            raise TypeError(f"header {name!r}: names are str and values bytes")


class Waiting(Protocol):
    """An append a backend holds until it is written: its caller waits on `done`."""

    @property
    def done(self) -> asyncio.Future[Position]: ...


def fail_waiting(items: Iterable[Waiting], error: Exception) -> None:
    """Fail every append of `items` whose caller still waits (its deadline may have passed)."""
    for item in items:
        if not item.done.done():
            item.done.set_exception(error)


class LogError(Exception):
    """A failure of the log itself. `retriable` says whether trying again can help."""

    retriable: bool = True


class LogUnavailable(LogError):
    """The log cannot be reached or did not accept the record in time."""


class LogClosed(LogError):
    """The log is closed or closing; nothing more is accepted."""


class LogConfigError(LogError):
    """The log's layout disagrees with the configuration (e.g. a topic's partition count)."""

    retriable = False


class LogInUse(LogConfigError):
    """The embedded log's file is held by another process (a running service)."""


class Deadlines:
    """Gives up on appends that take too long, for all of a log's appends with one task.

    A timer per append (`asyncio.timeout`, `call_later`) costs more than the
    rest of a webhook's own work; instead each append goes on a heap by its
    deadline, and one task fails the overdue ones every `tick_s`. A deadline
    is therefore met within `tick_s`. The backends skip a future that is
    already done, so giving up never disturbs the batch the record belongs to.
    """

    def __init__(self, tick_s: float = 0.05) -> None:
        self._tick_s = tick_s
        self._heap: list[tuple[float, int, asyncio.Future[Position]]] = []
        self._serial = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep(), name="append-deadlines")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def watch(
        self, done: asyncio.Future[Position], timeout_s: float | None
    ) -> asyncio.Future[Position]:
        """`done`, failed with `LogUnavailable` once `timeout_s` has passed."""
        if timeout_s is not None:
            deadline = time.monotonic() + timeout_s
            heapq.heappush(self._heap, (deadline, next(self._serial), done))
        return done

    async def _sweep(self) -> None:
        heap = self._heap
        while True:
            await asyncio.sleep(self._tick_s)
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, done = heapq.heappop(heap)
                if not done.done():
                    done.set_exception(LogUnavailable("the log did not accept the record in time"))


class RebalanceListener(Protocol):
    """Told when a consumer gains or loses partitions, before it reads from them."""

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None: ...

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None: ...


class LogConsumer(abc.ABC):
    """A member of a consumer group: reads the partitions the group assigns to it."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Join the group. The assignment follows (listener and `assignment()`): at once
        with the embedded log, with the first `fetch` on Kafka."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group; uncommitted positions are forgotten."""

    @abc.abstractmethod
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member reads now."""

    @abc.abstractmethod
    async def fetch(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """The next records of the assigned partitions, in order per partition.

        Waits up to `timeout_s` for at least one; returns [] when none came.
        """

    @abc.abstractmethod
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store, durably, the next offset to read for each partition."""

    @abc.abstractmethod
    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed next offset for `tp`, or None if none was committed."""

    @abc.abstractmethod
    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Make the next `fetch` read `tp` from `offset`."""

    @abc.abstractmethod
    async def position(self, tp: TopicPartition) -> int | None:
        """The offset the next `fetch` reads from `tp`, if known."""

    @abc.abstractmethod
    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Return no records of these partitions until they are resumed."""

    @abc.abstractmethod
    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Return records of these paused partitions again."""

    @abc.abstractmethod
    def owners(self) -> Mapping[int, str]:
        """Partition -> the address its owner serves on, for every partition of the
        group's first topic, as of the last assignment this member took part in
        (members give their address with `EventLog.consumer(address=...)`)."""

    @abc.abstractmethod
    def in_contact(self, within_s: float) -> bool:
        """Whether the group confirmed this membership (a heartbeat or a join) within
        the last `within_s` seconds: if not, the group may have given its partitions
        to another member already."""


class EventLog(abc.ABC):
    """An append-only, partitioned, durable log of records."""

    def __init__(self, topics: Topics, partitions: int) -> None:
        self.topics = topics
        self.partitions = partitions
        self.cluster_secret: bytes | None = None
        """The secret the instances of one cluster share: members sign the addresses they
        publish with it (`consumer(address=...)`), and trust only addresses so signed."""

    @property
    @abc.abstractmethod
    def backend(self) -> str:
        """`embedded` or `kafka`."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the log and make sure its topics exist with the configured layout."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush what was accepted and release everything. Idempotent."""

    async def append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers = (),
        timeout_s: float | None = None,
        partition: int | None = None,
    ) -> Position:
        """Add one record; return only once it is durable.

        A record goes to `partition` if given, else one with a key goes to
        `partition_for(key)` and one without to partition 0. Raises
        `LogUnavailable` or `LogClosed` if it cannot, and `LogUnavailable` once
        `timeout_s` has passed; a record given up on that way may still be
        written later, whole.
        """
        return await self.place(topic, key, value, headers, timeout_s, partition)

    @abc.abstractmethod
    def place(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers = (),
        timeout_s: float | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Position]:
        """`append` in two steps: the record takes its place in its partition's order
        now, after every record placed before it; the future it returns gives its
        position once it is durable (or fails as `append` raises). Raises `LogClosed`
        or `LogUnavailable` at once if the log takes nothing now.

        So a caller can decide under a lock, place the record, let the lock go, and
        wait: the records keep the order of the decisions, and the next decision does
        not wait for this one's durable write.
        """

    @abc.abstractmethod
    async def read(self, tp: TopicPartition, start: int, max_records: int = 500) -> list[Record]:
        """Records of one partition from offset `start` on, outside any consumer group.

        For tools and replays; returns [] when there is nothing at or after `start`.
        """

    async def compact(self, tp: TopicPartition, below: int) -> int:
        """Drop the records of a compacted topic's partition, below offset `below`, that a
        later record with the same key (also below `below`) supersedes; how many.

        Kafka's broker compacts by itself, so this does nothing there. The caller
        chooses `below` so that everything under it is complete (a snapshot whose
        offsets are committed), because superseded versions are gone afterwards.
        """
        return 0

    @abc.abstractmethod
    async def check(self) -> None:
        """Raise `LogUnavailable` unless the log answers now (for readiness)."""

    @abc.abstractmethod
    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        listener: RebalanceListener | None = None,
        address: str | None = None,
    ) -> LogConsumer:
        """A new, not yet started, member of consumer group `group_id`; `address` is
        where it serves its partitions, published to the other members (`owners`)."""

    @abc.abstractmethod
    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset the next appended record of each partition will get."""

    def partition_for(self, key: bytes | None) -> int:
        return 0 if key is None else partition_for(key, self.partitions)

    def choose_partition(self, key: bytes | None, partition: int | None) -> int:
        if partition is None:
            return self.partition_for(key)
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} is not within 0..{self.partitions - 1}")
        return partition
