"""`zns-gate serve` as its own process, for tests and benchmarks: real sockets, real signals."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    """One `zns-gate serve` process on a free loopback port, its output in `<name>.log`."""

    def __init__(self, folder: Path, name: str = "serve", cpu: str | None = None, **env: str):
        """Started in `folder`, with only the `ZNS_GATE_*` settings given in `env`
        (e.g. `ZNS_GATE_LOG__BACKEND="kafka"`), pinned to `cpu` if given (taskset)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = folder / f"{name}.log"
        settings = {k: v for k, v in os.environ.items() if not k.startswith("ZNS_GATE_")}
        settings.update(env, ZNS_GATE_SERVER__PORT=str(self.port))
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

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then SIGKILL if it has not ended within `timeout_s`; the exit status."""
        if self.alive:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
