"""Benchmark of the processor: folding rate against plain aiokafka consumption, restore
times, and the memory an OA costs. Not a test; it asserts nothing about speed.

The measurements run in a child pinned to CPU 0 (`taskset -c 0`); the Kafka
broker runs on CPU 1. In each round the same records are read twice from the
same topic: by a plain aiokafka consumer that parses every value with orjson
(the baseline), and by zns-gate's processor, which also folds them into state,
writes snapshots and decisions and commits, and then by the same fold written
with Quix Streams' State API (`tests/bench/quix_peer.py`, when Quix Streams is
installed: `pip install -e '.[bench]'`). The results are the ratios of the
rates, so the machine's speed cancels out. Each round also times the fold alone
in process (read_item and fold of the same records, no Kafka).

    python -m tests.bench.processor [--records 100000] [--rounds 3] [--oas 10000,100000]
        [--bootstrap HOST:PORT]

Needs Java and Maven (the broker is started from deploy/kafka), unless
`--bootstrap` names a broker that is already running.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.config import Settings
from service.domain.fold import advance, fold, read_item
from service.domain.state import OAState
from service.log.base import Record, Topics
from service.log.kafka import KafkaLog
from service.processor.folding import Output, PartitionFolder, PolicyBook
from service.processor.runner import Processor, ProcessorOptions
from service.processor.snapshots import encode_mark, encode_state, mark_key
from tests import feed
from tests.bench.quix_peer import measure_quix
from tests.bench.receiver import KAFKA_SH, free_port

PARTITIONS = 12
SETTINGS = Settings(rules={"clock": "stream"})


# --- loading --------------------------------------------------------------------------------


def records(count: int) -> list[feed.Raw]:
    """`count` records of the mixed stream (sends, receipts, ratings, replies, admissions)."""
    out: list[feed.Raw] = []
    seed = 0
    while len(out) < count:
        out += feed.stream(seed=seed, oas=100, messages=100)[:-2]  # no dead letters
        seed += 1
    return out[:count]


async def load_events(bootstrap: str, prefix: str, count: int) -> None:
    log = KafkaLog(bootstrap, Topics(prefix), PARTITIONS)
    await log.start()
    raws = records(count)
    for start in range(0, len(raws), 5000):
        await asyncio.gather(
            *(
                log.append(log.topics.events, r.key, r.value, r.log_headers())
                for r in raws[start : start + 5000]
            )
        )
    await log.close()


def small_state(n: int, moment: datetime) -> OAState:
    """An OA after one send, its receipt and a rating."""
    policy = PolicyBook(SETTINGS).for_oa("x")
    oa_id = f"7{n:09d}"
    state = OAState.new(oa_id, policy.rules)
    for raw in (
        feed.send("t1", f"tr{n}", moment, msg_id=f"m{n}", tag=2, oa_id=oa_id),
        feed.receipt(f"m{n}", moment, oa_id=oa_id),
        feed.rating(f"m{n}", 5, moment, oa_id=oa_id),
    ):
        item = read_item(raw.kind, raw.key, raw.value, raw.headers)
        fold(state, item, moment, policy)
    return state


async def load_snapshots(bootstrap: str, prefix: str, oas: int) -> None:
    log = KafkaLog(bootstrap, Topics(prefix), PARTITIONS)
    await log.start()
    moment = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
    pending = []
    for n in range(oas):
        state = small_state(n, moment)
        partition = log.partition_for(state.oa_id.encode())
        state.position = 0
        for key, value in encode_state(
            state.core_json(), state.oa_id, 0, log.topics.events, partition, -1
        ):
            pending.append((key, value, partition))
    for partition in range(PARTITIONS):
        pending.append(
            (
                mark_key(partition),
                encode_mark(log.topics.events, partition, -1, None, []),
                partition,
            )
        )
    for start in range(0, len(pending), 5000):
        await asyncio.gather(
            *(
                log.append(log.topics.oa_state, k, v, partition=p)
                for k, v, p in pending[start : start + 5000]
            )
        )
    await log.close()


# --- measuring (in the pinned child) ----------------------------------------------------------


async def measure_baseline(bootstrap: str, prefix: str, count: int) -> float:
    """Records per second of a plain aiokafka consumer that parses each value."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    tps = [TopicPartition(f"{prefix}.events", p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    seen = 0
    started = time.perf_counter()
    while seen < count:
        batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
        for messages in batches.values():
            for message in messages:
                orjson.loads(message.value)
            seen += len(messages)
    elapsed = time.perf_counter() - started
    await consumer.stop()
    return seen / elapsed


