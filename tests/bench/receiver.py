"""Benchmark of POST /webhooks/zalo against a bare aiohttp endpoint, measured in the same run.

Each server runs alone on CPU 0 (`taskset -c 0`); the load generator (wrk) and
the Kafka broker share CPU 1. The bare endpoint reads the same signed bodies and
parses them with orjson, and does nothing else; zns-gate also verifies,
classifies and durably publishes each one. Results are ratios to the bare
endpoint, so the machine's speed cancels out. This is not a test and asserts
nothing about speed.

    python -m tests.bench.receiver [--seconds 6] [--rounds 5] [--connections 256]
    python -m tests.bench.receiver --instructions 2000

The second form counts the instructions each server executes per webhook with
callgrind (valgrind): slow, but the same on every run, where wall-clock rates
on a shared machine drift by a third between minutes.

Needs wrk (`apt-get install wrk`), and Java and Maven for the Kafka target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web

from service.cli import new_event_loop
from tests import zalo

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
SERVER_CPU, LOAD_CPU = "0", "1"


# --- the baseline server ------------------------------------------------------------------


async def _bare(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    return web.Response(
        body=orjson.dumps({"status": "accepted", "n": len(body)}), content_type="application/json"
    )


async def _health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def run_bare_server(port: int, event_loop: str) -> None:
    app = web.Application()
    app.router.add_post("/webhooks/zalo", _bare)
    app.router.add_get("/healthz", _health)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=new_event_loop(event_loop),
    )


# --- plumbing ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200")


def lua_script(folder: Path, count: int = 300) -> Path:
    """A wrk script that posts `count` distinct signed webhooks in turn."""
    hooks = zalo.Webhooks()
    rng = random.Random(7)
    names = sorted(zalo.EXAMPLES)
    requests = []
    for i in range(count):
        hook = hooks.build(rng.choice(names), oa_id=f"oa-{i % 50}")
        requests.append((hook.body.decode(), hook.headers))
    script = folder / "webhooks.lua"
    # Requests are formatted in init(), once wrk knows the Host header to add.
    entries = "".join(
        f"  {{{_lua_table(headers)}, {_lua_string(body)}}},\n" for body, headers in requests
    )
    script.write_text(
        "local raw = {\n" + entries + "}\n"
        "local requests = {}\n"
        "local n = 0\n"
        "init = function(args)\n"
        "  for i, r in ipairs(raw) do\n"
        "    requests[i] = wrk.format('POST', '/webhooks/zalo', r[1], r[2])\n"
        "  end\n"
        "end\n"
        "request = function()\n"
        "  n = n % #requests + 1\n"
        "  return requests[n]\n"
        "end\n",
        encoding="utf-8",
    )
    return script


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def _lua_table(headers: dict[str, str]) -> str:
    # "[ [==[" with a space: "[[" would open a Lua long string.
    pairs = ", ".join(f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items())
    return "{" + pairs + "}"


@dataclass
class Result:
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    cpu_us: float = 0.0
    """CPU time of the server process per request served (all its threads)."""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {percentile}% latency in wrk output:\n{output}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, script: Path, seconds: int, connections: int, target: str) -> Result:
    # A script that fails to load makes wrk send GETs instead: check stderr.
    done = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    if done.stderr.strip():
        raise RuntimeError(f"wrk: {done.stderr}")
    output = done.stdout
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps_match is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    rps = float(rps_match.group(1))
    errors_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors:.*", output)
    errors = int(errors_match.group(1)) if errors_match else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(0)))
    requests_match = re.search(r"(\d+) requests in", output)
    requests = int(requests_match.group(1)) if requests_match else 0
    return Result(target, rps, _latency(output, "50"), _latency(output, "99"), errors, requests)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Server:
    """One server process on SERVER_CPU."""

    def __init__(
        self,
        target: str,
        folder: Path,
        bootstrap: str | None,
        event_loop: str,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        self.target = target
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZNS_GATE_")}
        if target == "bare":
            command = [
                sys.executable,
                "-m",
                "tests.bench.receiver",
                "--bare-server",
                str(self.port),
                "--loop",
                event_loop,
            ]
        else:
            command = [sys.executable, "-m", "service.cli", "serve"]
            env.update(
                ZNS_GATE_SERVER__PORT=str(self.port),
                ZNS_GATE_APPS=json.dumps([{"app_id": zalo.APP_ID, "secrets": [zalo.SECRET]}]),
                ZNS_GATE_LOG__BACKEND=target,
                ZNS_GATE_LOG__PATH=str(folder / f"bench-{self.port}.db"),
                ZNS_GATE_LOG__TOPIC_PREFIX=f"bench{self.port}",
                ZNS_GATE_LOG_LEVEL="WARNING",
                ZNS_GATE_SERVER__EVENT_LOOP=event_loop,
                # The receiver alone: the processor has a benchmark of its own.
                ZNS_GATE_PROCESSOR__ENABLED="false",
            )
            if bootstrap:
                env["ZNS_GATE_LOG__BOOTSTRAP_SERVERS"] = bootstrap
        self.process = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *wrapper, *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.url + ("/healthz" if target == "bare" else "/readyz"), timeout_s=300)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- instructions per request ---------------------------------------------------------------


def post_webhooks(url: str, count: int, concurrency: int = 16) -> None:
    """Send `count` distinct signed webhooks, `concurrency` at a time; all must get 200."""
    import asyncio

    import aiohttp

    hooks = zalo.Webhooks()
    sent = [hooks.build("user_feedback", oa_id=f"oa-{i % 50}") for i in range(count)]

    async def run() -> None:
        gate = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def one(hook: zalo.Webhook) -> int:
                async with gate, session.post(url, data=hook.body, headers=hook.headers) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one(h) for h in sent))
        if set(statuses) - {200}:
            raise RuntimeError(f"not every webhook was accepted: {sorted(set(statuses))}")

    asyncio.run(run())


def instructions(
    target: str, count: int, folder: Path, bootstrap: str | None, event_loop: str
) -> int:
    """Instructions the server executed (callgrind) from start to stop, serving `count`."""
    out = folder / f"callgrind-{target}-{count}.out"
    wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}")
    server = Server(target, folder, bootstrap, event_loop, wrapper)
    try:
        post_webhooks(server.url + "/webhooks/zalo", count)
    finally:
        server.stop()
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary in {out}")
    return int(match.group(1))


def report_instructions(
    targets: list[str], count: int, folder: Path, bootstrap: str | None, event_loop: str
) -> None:
    """Instructions per webhook: the difference between serving `count` and serving none."""
    per_request: dict[str, float] = {}
    for target in targets:
        idle = instructions(target, 0, folder, bootstrap, event_loop)
        busy = instructions(target, count, folder, bootstrap, event_loop)
        per_request[target] = (busy - idle) / count
        print(f"{target:9} {per_request[target] / 1000:8.1f} k instructions/request", flush=True)
    base = per_request.get("bare")
    print(f"\n{event_loop} loop, {count} webhooks, 16 at a time, counted by callgrind")
    print("| target | instructions/request | bare / this |")
    print("| --- | ---: | ---: |")
    for target, value in per_request.items():
        ratio = f"{base / value:.0%}" if base else "-"
        print(f"| {target} | {value / 1000:.0f} k | {ratio} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--targets", default="bare,embedded,kafka")
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of every server (default: uvloop, as zns-gate serves)",
    )
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="instead of wrk: count instructions per webhook over N webhooks with callgrind",
    )
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        run_bare_server(args.bare_server, args.loop)
        return 0
    if args.instructions and shutil.which("valgrind") is None:
        print("valgrind is needed: apt-get install valgrind", file=sys.stderr)
        return 2
    if not args.instructions and shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("two CPUs are needed (server on one, load on the other)", file=sys.stderr)
        return 2
    targets = args.targets.split(",")
    broker_args = [
        "--name",
        "bench",
        "--port",
        str(free_port()),
        "--controller-port",
        str(free_port()),
    ]
    bootstrap = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = lua_script(folder)
        if "kafka" in targets:
            subprocess.run(["bash", str(KAFKA_SH), "clean", *broker_args], check=True)
            subprocess.run(
                ["taskset", "-c", LOAD_CPU, "bash", str(KAFKA_SH), "start", *broker_args],
                check=True,
            )
            bootstrap = f"127.0.0.1:{broker_args[3]}"
        try:
            if args.instructions:
                report_instructions(targets, args.instructions, folder, bootstrap, args.loop)
                return 0
            results: dict[str, list[Result]] = {t: [] for t in targets}
            for round_ in range(args.rounds):
                for target in targets:
                    server = Server(target, folder, bootstrap, args.loop)
                    try:
                        run_wrk(server.url + "/webhooks/zalo", script, 2, args.connections, target)
                        cpu_before = cpu_seconds(server.process.pid)
                        result = run_wrk(
                            server.url + "/webhooks/zalo",
                            script,
                            args.seconds,
                            args.connections,
                            target,
                        )
                        cpu = cpu_seconds(server.process.pid) - cpu_before
                        result.cpu_us = cpu / max(result.requests, 1) * 1e6
                    finally:
                        server.stop()
                    results[target].append(result)
                    print(
                        f"round {round_ + 1} {target:9} {result.rps:8.0f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"cpu {result.cpu_us:5.0f} us/request  errors {result.errors}",
                        flush=True,
                    )
        finally:
            if "kafka" in targets:
                subprocess.run(["bash", str(KAFKA_SH), "clean", *broker_args], check=False)
    report(results, args)
    return 0


def report(results: dict[str, list[Result]], args: argparse.Namespace) -> None:
    """Medians over rounds. Ratios are taken within each round, where bare ran just before,
    so that a machine whose speed drifts between rounds still compares like with like."""

    def median(values: list[float]) -> float:
        return float(statistics.median(values))

    bare = results.get("bare")
    print(
        f"\n{args.loop} loop, median of {args.rounds} rounds of {args.seconds} s, "
        f"{args.connections} connections, server on one core"
    )
    print("| target | req/s | vs bare | p50 ms | p99 ms | CPU µs/req | bare CPU / this | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for target, rounds in results.items():
        ratio = cpu_ratio = "-"
        if bare:
            ratio = f"{median([r.rps / b.rps for r, b in zip(rounds, bare, strict=True)]):.0%}"
            cpu_ratio = (
                f"{median([b.cpu_us / r.cpu_us for r, b in zip(rounds, bare, strict=True)]):.0%}"
            )
        print(
            f"| {target} | {median([r.rps for r in rounds]):.0f} | {ratio} | "
            f"{median([r.p50_ms for r in rounds]):.2f} | "
            f"{median([r.p99_ms for r in rounds]):.2f} | "
            f"{median([r.cpu_us for r in rounds]):.0f} | {cpu_ratio} | "
            f"{sum(r.errors for r in rounds)} |"
        )


if __name__ == "__main__":
    sys.exit(main())
