"""Index stores on both backends: real SQLite files, the real broker's changelog.

The crash cases follow the checkpoint's order: index writes first, the mark
(with `upto`) after. A batch whose `upto` never reached a mark was written by a
checkpoint that did not complete; a restore from the earlier mark must see the
values from before it.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from service.log.base import EventLog, LogUnavailable, TopicPartition
from service.log.kafka import KafkaLog
from service.store import IndexStore, IndexStoreError, IndexStores, KafkaIndexStore
from service.store.changelog import ChangelogWriter
from service.store.local import RocksEntries
from service.store.stores import PIECE, WRITE_PIECE
from tests.conftest import LogOpener

DAY = 740_000


def key(oa: str, kind: str, name: str) -> bytes:
    return f"{oa}\x00{kind}\x00{name}".encode()


@pytest.fixture
async def log(log_factory: LogOpener) -> EventLog:
    return await log_factory(partitions=2)


@pytest.fixture
async def stores(log: EventLog, tmp_path: Path) -> AsyncIterator[IndexStores]:
    opened = IndexStores(log, state_dir=tmp_path / "state", cache_mb=8)
    await opened.start()
    yield opened
    await opened.close()


class Opener:
    """Opens a partition's store again, as a restart would, closing the one before."""

    def __init__(self, stores: IndexStores) -> None:
        self.stores = stores
        self.current: IndexStore | None = None

    async def __call__(
        self, upto: int = -1, void: list[tuple[int, int]] | None = None, partition: int = 1
    ) -> tuple[IndexStore, list[tuple[int, int]]]:
        await self.close()
        self.current = self.stores.store(partition)
        found = await self.current.open(upto=upto, void=void or [])
        return self.current, found

    async def close(self) -> None:
        if self.current is not None:
            await self.current.close()
            self.current = None


@pytest.fixture
async def reopen(stores: IndexStores) -> AsyncIterator[Opener]:
    opener = Opener(stores)
    yield opener
    await opener.close()


A, B, C = key("oa1", "msg", "a"), key("oa1", "msg", "b"), key("oa2", "rcp", "c")


async def test_a_confirmed_batch_is_read_back_after_a_restart(reopen: Opener) -> None:
    store, void = await reopen()
    assert void == []
    upto = await store.write({A: (None, b"a1", DAY), B: (None, b"b1", DAY)})
    assert store.get(A) == b"a1"
    assert await store.get_many([A, B, C]) == {A: b"a1", B: b"b1", C: None}
    store, void = await reopen(upto=upto)
    assert void == []
    assert store.get(A) == b"a1"  # from the file: a new opening caches nothing of the old
    assert await store.get_many([A, B, C]) == {A: b"a1", B: b"b1", C: None}


async def test_a_read_beside_a_write_caches_what_the_write_did_not_change(
    reopen: Opener,
) -> None:
    many = [key("oa1", "rcp", str(i)) for i in range(3_000)]
    store, _ = await reopen()
    upto = await store.write({k: (None, b"v1", DAY) for k in many})
    store, _ = await reopen(upto=upto)
    cached = len(store.cache)
    written = many[2_000:2_100]
    # The read is under way when the write begins, and its values are cached in pieces
    # while the write lands: the write's keys may have been read before it.
    read, _ = await asyncio.gather(
        store.get_many(many), store.write({k: (b"v1", b"v2", DAY) for k in written})
    )
    assert set(read) == set(many)
    assert all(store.get(k) == b"v2" for k in written)  # never the value read before
    assert all(store.get(k) == b"v1" for k in many[:2_000])
    # Every key is cached: the write's by the write, the others by the read.
    assert len(store.cache) == cached + len(many)


async def test_a_batch_whose_checkpoint_did_not_complete_is_not_seen_after_a_restore(
    reopen: Opener,
) -> None:
    store, _ = await reopen()
    mark = await store.write({A: (None, b"a1", DAY)})
    unconfirmed = await store.write({A: (b"a1", b"a2", DAY), B: (None, b"b1", DAY)})
    assert unconfirmed > mark
    # The crash: the mark still says `mark`.
    store, void = await reopen(upto=mark)
    assert void == [(mark, unconfirmed)]
    assert store.get(A) == b"a1"
    assert await store.get_many([A, B]) == {A: b"a1", B: None}


