"""The operator's conveniences of the `zns-gate` command, each run as its own process:
`config check`, `config show`, `serve --host/--port`, a busy port, and `replay` against a
database that a running service holds."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from service.cli import EXIT_FAILED, EXIT_IN_USE, EXIT_INVALID_SETTINGS, MASK
from service.config import load_settings
from tests.serve import Served, environment, free_port

SECRETS = {
    "oa_secret": "oa-secret-key-one",
    "oa_secret_old": "oa-secret-key-two",
    "app_secret": "the-app-secret-key",
    "api_token": "an-api-token-of-32-characters-xx",
    "cluster_secret": "a-cluster-secret-0123456789",
    "token_key": "ZmFrZS10b2tlbi1rZXktb2YtMzItYnl0ZXMtZXhhY3Q=",
    "notify_secret": "whsec_bm90aWZ5LXNpZ25pbmcta2V5LTAxMjM0NQ==",
}

SETTINGS_WITH_SECRETS = f"""
log_level = "WARNING"

[server]
port = 9001

[log]
path = "db/gate.db"
partitions = 4

[[apps]]
app_id = 2074138120372622546
secrets = ["{SECRETS["oa_secret"]}", "{SECRETS["oa_secret_old"]}"]
app_secret = "{SECRETS["app_secret"]}"

[[api.tokens]]
token = "{SECRETS["api_token"]}"
scopes = ["read", "send"]

[api]
cluster_secret = "{SECRETS["cluster_secret"]}"

[zalo]
enabled = true
token_key = "{SECRETS["token_key"]}"

