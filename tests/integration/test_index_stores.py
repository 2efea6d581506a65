"""The processor with its OAs' indexes in the partitions' index stores, on both backends:
a local store lost or not matching its changelog, expiry by the stores' day ranges, OAs
leaving memory and coming back, an old snapshot layout, a partition moving while a large
OA folds. Each compares with a clean pass of the same records, as `test_processor` does."""

from __future__ import annotations

import asyncio
import base64
import shutil
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.domain.state import index_key
from service.log.base import EventLog
from service.processor.runner import Processor
from service.processor.snapshots import mark_key, state_key
from tests import feed, zalo
from tests.conftest import TEST_STATE_DIR, LogOpener
from tests.integration.test_processor import (
    PARTITIONS,
    SETTINGS,
    Outcome,
    append_all,
    assert_same,
    caught_up,
    clean_pass,
    fold_to_end,
    move_to_a_second_and_back,
    options,
    read_topic,
    stored,
)


async def live_outcome(processor: Processor, expected: Outcome) -> Outcome:
    """The processor's states as they are now (indexes read from its stores), with the
    clean pass's decisions and dead letters (those are compared by `stored`)."""
    states: dict[str, Any] = {}
    for folder in processor.folders.values():
        for oa_id in sorted(folder.oa_ids()):
            states[oa_id] = (await folder.whole(oa_id)).to_document()
    return states, *expected[1:]


async def equal_live_then_stored(log: EventLog, processor: Processor, expected: Outcome) -> None:
    """The processor's states equal the clean pass as they are, and as stored once it has
    stopped (its last checkpoint)."""
    assert_same(await live_outcome(processor, expected), expected)
    await processor.close()
    assert_same(await stored(log), expected)


def local_stores(prefix: str) -> Path:
    return TEST_STATE_DIR / prefix


@pytest.mark.parametrize("backend", ["kafka"], indirect=True)
@pytest.mark.kafka
async def test_a_deleted_local_store_is_rebuilt_from_its_changelog_and_the_state_is_equal(
    log_factory: LogOpener,
) -> None:
    log = await log_factory(partitions=PARTITIONS)
    await append_all(log, feed.stream(seed=11, oas=8, messages=60))
    first = await caught_up(log)
    await first.close()
    assert local_stores(log_factory.prefix).is_dir()
    shutil.rmtree(local_stores(log_factory.prefix))

    again = await caught_up(log)
    expected = await clean_pass(log)
    assert sum(f.folded for f in again.folders.values()) == 0, "nothing folded again"
    assert sum(f.store.records_read for f in again.folders.values() if f.store) > 0
    await equal_live_then_stored(log, again, expected)


@pytest.mark.parametrize("backend", ["kafka"], indirect=True)
@pytest.mark.kafka
async def test_a_local_store_of_another_changelog_is_rebuilt_never_trusted(
    log_factory: LogOpener,
) -> None:
    """Another deployment's store in the place of this one's (a copied or reused state
    directory): its entries are not this log's, so the store is made again from the
    changelog."""
    log = await log_factory(partitions=PARTITIONS)
    await append_all(log, feed.stream(seed=12, oas=6, messages=40))
    first = await caught_up(log)
    await first.close()

    other_opener = LogOpener("kafka", log_factory.where)
    other = await other_opener(partitions=PARTITIONS)
    try:
        await append_all(other, feed.stream(seed=13, oas=6, messages=40))
        stranger = await caught_up(other)
        await stranger.close()
    finally:
        await other_opener.close_all()
    shutil.rmtree(local_stores(log_factory.prefix))
    shutil.copytree(local_stores(other_opener.prefix), local_stores(log_factory.prefix))

    again = await caught_up(log)
    expected = await clean_pass(log)
    assert sum(f.store.records_read for f in again.folders.values() if f.store) > 0
    assert_same(await live_outcome(again, expected), expected)
    await again.close()


