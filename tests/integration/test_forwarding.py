"""A request forwarded to an OA's owner: the path exactly as sent, signed, checked there."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from service.api.routing import FORWARDED_HEADER, Forwarder, forwarded_middleware, sign_forward
from service.app import build_app
from service.http import SETTINGS, errors_middleware, json_response
from service.log.assignor import AddressingAssignor
from service.log.base import Topics
from service.log.kafka import KafkaLog
from tests.conftest import make_settings

SECRET = "the-cluster-secret-0123"


@dataclass
class Owner:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)


async def _serve(app: web.Application, started: list[TestServer]) -> str:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    started.append(server)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def servers() -> AsyncIterator[list[TestServer]]:
    started: list[TestServer] = []
    yield started
    for server in started:
        await server.close()


async def start_owner(servers: list[TestServer], secret: str | None = SECRET) -> Owner:
    app = web.Application(middlewares=[errors_middleware, forwarded_middleware])
    app[SETTINGS] = make_settings(api={"cluster_secret": secret} if secret else {})
    owner = Owner("")

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        owner.seen.append({"method": request.method, "raw_path": request.raw_path, "body": body})
        return json_response({"answered": True})

    app.router.add_route("*", "/{tail:.*}", answer)
    owner.url = await _serve(app, servers)
    return owner


async def start_front(servers: list[TestServer], owner: Owner, secret: str | None) -> str:
    app = web.Application(middlewares=[errors_middleware])
    app[SETTINGS] = make_settings(api={"cluster_secret": secret} if secret else {})
    forwarder = Forwarder("http://front.invalid:1", 5.0)

    async def forward(request: web.Request) -> web.Response:
        return await forwarder.forward(request, owner.url, await request.read())

    async def close(_: web.Application) -> None:
        await forwarder.close()

    app.on_cleanup.append(close)
    app.router.add_route("*", "/{tail:.*}", forward)
    return await _serve(app, servers)


RAW = "/v1/oas/a%2Fb%3Fc%23d%25e/quota?x=%2F&y=%3F"


async def test_the_owner_gets_the_raw_path_and_body_exactly(servers: list[TestServer]) -> None:
    owner = await start_owner(servers)
    front = await start_front(servers, owner, SECRET)
    async with (
        aiohttp.ClientSession() as session,
        session.post(URL(front + RAW, encoded=True), data=b'{"k": 1}') as response,
    ):
        assert response.status == 200, await response.text()
        assert await response.json() == {"answered": True}
    assert owner.seen == [{"method": "POST", "raw_path": RAW, "body": b'{"k": 1}'}]


async def test_without_a_cluster_secret_nothing_is_forwarded(servers: list[TestServer]) -> None:
    owner = await start_owner(servers)
    front = await start_front(servers, owner, None)
    async with aiohttp.ClientSession() as session, session.get(front + "/v1/oas/1/quota") as r:
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "forwarding_disabled"
    assert owner.seen == []


async def test_the_owner_refuses_a_forward_it_cannot_verify(servers: list[TestServer]) -> None:
    owner = await start_owner(servers)
    path, body = "/v1/oas/1/admissions", b'{"idempotency_key": "k"}'
    now = str(int(time.time()))

    def signed(secret: str, method: str, raw_path: str, ts: str) -> dict[str, str]:
        signature = sign_forward(secret.encode(), method, raw_path, body, ts)
        return {
            FORWARDED_HEADER: "http://front.invalid:1",
            "X-Zns-Gate-Timestamp": ts,
            "X-Zns-Gate-Signature": signature,
        }

    refused = [
        {FORWARDED_HEADER: "http://front.invalid:1"},  # unsigned
        signed("another-secret-0123456", "POST", path, now),
        signed(SECRET, "POST", path, str(int(time.time()) - 120)),  # stale
        signed(SECRET, "POST", "/v1/oas/2/admissions", now),  # another OA
        signed(SECRET, "GET", path, now),  # another method
    ]
    async with aiohttp.ClientSession() as session:
        for headers in refused:
            async with session.post(owner.url + path, data=body, headers=headers) as r:
                assert r.status == 401, headers
                assert (await r.json())["error"]["code"] == "invalid_forward_signature"
        assert owner.seen == []
        good = signed(SECRET, "POST", path, now)
        async with session.post(owner.url + path, data=body, headers=good) as r:
            assert r.status == 200
        tampered = body.replace(b'"k"', b'"j"')
        async with session.post(owner.url + path, data=tampered, headers=good) as r:
            assert r.status == 401
    assert len(owner.seen) == 1


def test_the_cluster_secret_signs_what_the_member_publishes() -> None:
    log = KafkaLog("127.0.0.1:1", Topics("never-started"), 3)
    build_app(make_settings(api={"cluster_secret": SECRET}), log)
    consumer = log.consumer("group", ["never-started.events"], address="http://10.0.0.9:8080")
    said = orjson.loads(consumer._assignor.metadata(["never-started.events"]).user_data)
    assert said["address"] == "10.0.0.9:8080"
    assert said["mac"] == AddressingAssignor("http://10.0.0.9:8080", SECRET.encode()).sign(
        "10.0.0.9:8080"
    )
