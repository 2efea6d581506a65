"""The token keeper and its routes against the fake Zalo as a real server, on both logs.

The gate runs as in production (its real app on a loopback port); the fake Zalo
runs beside it, and its control API says which refresh tokens were presented
and which were refused. Time that must pass for a token is moved on the
keeper's clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.api.zalo import TOKENS
from service.app import PROCESSOR, build_app
from service.http import SETTINGS
from service.log.base import EventLog, TopicPartition, Topics
from service.log.embedded import EmbeddedLog
from service.log.kafka import KafkaLog
from service.logsetup import configure_logging
from service.zalo.connect import Connector
from service.zalo.fake import build_fake_app, default_scenario
from service.zalo.fake.scenario import parse_scenario
from service.zalo.fake.server import FAKE_KEY, FakeZaloServer
from service.zalo.fake.state import fingerprint
from service.zalo.tokens import TokenKeeper
from tests import zalo
from tests.conftest import LogOpener, RunningService, ServiceFactory, delete_topics, make_settings
from tests.serve import Served, free_port

APP_SECRET = "fake-app-secret"
REFRESH = "fake-refresh-token"
ACCESS = "fake-access-token"
OA = "388613280878808645"
TOKEN_KEY = base64.b64encode(bytes(range(32))).decode()
CALLBACK = "http://gate.example/zalo/callback"


class Fake:
    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.url = str(server.make_url("")).rstrip("/")
        self.http = aiohttp.ClientSession()

    @property
    def state(self) -> FakeZaloServer:
        return self.server.app[FAKE_KEY]

    async def control(self, path: str, body: Any = None) -> Any:
        method = self.http.get if body is None else self.http.post
        kwargs = {} if body is None else {"json": body}
        async with method(f"{self.url}/_fake{path}", **kwargs) as answer:
            assert answer.status == 200, await answer.text()
            return await answer.json()

    async def refreshes(self) -> list[dict[str, Any]]:
        calls = await self.control("/oauth")
        return [c for c in calls if c["grant_type"] == "refresh_token"]

    async def accepts(self, access_token: str) -> bool:
        async with self.http.get(
            f"{self.url}/message/quota", headers={"access_token": access_token}
        ) as answer:
            return bool((await answer.json())["error"] == 0)

    def secrets(self) -> set[str]:
        """Every token and code the fake ever issued."""
        zalo_state = self.state.zalo
        return {*zalo_state.access_tokens, *zalo_state.refresh_tokens, *zalo_state.codes}


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    server = TestServer(build_fake_app(default_scenario()), host="127.0.0.1")
    await server.start_server()
    f = Fake(server)
    yield f
    await f.http.close()
    await server.close()


def zalo_sections(fake: Fake, **zalo_changes: Any) -> dict[str, Any]:
    return {
        "apps": [
            {"app_id": zalo.APP_ID, "secrets": [zalo.SECRET], "app_secret": APP_SECRET},
            {"app_id": "1111", "secrets": ["another-app-secret"]},
        ],
        "zalo": {
            "enabled": True,
            "api_url": fake.url,
            "oauth_url": fake.url,
            "permission_url": f"{fake.url}/v4/oa/permission",
            "callback_url": CALLBACK,
            "token_key": TOKEN_KEY,
            **zalo_changes,
        },
    }


Started = Callable[..., Awaitable[RunningService]]


@pytest.fixture
def gate(service_factory: ServiceFactory, fake: Fake) -> Started:
    async def start(**zalo_changes: Any) -> RunningService:
        service = await service_factory(**zalo_sections(fake, **zalo_changes))
        await until_owner(service)
        return service

    return start


def keeper_of(service: RunningService) -> TokenKeeper:
    return service.client.app[TOKENS]


async def until_owner(service: RunningService) -> None:
    async with asyncio.timeout(30):
        while TOKENS not in service.client.app or not keeper_of(service).owns(OA):
            await asyncio.sleep(0.05)


async def call(
    service: RunningService, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    data = None if body is None else orjson.dumps(body)
    async with service.client.request(method, path, data=data, headers=headers) as answer:
        return answer.status, await answer.json()


async def put(service: RunningService, body: Any) -> tuple[int, Any]:
    return await call(service, "PUT", f"/v1/oas/{OA}/zalo/token", body)


def later(keeper: TokenKeeper, seconds: float) -> None:
    """Move the keeper's clock `seconds` on."""
    before = keeper.clock
    keeper.clock = lambda: before() + seconds


