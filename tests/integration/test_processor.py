"""The processor on both backends: fold, snapshot, restore, crash, rebalance
(docs/architecture.md#processor-and-fold).

Every test compares what the processor stored with a clean pass: the same
records folded once, in order, by a `PartitionFolder` in this process.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter

from service.config import Settings
from service.domain.records import DeadLetter, DecisionRecord
from service.log.base import EventLog, Record, TopicPartition
from service.processor.folding import Output, PartitionFolder, PolicyBook
from service.processor.replay import replay, total_records
from service.processor.runner import Processor, ProcessorOptions
from service.processor.snapshots import PartitionMark, Restored, Restorer, SnapshotChunk
from service.store.stores import IndexStores
from tests import feed
from tests.conftest import TEST_STATE_DIR, LogOpener

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(rules={"clock": "stream"}, processor={"state_dir": TEST_STATE_DIR})
PARTITIONS = 3


async def append_all(log: EventLog, raws: list[feed.Raw]) -> None:
    """Append in order per key (one OA's records keep their order)."""
    for start in range(0, len(raws), 200):
        chunk = raws[start : start + 200]
        by_key: dict[bytes, list[feed.Raw]] = {}
        for raw in chunk:
            by_key.setdefault(raw.key, []).append(raw)

        async def write(items: list[feed.Raw]) -> None:
            for raw in items:
                await log.append(log.topics.events, raw.key, raw.value, raw.log_headers())

        await asyncio.gather(*(write(items) for items in by_key.values()))


async def read_topic(log: EventLog, topic: str, partition: int) -> list[Record]:
    out: list[Record] = []
    tp = TopicPartition(topic, partition)
    start = 0
    while batch := await log.read(tp, start, 1000):
        out.extend(batch)
        start = batch[-1].offset + 1
    return out


Outcome = tuple[dict[str, Any], set[str], set[tuple[int, int]]]


def assert_same(got: Outcome, expected: Outcome) -> None:
    """`got == expected`, failing with what differs (OAs, their fields, decision ids,
    dead letters) rather than with a diff of two large structures."""
    problems: list[str] = []
    states, decisions, dead = got
    want_states, want_decisions, want_dead = expected
    if states.keys() != want_states.keys():
        problems.append(
            f"OAs only stored: {sorted(states.keys() - want_states.keys())}, "
            f"only in the clean pass: {sorted(want_states.keys() - states.keys())}"
        )
    for oa_id in sorted(states.keys() & want_states.keys()):
        state, want = states[oa_id], want_states[oa_id]
        for name in sorted(state.keys() | want.keys()):
            if state.get(name) != want.get(name):
                problems.append(
                    f"{oa_id}.{name}: stored {_short(state.get(name))}"
                    f" != clean pass {_short(want.get(name))}"
                )
    if decisions != want_decisions:
        problems.append(
            f"decisions only stored: {sorted(decisions - want_decisions)[:20]}, "
            f"only in the clean pass: {sorted(want_decisions - decisions)[:20]}"
        )
    if dead != want_dead:
        problems.append(f"dead letters: stored {sorted(dead)} != clean pass {sorted(want_dead)}")
    assert not problems, "\n".join(problems)


def _short(value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= 600 else text[:600] + "..."


async def clean_pass(log: EventLog) -> Outcome:
    """States, decision ids and dead-lettered positions of one fold of the whole log."""
    states: dict[str, Any] = {}
    decisions: set[str] = set()
    dead: set[tuple[int, int]] = set()
    for partition in range(log.partitions):
        folder = PartitionFolder(
            log.topics.events, partition, PolicyBook(SETTINGS), stream_clock=True
        )
        out = Output()
        for record in await read_topic(log, log.topics.events, partition):
            folder.handle(record, out)
        states.update({oa: s.to_document() for oa, s in folder.states.items()})
        decisions |= {orjson.loads(v)["decision_id"] for _, v in out.decisions}
        dead |= {
            (orjson.loads(v)["source"]["partition"], orjson.loads(v)["source"]["offset"])
            for _, v in out.dead_letters
        }
    return states, decisions, dead


async def whole_documents(log: EventLog, partition: int, restored: Restored) -> dict[str, Any]:
    """The restored states of a partition with the entries of their indexes, from the
    partition's index store as the mark leaves it, read as a processor restoring them
    would (at the mark's clock: what the store may drop by then reads as absent)."""
    stores = IndexStores(log, state_dir=TEST_STATE_DIR, cache_mb=8)
    await stores.start()
    store = stores.store(partition)
    mark = restored.mark
    await store.open(
        upto=-1 if mark is None else mark.index_upto, void=[] if mark is None else mark.index_void
    )
    folder = PartitionFolder(log.topics.events, partition, PolicyBook(SETTINGS), stream_clock=True)
    folder.restore(restored.states, mark, store)
    folder.clock_ms = None if mark is None else mark.clock_ms
    try:
        return {oa: (await folder.whole(oa)).to_document() for oa in restored.states}
    finally:
        await store.close()
        await stores.close()


async def stored(log: EventLog) -> Outcome:
    """What the processor left: the snapshots, the decision ids, the dead-lettered positions."""
    states: dict[str, Any] = {}
    decisions: set[str] = set()
    dead: set[tuple[int, int]] = set()
    for partition in range(log.partitions):
        restorer = Restorer(log.topics.events, partition)
        restorer.add(await read_topic(log, log.topics.oa_state, partition))
        restored = restorer.result()
        assert not restored.rebuild
        states.update(await whole_documents(log, partition, restored))
        decisions |= {
            orjson.loads(r.value)["decision_id"]
            for r in await read_topic(log, log.topics.decisions, partition)
        }
        for r in await read_topic(log, log.topics.dlq, partition):
            source = orjson.loads(r.value)["source"]
            dead.add((source["partition"], source["offset"]))
    return states, decisions, dead


async def fold_to_end(processor: Processor, log: EventLog, partitions: set[int]) -> None:
    events = [TopicPartition(log.topics.events, p) for p in partitions]
    ends = await log.end_offsets(events)
    async with asyncio.timeout(60):
        while True:
            folders = processor.folders
            if all(
                tp.partition in folders and folders[tp.partition].position + 1 >= end
                for tp, end in ends.items()
            ):
                return
            await asyncio.sleep(0.05)


def second_instance() -> Settings:
    """Settings of a second processor in this process: its own local index stores, as on
    a machine of its own (two instances never share a state directory)."""
    place = TEST_STATE_DIR / "second-instance"
    return SETTINGS.model_copy(
        update={"processor": SETTINGS.processor.model_copy(update={"state_dir": place})}
    )


async def caught_up(log: EventLog) -> Processor:
    """A processor of the log's group, started and caught up with every partition."""
    processor = Processor(log, SETTINGS, options(log))
    await processor.start()
    await fold_to_end(processor, log, set(range(PARTITIONS)))
    return processor


def options(log: EventLog, **changes: Any) -> ProcessorOptions:
    values: dict[str, Any] = {
        "group_id": f"{log.topics.prefix}-processor",
        "checkpoint_interval_s": 0.1,
        "checkpoint_records": 500,
    }
    values.update(changes)
    return ProcessorOptions(**values)


async def test_the_processor_stores_what_a_clean_pass_computes(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=PARTITIONS)
    await append_all(log, feed.stream(seed=1, oas=8, messages=60))
    processor = await caught_up(log)
    assert processor.ready() == frozenset(range(PARTITIONS))
    await processor.close()
    expected = await clean_pass(log)
    assert expected[1], "the stream makes decisions"
    assert len(expected[2]) == 2, "the stream has two records for the dead-letter topic"
    assert_same(await stored(log), expected)
    # Every value written is one its published schema (generated from these models) describes.
    for partition in range(PARTITIONS):
        for record in await read_topic(log, log.topics.decisions, partition):
            DecisionRecord.model_validate_json(record.value)
        for record in await read_topic(log, log.topics.dlq, partition):
            DeadLetter.model_validate_json(record.value)
        for record in await read_topic(log, log.topics.oa_state, partition):
            TypeAdapter(SnapshotChunk | PartitionMark).validate_json(record.value)

    # A new processor restores the states and folds nothing again.
    again = await caught_up(log)
    restored = {
        oa: (await f.whole(oa)).to_document() for f in again.folders.values() for oa in f.states
    }
    assert_same((restored, *expected[1:]), expected)
    assert sum(f.folded for f in again.folders.values()) == 0
    await again.close()


async def test_records_after_a_restart_fold_onto_the_restored_state(
    log_factory: LogOpener,
) -> None:
    log = await log_factory(partitions=PARTITIONS)
    raws = feed.stream(seed=2, oas=6, messages=50)
    half = len(raws) // 2
    await append_all(log, raws[:half])
    first = await caught_up(log)
    await first.close()
    await append_all(log, raws[half:])
    second = await caught_up(log)
    await second.close()
    assert_same(await stored(log), await clean_pass(log))


def _child(opener: LogOpener, die: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.processor_child",
            opener.backend,
            opener.where,
            opener.prefix,
            str(PARTITIONS),
            die,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_a_processor_killed_at_random_points_ends_with_a_clean_pass(
    log_factory: LogOpener,
) -> None:
    log = await log_factory(partitions=PARTITIONS)
    await append_all(log, feed.stream(seed=3, oas=12, messages=120))
    await log.close()  # the embedded log admits one process at a time
    rng = random.Random(3)
    deaths = [
        f"fold:{rng.randint(50, 800)}",
        f"append:{rng.randint(5, 150)}",
        f"precommit:{rng.randint(1, 6)}",
        f"index:{rng.randint(2, 12)}",
        f"commit:{rng.randint(1, 6)}",
        f"fold:{rng.randint(5, 40)}",  # early: while the partitions catch up
    ]
    rng.shuffle(deaths)
    killed = 0
    for die in [*deaths, "never"]:
        child = _child(log_factory, die)
        out, err = await asyncio.to_thread(child.communicate, timeout=120)
        if die == "never":
            assert (child.returncode, out.strip()) == (0, "caught up"), err[-3000:]
        else:  # it may have caught up before its death came
            assert child.returncode in (-9, 0), (die, err[-3000:])
            killed += child.returncode == -9
    assert killed >= 3, "the children caught up before their deaths came"
    log = await log_factory(partitions=PARTITIONS)
    assert_same(await stored(log), await clean_pass(log))


@pytest.mark.kafka
@pytest.mark.parametrize("backend", ["kafka"], indirect=True)
async def test_partitions_move_from_one_processor_to_two_and_back(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=PARTITIONS)
    raws = feed.stream(seed=4, oas=12, messages=40)
    one = await move_to_a_second_and_back(log_factory, log, [raws[i::3] for i in range(3)])
    await one.close()
    assert_same(await stored(log), await clean_pass(log))


async def move_to_a_second_and_back(
    log_factory: LogOpener, log: EventLog, thirds: list[list[feed.Raw]]
) -> Processor:
    """One processor folds the first third; a second one joins while the second third is
    appended (each partition has one owner), then leaves; the last third is folded by the
    first, which holds every partition again and is returned running."""
    everything = set(range(PARTITIONS))
    await append_all(log, thirds[0])
    one = Processor(log, SETTINGS, options(log))
    await one.start()
    await fold_to_end(one, log, everything)

    second_log = await log_factory(partitions=PARTITIONS)  # another client: a second instance
    two = Processor(second_log, second_instance(), options(second_log))
    await two.start()
    moving = asyncio.create_task(append_all(log, thirds[1]))
    async with asyncio.timeout(60):
        while not (one.folders and two.folders and one.folders.keys() | two.folders == everything):
            await asyncio.sleep(0.05)
    await moving
    assert not set(one.folders) & set(two.folders), "a partition has one owner"
    await fold_to_end(one, log, set(one.folders))
    await fold_to_end(two, log, set(two.folders))

    await two.close()
    await append_all(log, thirds[2])
    async with asyncio.timeout(60):
        while set(one.folders) != everything:
            await asyncio.sleep(0.1)
    await fold_to_end(one, log, everything)
    return one


async def test_replay_rebuilds_the_states_live_processing_built(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=PARTITIONS)
    await append_all(log, feed.stream(seed=5, oas=8, messages=60))
    processor = await caught_up(log)
    await processor.close()
    live = await stored(log)

    seen: list[int] = []
    result = await replay(log, SETTINGS, write=True, progress=seen.append)
    rebuilt = {oa: s.to_document() for oa, s in result.states.items()}
    assert_same((rebuilt, *live[1:]), live)
    assert sum(seen) == result.records == await total_records(log)
    assert result.dead_letters == 2
    assert result.decisions == len(live[1])
    # The rebuilt snapshots are now the newest, and equal: a processor restores them.
    assert_same(((await stored(log))[0], *live[1:]), live)


async def test_a_partition_catching_up_is_read_with_its_staleness(log_factory: LogOpener) -> None:
    log = await log_factory(partitions=PARTITIONS)
    await append_all(log, feed.stream(seed=6, oas=6, messages=20))
    first = await caught_up(log)
    await first.close()  # its checkpoint says when it was written
    checkpointed_ms = int(time.time() * 1000)
    await append_all(log, feed.stream(seed=7, oas=12, messages=120))

    processor = Processor(log, SETTINGS, options(log, fetch_records=20))
    await processor.start()
    seen: list[int] = []
    async with asyncio.timeout(60):
        while not seen:
            for partition in processor.catching_up:
                held = processor.reader(partition)
                if held is not None and held[1] is not None:
                    seen.append(held[1])
            if not seen and processor.folders and not processor.catching_up:
                pytest.fail("caught up before a read could see it catching up")
            await asyncio.sleep(0)
    # At least as old as the time since the checkpoint (records after it are missing).
    assert seen[0] >= int(time.time() * 1000) - checkpointed_ms - 1000
    await fold_to_end(processor, log, set(range(PARTITIONS)))
    async with asyncio.timeout(30):
        while processor.catching_up:
            await asyncio.sleep(0.05)
    assert all(processor.reader(p) == (processor.folders[p], None) for p in range(PARTITIONS))
    await processor.close()


def _raw(kind: str, oa_id: str, value: dict[str, Any]) -> feed.Raw:
    return feed.Raw(kind, oa_id.encode(), orjson.dumps({"oa_id": oa_id, **value}), {"kind": kind})


async def test_a_record_with_a_time_out_of_range_goes_to_the_dead_letters_and_the_rest_folds(
    log_factory: LogOpener,
) -> None:
    """Times no datetime holds, written straight into the log as an older API let them."""
    log = await log_factory(partitions=PARTITIONS)
    oa_id = "900001"
    at = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)

    def send(sent_time: str, tracking_id: str) -> feed.Raw:
        outcome = {"template_id": "t1", "tracking_id": tracking_id, "sent_time": sent_time}
        return _raw("send", oa_id, {"send": {**outcome, "error": 0}})

    poison = [
        send("9999999999999999", "tr-far"),
        send("-62135596800001", "tr-before-year-1"),
        _raw("sync", oa_id, {"as_of": "9999999999999999", "daily_quota": 5}),
    ]
    before = feed.send("t1", "tr-1", at, msg_id="m1", tag=2, oa_id=oa_id)
    after = [
        feed.send("t1", "tr-2", at + timedelta(minutes=1), msg_id="m2", tag=2, oa_id=oa_id),
        feed.receipt("m2", at + timedelta(minutes=2), oa_id=oa_id),
    ]
    await append_all(log, [before, *poison, *after])
    processor = await caught_up(log)
    await processor.close()

    partition = log.partition_for(oa_id.encode())
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(log, log.topics.dlq, partition)
    ]
    assert [(d.source.offset, d.reason) for d in letters] == [
        (1, "malformed_record"),
        (2, "malformed_record"),
        (3, "malformed_record"),
    ]
    states, _, _ = await stored(log)
    state = states[oa_id]
    assert state["position"] == 5, "the records after the poison are folded"
    assert sum(count for _, count in state["sent_ok"]) == 2
    assert state["daily_quota"] != 5
    assert_same(await stored(log), await clean_pass(log))


async def test_an_oa_whose_id_looks_like_a_partition_mark_is_restored(
    log_factory: LogOpener,
) -> None:
    log = await log_factory(partitions=PARTITIONS)
    at = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)
    oa_ids = ["__partition__", "__partition__1", "900002"]
    await append_all(
        log, [feed.admission(f"adm-{oa}", "t1", 2, 3, at, key="k-1", oa_id=oa) for oa in oa_ids]
    )
    first = await caught_up(log)
    await first.close()
    again = await caught_up(log)
    restored = {oa: s for f in again.folders.values() for oa, s in f.states.items()}
    assert sorted(restored) == sorted(oa_ids)
    assert all("k-1" in restored[oa].idempotency for oa in oa_ids)  # read from the store
    assert sum(f.folded for f in again.folders.values()) == 0, "nothing folded again"
    await again.close()


async def test_a_far_future_send_moves_the_stream_clock_to_its_log_time_at_most(
    log_factory: LogOpener,
) -> None:
    log = await log_factory(partitions=PARTITIONS)
    oa_id = "900003"
    appended_ms = int(time.time() * 1000)
    far = datetime(2500, 1, 1, tzinfo=UTC)
    await append_all(log, [feed.send("t1", "tr-far", far, msg_id="m-far", tag=2, oa_id=oa_id)])
    processor = await caught_up(log)
    folder = processor.folders[log.partition_for(oa_id.encode())]
    clock_ms = folder.clock_ms
    await processor.close()
    assert clock_ms is not None
    assert appended_ms <= clock_ms <= int(time.time() * 1000) + 5 * 60 * 1000
    # A replay of the same log reaches the same clock.
    result = await replay(log, SETTINGS, write=False)
    assert result.states[oa_id].today == folder.states[oa_id].today