async def test_a_batch_written_in_pieces_is_void_as_a_whole_after_a_crash(
    reopen: Opener,
) -> None:
    many = [key("oa1", "rcp", str(i)) for i in range(WRITE_PIECE * 3 + 7)]
    store, _ = await reopen()
    mark = await store.write({k: (None, b"v1", DAY) for k in many})
    unconfirmed = await store.write({k: (b"v1", b"v2", DAY) for k in many})
    assert await store.get_many(many) == dict.fromkeys(many, b"v2")
    # The crash: the mark still says `mark`, whatever pieces of the second batch landed.
    store, void = await reopen(upto=mark)
    assert void == [(mark, unconfirmed)]
    assert await store.get_many(many) == dict.fromkeys(many, b"v1")


async def test_a_second_crash_before_any_new_mark_extends_the_void_range(reopen: Opener) -> None:
    store, _ = await reopen()
    mark = await store.write({A: (None, b"a1", DAY)})
    await store.write({A: (b"a1", b"a2", DAY)})
    store, void = await reopen(upto=mark)
    # Folded again after the first restore, written again, and lost again.
    second = await store.write({A: (b"a1", b"a2", DAY), C: (None, b"c1", DAY)})
    store, void = await reopen(upto=mark)  # the old mark still: its void list was never written
    assert void == [(mark, second)]
    assert await store.get_many([A, C]) == {A: b"a1", C: None}


async def test_a_confirmed_batch_after_a_void_one_is_seen_and_the_void_one_still_not(
    reopen: Opener,
) -> None:
    store, _ = await reopen()
    mark = await store.write({A: (None, b"a1", DAY), B: (None, b"b1", DAY)})
    await store.write({A: (b"a1", b"a2", DAY), B: (b"b1", b"b2", DAY)})
    store, void = await reopen(upto=mark)
    assert store.get(B) == b"b1"
    confirmed = await store.write({A: (b"a1", b"a3", DAY)})
    assert store.get(A) == b"a3"
    assert store.get(B) == b"b1"
    store, next_void = await reopen(upto=confirmed, void=void)
    assert next_void == void  # nothing past the new mark
    assert await store.get_many([A, B]) == {A: b"a3", B: b"b1"}


async def test_a_deletion_whose_checkpoint_did_not_complete_leaves_the_entry(
    reopen: Opener,
) -> None:
    store, _ = await reopen()
    mark = await store.write({A: (None, b"a1", DAY)})
    await store.write({A: (b"a1", None, DAY)})
    assert store.get(A) is None
    store, _ = await reopen(upto=mark)
    assert store.get(A) == b"a1"


async def test_expiry_deletes_by_day_what_expired_and_nothing_else(reopen: Opener) -> None:
    store, _ = await reopen()
    await store.write({A: (None, b"a", DAY - 2), B: (None, b"b", DAY - 1), C: (None, b"c", DAY)})
    assert store.get(A) == b"a"  # cached: expiry must drop it from the cache too
    assert await store.expire(DAY) == 2
    assert await store.get_many([A, B, C]) == {A: None, B: None, C: b"c"}
    assert store.get(A) is None
    assert await store.expire(DAY) == 0
    store, _ = await reopen(upto=store.upto)
    assert await store.get_many([A, B, C]) == {A: None, B: None, C: b"c"}


async def test_an_oa_is_dropped_by_its_key_prefix_alone(reopen: Opener) -> None:
    store, _ = await reopen()
    other = key("oa10", "msg", "a")  # "oa1" is a prefix of its id, not of its keys
    upto = await store.write({A: (None, b"a", DAY), B: (None, b"b", DAY), other: (None, b"x", DAY)})
    assert await store.drop_oa("oa1") == 2
    store, _ = await reopen(upto=upto)
    assert await store.get_many([A, B, other]) == {A: None, B: None, other: b"x"}


async def test_partitions_keep_their_entries_apart(reopen: Opener, stores: IndexStores) -> None:
    store, _ = await reopen(partition=1)
    await store.write({A: (None, b"p1", DAY)})
    other = stores.store(0)
    await other.open(upto=-1, void=[])
    try:
        assert other.get(A) is None
    finally:
        await other.close()


async def test_a_mark_ahead_of_the_store_is_refused(reopen: Opener) -> None:
    store, _ = await reopen()
    upto = await store.write({A: (None, b"a1", DAY)})
    await reopen.close()
    with pytest.raises(IndexStoreError, match="cannot be restored"):
        await reopen(upto=upto + 10)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_embedded_stores_are_tables_of_the_log_file(
    reopen: Opener, log: EventLog, tmp_path: Path
) -> None:
    store, _ = await reopen()
    await store.write({A: (None, b"a1", DAY)})
    with sqlite3.connect(tmp_path / "log.db") as conn:
        assert conn.execute("SELECT count(*) FROM index_entries").fetchone() == (1,)
    assert not (tmp_path / "state").exists()


