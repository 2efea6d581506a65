"""Benchmark of admissions: latency answered by the owner and forwarded by another instance,
the decisions one instance makes per second on one core, and the in-process decision as
the baseline of the same run. Not a test; it asserts nothing about speed.

Two `zns-gate serve` instances share one Kafka broker. Served A (pinned to CPU 0) owns
the OAs asked about; instance B, the broker and this load generator share CPU 1. For each
fixed request rate the generator sends admissions on a fixed schedule (open loop: a slow
answer does not delay the next request, and latency is measured from the time a request
was due), once to A ("local") and once to B, which forwards to A ("forwarded"). Then a
closed loop of concurrent senders finds how many decisions A makes per second. The
baseline is `decide()` itself, timed in this process on a state like the ones served.

    python -m tests.bench.admission [--rates 100,300] [--seconds 10] [--concurrency 32]

Needs Java and Maven (the broker is started from deploy/kafka).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from service.config import Settings
from service.domain.admission import AdmissionRequest, decide
from service.domain.fold import advance
from service.domain.state import OAState
from service.processor.folding import PolicyBook
from service.simulate import percentile
from tests.bench.receiver import KAFKA_SH, cpu_seconds, free_port, wait_ready
from tests.serve import Served

OAS = 200


# --- the baseline: a decision in this process -------------------------------------------------


def baseline(rounds: int = 20_000) -> dict[str, float]:
    """Median microseconds of `decide` alone, and of what the handler does around it
    without I/O (copy the state, bring the copy to now, decide)."""
    policy = PolicyBook(Settings()).for_oa("x")
    now = datetime.now(UTC)
    state = OAState.new("4200000000000001", policy.rules)  # as the benchmark's OAs start
    wanted = AdmissionRequest("t1", 1, (), 1)
    alone, whole = [], []
    for n in range(rounds):
        started = time.perf_counter()
        decide(state, wanted, now, policy, f"a-{n}")
        alone.append(time.perf_counter() - started)
        started = time.perf_counter()
        served = state.served_copy()
        advance(served, now, policy)
        decide(served, wanted, now, policy, f"b-{n}")
        whole.append(time.perf_counter() - started)
    return {
        "decide_us": statistics.median(alone) * 1e6,
        "copy_advance_decide_us": statistics.median(whole) * 1e6,
    }


# --- the instances ----------------------------------------------------------------------------


def start(cpu: str, bootstrap: str, prefix: str, folder: Path, name: str) -> Served:
    return Served(
        folder,
        name,
        cpu,
        ZNS_GATE_LOG__BACKEND="kafka",
        ZNS_GATE_LOG__BOOTSTRAP_SERVERS=bootstrap,
        ZNS_GATE_LOG__TOPIC_PREFIX=prefix,
        ZNS_GATE_LOG_LEVEL="WARNING",
    )


async def settle(session: aiohttp.ClientSession, instances: list[Served]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            states = []
            for i in instances:
                async with session.get(f"{i.url}/v1/oas") as response:
                    body = await response.json() if response.status == 200 else {}
                    states.append(len(body.get("partitions", [])))
            if all(n == 12 for n in states):
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the instances did not settle")


async def owned_by(session: aiohttp.ClientSession, owner: Served, count: int) -> list[str]:
    """OA ids whose partition `owner` serves."""
    out: list[str] = []
    n = 0
    while len(out) < count:
        oa_id = f"42{n:014d}"
        n += 1
        async with session.get(f"{owner.url}/v1/oas/{oa_id}/quota") as response:
            if response.status == 200 and response.headers.get("X-Served-By") == owner.url:
                out.append(oa_id)
    return out


# --- the load ---------------------------------------------------------------------------------


async def admit(session: aiohttp.ClientSession, url: str, oa_id: str) -> tuple[int, float]:
    body = {"template_id": "t1", "tag": 1, "count": 1, "idempotency_key": uuid.uuid4().hex}
    started = time.perf_counter()
    async with session.post(f"{url}/v1/oas/{oa_id}/admissions", json=body) as response:
        await response.read()
        return response.status, time.perf_counter() - started


async def open_loop(
    session: aiohttp.ClientSession, url: str, oas: list[str], rate: int, seconds: float
) -> dict[str, float]:
    """Requests due every 1/rate s; the latency of each from the moment it was due."""
    latencies: list[float] = []
    failures = 0
    start = time.perf_counter() + 0.1
    total = int(rate * seconds)

    async def one(n: int) -> None:
        nonlocal failures
        due = start + n / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        status, _ = await admit(session, url, oas[n % len(oas)])
        latencies.append(time.perf_counter() - due)
        failures += status != 200

    await asyncio.gather(*(one(n) for n in range(total)))
    return {
        "rate": rate,
        "requests": total,
        "non_200": failures,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


async def closed_loop(
    session: aiohttp.ClientSession, owner: Served, oas: list[str], workers: int, seconds: float
) -> dict[str, float]:
    """As many admissions as `workers` concurrent senders get answered, straight to A."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            status, _ = await admit(session, owner.url, oas[(n + done) % len(oas)])
            done += status == 200

    cpu_before = cpu_seconds(owner.process.pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(workers)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(owner.process.pid) - cpu_before
    return {
        "workers": workers,
        "decisions_per_s": done / elapsed,
        "owner_cpu_share": cpu / elapsed,
        "decisions_per_cpu_s": done / cpu if cpu else 0.0,
    }


async def measure(args: argparse.Namespace, a: Served, b: Served) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await settle(session, [a, b])
        oas = await owned_by(session, a, OAS)
        for oa_id in oas[:20]:  # warm both paths
            await admit(session, a.url, oa_id)
            await admit(session, b.url, oa_id)
        report: dict[str, Any] = {"local": [], "forwarded": []}
        for rate in (int(r) for r in args.rates.split(",")):
            for name, url in (("local", a.url), ("forwarded", b.url)):
                result = await open_loop(session, url, oas, rate, args.seconds)
                report[name].append(result)
                print(
                    f"{name:9} {rate:5d}/s  p50 {result['p50_ms']:6.2f} ms  "
                    f"p99 {result['p99_ms']:6.2f} ms  non-200 {result['non_200']}",
                    flush=True,
                )
        report["throughput"] = await closed_loop(session, a, oas, args.concurrency, args.seconds)
        print(
            f"throughput: {report['throughput']['decisions_per_s']:.0f} decisions/s "
            f"(owner on one core, {report['throughput']['owner_cpu_share']:.0%} busy)",
            flush=True,
        )
        return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,300")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    report: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, {os.uname().machine}"}
    report["baseline"] = baseline()
    print(
        f"baseline: decide {report['baseline']['decide_us']:.1f} us, with copy and "
        f"advance {report['baseline']['copy_advance_decide_us']:.1f} us",
        flush=True,
    )
    broker = ["--name", "bench-admission", "--port", str(free_port())]
    broker += ["--controller-port", str(free_port())]
    subprocess.run(["bash", str(KAFKA_SH), "clean", *broker], check=True)
    subprocess.run(["taskset", "-c", "1", "bash", str(KAFKA_SH), "start", *broker], check=True)
    bootstrap = f"127.0.0.1:{broker[3]}"
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    instances: list[Served] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            a = start("0", bootstrap, prefix, Path(folder), "a")
            instances.append(a)
            wait_ready(f"{a.url}/readyz")
            b = start("1", bootstrap, prefix, Path(folder), "b")
            instances.append(b)
            wait_ready(f"{b.url}/readyz")
            report.update(asyncio.run(measure(args, a, b)))
            for instance in instances:
                instance.stop()
            instances.clear()
    finally:
        for instance in instances:
            instance.stop()
        subprocess.run(["bash", str(KAFKA_SH), "clean", *broker], check=False)
    local, forwarded = report["local"][-1], report["forwarded"][-1]
    report["forwarding_cost_p50_ms"] = forwarded["p50_ms"] - local["p50_ms"]
    report["throughput_vs_baseline"] = (
        report["throughput"]["decisions_per_cpu_s"] * report["baseline"]["decide_us"] / 1e6
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
