"""`service/client.py`, the senders' client: against the service, and against answers it must
wait out (503 with Retry-After, no answer at all)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.api.models import SendItem
from service.client import Client, GateError, Unavailable
from tests import zalo
from tests.conftest import RunningService
from tests.integration.test_api import ready
from tests.serve import free_port

OA = zalo.OA_ID


def base_url(service: RunningService) -> str:
    return str(service.client.make_url("")).rstrip("/")


async def test_the_client_admits_reports_and_reads(service: RunningService) -> None:
    await ready(service)
    async with Client(base_url(service)) as gate:
        quota = await gate.quota(OA)
        assert quota.daily_quota == 20_000
        assert quota.remaining_today == 20_000

        phones = ["0901234567", "0901234568"]
        first = await gate.admit(OA, "t1", tag=2, recipients=phones, idempotency_key="b-1")
        assert first.granted == 2
        assert first.denied == []
        assert first.remaining == 20_000 - 2
        assert first.rate_limit_reset_s is not None
        again = await gate.admit(OA, "t1", tag=2, recipients=phones, idempotency_key="b-1")
        assert again.admission_id == first.admission_id

        sent = SendItem.model_validate(
            {
                "template_id": "t1",
                "tag": 2,
                "recipient": phones[0],
                "tracking_id": "tr-1",
                "sent_time": "1780000000000",
                "error": 0,
                "admission_id": first.admission_id,
            }
        )
        reported = await gate.report_sends(OA, [sent, sent])
        assert (reported.accepted, reported.duplicates) == (1, 1)

        quality = await gate.quality(OA)
        assert quality.oa_id == OA
        assert (await gate.zalo_quota(OA)).data.dailyQuota == 20_000
        templates = (await gate.templates(OA)).templates
        assert [(t.template_id, t.tag) for t in templates] == [("t1", 2)]  # known by its grant

        with pytest.raises(GateError) as refused:
            await gate.admit(OA, "never-seen", count=1)
        assert (refused.value.status, refused.value.code) == (422, "tag_required")


Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def answering() -> AsyncIterator[Serve]:
    """Serves a small aiohttp app of the test's own on loopback; returns its base URL."""
    servers: list[TestServer] = []

    async def serve(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield serve
    for server in servers:
        await server.close()


async def test_a_503_is_asked_again_after_retry_after_with_the_same_key(
    answering: Serve,
) -> None:
    keys: list[str] = []

    async def admissions(request: web.Request) -> web.Response:
        keys.append((await request.json())["idempotency_key"])
        if len(keys) < 3:
            return web.json_response(
                {"error": {"code": "restoring", "message": "moving"}},
                status=503,
                headers={"Retry-After": "0"},
            )
        answer = {"admission_id": "a1", "granted": 1, "denied": [], "remaining": 9}
        return web.json_response(answer, headers={"X-RateLimit-Reset": "60"})

    app = web.Application()
    app.router.add_post("/v1/oas/{oa_id}/admissions", admissions)
    url = await answering(app)
    async with Client(url, retry_for_s=5) as gate:
        admitted = await gate.admit(OA, "t1", tag=1)
    assert admitted.granted == 1
    assert admitted.rate_limit_reset_s == 60
    assert len(keys) == 3
    assert len(set(keys)) == 1, "every retry carries the first key: it cannot grant twice"


async def test_it_gives_up_when_the_503s_outlast_its_patience(
    answering: Serve,
) -> None:
    calls = 0

    async def quota(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response(
            {"error": {"code": "log_unavailable", "message": "away"}},
            status=503,
            headers={"Retry-After": "0.1"},
        )

    app = web.Application()
    app.router.add_get("/v1/oas/{oa_id}/quota", quota)
    url = await answering(app)
    async with Client(url, retry_for_s=0.5) as gate:
        with pytest.raises(Unavailable) as gave_up:
            await gate.quota(OA)
    assert gave_up.value.code == "log_unavailable"
    assert calls > 1


async def test_no_listener_is_unavailable_after_the_deadline() -> None:
    async with Client(f"http://127.0.0.1:{free_port()}", retry_for_s=0.5) as gate:
        with pytest.raises(Unavailable) as gave_up:
            await gate.quota(OA)
    assert gave_up.value.code == "no_answer"
