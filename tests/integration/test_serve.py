"""`zns-gate serve` as an operator runs it: a real process, real sockets, real signals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.serve import Served, environment, free_port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`zns-gate serve` with no settings file, in an empty folder (so the default db path)."""
    served = Served(tmp_path)
    yield served
    served.stop()


async def test_serve_with_defaults_is_ready_on_the_embedded_log(
    served: Served, tmp_path: Path
) -> None:
    await served.wait_ready()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{served.url}/readyz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ready", "log": "embedded"}
        async with session.get(f"{served.url}/no-such-thing") as response:
            assert response.status == 404
            body = await response.json()
            assert body["error"]["code"] == "not_found"
    assert (tmp_path / "var" / "zns-gate.db").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_gracefully(served: Served, signum: int) -> None:
    await served.wait_ready()
    served.process.send_signal(signum)
    assert await asyncio.to_thread(served.process.wait, 30) == 0
    lines = served.log_lines()
    events = [(line.get("component"), line["event"]) for line in lines]
    assert ("log.embedded", "embedded log closed") in events
    assert events[-1] == ("cli", "stopped")
    # Every line is JSON (the output is not a terminal) and names its component.
    assert all("component" in line and "timestamp" in line for line in lines)


async def test_serve_on_kafka_is_ready(kafka_bootstrap: str, tmp_path: Path) -> None:
    served = Served(
        tmp_path,
        "serve",
        ZNS_GATE_LOG__BACKEND="kafka",
        ZNS_GATE_LOG__BOOTSTRAP_SERVERS=kafka_bootstrap,
        ZNS_GATE_LOG__TOPIC_PREFIX=f"serve{free_port()}",
        ZNS_GATE_LOG__PARTITIONS="4",
    )
    try:
        # Ready once the group has given the processor its partitions and they are restored.
        await served.wait_ready(timeout_s=60, path="/readyz")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{served.url}/readyz") as response,
        ):
            assert response.status == 200
            assert await response.json() == {"status": "ready", "log": "kafka"}
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(served.process.wait, 60) == 0
    finally:
        served.stop()


async def test_kafka_partition_mismatch_refuses_to_start(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"mismatch{free_port()}"
    base = environment(
        ZNS_GATE_LOG__BACKEND="kafka",
        ZNS_GATE_LOG__BOOTSTRAP_SERVERS=kafka_bootstrap,
        ZNS_GATE_LOG__TOPIC_PREFIX=prefix,
    )
    from service.log.base import Topics
    from service.log.kafka import KafkaLog

    log = KafkaLog(kafka_bootstrap, Topics(prefix), 3)
    await log.start()
    await log.close()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service.cli", "serve"],
        cwd=tmp_path,
        env={**base, "ZNS_GATE_LOG__PARTITIONS": "5", "ZNS_GATE_SERVER__PORT": str(free_port())},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"partitions" in result.stderr


async def test_an_unusable_database_path_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder", encoding="utf-8")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service.cli", "serve"],
        cwd=tmp_path,
        env=environment(
            ZNS_GATE_SERVER__PORT=str(free_port()), ZNS_GATE_LOG__PATH="file/zns-gate.db"
        ),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = [orjson.loads(line) for line in result.stderr.splitlines() if line.startswith(b"{")]
    assert lines[-1]["event"] == "could not start"
    assert b"Traceback" not in result.stderr


async def test_replay_reports_and_dumps_the_rebuilt_states(tmp_path: Path) -> None:
    from service.log.base import Topics
    from service.log.embedded import EmbeddedLog
    from tests import feed
    from tests.integration.test_processor import append_all

    database = tmp_path / "var" / "zns-gate.db"
    database.parent.mkdir()
    log = EmbeddedLog(database, Topics("zns"), 12)
    await log.start()
    await append_all(log, feed.stream(seed=6, oas=3, messages=20))
    await log.close()
    dump = tmp_path / "states.jsonl"
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "service.cli",
            "replay",
            "--dry-run",
            "--quiet",
            "--dump",
            str(dump),
        ],
        cwd=tmp_path,
        env=environment(ZNS_GATE_RULES__CLOCK="stream"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["oas"] == 3
    assert summary["dead_letters"] == 2
    assert summary["records"] > 60
    assert summary["snapshot_records_written"] == 0
    lines = [orjson.loads(line) for line in dump.read_bytes().splitlines()]
    assert [line["oa_id"] for line in lines] == sorted(line["oa_id"] for line in lines)
    assert all(line["state"]["position"] >= 0 for line in lines)


async def test_connections_whose_headers_never_finish_are_closed(served: Served) -> None:
    """By default, a connection gets `server.header_timeout_s` (5 s) to send a request's
    headers; meanwhile every other request is answered."""
    await served.wait_ready()
    held = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"POST /webhooks/zalo HTTP/1.1\r\nHost: gate\r\nX-Slow: ")
        held.append((reader, writer))
    started = asyncio.get_running_loop().time()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{served.url}/healthz") as response,
    ):
        assert response.status == 200
    for reader, writer in held:
        assert await asyncio.wait_for(reader.read(), timeout=15) == b""
        writer.close()
    elapsed = asyncio.get_running_loop().time() - started
    assert 3 < elapsed < 12, elapsed