async def all_records(log: EventLog, topic: str) -> list[Any]:
    out = []
    for partition in range(log.partitions):
        start = 0
        while batch := await log.read(TopicPartition(topic, partition), start, 500):
            out.extend(batch)
            start = batch[-1].offset + 1
    return out


# --- storing and reading ------------------------------------------------------------------


async def test_a_stored_refresh_token_is_refreshed_at_once_and_never_shown(
    gate: Started, fake: Fake
) -> None:
    service = await gate()
    status, answer = await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH})
    assert status == 200, answer
    assert answer["state"] == "valid"
    assert answer["app_id"] == zalo.APP_ID
    assert len(await fake.refreshes()) == 1
    status, read = await call(service, "GET", f"/v1/oas/{OA}/zalo/token")
    assert status == 200
    assert set(read) == {
        "oa_id",
        "app_id",
        "state",
        "access_expires_at",
        "refresh_expires_at",
        "refreshed_at",
    }
    text = orjson.dumps(read).decode()
    assert not any(secret in text for secret in fake.secrets())
    keeper = keeper_of(service)
    token = await keeper.access_token(OA)
    assert token is not None
    assert await fake.accepts(token)
    assert keeper.callable_oas() == [OA]
    async with service.client.get("/metrics") as answer:
        metrics = await answer.text()
    assert 'zns_gate_zalo_token_refreshes_total{outcome="refreshed"}' in metrics
    assert f'zns_gate_zalo_token_state{{oa_id="{OA}",state="valid"}} 1.0' in metrics
    assert f'zns_gate_zalo_token_state{{oa_id="{OA}",state="dead"}} 0.0' in metrics
    [left] = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(f'zns_gate_zalo_token_expires_seconds{{oa_id="{OA}"}}')
    ]
    assert 89_000 < left <= 90_000
    assert not any(secret in metrics for secret in fake.secrets())


async def test_a_pair_with_its_access_token_is_used_as_given(gate: Started, fake: Fake) -> None:
    service = await gate()
    body = {"app_id": zalo.APP_ID, "refresh_token": REFRESH, "access_token": ACCESS}
    assert (await put(service, {**body, "expires_in": "90000"}))[0] == 200
    assert await keeper_of(service).access_token(OA) == ACCESS
    assert await fake.refreshes() == []


async def test_bad_input_is_refused_and_changes_nothing(gate: Started, fake: Fake) -> None:
    service = await gate()
    cases = [
        ({"app_id": "999", "refresh_token": REFRESH}, 422, "unknown_app"),
        ({"app_id": "1111", "refresh_token": REFRESH}, 422, "no_app_secret"),
        ({"app_id": zalo.APP_ID}, 422, "invalid_request"),
        ({"app_id": zalo.APP_ID, "refresh_token": REFRESH, "access_token": "a"}, 422, None),
        ({"app_id": zalo.APP_ID, "refresh_token": "not-a-token"}, 422, "token_refused"),
    ]
    for body, status, code in cases:
        got, answer = await put(service, body)
        assert got == status, (body, answer)
        if code is not None:
            assert answer["error"]["code"] == code
    async with service.client.put(
        f"/v1/oas/{OA}/zalo/token", data=b"app_id=1", headers={"Content-Type": "text/plain"}
    ) as answer:
        assert answer.status == 415
    status, read = await call(service, "GET", f"/v1/oas/{OA}/zalo/token")
    assert (status, read["state"], read["app_id"]) == (200, "missing", None)
    # The refused one was presented once, and the scenario's token is still usable.
    assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200


async def test_delete_forgets_the_token(gate: Started, fake: Fake) -> None:
    service = await gate()
    assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
    status, answer = await call(service, "DELETE", f"/v1/oas/{OA}/zalo/token")
    assert (status, answer["state"]) == (200, "missing")
    keeper = keeper_of(service)
    assert await keeper.access_token(OA) is None
    assert keeper.callable_oas() == []
    records = await all_records(service.log, service.log.topics.tokens)
    assert records[-1].key == OA.encode()
    assert records[-1].value == b""


