"""The Kafka event log: Apache Kafka through aiokafka, for more than one machine.

The producer is idempotent with `acks=all`, so `append` returns only once every
in-sync replica has the record, and a retry inside the client cannot duplicate
it. Partitions are chosen here with the same function the embedded log uses
(Kafka's default partitioner) and passed explicitly. On start the topics are
created if missing; an existing topic with another partition count stops the
start, because keys would then land in other partitions than before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from service.log.assignor import AddressingAssignor
from service.log.base import (
    Deadlines,
    EventLog,
    Headers,
    LogClosed,
    LogConfigError,
    LogConsumer,
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

_log = get_logger("log.kafka")

_TOPIC_ALREADY_EXISTS = 36


def _to_kafka(tp: TopicPartition) -> KafkaTopicPartition:
    return KafkaTopicPartition(tp.topic, tp.partition)


def _from_kafka(tp: KafkaTopicPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


# Large enough for many webhooks (at most 256 KiB each), within Kafka's default request size.
_MAX_BATCH_BYTES = 1_000_000

StreamedRecord = tuple[int, bytes, bytes]
"""(offset, key, value) of a record read by `KafkaLog.stream`; a missing key or value
(a tombstone) reads as empty bytes."""

# A stream's fetches: large, so that a whole partition takes few round trips, and
# prefetched by aiokafka while the caller works on the piece before.
_STREAM_FETCH_BYTES = 16 * 1024 * 1024
# Records turned into tuples on the loop at a time (about a microsecond each), so
# that no step of a stream holds the loop for more than a few milliseconds.
_STREAM_STEP = 1_000


@dataclass(slots=True)
class _Append:
    key: bytes | None
    value: bytes
    headers: Headers
    done: asyncio.Future[Position]


# The broker no longer accepts this producer's sequence (a broker restart while batches
# expired on the client, say): only a new producer, with a new id, can write again.
# A batch that expired unsent leaves the producer's sequence numbers ahead of the
# broker's, which refuses the next ones: renew then too, before that happens.
_PRODUCER_STATE_ERRORS = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
    KafkaTimeoutError,
)


def _settle(items: list[_Append], delivered: asyncio.Future[Any]) -> None:
    """Give each record of a delivered batch its offset: the batch's base offset plus its index."""
    if delivered.cancelled():
        fail_waiting(items, LogUnavailable("the batch was cancelled"))
        return
    error = delivered.exception()
    if error is not None:
        fail_waiting(items, LogUnavailable(f"kafka did not accept the records: {error}"))
        return
    metadata = delivered.result()
    for index, item in enumerate(items):
        if not item.done.done():
            item.done.set_result(
                Position(metadata.topic, metadata.partition, metadata.offset + index)
            )


def _record(message: ConsumerRecord[bytes, bytes]) -> Record:
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value if message.value is not None else b"",
        headers=tuple((name, value) for name, value in message.headers),
        timestamp_ms=message.timestamp,
    )