async def measure_processor(bootstrap: str, prefix: str, count: int) -> float:
    """Records per second the processor folds, from its partitions' assignment to its end."""
    log = KafkaLog(bootstrap, Topics(prefix), PARTITIONS)
    await log.start()
    processor = Processor(log, SETTINGS, ProcessorOptions(group_id=f"bench-{uuid.uuid4().hex[:8]}"))
    await processor.start()
    while len(processor.folders) < PARTITIONS:
        await asyncio.sleep(0.001)
    started = time.perf_counter()
    while sum(f.position + 1 for f in processor.folders.values()) < count:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    await processor.close()
    await log.close()
    return count / elapsed


def measure_in_process(count: int) -> float:
    """Records per second of the fold alone: the processor's folder, without Kafka."""
    logged_ms = 1_900_000_000_000  # after every event time: the events set the stream clock
    batch = [
        Record("bench.events", 0, n, r.key, r.value, r.log_headers(), logged_ms)
        for n, r in enumerate(records(count))
    ]
    folder = PartitionFolder("bench.events", 0, PolicyBook(SETTINGS), stream_clock=True)
    out = Output()
    started = time.perf_counter()
    for record in batch:
        folder.handle(record, out)
    return count / (time.perf_counter() - started)


def measure_quix_peer(bootstrap: str, prefix: str, count: int) -> float | None:
    """Records per second of the Quix Streams peer; None when Quix Streams is not installed."""
    if importlib.util.find_spec("quixstreams") is None:
        return None
    return measure_quix(bootstrap, f"{prefix}.events", count, SETTINGS)


async def measure_restore(bootstrap: str, prefix: str) -> tuple[float, int]:
    """Seconds to restore every partition's snapshots, and the OAs restored."""
    log = KafkaLog(bootstrap, Topics(prefix), PARTITIONS)
    await log.start()
    processor = Processor(log, SETTINGS, ProcessorOptions(group_id="unused"))
    started = time.perf_counter()
    restored = 0
    for partition in range(PARTITIONS):
        folder = await processor._restore(partition)
        restored += len(folder.states)
    elapsed = time.perf_counter() - started
    await log.close()
    return elapsed, restored


def measure_memory(oas: int) -> dict[str, float]:
    """Bytes per OA after a few messages today, and once it has been idle for 9 days."""
    policy = PolicyBook(SETTINGS).for_oa("x")
    moment = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    states = [small_state(n, moment) for n in range(oas)]
    active = tracemalloc.take_snapshot()
    for state in states:
        advance(state, moment + timedelta(days=9), policy)
    idle = tracemalloc.take_snapshot()
    tracemalloc.stop()

    def size(snapshot: tracemalloc.Snapshot) -> float:
        return sum(s.size_diff for s in snapshot.compare_to(before, "filename")) / oas

    return {"bytes_per_active_oa": size(active), "bytes_per_idle_oa": size(idle)}