# --- Kafka: the local store and its changelog ---------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def kafka_only(test: F) -> F:
    """Run on the Kafka backend alone (and carry the `kafka` marker, which the dynamic
    `kafka_bootstrap` of `log_factory` would not give it)."""
    marked: F = pytest.mark.kafka(
        pytest.mark.parametrize("backend", ["kafka"], indirect=True)(test)
    )
    return marked


def local_dir(stores: IndexStores, log: EventLog, partition: int = 1) -> Path:
    return stores.state_dir / log.topics.prefix / str(partition)


async def all_values(store: IndexStore, keys: list[bytes]) -> dict[bytes, bytes | None]:
    return await store.get_many(keys)


KEYS = [key("oa1", "rcp", str(i)) for i in range(300)]


@kafka_only
async def test_kafka_a_restart_with_the_local_store_intact_reads_only_the_tail(
    reopen: Opener, stores: IndexStores, log: EventLog
) -> None:
    store, _ = await reopen()
    await store.write({k: (None, b"v1", DAY) for k in KEYS[:200]})
    await reopen.close()
    kept = local_dir(stores, log).with_name("kept")
    shutil.copytree(local_dir(stores, log), kept)
    store, _ = await reopen(upto=199)
    assert store.records_read == 0
    upto = await store.write(
        {k: (b"v1" if k in KEYS[:200] else None, b"v2", DAY) for k in KEYS[150:]}
    )
    await reopen.close()
    shutil.rmtree(local_dir(stores, log))
    kept.rename(local_dir(stores, log))  # the file as it was before the second batch
    store, void = await reopen(upto=upto)
    assert store.records_read == 150  # the second batch, nothing else
    assert void == []
    values = await all_values(store, KEYS)
    assert values == {k: b"v1" if i < 150 else b"v2" for i, k in enumerate(KEYS)}


@kafka_only
async def test_kafka_a_deleted_local_store_is_rebuilt_equal_from_the_changelog(
    reopen: Opener, stores: IndexStores, log: EventLog
) -> None:
    store, _ = await reopen()
    mark = await store.write({k: (None, b"v1", DAY - (i % 3)) for i, k in enumerate(KEYS)})
    # Each key twice in the changelog: compaction may keep only this newer record.
    await store.write({k: (b"v1", b"v2", DAY) for k in KEYS[:100]})
    expired = [k for i, k in enumerate(KEYS) if i >= 100 and i % 3 == 2]
    assert await store.expire(DAY - 1) == len(expired)  # tombstones, in the changelog too
    before = await all_values(store, KEYS)
    upto = store.upto
    await reopen.close()
    shutil.rmtree(local_dir(stores, log))
    store, void = await reopen(upto=upto)
    assert store.records_read == len(KEYS) + 100 + len(expired)
    assert void == []
    assert await all_values(store, KEYS) == before
    # The same changelog restored from the first mark: the second batch was never confirmed.
    await reopen.close()
    shutil.rmtree(local_dir(stores, log))
    store, void = await reopen(upto=mark)
    assert void == [(mark, upto)]
    # Expired entries stay deleted: expiry depends on the day alone, not on the checkpoint.
    assert await all_values(store, KEYS) == {k: None if k in expired else b"v1" for k in KEYS}


@kafka_only
@pytest.mark.parametrize("tamper", ["ahead of the changelog", "another cluster"])
async def test_kafka_a_local_store_that_does_not_match_its_changelog_is_rebuilt(
    reopen: Opener, stores: IndexStores, log: EventLog, tamper: str
) -> None:
    store, _ = await reopen()
    upto = await store.write({k: (None, b"v1", DAY) for k in KEYS[:50]})
    await reopen.close()
    local = RocksEntries(local_dir(stores, log))
    try:
        found = local.find()
        assert found is not None
        source, next_id = found
        if tamper == "another cluster":
            local.reset(source.replace("kafka:", "kafka:elsewhere-", 1))
        else:
            next_id += 1000
        # An entry the changelog never had: a rebuilt store no longer holds it.
        local.put_rows([(b"stray", 0, None, b"x", DAY)], next_id)
    finally:
        local.close()
    store, _ = await reopen(upto=upto)
    assert store.records_read == 50
    assert store.get(b"stray") is None
    assert await all_values(store, KEYS[:50]) == {k: b"v1" for k in KEYS[:50]}


