"""The embedded log's file: private to its owner, and never silently replaced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests import zalo
from tests.conftest import ServiceFactory

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

hooks = zalo.Webhooks()


async def test_the_database_is_created_readable_by_its_owner_only(
    service_factory: ServiceFactory,
) -> None:
    old = os.umask(0o022)  # the usual umask, which leaves new files readable by all
    try:
        service = await service_factory()
    finally:
        os.umask(old)
    assert (await service.post(hooks.build("user_feedback")))[0] == 200
    path: Path = service.log.path  # type: ignore[attr-defined]
    for file in (path, path.with_name(path.name + "-wal")):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


async def test_a_deleted_database_stops_writes_and_readiness(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(receiver={"retry_after_s": 9})
    assert (await service.post(hooks.build("user_feedback")))[0] == 200
    async with service.client.get("/readyz") as response:
        assert response.status == 200
    path: Path = service.log.path  # type: ignore[attr-defined]
    path.unlink()  # an operator's mistake, or a cleanup job

    status, body = await service.post(hooks.build("user_feedback"))
    assert (status, body["error"]["code"]) == (503, "log_unavailable"), body
    admission = {"template_id": "t1", "tag": 1, "idempotency_key": "after-delete"}
    async with service.client.post(f"/v1/oas/{zalo.OA_ID}/admissions", json=admission) as r:
        assert r.status == 503, await r.text()
        assert (await r.json())["error"]["code"] == "log_unavailable"
        assert "Retry-After" in r.headers
    async with service.client.get("/readyz") as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "log_unavailable"
    assert not path.exists()  # nothing wrote a new, empty file in its place
