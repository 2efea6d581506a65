"""Benchmark of an index store's rebuild from its changelog, on the real broker.

A changelog topic under a fresh prefix is filled with N records shaped like the real
ones: keys `<oa_id>\\0<index>\\0<key>`, values from `encode_change`, about one record in
ten a key written before (in another piece of the rebuild, mostly) with another expiry
day, and one in twenty a tombstone of a key written before. Then, in the same run:

- the bare limit: a plain aiokafka consumer reading every record, doing nothing with them;
- the old path: `KafkaLog.read` for every piece of 5,000, applied to a reset store with a
  lookup of every key (`RocksEntries.apply_changelog` as every other write uses it);
- the new path: `KafkaIndexStore.open` with no local store, as a restart rebuilds it.

Each reports records a second and the event loop's longest stall (a probe on the same
loop that asks to wake every millisecond, as in `loop_lag.py`). The two stores are then
compared key by key, by-day keys and meta included. The topics are deleted at the end.
Not a test; it asserts nothing about speed.

    python -m tests.bench.rebuild --kafka 127.0.0.1:19092 [--entries 2000000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service.log.base import TopicPartition as LogTopicPartition
from service.log.base import Topics
from service.log.kafka import KafkaLog
from service.logsetup import configure_logging
from service.store import IndexStores
from service.store.changelog import ChangelogWriter, encode_change
from service.store.local import RocksEntries
from tests.bench.loop_lag import Probe

OA = "388613280878808645"
FIRST_DAY = 740_000
DAYS = 8
PIECE = 5_000
FILL_CHUNK = 20_000


def entry_key(i: int) -> bytes:
    index = ("rcp", "msg", "dedup")[i % 3]
    return f"{OA}\x00{index}\x00{i:024x}".encode()


def entry_value(i: int, round_: int) -> bytes:
    return f'{{"last_tag12":{FIRST_DAY + i % DAYS},"promo":[{round_},{i % 7}]}}'.encode()


def changelog_records(n: int, seed: int = 7) -> list[list[tuple[bytes, bytes | None]]]:
    """N records in chunks: new keys, rewrites of earlier keys on another day, tombstones."""
    rng = random.Random(seed)
    chunks: list[list[tuple[bytes, bytes | None]]] = []
    chunk: list[tuple[bytes, bytes | None]] = []
    made = 0
    for _ in range(n):
        roll = rng.random()
        if made > 1_000 and roll < 0.10:
            i = rng.randrange(made)
            day = FIRST_DAY + DAYS + rng.randrange(DAYS)  # another day than it was written with
            chunk.append((entry_key(i), encode_change(entry_value(i, 0), entry_value(i, 1), day)))
        elif made > 1_000 and roll < 0.15:
            chunk.append((entry_key(rng.randrange(made)), None))
        else:
            before = entry_value(made, -1) if made % 4 == 0 else None
            value = encode_change(before, entry_value(made, 0), FIRST_DAY + made % DAYS)
            chunk.append((entry_key(made), value))
            made += 1
        if len(chunk) == FILL_CHUNK:
            chunks.append(chunk)
            chunk = []
    if chunk:
        chunks.append(chunk)
    return chunks


async def probed(run: Callable[[], Awaitable[int]]) -> tuple[int, float, float, float]:
    """(records, seconds, longest stall, p99 stall) of `run` with a probe on the loop."""
    probe = Probe()
    probe.start()
    await asyncio.sleep(0.01)
    began = time.perf_counter()
    records = await run()
    took = time.perf_counter() - began
    lags = sorted(await probe.stop())
    p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else 0.0
    return records, took, max(lags, default=0.0), p99


async def bare(bootstrap: str, topic: str, end: int) -> int:
    consumer: AIOKafkaConsumer[bytes, bytes] = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        count = 0
        while True:
            batches = await consumer.getmany(tp, timeout_ms=5_000, max_records=1_000)
            messages = batches.get(tp, [])
            if not messages:
                break
            count += len(messages)
            if messages[-1].offset + 1 >= end:
                break
            await asyncio.sleep(0)  # a fetch already here is handed out without a pause
        return count
    finally:
        await consumer.stop()


async def old_path(log: KafkaLog, entries: RocksEntries, topic: str, end: int) -> int:
    """The rebuild as it was: a read (offsets asked, a seek) for every piece, each record
    turned into a `Record`, and a lookup of every key while applying."""
    entries.reset("bench")
    tp = LogTopicPartition(topic, 0)
    loop = asyncio.get_running_loop()
    nxt = count = 0
    while nxt < end:
        records = await log.read(tp, nxt, PIECE)
        piece = [(r.offset, r.key or b"", r.value) for r in records]
        nxt = records[-1].offset + 1
        await loop.run_in_executor(None, partial(entries.apply_changelog, piece, nxt))
        count += len(records)
        await asyncio.sleep(0)
    return count


def contents(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Every key and value of a closed RocksDB store, in key order, meta included."""
    local = RocksEntries(path)
    try:
        for key, value in local._db.items():
            assert isinstance(key, bytes)
            assert isinstance(value, bytes)
            yield key, value
    finally:
        local.close()


