"""`zns-gate backup`: a consistent copy of the embedded file, taken while it is written."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import aiohttp
import orjson
import pytest

from service.cli import EXIT_FAILED, EXIT_INVALID_SETTINGS, EXIT_OK
from service.log.backup import BackupError, backup
from service.log.base import Record, TopicPartition
from service.log.embedded import EmbeddedLog
from tests.integration.test_cli_config import answers, zns_gate
from tests.serve import Served

PARTITIONS = 3


async def every_record(log: EmbeddedLog) -> dict[TopicPartition, list[Record]]:
    out: dict[TopicPartition, list[Record]] = {}
    for topic in log.topics.all():
        for partition in range(PARTITIONS):
            tp = TopicPartition(topic, partition)
            records: list[Record] = []
            while batch := await log.read(tp, len(records), 1000):
                records.extend(batch)
            out[tp] = records
    return out


def content(records: list[Record]) -> list[tuple[int, bytes | None, bytes]]:
    return [(r.offset, r.key, r.value) for r in records]


async def test_a_backup_taken_during_appends_is_a_whole_prefix_of_the_log(
    tmp_path: Path,
) -> None:
    source = EmbeddedLog(tmp_path / "gate.db", partitions=PARTITIONS)
    await source.start()
    topic = source.topics.events
    before = 300
    for n in range(before):
        await source.append(topic, f"oa-{n % 7}".encode(), orjson.dumps({"n": n}))

    stop = asyncio.Event()

    async def keep_appending() -> int:
        n = before
        while not stop.is_set():
            await source.append(topic, f"oa-{n % 7}".encode(), orjson.dumps({"n": n}))
            n += 1
        return n - before

    writer = asyncio.create_task(keep_appending())
    await asyncio.sleep(0.05)
    report = await asyncio.to_thread(backup, source.path, tmp_path / "copy" / "gate.db")
    await asyncio.sleep(0.05)
    stop.set()
    during = await writer
    assert during > 0  # the log was being written while the copy was made
    original = await every_record(source)
    await source.close()

    assert report.size_bytes == report.target.stat().st_size > 0
    assert sorted(p.name for p in report.target.parent.iterdir()) == ["gate.db"]
    copy = EmbeddedLog(report.target, partitions=PARTITIONS)
    await copy.start()
    try:
        copied = await every_record(copy)
    finally:
        await copy.close()
    assert sum(len(r) for r in copied.values()) >= before
    for tp, records in copied.items():
        # Each partition of the copy is the original's first records, unchanged.
        assert content(records) == content(original[tp][: len(records)]), tp


def test_a_backup_never_replaces_a_file_nor_copies_a_missing_one(tmp_path: Path) -> None:
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"an older backup")
    (tmp_path / "gate.db").write_bytes(b"")
    with pytest.raises(BackupError, match="exists"):
        backup(tmp_path / "gate.db", taken)
    assert taken.read_bytes() == b"an older backup"
    with pytest.raises(BackupError, match="does not exist"):
        backup(tmp_path / "missing.db", tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists()


async def test_a_stopped_services_file_is_copied_too(tmp_path: Path) -> None:
    source = EmbeddedLog(tmp_path / "gate.db", partitions=PARTITIONS)
    await source.start()
    await source.append(source.topics.events, b"oa", b"{}")
    await source.close()  # its WAL is folded into the file and removed
    report = backup(source.path, tmp_path / "copy.db")
    copy = EmbeddedLog(report.target, partitions=PARTITIONS)
    await copy.start()
    try:
        records = await copy.read(TopicPartition(copy.topics.events, copy.partition_for(b"oa")), 0)
    finally:
        await copy.close()
    assert [(r.key, r.value) for r in records] == [(b"oa", b"{}")]


async def test_backup_of_a_running_service_restores_into_a_working_service(
    tmp_path: Path,
) -> None:
    live, restored = tmp_path / "live", tmp_path / "restored"
    live.mkdir()
    served = Served(live, ZNS_GATE_LOG__PATH="var/gate.db", ZNS_GATE_LOG__PARTITIONS="3")
    admitted = 0
    try:
        await served.wait_ready(path="/readyz")
        async with aiohttp.ClientSession() as session:
            for n in range(20):
                body = {"template_id": "t1", "tag": 1, "idempotency_key": f"before-{n}"}
                url = f"{served.url}/v1/oas/388613280878808645/admissions"
                async with session.post(url, json=body) as response:
                    assert response.status == 200, await response.text()
                    admitted += 1
        def take_backup() -> subprocess.CompletedProcess[bytes]:
            target = str(tmp_path / "gate.backup")
            return zns_gate("backup", "--to", target, cwd=live, ZNS_GATE_LOG__PATH="var/gate.db")

        done = await asyncio.to_thread(take_backup)
        assert done.returncode == EXIT_OK, done.stderr
        assert b"bytes in" in done.stdout
        again = await asyncio.to_thread(take_backup)
        assert again.returncode == EXIT_FAILED
        assert b"exists" in again.stderr
        assert await answers(f"{served.url}/readyz") == 200  # it went on as it was
    finally:
        assert served.stop() == 0

    # Restore: the copy becomes a new service's file, which starts and holds the records.
    (restored / "var").mkdir(parents=True)
    shutil.copy(tmp_path / "gate.backup", restored / "var" / "gate.db")
    replayed = await asyncio.to_thread(
        zns_gate,
        "replay",
        "--quiet",
        "--dry-run",
        cwd=restored,
        ZNS_GATE_LOG__PATH="var/gate.db",
        ZNS_GATE_LOG__PARTITIONS="3",
    )
    assert replayed.returncode == EXIT_OK, replayed.stderr
    summary = orjson.loads(replayed.stdout)
    assert summary["records"] >= admitted
    second = Served(restored, ZNS_GATE_LOG__PATH="var/gate.db", ZNS_GATE_LOG__PARTITIONS="3")
    try:
        await second.wait_ready(path="/readyz")
        async with aiohttp.ClientSession() as session:
            # An admission made before the backup is known: the same key answers the same.
            body = {"template_id": "t1", "tag": 1, "idempotency_key": "before-0"}
            url = f"{second.url}/v1/oas/388613280878808645/admissions"
            async with session.post(url, json=body) as response:
                assert response.status == 200, await response.text()
            async with session.get(f"{second.url}/v1/oas/388613280878808645/quota") as r:
                assert (await r.json())["remaining_today"] == 20_000 - admitted
    finally:
        assert second.stop() == 0


def test_backup_on_kafka_says_the_topics_are_the_state(tmp_path: Path) -> None:
    done = zns_gate(
        "backup", "--to", str(tmp_path / "x.db"), cwd=tmp_path, ZNS_GATE_LOG__BACKEND="kafka"
    )
    assert done.returncode == EXIT_INVALID_SETTINGS
    assert b"embedded" in done.stderr
    assert not (tmp_path / "x.db").exists()
