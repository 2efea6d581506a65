"""The event-log contract, run unchanged against the embedded log and a real Kafka broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from service.log.base import (
    EventLog,
    LogClosed,
    LogConfigError,
    LogConsumer,
    Record,
    TopicPartition,
    partition_for,
)
from service.log.embedded import EmbeddedLog
from tests.conftest import ROOT, LogOpener


async def drain(consumer: LogConsumer, count: int, timeout_s: float = 30.0) -> list[Record]:
    """Fetch until `count` records came (or fail after `timeout_s`)."""
    records: list[Record] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(records) < count:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"only {len(records)} of {count} records arrived")
        records.extend(await consumer.fetch(max_records=count - len(records), timeout_s=0.5))
    return records


async def test_append_reports_position_and_order_per_key(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=3)
    keys = [b"oa-1", b"oa-2", b"oa-3", b"388613280878808645"]
    sent: dict[bytes, list[tuple[int, int, bytes]]] = defaultdict(list)
    for i in range(40):
        key = keys[i % len(keys)]
        value = f"{key.decode()}:{i}".encode()
        position = await log.append(log.topics.events, key, value)
        assert position.topic == log.topics.events
        assert position.partition == partition_for(key, 3)
        sent[key].append((position.partition, position.offset, value))

    for key, items in sent.items():
        offsets = [offset for _, offset, _ in items]
        assert offsets == sorted(offsets), f"offsets of {key!r} not increasing"
        partition = items[0][0]
        records = await log.read(TopicPartition(log.topics.events, partition), 0, 1000)
        mine = [r.value for r in records if r.key == key]
        assert mine == [value for _, _, value in items]


async def test_consumer_group_reads_everything_in_order(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=3)
    values = {f"oa-{k}".encode(): [f"{k}-{i}".encode() for i in range(10)] for k in range(5)}
    for i in range(10):
        for key, vals in values.items():
            await log.append(log.topics.events, key, vals[i])

    consumer = log.consumer("g-order", [log.topics.events])
    await consumer.start()
    try:
        records = await drain(consumer, 50)
    finally:
        await consumer.close()
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for record in records:
        assert record.key is not None
        by_key[record.key].append(record.value)
    assert by_key == values


async def test_partition_is_the_kafka_default_partitioner(
    log_factory: LogOpener, kafka_bootstrap: str
) -> None:
    """Whatever the backend, a key lands where Kafka's own client would put it."""
    log = await log_factory(partitions=12)
    producer: AIOKafkaProducer[bytes, bytes] = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    topic = f"{log_factory.prefix}-partitioner"
    try:
        # The topic must exist with 12 partitions; borrow the events topic's layout.
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 12, 1)])
        finally:
            await admin.close()
        for n in range(60):
            key = str(388613280878808645 + n * 7919).encode()
            mine = await log.append(log.topics.events, key, b"x")
            theirs = await producer.send_and_wait(topic, b"x", key=key)  # client's partitioner
            assert mine.partition == theirs.partition, key
    finally:
        await producer.stop()


async def test_headers_and_bytes_are_kept(log_factory: LogOpener) -> None:
    log = await log_factory()
    headers = (
        ("kind", b"webhook"),
        ("event_name", b"user_received_message"),
        ("binary", bytes(range(256))),
        ("empty", b""),
    )
    value = bytes(range(256)) * 4
    position = await log.append(log.topics.events, b"oa", value, headers)
    [record] = await log.read(
        TopicPartition(position.topic, position.partition), position.offset, 1
    )
    assert record.value == value
    assert record.key == b"oa"
    assert record.headers == headers
    assert record.header("kind") == b"webhook"
    assert record.header("missing") is None
    assert record.timestamp_ms > 0


async def test_committed_positions_survive_close_and_reopen(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=1)
    for i in range(10):
        await log.append(log.topics.events, b"oa", str(i).encode())
    tp = TopicPartition(log.topics.events, 0)

    consumer = log.consumer("g-resume", [log.topics.events])
    await consumer.start()
    first = await drain(consumer, 10)
    assert [r.value for r in first] == [str(i).encode() for i in range(10)]
    await consumer.commit({tp: 6})  # the next to read is offset 6
    assert await consumer.committed(tp) == 6
    await consumer.close()
    await log.close()

    log = await log_factory(partitions=1)
    consumer = log.consumer("g-resume", [log.topics.events])
    await consumer.start()
    try:
        again = await drain(consumer, 4)
        assert [r.offset for r in again] == [6, 7, 8, 9]
        assert await consumer.committed(tp) == 6
        # Another group starts from the beginning.
        other = log.consumer("g-other", [log.topics.events])
        await other.start()
        try:
            assert [r.offset for r in await drain(other, 10)] == list(range(10))
        finally:
            await other.close()
    finally:
        await consumer.close()