async def test_expired_entries_leave_the_store_by_their_expiry_day(
    log_factory: LogOpener,
) -> None:
    """Messages are kept 8 days: once the partition's clock is past that, the store no
    longer holds them (a range delete by expiry day), and what is left equals the fold."""
    log = await log_factory(partitions=PARTITIONS)
    oa_id = "900011"
    day_one = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
    later = day_one + timedelta(days=10)
    await append_all(
        log,
        [
            feed.send("t1", "tr-old", day_one, msg_id="m-old", tag=2, oa_id=oa_id),
            feed.receipt("m-old", day_one + timedelta(minutes=1), oa_id=oa_id),
        ],
    )
    processor = await caught_up(log)
    folder = processor.folders[log.partition_for(oa_id.encode())]
    assert folder.store is not None
    old_key = index_key(oa_id, "messages", "m-old")
    async with asyncio.timeout(30):
        while old_key not in await folder.store.entries_of(oa_id):
            await asyncio.sleep(0.05)

    await append_all(log, [feed.send("t1", "tr-new", later, msg_id="m-new", tag=2, oa_id=oa_id)])
    async with asyncio.timeout(30):
        while folder.expired_day < processor.policies.day(later):
            await asyncio.sleep(0.05)
    held = await folder.store.entries_of(oa_id)
    assert index_key(oa_id, "messages", "m-new") in held
    assert old_key not in held
    assert not [key for key in held if b"tr-old" in key or b"m-old" in key], "its keys too"
    expected = await clean_pass(log)
    await equal_live_then_stored(log, processor, expected)


async def test_an_idle_oa_leaves_memory_and_answers_the_same_when_named_again(
    log_factory: LogOpener,
) -> None:
    log = await log_factory(partitions=PARTITIONS)
    settings = SETTINGS.model_copy(
        update={"processor": SETTINGS.processor.model_copy(update={"idle_evict_s": 0.2})}
    )
    raws = feed.stream(seed=14, oas=6, messages=40)
    await append_all(log, raws)
    processor = Processor(log, settings, options(log))
    await processor.start()
    await fold_to_end(processor, log, set(range(PARTITIONS)))
    expected = await clean_pass(log)
    before = await live_outcome(processor, expected)
    idle = set(before[0])

    def in_memory() -> set[str]:
        return {oa for f in processor.folders.values() for oa in f.states}

    async with asyncio.timeout(30):
        # Checkpoints come with records: another OA's keep them coming, and one lets the
        # idle OAs go once they have been unused long enough.
        while in_memory() & idle:
            await append_all(log, [feed.daily_quota(5000, datetime(2026, 6, 2, tzinfo=UTC))])
            await asyncio.sleep(0.3)
    assert zalo.OA_ID not in idle
    evicted = {oa for f in processor.folders.values() for oa in f.evicted}
    assert evicted >= idle
    expected = await clean_pass(log)
    after = await live_outcome(processor, expected)
    for oa_id in idle:
        assert after[0][oa_id] == before[0][oa_id], f"{oa_id} read back differs"
    assert not in_memory() & idle, "reading an OA to inspect it does not bring it back"

    # Named again by a record, an OA comes back and folds on from where it was.
    oa_id = sorted(idle)[0]
    at = datetime(2026, 6, 2, 1, 0, tzinfo=UTC)
    await append_all(log, [feed.send("t1", "tr-back", at, msg_id="m-back", tag=2, oa_id=oa_id)])
    await fold_to_end(processor, log, set(range(PARTITIONS)))
    folder = processor.folders[log.partition_for(oa_id.encode())]
    assert oa_id in folder.states
    expected = await clean_pass(log)
    await equal_live_then_stored(log, processor, expected)


