"""Three `zns-gate serve` processes on one Kafka cluster (docs/api.md#forwarding-and-503).

Every instance answers for every OA: the owner of the OA's partition decides,
the others forward to it. The owner is then killed with SIGKILL while senders
keep asking for admissions through every instance: another instance answers
for the OA once the group has moved its partition, and across the whole run
nothing is granted beyond the quota, and nothing granted is forgotten.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import build_app
from service.log.base import Topics
from service.log.kafka import KafkaLog
from tests.conftest import KAFKA_SH, make_settings, start_broker
from tests.serve import Served

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6
QUOTA = 120
OA = "4100000000000001"
SESSION_TIMEOUT_MS = 6000


def start(folder: Path, bootstrap: str, prefix: str, name: str) -> Served:
    return Served(
        folder,
        name,
        ZNS_GATE_LOG__BACKEND="kafka",
        ZNS_GATE_LOG__BOOTSTRAP_SERVERS=bootstrap,
        ZNS_GATE_LOG__TOPIC_PREFIX=prefix,
        ZNS_GATE_LOG__PARTITIONS=str(PARTITIONS),
        ZNS_GATE_LOG__SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
        ZNS_GATE_PROCESSOR__CHECKPOINT_INTERVAL_S="0.5",
        ZNS_GATE_API__CLUSTER_SECRET="the-three-instances-secret",
        # Each its own local index stores, as on machines of their own.
        ZNS_GATE_PROCESSOR__STATE_DIR=str(folder / f"{name}-state"),
    )


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any, dict[str, str]]:
    async with session.get(url) as response:
        return response.status, await response.json(), dict(response.headers)


async def settled(session: aiohttp.ClientSession, instances: list[Served]) -> None:
    """Every instance ready, and each sees the whole group: every partition has an owner."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for instance in instances:
            assert instance.alive, instance.tail()
        try:
            answers = [await get(session, f"{i.url}/v1/oas") for i in instances]
            ready = [await get(session, f"{i.url}/readyz") for i in instances]
        except aiohttp.ClientConnectionError:
            answers, ready = [], []
        if (
            answers
            and all(status == 200 for status, _, _ in ready)
            and all(
                status == 200 and body["partitions"] == list(range(PARTITIONS))
                for status, body, _ in answers
            )
        ):
            return
        await asyncio.sleep(0.2)
    pytest.fail("the instances did not settle: " + instances[0].tail())