class KafkaLog(EventLog):
    """The Apache Kafka backend of `EventLog`."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Topics | None = None,
        partitions: int = 12,
        *,
        retention_days: int = 200,
        replication_factor: int = 1,
        client_id: str = "zns-gate",
        request_timeout_ms: int = 5000,
        session_timeout_ms: int = 10_000,
    ) -> None:
        super().__init__(topics or Topics(), partitions)
        self.session_timeout_ms = session_timeout_ms
        self.bootstrap_servers = bootstrap_servers
        self._retention_ms = retention_days * 86_400_000
        self._replication_factor = replication_factor
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer[bytes, bytes] | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._reader: AIOKafkaConsumer[bytes, bytes] | None = None
        self._reader_lock = asyncio.Lock()
        # Records waiting for their partition's sender, and the sender tasks.
        self._pending: dict[tuple[str, int], list[_Append]] = {}
        self._senders: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._deadlines = Deadlines()
        self._state = "new"

    @property
    def backend(self) -> str:
        return "kafka"

    def _common(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self._client_id,
            "request_timeout_ms": self._request_timeout_ms,
        }

    async def start(self) -> None:
        try:
            await self._ensure_topics()
            self._producer = await self._new_producer()
            self._deadlines.start()
            # A group-less consumer for end offsets and plain reads by tools.
            reader: AIOKafkaConsumer[bytes, bytes] = AIOKafkaConsumer(
                **self._common(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # `read` asks for records it knows exist; don't let the broker wait for more.
                fetch_max_wait_ms=20,
            )
            await reader.start()
            self._reader = reader
        except KafkaError as exc:
            await self.close()
            raise LogUnavailable(f"cannot reach Kafka at {self.bootstrap_servers}: {exc}") from exc
        except BaseException:
            await self.close()
            raise
        self._state = "open"
        _log.info(
            "kafka log open", bootstrap_servers=self.bootstrap_servers, partitions=self.partitions
        )

    async def _new_producer(self) -> AIOKafkaProducer[bytes, bytes]:
        producer: AIOKafkaProducer[bytes, bytes] = AIOKafkaProducer(
            **self._common(),
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            # One batch per partition holds every record queued meanwhile.
            max_batch_size=_MAX_BATCH_BYTES,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    def _delivered(self, items: list[_Append], delivered: asyncio.Future[Any]) -> None:
        _settle(items, delivered)
        if not delivered.cancelled() and isinstance(delivered.exception(), _PRODUCER_STATE_ERRORS):
            self._renew_producer(repr(delivered.exception()))

    def _renew_producer(self, reason: str) -> None:
        """Replace the producer (soon, once): its failed appends were answered 503 and
        are sent again by their callers, through the new one."""
        if self._state != "open" or (self._renewing is not None and not self._renewing.done()):
            return
        self._renewing = asyncio.create_task(self._renew(reason))

    async def _renew(self, reason: str) -> None:
        while True:  # the broker may be away for a while yet
            try:
                fresh = await self._new_producer()
                break
            except KafkaError as exc:
                if self._state != "open":
                    return
                _log.warning("kafka producer not renewed yet", error=repr(exc))
                await asyncio.sleep(1.0)
        if self._state != "open":
            await fresh.stop()
            return
        old = self._producer
        if old is not None:
            # What went through the old producer ends (written or failed) before anything
            # goes through the new one, so a partition's records keep their order. Appends
            # meanwhile fail (503) and are sent again.
            with contextlib.suppress(KafkaError):
                await old.stop()
        self._producer = fresh
        _log.warning("kafka producer renewed", reason=reason)

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        try:
            # Everything appended before the close is still submitted.
            await asyncio.gather(*self._senders.values(), return_exceptions=True)
            if self._renewing is not None:
                await asyncio.gather(self._renewing, return_exceptions=True)
        finally:
            await self._release()

    async def _release(self) -> None:
        if self._producer is not None:
            # stop() flushes what was accepted before it returns.
            await self._producer.stop()
            self._producer = None
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None
        await self._deadlines.stop()
        _log.info("kafka log closed")

    async def _ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(**self._common())
        await admin.start()
        try:
            # list_topics asks for all topics, which never auto-creates one; a metadata
            # request that names a missing topic would, on a broker that allows it,
            # create it with the broker's defaults instead of ours.
            existing = set(await admin.list_topics())
            missing = [name for name in self.topics.all() if name not in existing]
            if missing:
                response = await admin.create_topics([self._new_topic(name) for name in missing])
                for topic_error in response.topic_errors:
                    name, code = topic_error[0], topic_error[1]
                    if code not in (0, _TOPIC_ALREADY_EXISTS):
                        raise LogConfigError(f"cannot create topic {name}: error code {code}")
                    if code == 0:
                        _log.info("topic created", topic=name, partitions=self.partitions)
                await self._await_topics(admin)
            counts = await self._partition_counts(admin)
            for name in self.topics.all():
                if counts.get(name) != self.partitions:
                    raise LogConfigError(
                        f"topic {name} has {counts.get(name, 0)} partitions, the configuration "
                        f"says {self.partitions}; keys would land elsewhere (log.partitions)"
                    )
        finally:
            await admin.close()

    async def _partition_counts(self, admin: AIOKafkaAdminClient) -> dict[str, int]:
        """Partition counts of our topics (call only once they exist)."""
        described = await admin.describe_topics(list(self.topics.all()))
        return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}

    async def _await_topics(self, admin: AIOKafkaAdminClient) -> None:
        """Wait until new topics show in the metadata: creation is acknowledged before that."""
        deadline = asyncio.get_running_loop().time() + self._request_timeout_ms / 1000
        while True:
            listed = set(await admin.list_topics())
            absent = [name for name in self.topics.all() if name not in listed]
            if not absent:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise LogUnavailable(f"topics not visible after creation: {', '.join(absent)}")
            await asyncio.sleep(0.1)

    def _new_topic(self, name: str) -> NewTopic:
        # With more than one replica, acks=all must mean at least two copies.
        configs = {"min.insync.replicas": str(min(2, self._replication_factor))}
        if name in self.topics.compacted():
            # Snapshots supersede each other every few seconds: roll segments hourly and
            # compact early, so that a restore reads little more than the newest ones.
            configs.update(
                {
                    "cleanup.policy": "compact",
                    "segment.ms": str(3_600_000),
                    "min.cleanable.dirty.ratio": "0.1",
                }
            )
        else:
            configs.update({"cleanup.policy": "delete", "retention.ms": str(self._retention_ms)})
        return NewTopic(name, self.partitions, self._replication_factor, topic_configs=configs)

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
            raise LogClosed("the kafka log is not open")
        check_record(key, value, headers)
        partition = self.choose_partition(key, partition)
        done: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        tp = (topic, partition)
        self._pending.setdefault(tp, []).append(_Append(key, value, headers, done))
        sender = self._senders.get(tp)
        if sender is None or sender.done():
            self._senders[tp] = asyncio.create_task(self._send_partition(tp))
        return self._deadlines.watch(done, timeout_s)

    async def _send_partition(self, tp: tuple[str, int]) -> None:
        """Send a partition's pending records, one batch at a time, until none are left.

        aiokafka's per-record `send` costs tens of microseconds of Python; a
        batch built here costs a fraction of that per record, and the producer
        still assigns the idempotent sequence numbers. While a batch waits for
        the broker, new records of the partition gather into the next one. Each
        partition has its own sender, so one slow partition (a leader moving)
        holds up only its own records, and records keep their order.
        """
        while (items := self._pending.pop(tp, None)) and (producer := self._producer) is not None:
            try:
                await self._submit(producer, tp, items)
            except Exception as exc:  # the sender must outlive a bad batch
                _log.exception("kafka batch failed", topic=tp[0], partition=tp[1])
                fail_waiting(items, LogUnavailable(f"kafka did not accept the records: {exc!r}"))

    async def _submit(
        self, producer: AIOKafkaProducer[bytes, bytes], tp: tuple[str, int], items: list[_Append]
    ) -> None:
        topic, partition = tp
        # A record whose caller gave up (the deadline passed) was never acknowledged:
        # Zalo sends it again, so it is not written late, ahead of fresher ones.
        items = [item for item in items if not item.done.done()]
        while items:
            batch = producer.create_batch()
            taken: list[_Append] = []
            for item in items:
                headers = list(item.headers)
                added = batch.append(
                    key=item.key, value=item.value, timestamp=None, headers=headers
                )
                if added is None:  # the batch is full: the rest go in the next one
                    break
                taken.append(item)
            if not taken:  # one record larger than a whole batch: it can never be written
                fail_waiting(
                    items[:1],
                    LogConfigError(f"a record of {len(items[0].value)} bytes is too large"),
                )
                items = items[1:]
                continue
            items = items[len(taken) :]
            try:
                delivered = await producer.send_batch(batch, topic, partition=partition)
            except Exception as exc:
                fail_waiting(taken, LogUnavailable(f"kafka did not accept the records: {exc!r}"))
                if isinstance(exc, _PRODUCER_STATE_ERRORS):
                    self._renew_producer(repr(exc))
                continue
            delivered.add_done_callback(functools.partial(self._delivered, taken))

    async def check(self) -> None:
        producer = self._producer
        if self._state != "open" or producer is None:
            raise LogUnavailable("the kafka log is not open")
        try:
            cluster = await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout=2.0)
        except (TimeoutError, KafkaError) as exc:
            raise LogUnavailable(f"kafka does not answer: {exc!r}") from exc
        if not cluster.brokers():
            raise LogUnavailable("kafka answered with no brokers")

    def _live_reader(self) -> AIOKafkaConsumer[bytes, bytes]:
        if self._state != "open" or self._reader is None:
            raise LogClosed("the kafka log is not open")
        return self._reader

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        wanted = [_to_kafka(tp) for tp in partitions]
        try:
            ends = await self._live_reader().end_offsets(wanted)
        except KafkaError as exc:
            raise LogUnavailable(f"cannot read end offsets: {exc}") from exc
        return {_from_kafka(tp): offset for tp, offset in ends.items()}

    async def read(self, tp: TopicPartition, start: int, max_records: int = 500) -> list[Record]:
        reader = self._live_reader()
        ktp = _to_kafka(tp)
        async with self._reader_lock:
            try:
                end = (await reader.end_offsets([ktp]))[ktp]
                if start >= end:
                    return []
                if (await reader.beginning_offsets([ktp]))[ktp] >= end:
                    return []  # retention removed every record
                reader.assign([ktp])
                reader.seek(ktp, start)
                out: list[Record] = []
                # A fetch may return less than is there; keep going up to the end seen.
                while len(out) < max_records:
                    batches = await reader.getmany(
                        ktp, timeout_ms=self._request_timeout_ms, max_records=max_records - len(out)
                    )
                    messages = batches.get(ktp, [])
                    if not messages:
                        break
                    out.extend(_record(m) for m in messages)
                    if out[-1].offset + 1 >= end:
                        break
            except KafkaError as exc:
                raise LogUnavailable(f"cannot read {tp}: {exc}") from exc
            if not out:
                # Records exist below `end`; an empty answer would read as "nothing more"
                # and cut a restore or a replay short. The caller may try again.
                raise LogUnavailable(f"no records of {tp} from {start} arrived in time")
            return out

    async def stream(
        self, tp: TopicPartition, start: int, end: int, piece: int = 5_000
    ) -> AsyncGenerator[list[StreamedRecord], None]:
        """Every record of `tp` from `start` up to `end` (an end offset asked for before),
        in order, in pieces of up to `piece` records.

        For reading a whole partition once (a store's rebuild): one consumer of its
        own, assigned and positioned once, reads on; `read` asks for the offsets and
        seeks again for every call. Records are plain tuples: no headers, no timestamp.
        """
        if self._state != "open":
            raise LogClosed("the kafka log is not open")
        if piece < 1:
            raise ValueError(f"a stream's pieces hold at least one record, not {piece}")
        if start >= end:
            return
        ktp = _to_kafka(tp)
        consumer: AIOKafkaConsumer[bytes, bytes] = AIOKafkaConsumer(
            **self._common(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=_STREAM_FETCH_BYTES,
            max_partition_fetch_bytes=_STREAM_FETCH_BYTES,
            fetch_max_wait_ms=20,
        )
        try:
            await consumer.start()
            consumer.assign([ktp])
            # A start that retention removed reads from the first record kept ("earliest").
            consumer.seek(ktp, start)
            out: list[StreamedRecord] = []
            position = start
            while position < end:
                batches = await consumer.getmany(
                    ktp,
                    timeout_ms=self._request_timeout_ms,
                    max_records=min(_STREAM_STEP, piece - len(out)),
                )
                messages = batches.get(ktp, [])
                if not messages:
                    # Below `end` there are records (or the offsets compaction left): a
                    # stream cut short here would read as "nothing more". The caller
                    # may try again from where its last piece ended.
                    position = await consumer.position(ktp)
                    if position >= end:
                        break
                    raise LogUnavailable(f"no records of {tp} from {position} arrived in time")
                position = messages[-1].offset + 1
                if position > end:  # records appended since `end` was asked
                    messages = [m for m in messages if m.offset < end]
                out.extend((m.offset, m.key or b"", m.value or b"") for m in messages)
                if len(out) >= piece or position >= end:
                    yield out
                    out = []
                # A fetch already here is handed out without a pause: let the loop run.
                await asyncio.sleep(0)
            if out:
                yield out
        except KafkaError as exc:
            raise LogUnavailable(f"cannot read {tp}: {exc}") from exc
        finally:
            await consumer.stop()

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        listener: RebalanceListener | None = None,
        address: str | None = None,
    ) -> KafkaConsumer:
        return KafkaConsumer(self, group_id, tuple(topics), listener, address)


class _ListenerBridge(ConsumerRebalanceListener):
    """Passes aiokafka's rebalance callbacks on in this project's terms."""

    def __init__(self, listener: RebalanceListener | None, member: KafkaConsumer) -> None:
        self._listener = listener
        self._member = member

    async def on_partitions_revoked(self, revoked: Iterable[KafkaTopicPartition]) -> None:
        self._member.rebalancing()
        partitions = frozenset(_from_kafka(tp) for tp in revoked)
        # aiokafka also "revokes" the empty set before the first join; say nothing then.
        if self._listener is not None and partitions:
            await self._listener.on_revoked(partitions)

    async def on_partitions_assigned(self, assigned: Iterable[KafkaTopicPartition]) -> None:
        self._member.assigned()
        if self._listener is not None:
            await self._listener.on_assigned(frozenset(_from_kafka(tp) for tp in assigned))


class KafkaConsumer(LogConsumer):
    """A member of a Kafka consumer group; positions are committed only when told."""

    def __init__(
        self,
        log: KafkaLog,
        group_id: str,
        topics: tuple[str, ...],
        listener: RebalanceListener | None,
        address: str | None = None,
    ) -> None:
        self._log = log
        self.group_id = group_id
        self._topics = topics
        self._listener = listener
        self._consumer: AIOKafkaConsumer[bytes, bytes] | None = None
        self._assignor = AddressingAssignor(address, log.cluster_secret)
        self._contact = 0.0
        """time.monotonic() at which the last heartbeat the group acknowledged was sent."""
        self._watching = False
        self._rebalancing = False
        """From the revocation of a rebalance to the next assignment: not in contact."""

    async def start(self) -> None:
        consumer: AIOKafkaConsumer[bytes, bytes] = AIOKafkaConsumer(
            **self._log._common(),
            group_id=self.group_id,
            # Positions move only when the processor says its state is durable.
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A member that stops heartbeating (killed) loses its partitions after this.
            session_timeout_ms=self._log.session_timeout_ms,
            heartbeat_interval_ms=self._log.session_timeout_ms // 3,
            # Ours first; round robin only while older members without it are in the group
            # (a rolling upgrade): the group then has no owners' table, and no forwarding.
            partition_assignment_strategy=(self._assignor, RoundRobinPartitionAssignor),
        )
        consumer.subscribe(list(self._topics), listener=_ListenerBridge(self._listener, self))
        # Set before start: the group may assign partitions, and call the listener, meanwhile.
        self._consumer = consumer
        try:
            await consumer.start()
        except KafkaError as exc:
            self._consumer = None
            with contextlib.suppress(KafkaError):
                await consumer.stop()
            raise LogUnavailable(f"cannot join group {self.group_id}: {exc}") from exc
        self._watch_heartbeats(consumer)

    def _watch_heartbeats(self, consumer: AIOKafkaConsumer[bytes, bytes]) -> None:
        """Note when each heartbeat the group acknowledges was sent (`in_contact`).

        aiokafka has no public hook for it: wrap its coordinator's heartbeat call. If a
        later aiokafka moves it, this member says it is never in contact (it refuses
        admissions) rather than in contact without knowing.
        """
        coordinator = getattr(consumer, "_coordinator", None)
        beat = getattr(coordinator, "_do_heartbeat", None)
        if coordinator is None or beat is None:
            _log.error("cannot watch the group's heartbeats; admissions will be refused")
            return

        async def watched() -> bool:
            sent = time.monotonic()  # the group knew of this member no later than this
            ok: bool = await beat()
            if ok:
                self._contact = max(self._contact, sent)
            return ok

        coordinator._do_heartbeat = watched
        self._watching = True
        self._contact = time.monotonic()

    def rebalancing(self) -> None:
        """A rebalance has begun: the partitions may go elsewhere, and the owners' table
        is stale until the assignment (which leaves it empty if the group chose round
        robin)."""
        self._rebalancing = True
        self._assignor.owners = {}

    def assigned(self) -> None:
        """The group has just taken this member in, with its partitions."""
        self._rebalancing = False
        self._contact = time.monotonic()

    async def close(self) -> None:
        if self._consumer is None:
            return
        try:
            # aiokafka leaves the group without a revoke callback; give the listener
            # its chance to persist and commit while this member still owns the partitions.
            held = self.assignment()
            if self._listener is not None and held:
                await self._listener.on_revoked(held)
        finally:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    def _live(self) -> AIOKafkaConsumer[bytes, bytes]:
        if self._consumer is None:
            raise LogClosed("the consumer is closed")
        return self._consumer

    def assignment(self) -> frozenset[TopicPartition]:
        if self._consumer is None:
            return frozenset()
        return frozenset(_from_kafka(tp) for tp in self._consumer.assignment())

    async def fetch(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        try:
            batches = await self._live().getmany(
                timeout_ms=int(timeout_s * 1000), max_records=max_records
            )
        except KafkaError as exc:
            raise LogUnavailable(f"fetch failed: {exc}") from exc
        return [_record(message) for tp in sorted(batches) for message in batches[tp]]

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            await self._live().commit({_to_kafka(tp): offset for tp, offset in offsets.items()})
        except KafkaError as exc:
            raise LogUnavailable(f"commit failed: {exc}") from exc

    async def committed(self, tp: TopicPartition) -> int | None:
        try:
            offset: int | None = await self._live().committed(_to_kafka(tp))
        except KafkaError as exc:
            raise LogUnavailable(f"cannot read the committed offset: {exc}") from exc
        return offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._live().seek(_to_kafka(tp), offset)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._live().pause(*(_to_kafka(tp) for tp in partitions))

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._live().resume(*(_to_kafka(tp) for tp in partitions))

    def owners(self) -> Mapping[int, str]:
        return self._assignor.owners.get(self._topics[0], {})

    def in_contact(self, within_s: float) -> bool:
        if self._consumer is None or not self._watching or self._rebalancing:
            return False
        return time.monotonic() - self._contact <= within_s

    async def position(self, tp: TopicPartition) -> int | None:
        consumer = self._live()
        if _to_kafka(tp) not in consumer.assignment():
            return None
        position: int = await consumer.position(_to_kafka(tp))
        return position