[[notify]]
url = "https://hooks.example/zns"
secret = "{SECRETS["notify_secret"]}"
kinds = ["penalty", "warning"]
"""


def zns_gate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`zns-gate ARGS` in `cwd`, with only the `ZNS_GATE_*` variables given in `env`."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        timeout=60,
        check=False,
    )


def json_lines(output: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines() if line.startswith(b"{")]


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "zns-gate.toml"
    path.write_text(SETTINGS_WITH_SECRETS, encoding="utf-8")
    return path


# -- config check ------------------------------------------------------------------


def test_config_check_accepts_valid_settings(settings_file: Path, tmp_path: Path) -> None:
    done = zns_gate("config", "check", "--config", str(settings_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"settings are valid\n"
    assert done.stderr == b""
    assert not (tmp_path / "db").exists()  # it checked, and opened nothing


def test_config_check_reads_zns_gate_config(settings_file: Path, tmp_path: Path) -> None:
    done = zns_gate("config", "check", cwd=tmp_path, ZNS_GATE_CONFIG=str(settings_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"settings are valid\n"


@pytest.mark.parametrize(
    ("content", "env", "named"),
    [
        ("[log]\npartitions = 0\n", {}, b"invalid setting log.partitions:"),
        ("[server]\nprot = 8080\n", {}, b"invalid setting server.prot:"),
        ("[log\n", {}, b"is not TOML"),
        ("", {"ZNS_GATE_RECEIVER__READ_TIMEOUT_S": "1.5"}, b"invalid setting receiver:"),
    ],
    ids=["out-of-range", "unknown-key", "not-toml", "from-the-environment"],
)
def test_config_check_describes_an_invalid_setting_as_serve_does(
    tmp_path: Path, content: str, env: dict[str, str], named: bytes
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    checked = zns_gate("config", "check", "--config", str(path), cwd=tmp_path, **env)
    assert checked.returncode == EXIT_INVALID_SETTINGS
    assert checked.stdout == b""
    assert checked.stderr.startswith(b"zns-gate: ")
    assert named in checked.stderr
    served = zns_gate(
        "serve", "--config", str(path), cwd=tmp_path, ZNS_GATE_SERVER__PORT="0", **env
    )
    assert served.returncode == EXIT_INVALID_SETTINGS
    assert served.stderr == checked.stderr
    assert not (tmp_path / "var").exists()


def test_config_check_names_a_missing_file(tmp_path: Path) -> None:
    done = zns_gate("config", "check", "--config", str(tmp_path / "nowhere.toml"), cwd=tmp_path)
    assert done.returncode == EXIT_INVALID_SETTINGS
    assert b"nowhere.toml" in done.stderr
    assert b"not found" in done.stderr


# -- config show -------------------------------------------------------------------


@pytest.mark.parametrize("form", ["toml", "json"])
def test_config_show_masks_every_secret(settings_file: Path, tmp_path: Path, form: str) -> None:
    done = zns_gate(
        "config", "show", "--config", str(settings_file), "--format", form, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    for secret in SECRETS.values():
        assert secret.encode() not in done.stdout
        assert secret.encode() not in done.stderr
    shown = tomllib.loads(done.stdout.decode()) if form == "toml" else orjson.loads(done.stdout)
    assert shown["apps"][0]["secrets"] == [MASK, MASK]
    assert shown["apps"][0]["app_secret"] == MASK
    assert shown["api"]["tokens"] == [{"token": MASK, "scopes": ["read", "send"]}]
    assert shown["api"]["cluster_secret"] == MASK
    assert shown["zalo"]["token_key"] == MASK
    assert shown["notify"][0]["secret"] == MASK
    assert shown["notify"][0]["kinds"] == ["penalty", "warning"]
    # What is not secret is shown as the service reads it: the id as digits, the rest.
    assert shown["apps"][0]["app_id"] == "2074138120372622546"
    assert shown["log"]["path"] == "db/gate.db"
    assert shown["log"]["partitions"] == 4
    assert shown["zalo"]["enabled"] is True


def test_config_show_is_the_effective_settings(settings_file: Path, tmp_path: Path) -> None:
    """File, then environment over it, then defaults for the rest: what serve would run."""
    done = zns_gate(
        "config",
        "show",
        "--config",
        str(settings_file),
        "--format",
        "json",
        cwd=tmp_path,
        ZNS_GATE_SERVER__HOST="0.0.0.0",
        ZNS_GATE_LOG__PARTITIONS="8",
    )
    assert done.returncode == 0, done.stderr
    shown = orjson.loads(done.stdout)
    assert shown["server"]["host"] == "0.0.0.0"
    assert shown["server"]["port"] == 9001  # from the file
    assert shown["log"]["partitions"] == 8  # the environment wins over the file
    assert shown["log"]["backend"] == "embedded"  # a default
    assert shown["rules"]["timezone"] == "Asia/Ho_Chi_Minh"
    assert shown["receiver"]["max_age_s"] is None  # unset stays visible in JSON


def test_config_show_as_toml_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    """Without secrets nothing is masked: the TOML shown is a settings file of its own."""
    original = tmp_path / "original.toml"
    original.write_text(
        '[server]\nhost = "0.0.0.0"\n\n[log]\nbackend = "kafka"\npartitions = 6\n\n'
        '[[oas]]\noa_id = "388613280878808645"\nrules = "zns-2024"\n'
        'negative_replies = { "tpl-1" = ["Ngừng nhận"] }\n',
        encoding="utf-8",
    )
    done = zns_gate("config", "show", "--config", str(original), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = tmp_path / "shown.toml"
    shown.write_bytes(done.stdout)
    assert load_settings(shown).model_dump() == load_settings(original).model_dump()
    again = zns_gate("config", "show", "--config", str(shown), cwd=tmp_path)
    assert again.stdout == done.stdout


# -- serve ---------------------------------------------------------------------------


class Serving:
    """`zns-gate serve ARGS` in a folder, its output in `serve.log`."""

    def __init__(self, folder: Path, *args: str, **env: str) -> None:
        self.output = folder / "serve.log"
        with self.output.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", *args],
                cwd=folder,
                env=environment(**env),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def lines(self) -> list[dict[str, Any]]:
        return json_lines(self.output.read_bytes())

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


async def answers(url: str, timeout_s: float = 30) -> int:
    """The status of GET `url` once something answers it."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    return response.status
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


@pytest.fixture
def serving() -> Iterator[list[Serving]]:
    started: list[Serving] = []
    yield started
    for process in started:
        process.stop()


