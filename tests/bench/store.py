"""Benchmark of the index store's local backends, SQLite and RocksDB (`rocksdict`), on one workload.

Both hold the same entries the same way the store does (key -> write id, before,
after, expiry day, plus what expiry by day needs: an index on the day in SQLite,
a second key ordered by day in RocksDB), on the same machine in the same run:
rebuild of N entries in pieces of 5,000 (as from the changelog), point gets of
10,000 random keys just after opening (cold) and again (warm), batches of 1,000
and 10,000 changed entries, and expiry of one day of 8. Then, with the store
itself: `get` on the event loop (cache hit and miss), and with `--kafka` the
loop's longest stall while a batch of 10,000 goes through the changelog.
Not a test; it asserts nothing about speed.

    python -m tests.bench.store [--entries 1000000] [--kafka 127.0.0.1:19092]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from service.log.base import EventLog, Topics
from service.log.embedded import EmbeddedLog
from service.log.kafka import KafkaLog
from service.logsetup import configure_logging
from service.store import IndexStore, IndexStores, KafkaIndexStore
from service.store.cache import ValueCache
from service.store.changelog import encode_change
from service.store.local import LocalEntries, RocksEntries, Row, SqliteEntries

DAYS = 8
FIRST_DAY = 740_000
PIECE = 5_000


def entry_key(i: int) -> bytes:
    return f"388613280878808645\x00rcp\x00{i:064x}".encode()


def entry_value(i: int, round_: int = 0) -> bytes:
    day = FIRST_DAY + i % DAYS
    return f'{{"last_tag12":{day},"promo":[{round_},{i % 7}],"opt_out":false}}'.encode()


def day_of(i: int) -> int:
    return FIRST_DAY + i % DAYS


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def store_rows(indexes: Iterable[int], first_id: int, round_: int) -> list[Row]:
    return [
        (
            entry_key(i),
            first_id + j,
            entry_value(i, round_ - 1),
            entry_value(i, round_),
            day_of(i) + DAYS * round_,
        )
        for j, i in enumerate(indexes)
    ]


def rebuild(local: LocalEntries, n: int) -> None:
    for start in range(0, n, PIECE):
        records = [
            (i, entry_key(i), encode_change(None, entry_value(i), day_of(i)))
            for i in range(start, min(n, start + PIECE))
        ]
        local.apply_changelog(records, records[-1][0] + 1)


def expire(local: LocalEntries, before_day: int) -> int:
    deleted = 0
    while keys := local.keys_expiring(before_day, PIECE):
        local.delete_keys(keys, None)
        deleted += len(keys)
    return deleted


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def local_backend(make: Callable[[], LocalEntries], n: int) -> dict[str, str]:
    out: dict[str, str] = {}
    local = make()
    local.reset("bench")
    out["rebuild"] = f"{timed(lambda: rebuild(local, n)):.1f} s"
    local.close()
    local = make()
    sample = [entry_key(random.randrange(n)) for _ in range(10_000)]
    for label in ("cold", "warm"):
        each = []
        for key in sample:
            start = time.perf_counter()
            local.read_row(key)
            each.append(time.perf_counter() - start)
        out[f"get {label} p50/p99"] = (
            f"{percentile(each, 0.5) * 1e6:.1f}/{percentile(each, 0.99) * 1e6:.1f} µs"
        )
    next_id = n
    for size in (1_000, 10_000):
        rows = store_rows(random.sample(range(n), size), next_id, 1)
        next_id += size
        seconds = timed(lambda rows=rows, end=next_id: local.put_rows(rows, end))  # type: ignore[misc]
        out[f"write {size:,}"] = f"{seconds * 1000:.1f} ms"
    deleted: list[int] = []
    seconds = timed(lambda: deleted.append(expire(local, FIRST_DAY + 1)))
    out["expire 1 day"] = f"{seconds * 1000:.0f} ms for {deleted[0]:,}"
    local.close()
    return out


@contextlib.contextmanager
def lag_probe() -> Iterator[list[float]]:
    lags: list[float] = []

    async def run() -> None:
        while True:
            due = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            lags.append(max(0.0, time.perf_counter() - due))

    task = asyncio.get_running_loop().create_task(run())
    try:
        yield lags
    finally:
        task.cancel()


async def fill(store: IndexStore, n: int) -> None:
    for first in range(0, n, 10_000):
        batch = range(first, min(n, first + 10_000))
        await store.write({entry_key(i): (None, entry_value(i), day_of(i)) for i in batch})


async def on_the_loop(store: IndexStore, name: str, n: int) -> dict[str, str]:
    """`get` on the loop (cache miss, cache hit), and the loop's longest stall while a batch
    of 10,000 changes is written."""
    out: dict[str, str] = {}
    await fill(store, n)
    keys = [entry_key(random.randrange(n)) for _ in range(10_000)]
    saved, store.cache = store.cache, ValueCache(0)  # nothing is cached
    began = time.perf_counter()
    for key in keys:
        store.get(key)
    out[f"{name}: get on the loop, cache miss"] = (
        f"{(time.perf_counter() - began) / len(keys) * 1e6:.1f} µs"
    )
    store.cache = saved
    for key in keys:
        store.get(key)
    began = time.perf_counter()
    for key in keys:
        store.get(key)
    out[f"{name}: get on the loop, cache hit"] = (
        f"{(time.perf_counter() - began) / len(keys) * 1e6:.2f} µs"
    )
    changes = {k: (None, b"x" * 60, FIRST_DAY) for k in keys}
    with lag_probe() as lags:
        began = time.perf_counter()
        await store.write(changes)
        took = time.perf_counter() - began
        await asyncio.sleep(0.01)
    out[f"{name}: write 10,000"] = (
        f"{took * 1000:.0f} ms, longest loop stall {max(lags) * 1000:.1f} ms"
    )
    return out


async def reopen(stores: IndexStores, store: IndexStore, wipe: bool) -> tuple[IndexStore, float]:
    """The store closed and opened again from its mark (`wipe`: without its local copy)."""
    upto = store.upto
    await store.close()
    if wipe and isinstance(store, KafkaIndexStore):
        shutil.rmtree(store.path)
    began = time.perf_counter()
    store = stores.store(0)
    await store.open(upto=upto, void=[])
    return store, time.perf_counter() - began


async def stores_on_the_loop(directory: Path, n: int, kafka: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    log: EventLog
    for log in [EmbeddedLog(directory / "log.db", Topics("bench"), partitions=1)] + (
        [KafkaLog(kafka, Topics(f"bench{uuid.uuid4().hex[:8]}"), partitions=1)] if kafka else []
    ):
        await log.start()
        stores = IndexStores(log, state_dir=directory / "state", cache_mb=64)
        await stores.start()
        store = stores.store(0)
        await store.open(upto=-1, void=[])
        try:
            out.update(await on_the_loop(store, log.backend, n))
            store, took = await reopen(stores, store, wipe=False)
            out[f"{log.backend}: restart, store intact"] = f"{took:.2f} s"
            if log.backend == "kafka":
                store, took = await reopen(stores, store, wipe=True)
                out["kafka: rebuild from the changelog"] = (
                    f"{took:.1f} s for {store.records_read:,} records"
                )
        finally:
            await store.close()
            await stores.close()
            await log.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--loop-entries", type=int, default=200_000)
    parser.add_argument("--kafka", default=None, help="bootstrap servers of a running broker")
    args = parser.parse_args()
    configure_logging("WARNING", json=True)
    random.seed(7)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        results = {
            "sqlite": local_backend(
                lambda: SqliteEntries(directory / "bench.db", "bench.oa-index", 0, "NORMAL"),
                args.entries,
            ),
            "rocksdb": local_backend(lambda: RocksEntries(directory / "rocks"), args.entries),
        }
        print(f"{args.entries:,} entries, {DAYS} expiry days")
        for measure in results["sqlite"]:
            print(
                f"{measure:22} sqlite {results['sqlite'][measure]:>22}   "
                f"rocksdb {results['rocksdb'][measure]:>22}"
            )
        for measure, value in asyncio.run(
            stores_on_the_loop(directory, args.loop_entries, args.kafka)
        ).items():
            print(f"{measure}: {value}")


if __name__ == "__main__":
    main()
