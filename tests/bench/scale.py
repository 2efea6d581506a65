"""Benchmark of one OA with a large state: memory, checkpoint, event-loop stalls, admission
latency and restart, at 10^5, 10^6 (and 8 x 10^6) messages in state, on the embedded log
and on Kafka. Not a test; it asserts nothing about speed.

Folding millions of records through the log would take hours, so each OA's state is built
directly: its index entries (its messages, as many recipients, and the dedup keys of the
last 48 hours, as the fold of N sends and their receipts spread over 8 days leaves them)
are written in pieces straight into the partition's index store, and its small core (with
the index limits the fold's day change leaves) into the log as a snapshot whose mark names
the store's write id, as a checkpoint writes them. Memory stays bounded whatever the size.
Then, in a fresh process, a zns-gate application (the `zns-gate serve` app, in-process on a
real socket, so that a probe shares its event loop) restores it and is measured:

- RSS after the restore, and bytes per message above the fresh OA's RSS;
- the restore itself (time to ready) and the longest stall of the loop during it;
- while a load process reports 2,000 sends a second for the OA (20 reports of 100) and asks
  for 100 admissions a second (open loop, latency from when each was due): the longest
  stall of the loop, and admission p50/p99;
- a checkpoint after 1,000 changed messages (1,000 sends folded): its time and stall;
- a restart in another fresh process: time to ready with the local store intact;
- Kafka only: a restart after the local store's directory is deleted, so that it is
  rebuilt from the changelog `zns.oa-index` (the embedded store has no changelog: n/a).

The probe asks to wake every millisecond and records how late it woke (as in
`loop_lag.py`). A fresh OA (no messages) is measured the same way in the same run, so the
figures are ratios too. Each size runs in its own processes, under an address-space limit
so that a size too large for the machine fails alone instead of starving it.

    python -m tests.bench.scale [--sizes 100000,1000000] [--backends embedded,kafka]
        [--kafka 127.0.0.1:19092] [--seconds 20] [--memory-limit-gb 16]
        [--session-timeout-ms 10000]

The load's rates can be set with ZNS_BENCH_REPORTS_PER_S (reports of 100 sends, default
20) and ZNS_BENCH_ADMISSIONS_PER_S (default 100): to find where a machine saturates.

The Kafka backend uses the broker given (topics under a fresh prefix, deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from service.app import PROCESSOR, build_app, freeze_what_started
from service.config import LogSettings, Settings
from service.domain.state import (
    HOUR_MS,
    MESSAGE_DAYS,
    Message,
    OAState,
    Recipient,
    index_key,
    store_entry,
)
from service.http import LOG
from service.log import create_log
from service.log.base import EventLog, TopicPartition
from service.logsetup import configure_logging
from service.processor.folding import PolicyBook
from service.processor.runner import Processor
from service.processor.snapshots import encode_mark, encode_state, mark_key
from service.simulate import percentile
from service.store.stores import Changes, IndexStore, IndexStores
from tests.bench.loop_lag import Probe
from tests.serve import free_port

OA = "388613280878808645"
TEMPLATE = "tpl-scale"
GOALS = {
    "rss_mb": ("< 1,000 MB", 1000.0),
    "stall_ms": ("< 20 ms", 20.0),
    "admission_p99_ms": ("< 10 ms", 10.0),
    "checkpoint_ms": ("< 50 ms", 50.0),
    "restart_s": ("< 10 s", 10.0),
    "rebuild_s": ("< 3 min", 180.0),
}
"""The goals at 8 x 10^6 messages, beside the figures."""


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phone(n: int) -> str:
    return f"849{n:08d}"


def recipient_hash(n: int) -> str:
    return hashlib.sha256(phone(n).encode()).hexdigest()


def settings_for(args: argparse.Namespace) -> Settings:
    log: dict[str, Any] = {"backend": args.backend}
    if args.backend == "embedded":
        log["path"] = args.path
    else:
        log |= {
            "bootstrap_servers": args.kafka,
            "topic_prefix": args.prefix,
            "session_timeout_ms": args.session_timeout_ms,
        }
    return Settings.model_validate(
        {
            "server": {"host": "127.0.0.1", "port": args.port},
            "log": log,
            # Beside the embedded log's file: every process of a run opens the same stores.
            "processor": {"state_dir": str(Path(args.path).parent / "state")},
        }
    )


# --- building the state ----------------------------------------------------------------------


PIECE = 10_000
"""Messages whose index entries are built and written at a time: memory stays bounded."""

DAY_MS = 86_400_000


@dataclasses.dataclass(frozen=True)
class Shape:
    """What every piece of the built state derives from."""

    size: int
    today: int
    now_ms: int
    dedup_ttl_ms: int


def core_state(size: int, now: datetime) -> tuple[OAState, Shape]:
    """The core of one OA after `size` messages sent OK and delivered, to as many
    recipients, spread evenly over the days messages are kept: no index entries, but the
    index limits as the fold's day change (`prune`) leaves them."""
    policy = PolicyBook(Settings()).for_oa(OA)
    state = OAState.new(OA, policy.rules)
    today = policy.day(now)
    now_ms = int(now.timestamp() * 1000)
    ttl_ms = int(policy.dedup_ttl.total_seconds() * 1000)
    state.today = today
    state.first_send_day = today - MESSAGE_DAYS
    state.daily_quota = state.day_start_quota = None  # the top tier: a sender this large
    state.event_ms = now_ms
    state.template(TEMPLATE).tag = 1
    state.sent_ok.add(today, size // MESSAGE_DAYS)
    state.messages.expire_before(today)
    state.recipients.expire_before(today)
    cutoff = min(now_ms, state.event_ms) - ttl_ms
    first_kept_hour = -(-cutoff // HOUR_MS)
    state.dedup.expire_before(first_kept_hour, keep_from=cutoff)
    state.idempotency.expire_before(first_kept_hour, keep_from=cutoff)
    state.clear_touched()
    return state, Shape(size, today, now_ms, ttl_ms)


def index_piece(shape: Shape, first: int, count: int) -> Changes:
    """The new store entries of messages `first` .. `first + count - 1`: each message, its
    recipient and, in the last 48 hours, the dedup keys of its send and its receipt."""
    changes: dict[bytes, tuple[bytes | None, bytes | None, int]] = {}

    def put(name: str, key: str, value: object) -> None:
        raw, day = store_entry(name, value, shape.dedup_ttl_ms)
        changes[index_key(OA, name, key)] = (None, raw, day)

    for n in range(first, min(first + count, shape.size)):
        age = n * MESSAGE_DAYS // max(shape.size, 1)  # days before today
        day = shape.today - age
        key = recipient_hash(n)
        msg_id = f"{n:032x}"
        message = Message(
            day,
            template_id=TEMPLATE,
            tag=1,
            recipient=key,
            sent=True,
            sent_ok=True,
            delivered=True,
            receipt=True,
        )
        put("messages", msg_id, message)
        put("recipients", key, Recipient(last_seen_day=day, last_tag12_day=day))
        if age < 2:
            at = shape.now_ms - age * DAY_MS
            put("dedup", "send:" + f"tr-{n}", at)
            put("dedup", "user_received_message:" + msg_id, at)
    return changes


async def write_indexes(store: IndexStore, shape: Shape) -> tuple[int, float]:
    """Write every index entry into the store, a piece at a time; (entries, seconds spent
    in the store's writes)."""
    entries = 0
    writing = 0.0
    for first in range(0, shape.size, PIECE):
        changes = index_piece(shape, first, PIECE)
        started = time.perf_counter()
        await store.write(changes)
        writing += time.perf_counter() - started
        entries += len(changes)
    return entries, writing


async def write_snapshot(log: EventLog, state: OAState, store: IndexStore) -> int:
    """Append the core of `state` to `zns.oa-state` and the partition's mark with the store's
    write id, as a checkpoint would; returns the bytes written."""
    topics = log.topics
    partition = store.partition
    chunks = encode_state(
        state.core_json(), OA, state.position, topics.events, partition, store.upto
    )
    written = 0
    for start in range(0, len(chunks), 50):
        batch = chunks[start : start + 50]
        await asyncio.gather(
            *(log.append(topics.oa_state, k, v, partition=partition) for k, v in batch)
        )
        written += sum(len(v) for _, v in batch)
    mark = encode_mark(
        topics.events,
        partition,
        state.position,
        None,
        [],
        index_upto=store.upto,
        index_void=list(store.void),
    )
    await log.append(topics.oa_state, mark_key(partition), mark, partition=partition)
    return written


async def build(args: argparse.Namespace) -> dict[str, Any]:
    before = rss_mb()
    started = time.perf_counter()
    state, shape = core_state(args.size, datetime.now(UTC))
    settings = settings_for(args)
    log = create_log(settings.log)
    await log.start()
    stores = IndexStores(
        log, state_dir=settings.processor.state_dir, cache_mb=settings.processor.cache_mb
    )
    await stores.start()
    store = stores.store(log.partition_for(OA.encode()))
    try:
        await store.open(upto=-1, void=[])
        entries, writing = await write_indexes(store, shape)
        built = time.perf_counter() - started
        held = rss_mb()
        started = time.perf_counter()
        written = await write_snapshot(log, state, store)
        wrote = time.perf_counter() - started
    finally:
        await store.close()
        await stores.close()
        await log.close()
    return {
        "build_s": built,
        "build_entries": entries,
        "build_store_write_s": writing,
        "built_rss_mb": held - before,
        "snapshot_mb": written / 1e6,
        "snapshot_write_s": wrote,
        "build_peak_rss_mb": peak_rss_mb(),
    }


# --- serving it ------------------------------------------------------------------------------


class Served:
    """The application of `zns-gate serve`, in this process, on a real socket."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.settings = settings_for(args)
        self.app = build_app(self.settings)
        self.app.on_startup.append(freeze_what_started)  # as `zns-gate serve` does
        self.runner = web.AppRunner(self.app)
        self.url = f"http://127.0.0.1:{args.port}"

    async def start(self) -> float:
        """Seconds from the start to serving the OA's partition, restored and caught up."""
        started = time.perf_counter()
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.settings.server.port).start()
        partition = self.log.partition_for(OA.encode())
        while True:
            processor = self.app.get(PROCESSOR)
            if (
                processor is not None
                and processor.not_ready() is None
                and partition in processor.folders
                and partition not in processor.catching_up
            ):
                return time.perf_counter() - started
            await asyncio.sleep(0.01)

    @property
    def log(self) -> EventLog:
        return self.app[LOG]

    @property
    def processor(self) -> Processor:
        return self.app[PROCESSOR]

    async def folded_to_end(self) -> None:
        partition = self.log.partition_for(OA.encode())
        tp = TopicPartition(self.log.topics.events, partition)
        end = (await self.log.end_offsets([tp]))[tp]
        while self.processor.folders[partition].position + 1 < end:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def post_sends(session: aiohttp.ClientSession, url: str, first: int, count: int) -> int:
    now_ms = str(int(time.time() * 1000))
    body = {
        "sends": [
            {
                "template_id": TEMPLATE,
                "tag": 1,
                "tracking_id": f"load-{n}",
                "msg_id": f"f{n:031x}",
                "recipient": recipient_hash(10**8 - 1 - n),
                "sent_time": now_ms,
                "error": 0,
            }
            for n in range(first, first + count)
        ]
    }
    async with session.post(f"{url}/v1/oas/{OA}/sends", json=body) as answer:
        await answer.read()
        return answer.status


async def post_sends_until_taken(session: aiohttp.ClientSession, url: str, first: int) -> None:
    """Report 100 sends, again while the service answers 503 (a stalled loop can cost a
    Kafka member its contact with the group for a while)."""
    deadline = time.monotonic() + 120
    while (status := await post_sends(session, url, first, 100)) != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service answered the sends {status} for 2 minutes")
        await asyncio.sleep(0.5)


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("WARNING", json=True)
    gc.collect()
    before = rss_mb()
    served = Served(args)
    probe = Probe()
    probe.start()
    restore_s = await served.start()
    restore_stall = max(await probe.stop(), default=0.0)
    gc.collect()
    result: dict[str, Any] = {
        "restore_s": restore_s,
        "restore_stall_ms": restore_stall * 1000,
        "rss_mb": rss_mb(),
        "rss_before_mb": before,
    }
    try:
        # A checkpoint after 1,000 changed messages: the processor's own checkpoints are
        # held off meanwhile, so that this one writes exactly those changes.
        processor = served.processor
        options = processor.options
        processor.options = dataclasses.replace(options, checkpoint_interval_s=3600.0)
        await processor.checkpoint()
        async with aiohttp.ClientSession() as session:
            first = 10**7
            for start in range(first, first + 1000, 100):
                await post_sends_until_taken(session, served.url, start)
        await served.folded_to_end()
        probe.start()
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        await processor.checkpoint()
        result["checkpoint_ms"] = (time.perf_counter() - started) * 1000
        await asyncio.sleep(0.02)
        result["checkpoint_stall_ms"] = max(await probe.stop(), default=0.0) * 1000
        processor.options = options

        # Under load: a separate process reports the sends and asks for admissions.
        probe.start()
        load = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.bench.scale",
            "--role",
            "load",
            "--url",
            served.url,
            "--size",
            str(args.size),
            "--seconds",
            str(args.seconds),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await load.communicate()
        if load.returncode != 0:
            raise RuntimeError(f"the load process failed (exit {load.returncode})")
        await served.folded_to_end()
        lags = await probe.stop()
        result |= json.loads(out.decode().strip().splitlines()[-1])
        result["load_stall_ms"] = max(lags, default=0.0) * 1000
        result["load_stall_p99_ms"] = percentile(lags, 99) * 1000 if lags else 0.0
        result["rss_after_load_mb"] = rss_mb()
    finally:
        await served.stop()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


async def restart(args: argparse.Namespace, name: str = "restart") -> dict[str, Any]:
    configure_logging("WARNING", json=True)
    served = Served(args)
    probe = Probe()
    probe.start()
    seconds = await served.start()
    stall = max(await probe.stop(), default=0.0)
    store = served.processor.folders[served.log.partition_for(OA.encode())].store
    result = {
        f"{name}_s": seconds,
        f"{name}_stall_ms": stall * 1000,
        f"{name}_rss_mb": rss_mb(),
        f"{name}_records_read": None if store is None else store.records_read,
    }
    await served.stop()
    return result


async def rebuild(args: argparse.Namespace) -> dict[str, Any]:
    """A restart without the local store (a new owner's disk): rebuilt from the changelog."""
    settings = settings_for(args)
    log = create_log(settings.log)
    partition = log.partition_for(OA.encode())
    shutil.rmtree(settings.processor.state_dir / log.topics.prefix / str(partition))
    return await restart(args, "rebuild")


# --- the load (its own process) --------------------------------------------------------------

ADMISSIONS_PER_S = float(os.environ.get("ZNS_BENCH_ADMISSIONS_PER_S", "100"))
REPORTS_PER_S = float(os.environ.get("ZNS_BENCH_REPORTS_PER_S", "20"))
"""The load's rates (reports carry 100 sends each): 100 admissions and 2,000 sends a second
unless the environment says otherwise."""


async def load(args: argparse.Namespace) -> dict[str, Any]:
    """2,000 sends a second (20 reports of 100) and 100 admissions a second, open loop."""
    latencies: list[float] = []
    failures = 0
    refused: dict[str, int] = {}
    """Send reports not taken, by status or error: each is 100 sends not folded."""
    seconds = args.seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter() + 0.1

        async def admission(n: int) -> None:
            nonlocal failures
            due = start + n / ADMISSIONS_PER_S
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            # A recipient the state already holds (a lookup in the large index).
            who = recipient_hash((n * 7919) % args.size) if args.size else recipient_hash(n)
            body = {
                "template_id": TEMPLATE,
                "tag": 1,
                "recipients": [who],
                "idempotency_key": f"scale-{n}",
            }
            try:
                async with session.post(f"{args.url}/v1/oas/{OA}/admissions", json=body) as answer:
                    await answer.read()
                    failures += answer.status != 200
            except aiohttp.ClientError:
                failures += 1
            latencies.append(time.perf_counter() - due)

        async def report(n: int) -> None:
            await asyncio.sleep(max(0.0, start + n / REPORTS_PER_S - time.perf_counter()))
            try:
                status = str(await post_sends(session, args.url, n * 100, 100))
            except aiohttp.ClientError as exc:
                status = type(exc).__name__
            if status != "200":
                refused[status] = refused.get(status, 0) + 1

        await asyncio.gather(
            *(admission(n) for n in range(int(ADMISSIONS_PER_S * seconds))),
            *(report(n) for n in range(int(REPORTS_PER_S * seconds))),
        )
        elapsed = time.perf_counter() - start
    return {
        "admission_p50_ms": percentile(latencies, 50) * 1000,
        "admission_p99_ms": percentile(latencies, 99) * 1000,
        "admissions_non_200": failures,
        "sends_per_s": (REPORTS_PER_S * 100 * seconds - 100 * sum(refused.values())) / elapsed,
        "send_reports_refused": refused,
    }


# --- the run -----------------------------------------------------------------------------------


def child(role: str, args: argparse.Namespace, path: str, prefix: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.bench.scale", "--role", role]
    command += ["--backend", args.backend, "--size", str(args.size), "--path", path]
    command += ["--prefix", prefix, "--kafka", args.kafka, "--port", str(free_port())]
    command += ["--seconds", str(args.seconds), "--memory-limit-gb", str(args.memory_limit_gb)]
    command += ["--session-timeout-ms", str(args.session_timeout_ms)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"failed": f"{role}: exit {done.returncode}: {' / '.join(tail)}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def measure(args: argparse.Namespace, size: int) -> dict[str, Any]:
    args.size = size
    result: dict[str, Any] = {"backend": args.backend, "size": size, "load": _load()}
    prefix = f"scale{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "scale.db")
        try:
            roles = ["build", "serve", "restart"]
            if args.backend == "kafka":  # the embedded store has no changelog to rebuild from
                roles.append("rebuild")
            for role in roles:
                result |= child(role, args, path, prefix)
                print(f"  {args.backend} {size:,} {role}: done", file=sys.stderr, flush=True)
                if "failed" in result:
                    break
        finally:
            if args.backend == "kafka":
                asyncio.run(delete_topics(args.kafka, prefix))
    return result


def _load() -> str:
    return " ".join(f"{n:.2f}" for n in os.getloadavg())


def _cell(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


BUILT = ("build_s", "build_peak_rss_mb")
"""Figures of the build, not of the service: a ratio to the fresh OA's says nothing."""


def table(results: list[dict[str, Any]]) -> str:
    columns = [
        ("RSS MB", "rss_mb", 0),
        ("B/msg (RSS)", "bytes_per_message", 0),
        ("RSS after load MB", "rss_after_load_mb", 0),
        ("peak RSS MB", "peak_rss_mb", 0),
        ("build s", "build_s", 0),
        ("build peak RSS MB", "build_peak_rss_mb", 0),
        ("ckpt 1,000 ms", "checkpoint_ms", 1),
        ("ckpt stall ms", "checkpoint_stall_ms", 1),
        ("stall under load ms", "load_stall_ms", 1),
        ("adm p50 ms", "admission_p50_ms", 1),
        ("adm p99 ms", "admission_p99_ms", 1),
        ("adm non-200", "admissions_non_200", 0),
        ("sends/s folded", "sends_per_s", 0),
        ("restore s", "restore_s", 2),
        ("restore stall ms", "restore_stall_ms", 0),
        ("restart s", "restart_s", 2),
        ("rebuild s", "rebuild_s", 1),
        ("snapshot MB", "snapshot_mb", 3),
    ]
    goal_of = {
        "rss_mb": "rss_mb",
        "rss_after_load_mb": "rss_mb",
        "checkpoint_ms": "checkpoint_ms",
        "load_stall_ms": "stall_ms",
        "admission_p99_ms": "admission_p99_ms",
        "restart_s": "restart_s",
        "rebuild_s": "rebuild_s",
    }
    head = "| backend | messages | load avg | " + " | ".join(c[0] for c in columns) + " |"
    lines = [head, "| --- " * (3 + len(columns)) + "|"]
    fresh: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["size"] == 0:
            fresh[r["backend"]] = r
        base = fresh.get(r["backend"], {})
        cells = []
        for _, key, digits in columns:
            value = r.get(key)
            cell = _cell(value, digits=digits)
            if key == "rebuild_s" and r["backend"] == "embedded":
                cell = "n/a"  # no changelog: the store is the log's own file
            if r["size"] and value is not None and base.get(key) and key not in BUILT:
                ratio = value / base[key]
                cell += f" ({ratio:,.1f}x)" if ratio < 10 else f" ({ratio:,.0f}x)"
            cells.append(cell)
        label = f"{r['size']:,}" if r["size"] else "fresh OA"
        if "failed" in r:
            cells[-1] += f" FAILED: {r['failed']}"
        lines.append(f"| {r['backend']} | {label} | {r['load']} | " + " | ".join(cells) + " |")
    goals = ["-"] * len(columns)
    for i, (_, key, _) in enumerate(columns):
        if key in goal_of:
            goals[i] = GOALS[goal_of[key]][0]
    lines.append("| goal at 8,000,000 | | | " + " | ".join(goals) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--backends", default="embedded,kafka")
    parser.add_argument("--kafka", default="127.0.0.1:19092")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--memory-limit-gb", type=float, default=16.0)
    parser.add_argument(
        "--session-timeout-ms",
        type=int,
        default=LogSettings().session_timeout_ms,
        help="Kafka: a member whose loop stalls longer than this loses its partitions",
    )
    parser.add_argument("--role", choices=["build", "serve", "restart", "rebuild", "load"])
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:
        if args.role != "load":
            limit = int(args.memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        roles = {
            "build": build,
            "serve": serve,
            "restart": restart,
            "rebuild": rebuild,
            "load": load,
        }
        print(json.dumps(asyncio.run(roles[args.role](args))))
        return 0
    results: list[dict[str, Any]] = []
    sizes = [0, *(int(s) for s in args.sizes.split(","))]  # the fresh OA first: the baseline
    for backend in args.backends.split(","):
        args.backend = backend
        for size in sizes:
            result = measure(args, size)
            fresh = next((r for r in results if r["backend"] == backend and r["size"] == 0), None)
            if size and fresh and "rss_mb" in result:
                result["bytes_per_message"] = (result["rss_mb"] - fresh["rss_mb"]) * 2**20 / size
            results.append(result)
            print(json.dumps(result), flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