async def test_seek_and_end_offsets(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=1)
    tp = TopicPartition(log.topics.events, 0)
    assert await log.end_offsets([tp]) == {tp: 0}
    for i in range(5):
        await log.append(log.topics.events, b"k", str(i).encode())
    assert await log.end_offsets([tp]) == {tp: 5}

    consumer = log.consumer("g-seek", [log.topics.events])
    await consumer.start()
    try:
        await drain(consumer, 5)
        consumer.seek(tp, 2)
        assert [r.offset for r in await drain(consumer, 3)] == [2, 3, 4]
        assert await consumer.position(tp) == 5
        assert await consumer.fetch(timeout_s=0.2) == []
    finally:
        await consumer.close()


async def test_fetch_wakes_up_for_a_new_record(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=2)
    consumer = log.consumer("g-wake", [log.topics.events])
    await consumer.start()
    try:
        await consumer.fetch(timeout_s=0.5)  # joins the group on Kafka
        waiting = asyncio.create_task(drain(consumer, 1, timeout_s=20))
        await asyncio.sleep(0.2)
        await log.append(log.topics.events, b"late", b"hello")
        [record] = await waiting
        assert record.value == b"hello"
    finally:
        await consumer.close()


async def test_rebalance_listener_is_told(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=2)
    seen: list[tuple[str, frozenset[TopicPartition]]] = []

    class Listener:
        async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
            seen.append(("assigned", partitions))

        async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
            seen.append(("revoked", partitions))

    consumer = log.consumer("g-listen", [log.topics.events], Listener())
    await consumer.start()
    deadline = asyncio.get_running_loop().time() + 30
    while not consumer.assignment() and asyncio.get_running_loop().time() < deadline:
        await consumer.fetch(timeout_s=0.2)
    everything = frozenset(TopicPartition(log.topics.events, p) for p in range(2))
    assert consumer.assignment() == everything
    await consumer.close()
    assert ("assigned", everything) in seen
    assert seen[-1] == ("revoked", everything)


async def test_closed_log_refuses_appends(log_factory: LogOpener) -> None:
    log = await log_factory()
    await log.close()
    with pytest.raises(LogClosed):
        await log.append(log.topics.events, b"k", b"v")
    await log.close()  # idempotent


async def test_partition_count_must_match_the_existing_log(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=3)
    await log.append(log.topics.events, b"k", b"v")
    await log.close()
    with pytest.raises(LogConfigError, match="partitions"):
        await log_factory(partitions=4)


async def test_every_topic_exists_after_start(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=2)
    for topic in log.topics.all():
        position = await log.append(topic, b"k", b"v")
        assert position.topic == topic


