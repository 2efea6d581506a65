"""`zns-gate serve` as its own process, for tests and benchmarks: real sockets, real signals."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(**settings: str) -> dict[str, str]:
    """This process' environment without its `ZNS_GATE_*` settings, with `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZNS_GATE_")}
    env.update(settings)
    return env


class Served:
    """One `zns-gate serve` process on a free loopback port, its output in `<name>.log`."""

    def __init__(self, folder: Path, name: str = "serve", cpu: str | None = None, **env: str):
        """Started in `folder`, with only the `ZNS_GATE_*` settings given in `env`
        (e.g. `ZNS_GATE_LOG__BACKEND="kafka"`), pinned to `cpu` if given (taskset)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = folder / f"{name}.log"
        settings = environment(**env, ZNS_GATE_SERVER__PORT=str(self.port))
        command = [sys.executable, "-m", "service.cli", "serve"]
        if cpu is not None:
            command = ["taskset", "-c", cpu, *command]
        with self.output.open("wb") as sink:
            self.process = subprocess.Popen(
                command, cwd=folder, env=settings, stdout=sink, stderr=subprocess.STDOUT
            )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.output.read_text(errors="replace")[-chars:]

    def log_lines(self) -> list[dict[str, Any]]:
        """Its JSON log lines so far (its output is not a terminal: every line is JSON)."""
        lines = self.output.read_bytes().splitlines()
        return [orjson.loads(line) for line in lines if line.startswith(b"{")]

    async def wait_ready(self, timeout_s: float = 30, path: str = "/healthz") -> None:
        """Until `path` answers 200; fails if the process ends or the time runs out."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.alive, f"zns-gate serve exited early:\n{self.tail()}"
                try:
                    async with session.get(f"{self.url}{path}") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"zns-gate serve did not answer {path} with 200:\n{self.tail()}")

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then SIGKILL if it has not ended within `timeout_s`; the exit status."""
        if self.alive:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