@kafka_only
async def test_kafka_expiry_writes_tombstones_to_the_changelog(
    reopen: Opener, log: EventLog
) -> None:
    store, _ = await reopen()
    await store.write({A: (None, b"a", DAY - 1), C: (None, b"c", DAY)})
    assert await store.expire(DAY) == 1
    assert isinstance(store, KafkaIndexStore)
    records = await log.read(TopicPartition(log.topics.oa_index, 1), 0, 10)
    assert [(r.key, r.value == b"") for r in records][-1] == (A, True)


@kafka_only
async def test_kafka_the_index_changelog_is_compacted_and_partitioned_as_the_events(
    log: EventLog, kafka_bootstrap: str
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, log.topics.oa_index)]
        )
        (described,) = await admin.describe_topics([log.topics.oa_index])
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"
    assert len(described["partitions"]) == log.partitions


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_embedded_appends_and_index_writes_share_the_file(
    reopen: Opener, log: EventLog
) -> None:
    store, _ = await reopen()
    positions, upto = await asyncio.gather(
        asyncio.gather(*(log.append(log.topics.events, b"oa1", b"%d" % i) for i in range(200))),
        store.write({key("oa1", "rcp", str(i)): (None, b"v", DAY) for i in range(2000)}),
    )
    assert [p.offset for p in positions] == list(range(200))
    assert upto == 1999
    assert len(await log.read(TopicPartition(log.topics.events, 1), 0, 500)) == 200


@kafka_only
async def test_kafka_a_store_whose_write_failed_reads_as_before_it_and_writes_once_opened_again(
    reopen: Opener, stores: IndexStores
) -> None:
    """The fold goes on reading (a record half folded because a read failed would be
    folded again whole); no write is taken until the store is opened from the mark."""
    store, _ = await reopen()
    upto = await store.write({A: (None, b"a1", DAY)})
    await stores.close()  # the changelog's producer is gone: the next write fails
    with pytest.raises(LogUnavailable):
        await store.write({A: (b"a1", b"a2", DAY)})
    assert store.broken
    assert store.get(A) == b"a1"
    assert await store.get_many([A, B]) == {A: b"a1", B: None}
    with pytest.raises(LogUnavailable, match="open it again"):
        await store.put({A: (b"a3", DAY)}, upto=upto, void=[])
    await stores.start()
    store, void = await reopen(upto=upto)
    assert void == []
    assert store.get(A) == b"a1"


async def test_values_read_during_a_write_are_not_cached_over_the_values_it_wrote(
    reopen: Opener,
) -> None:
    store, _ = await reopen()
    upto = await store.write({A: (None, b"v1", DAY), B: (None, b"b1", DAY)})
    store, _ = await reopen(upto=upto)  # nothing cached
    # The read starts while the write is under way: it resolves A as of before the write.
    reading = asyncio.create_task(store.get_many([A, B]))
    await store.write({A: (b"v1", b"v2", DAY)})
    assert await reading == {A: b"v1", B: b"b1"}
    assert store.get(A) == b"v2"


async def test_a_write_waiting_for_another_keeps_its_values_cached(reopen: Opener) -> None:
    keys = [key("oa1", "rcp", str(i)) for i in range(300_000)]
    store, _ = await reopen()
    last = keys[-1]
    first = asyncio.create_task(store.write({k: (None, b"v1", DAY) for k in keys}))
    await asyncio.sleep(0)
    second = asyncio.create_task(store.write({last: (b"v1", b"v2", DAY)}))
    await asyncio.gather(first, second)
    assert store.get(last) == b"v2"


async def test_writes_no_mark_included_read_after_a_restore_as_the_mark_saw_them(
    reopen: Opener,
) -> None:
    """A checkpoint whose mark failed, then another, then a crash: however many writes no
    mark included, a restore from the last mark reads each entry as that mark saw it."""
    store, _ = await reopen()
    marked = await store.put({A: (b"a1", DAY)}, upto=-1, void=[])
    await store.put({A: (b"a2", DAY), B: (b"b2", DAY)}, upto=marked, void=[])  # mark failed
    await store.put({A: (b"a3", DAY), B: (b"b3", DAY)}, upto=marked, void=[])  # then a crash
    assert store.get(A) == b"a3"
    store, void = await reopen(upto=marked)
    assert void, "what no mark included is void"
    assert (store.get(A), store.get(B)) == (b"a1", None)


async def test_a_value_the_store_holds_already_is_not_written_again(reopen: Opener) -> None:
    store, _ = await reopen()
    marked = await store.put({A: (b"a1", DAY)}, upto=-1, void=[])
    assert await store.put({A: (b"a1", DAY)}, upto=marked, void=[]) == marked


