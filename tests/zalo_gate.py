"""A gate and the local fake Zalo for integration tests: the fake behind a small recording
proxy (a real HTTP server too), so a test can see which calls reached Zalo, for which OA
and when; and the gate, built on the test's log backend with its Zalo connection on.

The fixtures `zalo_factory` and `gate_factory` are offered by `tests/integration/conftest.py`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import POLLER, ZALO_TOKENS, build_app
from service.zalo.fake import build_fake_app, default_scenario
from service.zalo.fake.scenario import DEFAULT_OA_ID, Scenario, parse_scenario
from service.zalo.fake.server import FAKE_KEY, FakeZaloServer
from service.zalo.poller import Poller
from tests import zalo
from tests.conftest import LogOpener, RunningService, make_settings
from tests.integration.test_api import eventually
from tests.zalo_tokens import FakeTokens

OA = DEFAULT_OA_ID
OTHER_OA = "1234567890123456789"
TOKEN_KEY = base64.b64encode(b"k" * 32).decode()

assert zalo.OA_ID == OA  # the gate's test webhooks name the fake's OA


def scenario(**changes: Any) -> Scenario:
    values = default_scenario().model_dump()
    values["oas"][0].update(changes.pop("oa", {}))
    values["oas"].extend(changes.pop("more_oas", []))
    values.update(changes)
    return parse_scenario(values)


@dataclass
class Call:
    at: float
    path: str
    token: str | None


@dataclass
class Zalo:
    """The fake Zalo behind a recording proxy: `url` is the proxy's."""

    url: str
    fake_url: str
    fake: FakeZaloServer
    calls: list[Call] = field(default_factory=list)

    def paths(self, path: str, token: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.path == path and (token is None or c.token == token)]

    async def control(self, path: str, body: Any) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.fake_url}/_fake{path}", json=body) as answer,
        ):
            assert answer.status == 200, await answer.text()
            return await answer.json()


ZaloFactory = Callable[..., Awaitable[Zalo]]


@pytest.fixture
async def zalo_factory() -> AsyncIterator[ZaloFactory]:
    servers: list[TestServer] = []
    http = aiohttp.ClientSession()

    async def start(s: Scenario | None = None) -> Zalo:
        fake = TestServer(build_fake_app(s or scenario()), host="127.0.0.1")
        await fake.start_server()
        servers.append(fake)
        fake_url = str(fake.make_url("")).rstrip("/")
        holder: list[Zalo] = []

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            holder[0].calls.append(
                Call(time.monotonic(), request.path, request.headers.get("access_token"))
            )
            kept = ("access_token", "secret_key", "content-type")
            headers = {k: v for k, v in request.headers.items() if k.lower() in kept}
            async with http.request(
                request.method,
                f"{fake_url}{request.path_qs}",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=60),
            ) as answer:
                return web.Response(
                    status=answer.status,
                    body=await answer.read(),
                    content_type=answer.content_type,
                )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        proxy = TestServer(app, host="127.0.0.1")
        await proxy.start_server()
        servers.append(proxy)
        holder.append(Zalo(str(proxy.make_url("")).rstrip("/"), fake_url, fake.app[FAKE_KEY]))
        return holder[0]

    yield start
    for server in reversed(servers):
        await server.close()
    await http.close()


@dataclass
class Gate:
    service: RunningService
    app: web.Application
    tokens: FakeTokens

    @property
    def poller(self) -> Poller:
        return self.app[POLLER]

    async def syncs(self) -> list[dict[str, Any]]:
        return [
            orjson.loads(r.value)
            for r in await self.service.events()
            if dict(r.headers).get("kind") == b"sync"
        ]


GateFactory = Callable[..., Awaitable[Gate]]


@pytest.fixture
async def gate_factory(log_factory: LogOpener) -> AsyncIterator[GateFactory]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(z: Zalo, tokens: FakeTokens | None = None, **zalo_settings: Any) -> Gate:
        tokens = tokens or FakeTokens(z.fake_url)
        log = await log_factory(partitions=3, start=False)
        settings = make_settings(
            zalo={
                "enabled": True,
                "api_url": z.url,
                "oauth_url": z.fake_url,
                "token_key": TOKEN_KEY,
                **zalo_settings,
            }
        )
        app = build_app(settings, log)
        app[ZALO_TOKENS] = tokens
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Gate(RunningService(client, log), app, tokens)

    yield start
    for client in clients:
        await client.close()


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    await eventually(check, timeout_s)


