"""Benchmark of the per-OA gauges: the cost of setting one OA's gauges from its state,
against setting the same gauges to values already computed (the baseline, same run),
and the longest stretch the event loop waits while thousands of OAs are set. Not a
test; it asserts nothing about speed.

    python -m tests.bench.oa_gauges [--oas 5000] [--sends 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from service.config import Settings
from service.domain.fold import advance
from service.log.base import Record
from service.processor.folding import Output, PartitionFolder, PolicyBook
from service.processor.oa_metrics import OAGauges, figures, remove, show
from tests import feed

if TYPE_CHECKING:
    from service.processor.runner import Processor


class Holder:
    """What OAGauges reads of a processor: its folders and policies."""

    def __init__(self, folder: PartitionFolder, policies: PolicyBook) -> None:
        self.folders = {0: folder}
        self.policies = policies

    def ready(self) -> frozenset[int]:
        return frozenset(self.folders)


def build(oas: int, sends: int) -> tuple[PartitionFolder, PolicyBook]:
    """One partition whose OAs each got `sends` sends, their receipts and a low rating."""
    policies = PolicyBook(Settings())
    folder = PartitionFolder("zns.events", 0, policies, stream_clock=False)
    folder.begin(0)
    out = Output()
    now = datetime.now(UTC) - timedelta(minutes=10)
    offset = 0
    for n in range(oas):
        oa_id = f"5{n:017d}"
        raws = []
        for i in range(sends):
            raws.append(feed.send("t1", f"tr{n}-{i}", now, msg_id=f"m{n}-{i}", oa_id=oa_id))
            raws.append(feed.receipt(f"m{n}-{i}", now + timedelta(seconds=1), oa_id=oa_id))
        raws.append(feed.rating(f"m{n}-0", 1, now + timedelta(seconds=2), oa_id=oa_id))
        for raw in raws:
            logged = int(now.timestamp() * 1000)
            record = Record(
                "zns.events", 0, offset, raw.key, raw.value, raw.log_headers(), logged
            )
            folder.handle(record, out)
            offset += 1
    return folder, policies


def baseline(folder: PartitionFolder, policies: PolicyBook) -> float:
    """Microseconds per OA to set its gauges to values computed beforehand."""
    computed = []
    for oa_id, state in folder.states.items():
        copy = state.served_copy()
        policy = policies.for_oa(oa_id)
        advance(copy, folder.now(), policy)
        computed.append((oa_id, figures(copy, folder.now(), policy)))
    started = time.perf_counter()
    for oa_id, values in computed:
        show(oa_id, values, None)
    return (time.perf_counter() - started) / len(computed) * 1e6


async def gate(folder: PartitionFolder, policies: PolicyBook) -> tuple[float, float]:
    """Microseconds per OA of a whole pass of `OAGauges.update`, and the longest wait of
    the event loop (ms) during it."""
    gauges = OAGauges(cast("Processor", Holder(folder, policies)))
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    gauges.changed(0, folder.states)
    started = time.perf_counter()
    done = await gauges.update()
    elapsed = time.perf_counter() - started
    stop.set()
    await tick
    return elapsed / done * 1e6, max(gaps) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--oas", type=int, default=5000)
    parser.add_argument("--sends", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder, policies = build(args.oas, args.sends)
    base, per_oa, stalls = [], [], []
    for _ in range(args.rounds):
        base.append(baseline(folder, policies))
        us, stall = asyncio.run(gate(folder, policies))
        per_oa.append(us)
        stalls.append(stall)
    for oa_id in folder.states:
        remove(oa_id)
    b, g = statistics.median(base), statistics.median(per_oa)
    print(
        json.dumps(
            {
                "oas": args.oas,
                "baseline_us_per_oa": round(b, 2),
                "gate_us_per_oa": round(g, 2),
                "ratio": round(g / b, 1),
                "longest_loop_wait_ms": round(max(stalls), 2),
                "pass_ms": round(g * args.oas / 1000, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