async def test_a_snapshot_of_the_old_layout_is_rebuilt_from_the_log(
    log_factory: LogOpener,
) -> None:
    """Snapshots of schema version 1 held the indexes inline and no store write ids: they
    are not read (their OA is folded again from the log), nor is their mark."""
    log = await log_factory(partitions=PARTITIONS)
    await append_all(log, feed.stream(seed=15, oas=4, messages=30))
    expected = await clean_pass(log)
    ends = {p: len(await _events(log, p)) for p in range(PARTITIONS)}
    for oa_id, document in expected[0].items():
        partition = log.partition_for(oa_id.encode())
        wrong = {**document, "daily_quota": 1}  # were it read, the quota would show it
        chunk = _v1_chunk(oa_id, partition, wrong, log)
        await log.append(log.topics.oa_state, state_key(oa_id, 0), chunk, partition=partition)
    for partition in range(PARTITIONS):
        mark = {
            "schema_version": 1,
            "topic": log.topics.events,
            "partition": partition,
            "position": ends[partition] - 1,
            "clock_ms": None,
            "clocks": [],
        }
        await log.append(
            log.topics.oa_state, mark_key(partition), orjson.dumps(mark), partition=partition
        )
    processor = await caught_up(log)
    assert sum(f.folded for f in processor.folders.values()) > 0, "folded again from the log"
    await equal_live_then_stored(log, processor, expected)


@pytest.mark.parametrize("backend", ["kafka"], indirect=True)
@pytest.mark.kafka
async def test_a_partition_moved_between_two_instances_while_a_large_oa_folds(
    log_factory: LogOpener,
) -> None:
    """One OA with thousands of messages and its admissions: its partition moves to a
    second instance and back while it folds; no grant counts twice, the state is the
    clean pass's."""
    log = await log_factory(partitions=PARTITIONS)
    raws = feed.stream(seed=16, oas=1, messages=1500)
    cut = len(raws) // 3
    one = await move_to_a_second_and_back(
        log_factory, log, [raws[:cut], raws[cut : 2 * cut], raws[2 * cut :]]
    )
    expected = await clean_pass(log)
    large = next(iter(expected[0]))
    assert len(expected[0][large]["messages"]) > 1000
    await equal_live_then_stored(log, one, expected)


async def _events(log: EventLog, partition: int) -> list[Any]:
    return await read_topic(log, log.topics.events, partition)


def _v1_chunk(oa_id: str, partition: int, document: dict[str, Any], log: EventLog) -> bytes:
    packed = zlib.compress(orjson.dumps(document), 1)
    return orjson.dumps(
        {
            "schema_version": 1,
            "oa_id": oa_id,
            "topic": log.topics.events,
            "partition": partition,
            "position": document["position"],
            "shard": 0,
            "shards": 1,
            "encoding": "zlib+base64",
            "data": base64.b64encode(packed).decode(),
        }
    )


@pytest.mark.parametrize("backend", ["kafka"], indirect=True)
@pytest.mark.kafka
async def test_a_store_write_that_fails_takes_the_partition_again_from_its_checkpoint(
    log_factory: LogOpener,
) -> None:
    """The changelog cannot be written: the checkpoint fails and its store is broken. The
    next checkpoint lets the partition go and takes it again from the last mark, so what
    was folded beyond it is folded again, never counted twice nor lost."""
    log = await log_factory(partitions=PARTITIONS)
    raws = feed.stream(seed=17, oas=6, messages=40)
    half = len(raws) // 2
    await append_all(log, raws[:half])
    processor = await caught_up(log)
    before = dict(processor.folders)
    await processor.stores.close()  # the changelog's producer is gone: index writes fail
    await append_all(log, raws[half:])
    async with asyncio.timeout(30):
        while not any(f.store is not None and f.store.broken for f in processor.folders.values()):
            await asyncio.sleep(0.05)
    await processor.stores.start()
    async with asyncio.timeout(30):
        while not any(processor.folders.get(p) not in (None, f) for p, f in before.items()):
            await asyncio.sleep(0.05)
    await fold_to_end(processor, log, set(range(PARTITIONS)))
    expected = await clean_pass(log)
    await equal_live_then_stored(log, processor, expected)
