"""Fixtures shared by every test: a real Kafka broker, event logs of both backends.

The broker is Apache Kafka itself, started once per session from
`deploy/kafka/kafka.sh` on free loopback ports (the way aiokafka's own suite
starts one broker and reuses it). When it cannot start, every test that needs
it fails; nothing is skipped. `ZNS_GATE_TEST_KAFKA=host:port` uses a broker that
is already running instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings

from service.app import build_app
from service.config import Settings
from service.log.base import EventLog, Record, TopicPartition, Topics
from service.log.embedded import EmbeddedLog
from service.log.kafka import KafkaLog
from service.logsetup import configure_logging
from tests import zalo
from tests.serve import free_port

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"

# A loaded 2-core CI machine must not turn slow examples into failures.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=200,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session", autouse=True)
def _production_logging() -> None:
    """Tests log the way the service does (JSON lines), so logging code paths run for real."""
    configure_logging("INFO", json=True)


@dataclass(frozen=True)
class Broker:
    """A Kafka broker that `deploy/kafka/kafka.sh` runs under `name`."""

    name: str
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "bash",
                str(KAFKA_SH),
                command,
                "--name",
                self.name,
                "--port",
                str(self.port),
                "--controller-port",
                str(self.controller_port),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, clean: bool = True) -> None:
        """Start the broker; `clean=False` keeps the data of an earlier start (a restart)."""
        if clean:
            self.run("clean")
        result = self.run("start")
        if result.returncode != 0:
            pytest.fail(
                f"Kafka broker {self.name!r} did not start (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}",
                pytrace=False,
            )

    def stop(self) -> None:
        self.run("stop", timeout=120)


def start_broker(name: str) -> Broker:
    """Start a broker of the test's own, on free ports; the caller stops it."""
    broker = Broker(name, free_port(), free_port())
    broker.start()
    return broker


_session_broker: list[str] = []  # what the summary says about the broker, once started


def _describe_broker(broker: Broker) -> str:
    pid_file = KAFKA_SH.parent / "run" / broker.name / "kafka.pid"
    pid = pid_file.read_text().strip()
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    main = "kafka.Kafka" if b"kafka.Kafka" in command else "?"
    jars = sorted((KAFKA_SH.parent / "lib").glob("kafka_2.13-*.jar"))
    version = jars[0].stem.removeprefix("kafka_2.13-") if jars else "?"
    java = command[0].decode()
    return f"Apache Kafka {version}, pid {pid} ({java} ... {main}) on {broker.bootstrap}"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """host:port of the session's Kafka broker."""
    given = os.environ.get("ZNS_GATE_TEST_KAFKA")
    if given:
        _session_broker.append(f"given by ZNS_GATE_TEST_KAFKA at {given}")
        yield given
        return
    broker = start_broker("pytest")
    _session_broker.append(_describe_broker(broker))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


class LogOpener:
    """Opens started logs of one backend that share one place (a file or a topic prefix).

    Calling it again opens the same log anew, as a restart would.
    """

    def __init__(self, backend: str, where: str) -> None:
        self.backend = backend
        self.where = where  # the SQLite path or the Kafka bootstrap servers
        self.prefix = f"t{uuid.uuid4().hex[:12]}"
        self.opened: list[EventLog] = []

    async def __call__(self, partitions: int = 3, start: bool = True) -> EventLog:
        log: EventLog
        if self.backend == "kafka":
            log = KafkaLog(self.where, Topics(self.prefix), partitions, request_timeout_ms=10_000)
        else:
            log = EmbeddedLog(self.where, Topics(self.prefix), partitions)
        self.opened.append(log)
        if start:
            await log.start()
        return log

    async def close_all(self) -> None:
        for log in reversed(self.opened):
            await log.close()
        if self.backend == "kafka" and self.opened:
            await delete_topics(self.where, self.prefix)


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the topics under `prefix`: a broker that keeps every test's topics runs out
    of open files after a few runs of the suite."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
        if names:
            await admin.delete_topics(names)
    except Exception as exc:  # cleaning up must not fail the test that used them
        sys.stderr.write(f"could not delete the topics of {prefix}: {exc!r}\n")
    finally:
        await admin.close()


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def backend(request: pytest.FixtureRequest) -> str:
    """Runs a test once per event-log backend."""
    name: str = request.param
    return name


@pytest.fixture
async def log_factory(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[LogOpener]:
    """A `LogOpener` for the test's backend; everything it opened is closed afterwards."""
    if backend == "kafka":
        opener = LogOpener("kafka", request.getfixturevalue("kafka_bootstrap"))
    else:
        opener = LogOpener("embedded", str(tmp_path / "log.db"))
    yield opener
    await opener.close_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the broker carries the `kafka` marker (`-m "not kafka"` skips them)."""
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


_outcomes: dict[str, dict[str, int]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        backend = "kafka" if "kafka" in report.keywords else "other"
        counts = _outcomes.setdefault(backend, {})
        counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly whether the Kafka tests ran against a real broker."""
    write = terminalreporter.write_line
    if _session_broker:
        write(f"Kafka broker for this session: {_session_broker[0]}")
    kafka = _outcomes.get("kafka", {})
    write(
        "tests that used Kafka: "
        + (", ".join(f"{n} {o}" for o, n in sorted(kafka.items())) or "none")
    )


# --- a running service --------------------------------------------------------------------


def make_settings(**sections: Any) -> Settings:
    """Settings for tests: the test app with its current and a rotated-out secret."""
    values: dict[str, Any] = {
        "apps": [{"app_id": zalo.APP_ID, "secrets": [zalo.SECRET, zalo.OLD_SECRET]}],
    }
    values.update(sections)
    # The Kafka backend's local index stores: one place per test run, not the working tree.
    values["processor"] = {"state_dir": TEST_STATE_DIR, **dict(sections.get("processor", {}))}
    return Settings(**values)


TEST_STATE_DIR = Path(tempfile.mkdtemp(prefix="zns-gate-test-state-"))
"""Where the processors of this test run keep their local index stores (their children's
too: `ZNS_GATE_TEST_STATE_DIR`)."""
os.environ["ZNS_GATE_TEST_STATE_DIR"] = str(TEST_STATE_DIR)


class RunningService:
    """zns-gate's application on a real loopback socket, with its event log."""

    def __init__(self, client: TestClient[web.Request, web.Application], log: EventLog) -> None:
        self.client = client
        self.log = log

    async def post(self, hook: zalo.Webhook) -> tuple[int, dict[str, Any]]:
        async with self.client.post("/webhooks/zalo", data=hook.body, headers=hook.headers) as r:
            return r.status, await r.json()

    async def events(self) -> list[Record]:
        """Every record of the events topic, partition by partition."""
        out: list[Record] = []
        for p in range(self.log.partitions):
            tp = TopicPartition(self.log.topics.events, p)
            start = 0
            while batch := await self.log.read(tp, start, 1000):
                out.extend(batch)
                start = batch[-1].offset + 1
        return out


ServiceFactory = Callable[..., Awaitable[RunningService]]


@pytest.fixture
async def service_factory(log_factory: LogOpener) -> AsyncIterator[ServiceFactory]:
    """Starts the service on the test's log backend; `settings` sections may be given."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(partitions: int = 3, **sections: Any) -> RunningService:
        log = await log_factory(partitions=partitions, start=False)
        app = build_app(make_settings(**sections), log)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return RunningService(client, log)

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def service(service_factory: ServiceFactory) -> RunningService:
    return await service_factory()
