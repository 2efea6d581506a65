"""`zns-gate simulate` against the service: every request answered, its webhooks accepted
and folded, the same traffic for the same seed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson

from service.simulate import Plan, simulate
from tests import zalo
from tests.conftest import RunningService
from tests.integration.test_api import get, ready

ROOT = Path(__file__).resolve().parents[2]


def kinds(plan: Plan, steps: int, answer: bool) -> list[tuple[str, str, str]]:
    """The first `steps` requests of a plan whose admissions are all granted at once."""
    out = []
    for n in range(steps):
        request = plan.next(n * 0.05)
        if request is None:
            continue
        out.append((request.kind, request.oa_id, request.path))
        if answer and request.kind == "admission" and request.flow is not None:
            plan.granted[request.flow] = f"adm-{request.flow}"
    return out


def test_the_same_seed_gives_the_same_traffic() -> None:
    first = kinds(Plan(7, 5, 0.1, zalo.APP_ID, zalo.SECRET), 2000, answer=True)
    again = kinds(Plan(7, 5, 0.1, zalo.APP_ID, zalo.SECRET), 2000, answer=True)
    other = kinds(Plan(8, 5, 0.1, zalo.APP_ID, zalo.SECRET), 2000, answer=True)
    assert first == again
    assert first != other
    seen = {kind for kind, _, _ in first}
    assert seen >= {"admission", "send", "receipt", "rating", "duplicate"}


async def test_simulated_traffic_is_accepted_and_folded(service: RunningService) -> None:
    await ready(service)
    plan = Plan(3, 4, 0.2, zalo.APP_ID, zalo.SECRET)
    target = str(service.client.make_url("")).rstrip("/")
    summary = await simulate(target, plan, rate=60, duration_s=4)
    report = summary.as_json()
    assert report["sent"] == 240
    assert report["refused_by_status"] == {}, report
    assert report["by_kind"].get("receipt 200", 0) > 0, report
    # What was accepted is folded: the OAs show up with sends counted against their quota.
    status, listing = await get(service, "/v1/oas")
    assert status == 200
    assert {oa["oa_id"] for oa in listing["oas"]} <= set(plan.oa_ids)
    assert any(oa["remaining_today"] < 20_000 for oa in listing["oas"])


async def test_the_command_prints_a_summary_and_records_each_request(
    service: RunningService, tmp_path: Path
) -> None:
    await ready(service)
    record = tmp_path / "record.jsonl"
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "simulate",
        "--target",
        str(service.client.make_url("")).rstrip("/"),
        "--oas",
        "3",
        "--rate",
        "40",
        "--duration",
        "2",
        "--seed",
        "5",
        "--app-id",
        zalo.APP_ID,
        "--secret",
        zalo.SECRET,
        "--record",
        str(record),
        "--quiet",
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = orjson.loads(done.stdout)
    assert summary["sent"] == 80
    assert summary["accepted"] == 80, summary
    lines = [orjson.loads(line) for line in record.read_bytes().splitlines()]
    assert len(lines) == 80
    assert all(line["status"] == 200 for line in lines)