def _spawn_appender(opener: LogOpener, key: str, value: str) -> subprocess.Popen[str]:
    where = opener.where
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.append_child",
            opener.backend,
            where,
            opener.prefix,
            "3",
            key,
            value,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_an_acknowledged_record_survives_sigkill(log_factory: LogOpener) -> None:
    child = _spawn_appender(log_factory, "388613280878808645", "durable")
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), timeout=60)
        assert line, "the child did not report an offset"
        where = orjson.loads(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    log: EventLog = await log_factory(partitions=3)
    tp = TopicPartition(log.topics.events, where["partition"])
    records = await log.read(tp, where["offset"], 1)
    assert [(r.offset, r.key, r.value) for r in records] == [
        (where["offset"], b"388613280878808645", b"durable")
    ]


@pytest.mark.parametrize("backend", [pytest.param("kafka", marks=pytest.mark.kafka)])
async def test_two_members_of_a_group_share_the_partitions(log_factory: LogOpener) -> None:
    """Kafka only: the embedded log serves one process, so one member holds everything."""
    log = await log_factory(partitions=4)
    everything = frozenset(TopicPartition(log.topics.events, p) for p in range(4))
    first = log.consumer("g-share", [log.topics.events])
    second = log.consumer("g-share", [log.topics.events])
    await first.start()
    await second.start()
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            await asyncio.gather(first.fetch(timeout_s=0.2), second.fetch(timeout_s=0.2))
            a, b = first.assignment(), second.assignment()
            if a and b and a | b == everything:
                break
            assert asyncio.get_running_loop().time() < deadline, f"no shared assignment: {a} {b}"
        assert not a & b
        for n in range(40):
            await log.append(log.topics.events, f"oa-{n}".encode(), str(n).encode())
        got: list[Record] = []
        deadline = asyncio.get_running_loop().time() + 60
        while len(got) < 40 and asyncio.get_running_loop().time() < deadline:
            batches = await asyncio.gather(first.fetch(timeout_s=0.2), second.fetch(timeout_s=0.2))
            for member, batch in zip((a, b), batches, strict=True):
                assert all(r.topic_partition in member for r in batch)
                got.extend(batch)
        assert sorted(int(r.value) for r in got) == list(range(40))
    finally:
        await first.close()
        await second.close()


async def test_embedded_group_has_one_member(tmp_path: Path) -> None:

    log = EmbeddedLog(tmp_path / "one.db", partitions=2)
    await log.start()
    try:
        first = log.consumer("g", [log.topics.events])
        await first.start()
        with pytest.raises(LogConfigError, match="one member"):
            await log.consumer("g", [log.topics.events]).start()
        await first.close()
        again = log.consumer("g", [log.topics.events])  # the group is free again
        await again.start()
        await again.close()
    finally:
        await log.close()


async def test_embedded_file_serves_one_process_at_a_time(tmp_path: Path) -> None:

    path = tmp_path / "shared.db"
    first = EmbeddedLog(path, partitions=2)
    await first.start()
    try:
        with pytest.raises(LogConfigError, match="in use"):
            await EmbeddedLog(path, partitions=2).start()
    finally:
        await first.close()
    second = EmbeddedLog(path, partitions=2)  # free once the first closed
    await second.start()
    await second.close()


async def test_embedded_retention_removes_old_events_and_keeps_offsets(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "retained.db", partitions=1, retention_days=1)
    await log.start()
    try:
        tp = TopicPartition(log.topics.events, 0)
        for i in range(3):
            await log.append(log.topics.events, b"oa", str(i).encode())
        await log.append(log.topics.decisions, b"oa", b"kept: not the events topic")
        assert await log.purge_expired() == 0  # nothing is a day old yet
        two_days_later = int(time.time() * 1000) + 2 * 86_400_000
        assert await log.purge_expired(now_ms=two_days_later) == 3
        assert await log.read(tp, 0) == []
        position = await log.append(log.topics.events, b"oa", b"after")
        assert position.offset == 3  # offsets are never reused
        decisions = TopicPartition(log.topics.decisions, 0)
        assert [r.value for r in await log.read(decisions, 0)] == [b"kept: not the events topic"]
    finally:
        await log.close()


async def test_concurrent_appends_each_get_their_own_position(log_factory: LogOpener) -> None:
    """Appends made together share batches; every returned position holds its own record."""
    log = await log_factory(partitions=3)
    values = [f"record-{n}".encode() for n in range(300)]
    positions = await asyncio.gather(
        *(log.append(log.topics.events, f"oa-{n % 7}".encode(), v) for n, v in enumerate(values))
    )
    assert len({(p.partition, p.offset) for p in positions}) == len(values)
    for value, position in zip(values, positions, strict=True):
        tp = TopicPartition(position.topic, position.partition)
        [record] = await log.read(tp, position.offset, 1)
        assert (record.offset, record.value) == (position.offset, value)


async def test_a_malformed_append_is_refused_and_the_log_goes_on(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=1)
    with pytest.raises(TypeError, match="header"):
        await log.append(log.topics.events, b"oa", b"v", (("kind", "not bytes"),))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await log.append(log.topics.events, b"oa", "not bytes")  # type: ignore[arg-type]
    position = await log.append(log.topics.events, b"oa", b"fine", timeout_s=30)
    [record] = await log.read(TopicPartition(position.topic, 0), position.offset, 1)
    assert record.value == b"fine"


async def test_embedded_file_is_in_wal_mode(tmp_path: Path) -> None:
    import sqlite3

    log = EmbeddedLog(tmp_path / "wal.db", partitions=1)
    await log.start()
    await log.close()
    with sqlite3.connect(tmp_path / "wal.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_an_explicit_partition_wins_over_the_key(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=3)
    key = b"388613280878808645"
    other = (log.partition_for(key) + 1) % 3
    position = await log.append(log.topics.oa_state, key, b"v", partition=other)
    assert position.partition == other
    with pytest.raises(ValueError, match="partition"):
        await log.append(log.topics.oa_state, key, b"v", partition=3)


async def test_compaction_keeps_the_newest_record_of_each_key_below_the_bound(
    log_factory: LogOpener,
) -> None:
    log = await log_factory(partitions=1)
    topic = log.topics.oa_state
    for value in (b"a1", b"b1", b"a2", b"b2", b"a3"):
        await log.append(topic, value[:1], value)
    tp = TopicPartition(topic, 0)
    removed = await log.compact(tp, below=4)  # a3 (offset 4) is above the bound
    kept = [(r.offset, r.value) for r in await log.read(tp, 0, 100)]
    if log.backend == "embedded":
        assert removed == 2
        assert kept == [(2, b"a2"), (3, b"b2"), (4, b"a3")]
        with pytest.raises(ValueError, match="compacted"):
            await log.compact(TopicPartition(log.topics.events, 0), below=1)
    else:  # Kafka's broker compacts by itself, on its own schedule
        assert removed == 0
        assert len(kept) == 5


@pytest.mark.parametrize("backend", ["kafka"], indirect=True)
async def test_kafka_snapshot_topic_is_compacted_early(
    log_factory: LogOpener, kafka_bootstrap: str
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    log = await log_factory(partitions=1)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, log.topics.oa_state)]
        )
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"
    assert configs["segment.ms"] == "3600000"
    assert configs["min.cleanable.dirty.ratio"] == "0.1"
