"""Benchmark of POST /webhooks/zalo against a bare aiohttp endpoint, measured in the same run.

Each server runs alone on CPU 0 (`taskset -c 0`); the load generator (wrk) and
the Kafka broker share CPU 1. The bare endpoint reads the same signed bodies and
parses them with orjson, and does nothing else; zns-gate also verifies,
classifies and durably publishes each one. Results are ratios to the bare
endpoint, so the machine's speed cancels out. This is not a test and asserts
nothing about speed.

    python -m tests.bench.receiver [--seconds 10] [--rounds 3] [--connections 32]

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
    return Result(target, rps, _latency(output, "50"), _latency(output, "99"), errors)


class Server:
    """One server process on SERVER_CPU."""

    def __init__(self, target: str, folder: Path, bootstrap: str | None, event_loop: str) -> None:
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
            )
            if bootstrap:
                env["ZNS_GATE_LOG__BOOTSTRAP_SERVERS"] = bootstrap
        self.process = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.url + ("/healthz" if target == "bare" else "/readyz"))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--targets", default="bare,embedded,kafka")
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of every server (default: uvloop, as zns-gate serves)",
    )
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        run_bare_server(args.bare_server, args.loop)
        return 0
    if shutil.which("wrk") is None:
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
            results: dict[str, list[Result]] = {t: [] for t in targets}
            for round_ in range(args.rounds):
                for target in targets:
                    server = Server(target, folder, bootstrap, args.loop)
                    try:
                        run_wrk(server.url + "/webhooks/zalo", script, 2, args.connections, target)
                        result = run_wrk(
                            server.url + "/webhooks/zalo",
                            script,
                            args.seconds,
                            args.connections,
                            target,
                        )
                    finally:
                        server.stop()
                    results[target].append(result)
                    print(
                        f"round {round_ + 1} {target:9} {result.rps:8.0f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"errors {result.errors}",
                        flush=True,
                    )
        finally:
            if "kafka" in targets:
                subprocess.run(["bash", str(KAFKA_SH), "clean", *broker_args], check=False)
    report(results, args)
    return 0


def report(results: dict[str, list[Result]], args: argparse.Namespace) -> None:
    def median(target: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in results[target]))

    base = median("bare", "rps") if "bare" in results else None
    print(
        f"\n{args.loop} loop, median of {args.rounds} rounds of {args.seconds} s, "
        f"{args.connections} connections, server on one core"
    )
    print("| target | req/s | vs bare | p50 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for target in results:
        rps = median(target, "rps")
        ratio = f"{rps / base:.0%}" if base else "-"
        errors = sum(r.errors for r in results[target])
        print(
            f"| {target} | {rps:.0f} | {ratio} | {median(target, 'p50_ms'):.2f} | "
            f"{median(target, 'p99_ms'):.2f} | {errors} |"
        )


if __name__ == "__main__":
    sys.exit(main())