@dataclass
class Tally:
    granted: int = 0
    """Units granted in 200 answers."""
    uncertain: int = 0
    """Units asked for in requests that got no answer: the owner may have granted them."""
    statuses: dict[str, int] = field(default_factory=dict)
    served_after_kill: float | None = None

    def note(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1


@pytest.mark.kafka
async def test_three_instances_answer_alike_and_survive_the_owner_killed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"inst-{uuid.uuid4().hex[:8]}"
    instances = [start(tmp_path, kafka_bootstrap, prefix, "first")]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            await settled(session, instances)  # the first creates the topics
            instances += [start(tmp_path, kafka_bootstrap, prefix, n) for n in ("second", "third")]
            await settled(session, instances)
            await _check_same_answers(session, instances)
            await _admissions_while_the_owner_dies(session, instances)
    finally:
        for instance in instances:
            instance.stop()


async def _check_same_answers(session: aiohttp.ClientSession, instances: list[Served]) -> None:
    now_ms = int(time.time() * 1000)
    async with session.post(
        f"{instances[1].url}/v1/oas/{OA}/sync",
        json={"as_of": now_ms, "daily_quota": QUOTA, "remaining_quota": QUOTA},
    ) as response:
        assert response.status == 200, await response.text()
    deadline = time.monotonic() + 30
    while True:
        answers = [await get(session, f"{i.url}/v1/oas/{OA}/quota") for i in instances]
        if all(status == 200 and body["daily_quota"] == QUOTA for status, body, _ in answers):
            break
        assert time.monotonic() < deadline, answers
        await asyncio.sleep(0.2)
    bodies = [body for _, body, _ in answers]
    assert bodies[0] == bodies[1] == bodies[2]
    served_by = {headers["X-Served-By"] for _, _, headers in answers}
    assert len(served_by) == 1, "one owner answers, whichever instance is asked"
    assert served_by <= {i.url for i in instances}
    await _dashboard_reads_alike(session, instances, served_by)

    # The same admission through every instance: one decision, the same answer.
    request = {"template_id": "t1", "tag": 1, "count": 2, "idempotency_key": "same-everywhere"}
    admitted = []
    for instance in instances:
        async with session.post(f"{instance.url}/v1/oas/{OA}/admissions", json=request) as answer:
            assert answer.status == 200, await answer.text()
            admitted.append(await answer.json())
    assert admitted[0]["granted"] == 2
    assert admitted[0] == admitted[1] == admitted[2]


async def _dashboard_reads_alike(
    session: aiohttp.ClientSession, instances: list[Served], owner: set[str]
) -> None:
    """The dashboard's reads: the history from the owner whichever instance is asked, and
    the sync's tier decision read from the shared log by every instance."""
    histories = [await get(session, f"{i.url}/v1/oas/{OA}/history") for i in instances]
    assert {headers["X-Served-By"] for _, _, headers in histories} == owner
    assert all(body["daily_quota"] == QUOTA for _, body, _ in histories)
    deadline = time.monotonic() + 30
    while True:
        path = f"/v1/oas/{OA}/decisions?kind=tier"
        answers = [await get(session, f"{i.url}{path}") for i in instances]
        if all(status == 200 and body["decisions"] for status, body, _ in answers):
            break
        assert time.monotonic() < deadline, answers
        await asyncio.sleep(0.2)
    assert answers[0][1]["decisions"] == answers[1][1]["decisions"] == answers[2][1]["decisions"]
    assert answers[0][1]["decisions"][0]["after"] == QUOTA


async def _admissions_while_the_owner_dies(
    session: aiohttp.ClientSession, instances: list[Served]
) -> None:
    _, _, headers = await get(session, f"{instances[0].url}/v1/oas/{OA}/quota")
    owner = next(i for i in instances if i.url == headers["X-Served-By"])
    tally = Tally(granted=2)  # the admission above
    killed_at: list[float] = []
    keys = itertools.count()
    exhausted = asyncio.Event()

    async def sender(index: int) -> None:
        while not exhausted.is_set():
            alive = [i for i in instances if i.alive]
            instance = alive[index % len(alive)]
            index += 1
            body = {"template_id": "t1", "tag": 1, "count": 3, "idempotency_key": f"k{next(keys)}"}
            try:
                async with session.post(
                    f"{instance.url}/v1/oas/{OA}/admissions", json=body
                ) as response:
                    answer = await response.json()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                tally.uncertain += 3
                tally.note("no answer")
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                tally.granted += answer["granted"]
                tally.note("200")
                if killed_at and tally.served_after_kill is None:
                    tally.served_after_kill = time.monotonic() - killed_at[0]
                if answer["remaining"] == 0 and answer["granted"] == 0:
                    exhausted.set()
            else:
                code = answer["error"]["code"]
                tally.note(f"{status} {code}")
                assert status == 503, answer
                if code == "owner_unreachable":
                    tally.uncertain += 3  # forwarded; the owner may have granted, then died
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")) / 4)
            await asyncio.sleep(0.02)

    async def killer() -> None:
        while tally.granted < QUOTA // 3:
            await asyncio.sleep(0.01)
        owner.process.send_signal(signal.SIGKILL)
        killed_at.append(time.monotonic())

    async with asyncio.timeout(120):
        await asyncio.gather(*(sender(n) for n in range(6)), killer())

    assert killed_at, "the owner was killed"
    assert tally.served_after_kill is not None, tally
    # Another instance answered within the group's session timeout plus a restore.
    assert tally.served_after_kill < SESSION_TIMEOUT_MS / 1000 + 20, tally
    assert tally.granted <= QUOTA, tally
    survivors = [i for i in instances if i.alive]
    status, quota, headers = await get(session, f"{survivors[0].url}/v1/oas/{OA}/quota")
    assert status == 200, quota
    assert headers["X-Served-By"] != owner.url
    consumed = QUOTA - quota["remaining_today"]
    # What was granted is in the state; only unanswered requests may have granted more.
    assert tally.granted <= consumed <= tally.granted + tally.uncertain, (tally, quota)
    assert consumed == QUOTA, (tally, quota)
    print(f"owner killed: another instance answered after {tally.served_after_kill:.1f} s; {tally}")


@pytest.mark.kafka
async def test_an_owner_out_of_contact_with_its_group_stops_granting() -> None:
    """Freeze a broker of this test's own (SIGSTOP): heartbeats stop succeeding, and after
    half the session timeout the owner refuses admissions (another member may own the OA
    at the full timeout), while reads still answer; thawed, it grants again."""
    broker = await asyncio.to_thread(start_broker, "contact")
    pid = int((KAFKA_SH.parent / "run" / broker.name / "kafka.pid").read_text().strip())
    client: TestClient[web.Request, web.Application] | None = None
    try:
        log = KafkaLog(broker.bootstrap, Topics("contact"), 3, session_timeout_ms=6000)
        settings = make_settings(log={"backend": "kafka", "session_timeout_ms": 6000})
        client = TestClient(TestServer(build_app(settings, log), host="127.0.0.1"))
        await client.start_server()

        async def admit(key: str) -> tuple[int, Any]:
            body = {"template_id": "t1", "tag": 1, "idempotency_key": key}
            async with client.post(f"/v1/oas/{OA}/admissions", json=body) as response:
                return response.status, await response.json()

        async def until(wanted: int, code: str | None, timeout_s: float) -> float:
            started = time.monotonic()
            for n in itertools.count():
                status, answer = await admit(f"{code}-{n}")
                if status == wanted and (code is None or answer["error"]["code"] == code):
                    return time.monotonic() - started
                assert time.monotonic() - started < timeout_s, (status, answer)
                await asyncio.sleep(0.2)
            raise AssertionError("unreachable")

        await until(200, None, 60)
        os.kill(pid, signal.SIGSTOP)
        try:
            refused_after = await until(503, "out_of_contact", 10)
            async with client.get(f"/v1/oas/{OA}/quota") as response:
                assert response.status == 200  # the owner's state is still the newest there is
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(200, None, 60)
        # Refusing before the session timeout ran out: before the group could have given
        # the OA's partition to another member, which would then grant too.
        assert refused_after < 6.0
    finally:
        os.kill(pid, signal.SIGCONT)
        if client is not None:
            await client.close()
        await asyncio.to_thread(broker.stop)