def differences(one: Path, other: Path) -> int:
    """How many keys differ between two RocksDB stores (a key missing counts once)."""
    left, right = contents(one), contents(other)
    diff = 0
    x, y = next(left, None), next(right, None)
    while x is not None or y is not None:
        if x is not None and y is not None and x == y:
            x, y = next(left, None), next(right, None)
        elif y is None or (x is not None and x[0] < y[0]):
            diff += 1
            x = next(left, None)
        elif x is None or y[0] < x[0]:
            diff += 1
            y = next(right, None)
        else:  # the same key, another value
            diff += 1
            x, y = next(left, None), next(right, None)
    return diff


def meta_free(path: Path) -> None:
    """The stores' meta name different sources: keep only their next id, to compare."""
    local = RocksEntries(path)
    try:
        found = local.find()
        assert found is not None
        local._db.put(b"m", orjson.dumps({"source": "bench", "next_id": found[1]}))
    finally:
        local.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def main(bootstrap: str, n: int, skip_old: bool) -> None:
    configure_logging("WARNING", json=True)
    prefix = f"bench-rebuild-{uuid.uuid4().hex[:8]}"
    log = KafkaLog(bootstrap, Topics(prefix), partitions=1)
    await log.start()
    writer = ChangelogWriter(bootstrap)
    await writer.start()
    topic = log.topics.oa_index
    directory = Path(tempfile.mkdtemp(prefix="bench-rebuild-"))
    results: dict[str, tuple[int, float, float, float]] = {}
    try:
        began = time.perf_counter()
        for chunk in await asyncio.to_thread(changelog_records, n):
            await writer.send(topic, 0, chunk)
        end = (await log.end_offsets([LogTopicPartition(topic, 0)]))[LogTopicPartition(topic, 0)]
        print(f"filled {end:,} records in {time.perf_counter() - began:.1f} s")

        results["bare aiokafka consumer (limit)"] = await probed(
            partial(bare, bootstrap, topic, end)
        )

        old_dir = directory / "old"
        if not skip_old:
            entries = await asyncio.to_thread(RocksEntries, old_dir)
            try:
                results["old: read per piece, lookups"] = await probed(
                    partial(old_path, log, entries, topic, end)
                )
            finally:
                entries.close()

        stores = IndexStores(log, state_dir=directory / "state", cache_mb=8)
        await stores.start()
        try:
            store = stores.store(0)

            async def rebuild() -> int:
                await store.open(upto=-1, void=[])
                return store.records_read

            results["new: stream, fresh-store writes"] = await probed(rebuild)
            new_dir = store.path  # type: ignore[attr-defined]
            await store.close()
        finally:
            await stores.close()

        width = max(len(name) for name in results)
        print(
            f"{'path':{width}} {'records':>10} {'seconds':>8} {'records/s':>10}"
            f" {'longest stall':>14} {'p99 stall':>10}"
        )
        rates: dict[str, float] = {}
        for name, (records, took, longest, p99) in results.items():
            rates[name] = records / took
            print(
                f"{name:{width}} {records:10,} {took:8.1f} {records / took:10,.0f}"
                f" {longest * 1000:11.1f} ms {p99 * 1000:7.1f} ms"
            )
        names = list(rates)
        print(
            "ratios: "
            + ", ".join(
                f"{name} / {names[-1]} = {rates[names[-1]] / rates[name]:.2f}x"
                for name in names[:-1]
            )
        )
        if not skip_old:
            await asyncio.to_thread(meta_free, old_dir)
            await asyncio.to_thread(meta_free, new_dir)
            diff = await asyncio.to_thread(differences, old_dir, new_dir)
            print(f"stores compared key by key: {diff} differences")
    finally:
        await writer.close()
        await log.close()
        await delete_topics(bootstrap, prefix)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kafka", required=True, help="bootstrap servers")
    parser.add_argument("--entries", type=int, default=2_000_000)
    parser.add_argument("--skip-old", action="store_true", help="time only the new path")
    args = parser.parse_args()
    asyncio.run(main(args.kafka, args.entries, args.skip_old))