async def test_serve_host_and_port_override_the_settings(
    tmp_path: Path, serving: list[Serving]
) -> None:
    port = free_port()
    taken = free_port()
    (tmp_path / "zns-gate.toml").write_text(
        f'[server]\nhost = "192.0.2.1"\nport = {taken}\n', encoding="utf-8"
    )
    served = Serving(
        tmp_path,
        "--config",
        "zns-gate.toml",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        ZNS_GATE_SERVER__PORT=str(taken),  # the flag wins over the environment as well
    )
    serving.append(served)
    assert await answers(f"http://127.0.0.1:{port}/healthz") == 200
    starting = next(line for line in served.lines() if line["event"] == "starting")
    assert (starting["host"], starting["port"]) == ("127.0.0.1", port)
    assert served.stop() == 0


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_serve_on_every_interface_answers_ipv4_and_ipv6(
    tmp_path: Path, serving: list[Serving]
) -> None:
    port = free_port()
    served = Serving(tmp_path, "--host", "", "--port", str(port))
    serving.append(served)
    assert await answers(f"http://127.0.0.1:{port}/healthz") == 200
    if ipv6_loopback():
        assert await answers(f"http://[::1]:{port}/healthz") == 200


async def test_serve_on_port_zero_reports_the_port_it_got(
    tmp_path: Path, serving: list[Serving]
) -> None:
    served = Serving(tmp_path, "--port", "0")
    serving.append(served)
    deadline = time.monotonic() + 30
    while not any(line["event"] == "starting" for line in served.lines()):
        assert served.process.poll() is None, served.output.read_text()
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    starting = next(line for line in served.lines() if line["event"] == "starting")
    assert starting["port"] > 0
    assert await answers(f"http://127.0.0.1:{starting['port']}/healthz") == 200


@pytest.mark.parametrize("port", ["65536", "-1", "http"])
def test_serve_refuses_a_port_that_is_none(tmp_path: Path, port: str) -> None:
    done = zns_gate("serve", "--port", port, cwd=tmp_path)
    assert done.returncode == 2  # argparse's usage error
    assert b"--port" in done.stderr
    assert not (tmp_path / "var").exists()


def test_a_busy_port_fails_at_once_and_opens_no_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        done = zns_gate(
            "serve", "--port", str(port), cwd=tmp_path, ZNS_GATE_LOG__PATH="db/gate.db"
        )
        took = time.monotonic() - started
    assert done.returncode == EXIT_FAILED, done.stderr
    lines = json_lines(done.stderr)
    assert lines[-1]["event"] == "could not listen"
    assert (lines[-1]["host"], lines[-1]["port"]) == ("127.0.0.1", port)
    assert lines[-1]["error"] == "Address already in use"
    # Nothing was opened, so nothing was restored: no log line of the log, no file.
    assert not any(line.get("component", "").startswith("log") for line in lines)
    assert not (tmp_path / "db").exists()
    assert b"Traceback" not in done.stderr
    # Not a timed assert of speed: a generous bound that restoring would not change,
    # only here so that a hang shows as a failure rather than as the subprocess' timeout.
    assert took < 30


# -- replay against a running service ----------------------------------------------


async def test_replay_says_plainly_that_the_database_is_in_use(tmp_path: Path) -> None:
    served = Served(tmp_path, ZNS_GATE_LOG__PATH="var/gate.db")
    try:
        await served.wait_ready(path="/readyz")
        for extra in ([], ["--dry-run"]):
            done = await asyncio.to_thread(
                zns_gate,
                "replay",
                "--quiet",
                *extra,
                cwd=tmp_path,
                ZNS_GATE_LOG__PATH="var/gate.db",
            )
            assert done.returncode == EXIT_IN_USE, done.stderr
            assert done.stdout == b""  # no summary: nothing was replayed
            last = json_lines(done.stderr)[-1]
            assert last["event"] == (
                "the embedded database is in use by a running service; stop it first"
            )
            assert f"pid {served.process.pid}" in last["error"]
            assert "disagrees" not in done.stderr.decode()
        # A second service on the same file is told the same, with the same status.
        second = await asyncio.to_thread(
            zns_gate,
            "serve",
            cwd=tmp_path,
            ZNS_GATE_LOG__PATH="var/gate.db",
            ZNS_GATE_SERVER__PORT=str(free_port()),
        )
        assert second.returncode == EXIT_IN_USE, second.stderr
        assert json_lines(second.stderr)[-1]["event"] == last["event"]
        # The running service went on as it was.
        assert await answers(f"{served.url}/readyz") == 200
    finally:
        assert served.stop() == 0
    # Once it has stopped, the same replay runs.
    done = await asyncio.to_thread(
        zns_gate, "replay", "--quiet", "--dry-run", cwd=tmp_path, ZNS_GATE_LOG__PATH="var/gate.db"
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["records"] == 0