async def test_with_zalo_off_the_routes_answer_404(
    service_factory: ServiceFactory, fake: Fake
) -> None:
    sections = zalo_sections(fake)
    sections["zalo"]["enabled"] = False
    service = await service_factory(**sections)
    for method, path in (
        ("GET", f"/v1/oas/{OA}/zalo/token"),
        ("DELETE", f"/v1/oas/{OA}/zalo/token"),
        ("GET", f"/zalo/connect?app_id={zalo.APP_ID}"),
        ("GET", f"/zalo/callback?code=x&oa_id={OA}&state=y"),
    ):
        status, answer = await call(service, method, path)
        assert (status, answer["error"]["code"]) == (404, "zalo_disabled")


# --- refreshing -----------------------------------------------------------------------------


async def test_refresh_rotates_and_no_refresh_token_is_used_twice_across_a_restart(
    service_factory: ServiceFactory, log_factory: LogOpener, fake: Fake
) -> None:
    sections = zalo_sections(fake)
    first = await service_factory(**sections)
    await until_owner(first)
    assert (await put(first, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
    keeper = keeper_of(first)
    later(keeper, 90_000 - 100)  # within the margin: the next use refreshes first
    token = await keeper.access_token(OA)
    assert token is not None
    assert await fake.accepts(token)
    # The service stops right after that refresh's append: nothing else was written.
    await first.client.close()

    second = await service_factory(**sections)
    await until_owner(second)
    again = keeper_of(second)
    assert again.status(OA).state == "valid"
    assert await again.access_token(OA) == token  # the pair of the last refresh
    later(again, 2 * (90_000 - 100))  # past the first keeper's moved clock too
    newer = await again.access_token(OA)
    assert newer is not None
    assert newer != token
    assert await fake.accepts(newer)

    refreshes = await fake.refreshes()
    assert len(refreshes) == 3
    assert all(c["error"] == 0 for c in refreshes), refreshes
    presented = [c["used"] for c in refreshes]
    assert len(set(presented)) == len(presented) == 3
    assert presented[0] == fingerprint(REFRESH)


async def test_a_minus_124_leads_to_one_refresh(gate: Started, fake: Fake) -> None:
    service = await gate()
    assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
    keeper = keeper_of(service)
    old = await keeper.access_token(OA)
    assert old is not None
    answers = await asyncio.gather(*(keeper.refused(OA, old) for _ in range(5)))
    assert len(set(answers)) == 1
    assert answers[0] != old
    assert answers[0] is not None
    assert await fake.accepts(answers[0])
    # Another caller that still holds the old token gets the new one, without a refresh.
    assert await keeper.refused(OA, old) == answers[0]
    assert len(await fake.refreshes()) == 2


async def test_a_refused_refresh_makes_the_token_dead_and_its_calls_stop(
    gate: Started, fake: Fake
) -> None:
    service = await gate()
    assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
    keeper = keeper_of(service)
    old = await keeper.access_token(OA)
    assert old is not None
    await fake.control("/errors", {"endpoint": "oauth", "error": -14014})
    assert await keeper.refused(OA, old) is None
    status, read = await call(service, "GET", f"/v1/oas/{OA}/zalo/token")
    assert (read["state"], read["last_error"]) == ("dead", "zalo_-14014")
    assert await keeper.access_token(OA) is None
    assert keeper.callable_oas() == []
    [decision] = [
        orjson.loads(r.value)
        for r in await all_records(service.log, service.log.topics.decisions)
        if r.key == OA.encode()
    ]
    assert (decision["kind"], decision["rule"], decision["after"]) == (
        "token",
        "token_dead",
        "dead",
    )
    assert decision["source"]["topic"] == service.log.topics.tokens
    calls = len(await fake.refreshes())
    later(keeper, 40 * 86_400)  # long past every reason to refresh
    await asyncio.sleep(keeper.options.tail_every_s * 2.5)
    assert await keeper.refused(OA, old) is None
    assert len(await fake.refreshes()) == calls
    # A new token brings the OA back.
    assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 422
    body = {"app_id": zalo.APP_ID, "refresh_token": REFRESH, "access_token": ACCESS}
    status, answer = await put(service, {**body, "expires_in": 90_000})
    assert (status, answer["state"]) == (200, "valid")
    assert keeper.callable_oas() == [OA]


async def test_a_rate_limit_keeps_the_token_and_tries_again_later(
    gate: Started, fake: Fake
) -> None:
    service = await gate()
    assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
    keeper = keeper_of(service)
    old = await keeper.access_token(OA)
    await fake.control("/errors", {"endpoint": "oauth", "error": -32, "times": 2})
    later(keeper, 90_000 - 100)
    assert await keeper.access_token(OA) == old  # still valid, not refreshed
    assert old is not None
    # While it backs off, neither a use nor a -124 calls Zalo again.
    assert await keeper.access_token(OA) == old
    assert await keeper.refused(OA, old) is None
    [left] = (await fake.control("/state"))["scripted_errors"]
    assert left["times"] == 1
    assert keeper.status(OA).last_error == "rate_limited"
    assert keeper.status(OA).state == "expiring"
    async with asyncio.timeout(15):
        while keeper.status(OA).state != "valid":
            later(keeper, keeper.options.backoff_most_s)  # past any back-off
            await asyncio.sleep(keeper.options.tail_every_s)
    assert await keeper.access_token(OA) != old
    assert (await fake.control("/state"))["scripted_errors"] == []


async def test_an_idle_token_is_refreshed_by_the_background_task(gate: Started, fake: Fake) -> None:
    service = await gate()
    assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
    keeper = keeper_of(service)
    refreshed = keeper.status(OA).refreshed_at
    later(keeper, 30 * 86_400 + 1)  # but the access token is made valid again: only age counts
    async with asyncio.timeout(10):
        while keeper.status(OA).refreshed_at == refreshed:
            await asyncio.sleep(0.1)
    assert len(await fake.refreshes()) == 2


# --- connecting an OA -------------------------------------------------------------------------


async def test_connect_and_callback_store_the_pair(gate: Started, fake: Fake) -> None:
    service = await gate()
    async with service.client.get(
        f"/zalo/connect?app_id={zalo.APP_ID}", allow_redirects=False
    ) as answer:
        assert answer.status == 302
        permission = answer.headers["Location"]
    query = parse_qs(urlsplit(permission).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [CALLBACK]
    async with fake.http.get(permission, allow_redirects=False) as answer:
        assert answer.status == 302
        back = urlsplit(answer.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == CALLBACK
    # The browser follows to the gate's callback (the callback URL names the gate).
    tampered = back.query.replace("state=", "state=x")
    async with service.client.get(f"/zalo/callback?{tampered}") as answer:
        assert answer.status == 400
        assert (await answer.json())["error"]["code"] == "invalid_state"
    async with service.client.get(f"/zalo/callback?{back.query}") as answer:
        assert answer.status == 200, await answer.text()
        page = await answer.text()
    assert OA in page
    assert answer.content_type == "text/html"
    assert not any(secret in page for secret in fake.secrets())
    token = await keeper_of(service).access_token(OA)
    assert token is not None
    assert await fake.accepts(token)
    # The code is used up: the same callback again is refused by Zalo and stores nothing.
    async with service.client.get(f"/zalo/callback?{back.query}") as answer:
        assert answer.status == 422
    assert await keeper_of(service).access_token(OA) == token


async def test_connect_refuses_what_is_not_configured(gate: Started) -> None:
    service = await gate()
    for query, code in (("app_id=999", "unknown_app"), ("app_id=1111", "no_app_secret")):
        status, answer = await call(service, "GET", f"/zalo/connect?{query}")
        assert (status, answer["error"]["code"]) == (422, code)
    status, answer = await call(service, "GET", "/zalo/connect")
    assert status == 400


# --- no secret in the clear -------------------------------------------------------------------


async def test_no_token_is_in_the_clear_in_the_log_or_in_the_logs(
    gate: Started, fake: Fake, backend: str, log_factory: LogOpener
) -> None:
    out = io.StringIO()
    configure_logging("DEBUG", stream=out, json=True)
    try:
        service = await gate()
        assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
        keeper = keeper_of(service)
        old = await keeper.access_token(OA)
        assert old is not None
        await keeper.refused(OA, old)
        async with service.client.get(
            f"/zalo/connect?app_id={zalo.APP_ID}", allow_redirects=False
        ) as answer:
            permission = answer.headers["Location"]
        async with fake.http.get(permission, allow_redirects=False) as answer:
            back = urlsplit(answer.headers["Location"])
        async with service.client.get(f"/zalo/callback?{back.query}") as answer:
            assert answer.status == 200
        await fake.control("/errors", {"endpoint": "oauth", "error": -14014})
        assert await keeper.refused(OA, (await keeper.access_token(OA)) or "") is None
    finally:
        configure_logging("INFO", json=True)
    # The PKCE verifier never travels: it is recomputed from the state, as the gate does.
    _, verifier = Connector(base64.b64decode(TOKEN_KEY)).check(parse_qs(back.query)["state"][0], 0)
    secrets = fake.secrets() | {APP_SECRET, TOKEN_KEY, verifier}
    assert len(secrets) >= 8
    logged = out.getvalue()
    assert logged.count("\n") > 5
    for line in logged.splitlines():
        for secret in secrets:
            assert secret not in line, line

    records = []
    for topic in service.log.topics.all():
        records.extend(await all_records(service.log, topic))
    assert any(r.topic == service.log.topics.tokens for r in records)
    for record in records:
        raw = (record.key or b"") + record.value + b"".join(v for _, v in record.headers)
        for secret in secrets:
            assert secret.encode() not in raw
    if backend == "embedded":
        database = Path(log_factory.where)
        raw_file = b"".join(
            p.read_bytes() for p in database.parent.glob(database.name + "*") if p.is_file()
        )
        assert raw_file
        for secret in secrets:
            assert secret.encode() not in raw_file
        with sqlite3.connect(database) as conn:
            assert (
                conn.execute(
                    "SELECT COUNT(*) FROM records WHERE topic = ?", (service.log.topics.tokens,)
                ).fetchone()[0]
                >= 3
            )


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


@pytest.mark.parametrize("backend", ["embedded"])  # the log its settings file names
async def test_token_status_prints_each_oa_without_a_token(
    gate: Started, fake: Fake, log_factory: LogOpener, tmp_path: Path
) -> None:
    service = await gate()
    assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
    partitions = service.log.partitions
    await service.client.close()  # the embedded log's file is held by one process at a time
    config = tmp_path / "gate.toml"
    config.write_text(
        f'[log]\nbackend = "embedded"\npath = "{log_factory.where}"\n'
        f'topic_prefix = "{log_factory.prefix}"\npartitions = {partitions}\n'
        f'[zalo]\nenabled = true\ntoken_key = "{TOKEN_KEY}"\n',
        encoding="utf-8",
    )
    status, printed = await run_cli("token", "status", "--config", str(config))
    assert status == 0
    [line] = [orjson.loads(line) for line in printed.splitlines()]
    assert (line["oa_id"], line["state"], line["app_id"]) == (OA, "valid", zalo.APP_ID)
    assert not any(secret in printed for secret in fake.secrets())
    status, printed = await run_cli("token", "status", "--config", str(config), "--oa", "42")
    assert status == 0
    assert orjson.loads(printed)["state"] == "missing"


# --- two instances ----------------------------------------------------------------------------


async def test_only_the_owner_of_the_oas_partition_refreshes(
    kafka_bootstrap: str, fake: Fake
) -> None:
    """Two instances in one group on Kafka: a PUT through either reaches the owner, only the
    owner refreshes (its background task), and the other follows the tokens topic; when the
    partition moves to it, it refreshes from the pair left, no refresh token used twice."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    clients: list[TestClient[web.Request, web.Application]] = []
    try:
        for _ in range(2):
            port = free_port()
            settings = make_settings(
                **zalo_sections(fake),
                log={"backend": "kafka", "session_timeout_ms": 6000, "partitions": 3},
                api={
                    "cluster_secret": "the-two-instances-secret",
                    "advertised_url": f"http://127.0.0.1:{port}",
                },
            )
            log = KafkaLog(kafka_bootstrap, Topics(prefix), 3, session_timeout_ms=6000)
            client = TestClient(TestServer(build_app(settings, log), host="127.0.0.1", port=port))
            await client.start_server()
            clients.append(client)
        keepers = [c.app[TOKENS] for c in clients]

        async with asyncio.timeout(60):
            while sorted(k.owns(OA) for k in keepers) != [False, True] or any(
                len(c.app[PROCESSOR].owners()) < 3 for c in clients
            ):
                await asyncio.sleep(0.2)
        owner, other = (0, 1) if keepers[0].owns(OA) else (1, 0)

        body = orjson.dumps({"app_id": zalo.APP_ID, "refresh_token": REFRESH})
        async with clients[other].put(
            f"/v1/oas/{OA}/zalo/token", data=body, headers={"Content-Type": "application/json"}
        ) as answer:
            assert answer.status == 200, await answer.text()
        assert keepers[owner].status(OA).state == "valid"
        async with clients[other].get(f"/v1/oas/{OA}/zalo/token") as answer:
            assert answer.status == 200
            assert (await answer.json())["state"] == "valid"
            assert answer.headers["X-Served-By"] == clients[owner].app[SETTINGS].api.advertised_url
        assert await keepers[other].access_token(OA) is None
        assert keepers[other].callable_oas() == []
        assert keepers[owner].callable_oas() == [OA]
        first = keepers[owner].status(OA).refreshed_at

        for keeper in keepers:  # both find the token old enough to refresh
            later(keeper, 30 * 86_400 + 1)
        async with asyncio.timeout(20):
            while keepers[other].status(OA).refreshed_at == first:
                await asyncio.sleep(0.2)  # the other sees the owner's refresh in the topic
        await asyncio.sleep(keepers[other].options.tail_every_s * 3)
        refreshes = await fake.refreshes()
        assert len(refreshes) == 2
        assert all(c["error"] == 0 for c in refreshes)
        assert keepers[other].status(OA).refreshed_at == keepers[owner].status(OA).refreshed_at

        # The owner stops: the OA's partition moves to the other, which refreshes with
        # the pair the first one left, never with one already used.
        await clients[owner].close()
        async with asyncio.timeout(60):
            while not keepers[other].owns(OA):
                await asyncio.sleep(0.2)
        moved = keepers[other].status(OA).refreshed_at
        later(keepers[other], 30 * 86_400 + 1)
        async with asyncio.timeout(20):
            while keepers[other].status(OA).refreshed_at == moved:
                await asyncio.sleep(0.2)
        refreshes = await fake.refreshes()
        assert len(refreshes) == 3
        assert all(c["error"] == 0 for c in refreshes), refreshes
        presented = [c["used"] for c in refreshes]
        assert len(set(presented)) == len(presented) == 3
        token = await keepers[other].access_token(OA)
        assert token is not None
        assert await fake.accepts(token)
    finally:
        for client in clients:
            await client.close()
        await delete_topics(kafka_bootstrap, prefix)


async def test_a_service_killed_right_after_a_refresh_leaves_a_usable_pair(
    fake: Fake, tmp_path: Path
) -> None:
    """`zns-gate serve` refreshes (the PUT answers once the new pair is appended) and is
    killed with SIGKILL at once; a service started on its log file uses the new pair."""
    database = tmp_path / "log.db"
    config = tmp_path / "gate.toml"
    config.write_text(
        f'[log]\nbackend = "embedded"\npath = "{database}"\npartitions = 3\n'
        f'[processor]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[apps]]\napp_id = "{zalo.APP_ID}"\nsecrets = ["{zalo.SECRET}"]\n'
        f'app_secret = "{APP_SECRET}"\n'
        f'[zalo]\nenabled = true\noauth_url = "{fake.url}"\napi_url = "{fake.url}"\n'
        f'token_key = "{TOKEN_KEY}"\n',
        encoding="utf-8",
    )
    served = Served(tmp_path, "killed", ZNS_GATE_CONFIG=str(config))
    try:
        await served.wait_ready(path="/readyz")
        async with aiohttp.ClientSession() as http:
            body = {"app_id": zalo.APP_ID, "refresh_token": REFRESH}
            async with http.put(f"{served.url}/v1/oas/{OA}/zalo/token", json=body) as answer:
                assert answer.status == 200, await answer.text()
                served.process.kill()
        served.process.wait(timeout=30)
    finally:
        served.stop()
    [issued] = await fake.refreshes()

    settings = make_settings(**zalo_sections(fake), processor={"state_dir": tmp_path / "state"})
    log = EmbeddedLog(database, Topics("zns"), 3)
    client = TestClient(TestServer(build_app(settings, log), host="127.0.0.1"))
    await client.start_server()
    try:
        keeper = client.app[TOKENS]
        async with asyncio.timeout(30):
            while not keeper.owns(OA):
                await asyncio.sleep(0.05)
        token = await keeper.access_token(OA)
        assert token is not None
        assert fingerprint(token) == issued["access_token"]
        assert await fake.accepts(token)
        newer = await keeper.refused(OA, token)  # the stored refresh token still works
        assert newer is not None
        assert await fake.accepts(newer)
        refreshes = await fake.refreshes()
        assert [c["error"] for c in refreshes] == [0, 0]
        assert refreshes[1]["used"] == issued["refresh_token"]
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def slow_fake() -> AsyncIterator[Fake]:
    """A fake Zalo whose OAuth answers after 0.5 s: a refresh is in flight long enough."""
    values = default_scenario().model_dump()
    values["behaviour"] = {"oauth": {"delay_s": 0.5}}
    server = TestServer(build_fake_app(parse_scenario(values)), host="127.0.0.1")
    await server.start_server()
    slow = Fake(server)
    try:
        yield slow
    finally:
        await slow.http.close()
        await server.close()


async def test_a_delete_while_a_refresh_runs_is_not_undone_by_it(
    service_factory: ServiceFactory,
) -> None:
    """Zalo answers slowly: a DELETE that comes while a refresh is in flight waits for it,
    so the refresh's new pair does not bring the deleted token back."""
    async with slow_fake() as slow:
        service = await service_factory(**zalo_sections(slow))
        await until_owner(service)
        assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
        keeper = keeper_of(service)
        old = await keeper.access_token(OA)
        assert old is not None
        refreshing = asyncio.create_task(keeper.refused(OA, old))
        await asyncio.sleep(0.1)  # the refresh is waiting for Zalo now
        status, answer = await call(service, "DELETE", f"/v1/oas/{OA}/zalo/token")
        assert (status, answer["state"]) == (200, "missing")
        assert refreshing.done()  # the delete came after it
        assert await refreshing is not None
        await asyncio.sleep(keeper.options.tail_every_s * 1.5)
        assert keeper.status(OA).state == "missing"
        assert await keeper.access_token(OA) is None
        records = await all_records(service.log, service.log.topics.tokens)
        assert records[-1].value == b""


async def test_a_refusal_of_a_refresh_token_another_instance_replaced_is_not_a_death(
    service_factory: ServiceFactory,
) -> None:
    """Another instance (here: the test, with the same key) refreshes the OA's token and
    stores the new pair while this keeper's refresh of the old one waits for Zalo; Zalo
    refuses the old one, and the keeper takes the stored pair instead of a dead token."""
    async with slow_fake() as slow:
        service = await service_factory(**zalo_sections(slow))
        await until_owner(service)
        assert (await put(service, {"app_id": zalo.APP_ID, "refresh_token": REFRESH}))[0] == 200
        keeper = keeper_of(service)
        held = keeper._tokens[OA]
        old = held.access_token
        assert old is not None

        async def other_instance() -> None:
            form = {"refresh_token": held.refresh_token, "app_id": zalo.APP_ID}
            async with slow.http.post(
                f"{slow.url}/v4/oa/access_token",
                data={**form, "grant_type": "refresh_token"},
                headers={"secret_key": APP_SECRET},
            ) as answer:
                pair = await answer.json()
            newer = dataclasses.replace(
                held,
                access_token=pair["access_token"],
                refresh_token=pair["refresh_token"],
                refreshed_at=held.refreshed_at + 1,
            )
            await service.log.append(
                service.log.topics.tokens, OA.encode(), keeper.vault.seal(newer)
            )

        other = asyncio.create_task(other_instance())
        await asyncio.sleep(0.3)  # the other's refresh reaches Zalo first
        replaced = await keeper.refused(OA, old)
        await other
        assert [c["error"] for c in await slow.refreshes()][-2:] == [0, -14014]
        assert replaced is not None
        assert await slow.accepts(replaced)
        assert keeper.status(OA).state == "valid"
        decisions = await all_records(service.log, service.log.topics.decisions)
        assert [r for r in decisions if r.key == OA.encode()] == []