def child(args: argparse.Namespace) -> None:
    async def run() -> dict[str, Any]:
        if args.measure == "fold":
            baseline = await measure_baseline(args.bootstrap, args.prefix, args.records)
            folded = await measure_processor(args.bootstrap, args.prefix, args.records)
            return {"baseline_rps": baseline, "processor_rps": folded}
        seconds, restored = await measure_restore(args.bootstrap, args.prefix)
        return {"restore_s": seconds, "oas": restored}

    if args.measure == "memory":
        print(json.dumps(measure_memory(args.oas_count)))
        return
    if args.measure == "quix":  # its own child: Quix Streams runs its own (blocking) loop
        rate = measure_quix_peer(args.bootstrap, args.prefix, args.records)
        print(json.dumps({"quix_rps": rate}))
        return
    if args.measure == "in-process":
        print(json.dumps({"in_process_rps": measure_in_process(args.records)}))
        return
    import uvloop

    if args.profile:  # where the processor's time goes (cProfile output in FILE)
        import cProfile

        with cProfile.Profile() as profile:
            print(json.dumps(uvloop.run(run())))
        profile.dump_stats(args.profile)
        return
    print(json.dumps(uvloop.run(run())))


def pinned(*extra: str) -> dict[str, Any]:
    command = ["taskset", "-c", "0", sys.executable, "-m", "tests.bench.processor", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--oas", default="10000,100000")
    parser.add_argument(
        "--measure",
        choices=["fold", "quix", "in-process", "restore", "memory"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--bootstrap", metavar="HOST:PORT", help="use this running broker instead of starting one"
    )
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--oas-count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        child(args)
        return 0
    broker: list[str] = []
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        port, controller = free_port(), free_port()
        broker = [
            "--name",
            "bench-processor",
            "--port",
            str(port),
            "--controller-port",
            str(controller),
        ]
        subprocess.run(["bash", str(KAFKA_SH), "clean", *broker], check=True)
        subprocess.run(["taskset", "-c", "1", "bash", str(KAFKA_SH), "start", *broker], check=True)
        bootstrap = f"127.0.0.1:{port}"
    report: dict[str, Any] = {"cpu": os.uname().machine, "records": args.records}
    try:
        rounds = []
        for n in range(args.rounds):
            # Fresh topics each round: the processor must not find the last round's snapshots.
            prefix = f"bench{uuid.uuid4().hex[:6]}"
            asyncio.run(load_events(bootstrap, prefix, args.records))
            same = ["--bootstrap", bootstrap, "--prefix", prefix, "--records", str(args.records)]
            result = pinned("--measure", "fold", *same)
            result |= pinned("--measure", "quix", *same)
            result |= pinned("--measure", "in-process", "--records", str(args.records))
            result["ratio"] = result["processor_rps"] / result["baseline_rps"]
            quix = result["quix_rps"]
            result["vs_quix"] = None if quix is None else result["processor_rps"] / quix
            rounds.append(result)
            print(
                f"round {n + 1}: baseline {result['baseline_rps']:8.0f} rec/s  processor "
                f"{result['processor_rps']:8.0f} rec/s  ratio {result['ratio']:.0%}  "
                + (
                    "Quix Streams peer: not installed (pip install -e '.[bench]')"
                    if quix is None
                    else f"Quix Streams peer {quix:8.0f} rec/s  processor / peer "
                    f"{result['vs_quix']:.2f}"
                )
                + f"  in process {result['in_process_rps']:8.0f} rec/s",
                flush=True,
            )
        report["fold"] = {
            name: statistics.median(r[name] for r in rounds)
            for name in ("baseline_rps", "processor_rps", "ratio", "in_process_rps")
        }
        if all(r["quix_rps"] is not None for r in rounds):
            report["fold"]["quix_rps"] = statistics.median(r["quix_rps"] for r in rounds)
            report["fold"]["vs_quix"] = statistics.median(r["vs_quix"] for r in rounds)
        for oas in (int(n) for n in args.oas.split(",")):
            prefix = f"bench{uuid.uuid4().hex[:6]}"
            asyncio.run(load_snapshots(bootstrap, prefix, oas))
            result = pinned("--measure", "restore", "--bootstrap", bootstrap, "--prefix", prefix)
            report[f"restore_{oas}"] = result
            print(f"restore {result['oas']} OAs: {result['restore_s']:.2f} s", flush=True)
        report["memory"] = pinned("--measure", "memory", "--oas-count", "20000")
        print(json.dumps(report, indent=2))
    finally:
        if broker:
            subprocess.run(["bash", str(KAFKA_SH), "clean", *broker], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