def contents(path: Path) -> dict[bytes, bytes]:
    """Every key and value of a closed local store: entries, by-day keys and meta."""
    local = RocksEntries(path)
    out: dict[bytes, bytes] = {}
    try:
        for found, value in local._db.items():
            assert isinstance(found, bytes)
            assert isinstance(value, bytes)
            out[found] = value
        return out
    finally:
        local.close()


MANY = [key(f"oa{i % 3}", "rcp", f"{i:05d}") for i in range(7_000)]


async def fill_across_pieces(store: IndexStore) -> None:
    """More changelog records than two pieces of a rebuild, keys written again in later
    pieces on other days, tombstones, and keys written again after their tombstones."""
    await store.write({k: (None, b"v1", DAY - i % 3) for i, k in enumerate(MANY)})
    await store.write({k: (b"v1", b"v2", DAY + 1 + i % 2) for i, k in enumerate(MANY[::2])})
    assert await store.expire(DAY - 1) > 0  # the odd keys still on DAY - 2 and DAY - 1
    assert await store.drop_oa("oa2") > 0
    await store.write({k: (None, b"v3", DAY - 2) for k in MANY[:600]})


@kafka_only
async def test_kafka_a_rebuilt_store_equals_the_live_one_key_by_key(
    reopen: Opener, stores: IndexStores, log: EventLog
) -> None:
    store, _ = await reopen()
    await fill_across_pieces(store)
    upto = store.upto
    values = await all_values(store, MANY)
    await reopen.close()
    live = contents(local_dir(stores, log))
    shutil.rmtree(local_dir(stores, log))
    store, void = await reopen(upto=upto)
    assert store.records_read == upto + 1 > 2 * PIECE  # three pieces
    assert void == []
    assert await all_values(store, MANY) == values
    await reopen.close()
    assert contents(local_dir(stores, log)) == live
    store, _ = await reopen(upto=upto)
    assert store.records_read == 0
    # Its by-day keys are whole: an expiry of every day finds every entry once.
    assert await store.expire(DAY + 3) == sum(v is not None for v in values.values())


@kafka_only
async def test_kafka_a_rebuild_stopped_midway_goes_on_when_opened_again_and_ends_equal(
    reopen: Opener, stores: IndexStores, log: EventLog
) -> None:
    store, _ = await reopen()
    await fill_across_pieces(store)
    upto = store.upto
    await reopen.close()
    live = contents(local_dir(stores, log))
    shutil.rmtree(local_dir(stores, log))
    store = stores.store(1)
    opening = asyncio.create_task(store.open(upto=upto, void=[]))
    while store.records_read < PIECE and not opening.done():
        await asyncio.sleep(0)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    await store.close()
    cut = RocksEntries(local_dir(stores, log))
    try:
        found = cut.find()
        assert found is not None
        assert 0 < found[1] <= upto  # stopped after a piece, before the end
        assert not cut.days_indexed
    finally:
        cut.close()
    store, void = await reopen(upto=upto)
    assert store.records_read == upto + 1 - found[1]  # only what it had not read yet
    assert void == []
    await reopen.close()
    assert contents(local_dir(stores, log)) == live


@kafka_only
async def test_kafka_a_stream_reads_every_record_of_a_partition_once_in_order(
    log: EventLog,
) -> None:
    assert isinstance(log, KafkaLog)
    tp = TopicPartition(log.topics.oa_index, 1)
    writer = ChangelogWriter(log.bootstrap_servers)
    await writer.start()
    try:
        sent = [(b"k%05d" % i, None if i % 7 == 0 else b"v%d" % i) for i in range(12_000)]
        offsets = await writer.send(tp.topic, tp.partition, sent)
        end = offsets[-1] + 1
        pieces = [piece async for piece in log.stream(tp, 0, end, piece=5_000)]
        assert [len(piece) for piece in pieces] == [5_000, 5_000, 2_000]
        expected = [(o, k, v or b"") for o, (k, v) in zip(offsets, sent, strict=True)]
        assert [record for piece in pieces for record in piece] == expected
        # From the middle, to an end the partition has gone past since: up to the end only.
        await writer.send(tp.topic, tp.partition, [(b"later", b"x")])
        middle = [r async for piece in log.stream(tp, 4_321, 9_000, piece=999) for r in piece]
        assert middle == expected[4_321:9_000]
        assert [piece async for piece in log.stream(tp, end + 1, end + 1)] == []
    finally:
        await writer.close()
