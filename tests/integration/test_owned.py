"""The processor's owned-state interface, as the API calls it, on both backends."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import orjson
import pytest

from service.api import views
from service.domain.records import SendOutcome
from service.log.base import LogUnavailable
from service.log.embedded import EmbeddedLog
from service.processor.owned import (
    AHEAD_AT_MOST,
    BUSY,
    OWNED,
    Admitted,
    Ask,
    Here,
    Recorded,
    Refused,
    View,
)
from tests.conftest import RunningService
from tests.integration.test_api import NOW, eventually, ready

OA = "oa-owned"

EMBEDDED_ONLY = pytest.mark.parametrize("backend", ["embedded"])
"""For a test that holds the embedded log's SQLite file locked, to make its writes wait."""


def remaining(view: object) -> int | None:
    assert isinstance(view, View), view
    answer: int | None = views.quota(view.state, view.now, view.policy)["remaining_today"]
    return answer


async def test_an_admission_is_decided_appended_and_applied_at_once(
    service: RunningService,
) -> None:
    await ready(service)
    owned = service.client.app[OWNED]
    assert owned.where(OA, admit=True) == Here(None)
    before = remaining(owned.read(OA))
    assert before is not None
    ask = Ask("t1", 2, (), 5, "key-1", "hash-1")

    admitted = await owned.admit(OA, ask, timeout_s=5)

    assert isinstance(admitted, Admitted), admitted
    assert admitted.answer["granted"] == 5
    assert remaining(owned.read(OA)) == before - 5  # before the processor folds it
    [record] = [r for r in await service.events() if r.header("kind") == b"admission"]
    assert orjson.loads(record.value)["answer"] == admitted.answer
    # The same key and body: the first answer, nothing more granted or appended.
    again = await owned.admit(OA, ask, timeout_s=5)
    assert isinstance(again, Admitted)
    assert again.answer == admitted.answer
    assert remaining(owned.read(OA)) == before - 5
    other = await owned.admit(OA, dataclasses.replace(ask, request_hash="hash-2"), timeout_s=5)
    assert isinstance(other, Refused)
    assert (other.status, other.code) == (
        409,
        "idempotency_conflict",
    )
    untagged = await owned.admit(OA, Ask("t9", None, (), 1, "key-2", "hash-3"), timeout_s=5)
    assert isinstance(untagged, Refused)
    assert (untagged.status, untagged.code) == (
        422,
        "tag_required",
    )
    assert len([r for r in await service.events() if r.header("kind") == b"admission"]) == 1


async def test_a_read_is_a_copy(service: RunningService) -> None:
    await ready(service)
    owned = service.client.app[OWNED]
    await owned.admit(OA, Ask("t1", 2, (), 1, "key-1", "hash-1"), timeout_s=5)
    view = owned.read(OA)
    assert isinstance(view, View)
    assert view.staleness_ms is None
    view.state.templates.clear()
    view.state.daily_quota = 1
    again = owned.read(OA)
    assert isinstance(again, View)
    assert "t1" in again.state.templates
    assert again.state.daily_quota != 1


async def test_sends_are_recorded_once(service: RunningService) -> None:
    await ready(service)
    owned = service.client.app[OWNED]
    sent = str(int(NOW.timestamp() * 1000))
    outcome = SendOutcome(template_id="t1", tag=2, tracking_id="tr-1", sent_time=sent, error=0)
    first = await owned.record_sends(OA, [outcome, outcome], timeout_s=5)
    assert first == Recorded(accepted=1, duplicates=1)
    assert await owned.record_sends(OA, [outcome], timeout_s=5) == Recorded(0, 1)
    assert len([r for r in await service.events() if r.header("kind") == b"send"]) == 1


async def test_the_oas_held_are_listed(service: RunningService) -> None:
    await ready(service)
    owned = service.client.app[OWNED]
    await owned.admit(OA, Ask("t1", 2, (), 1, "key-1", "hash-1"), timeout_s=5)
    held = await owned.listing(views.summary)
    assert sorted(held.partitions) == list(range(service.log.partitions))
    assert [line["oa_id"] for line in held.oas] == [OA]


async def test_repeats_of_an_admission_being_written_get_its_answer(
    service: RunningService,
) -> None:
    await ready(service)
    owned = service.client.app[OWNED]
    ask = Ask("t1", 2, (), 3, "same-key", "same-hash")

    answers = await asyncio.gather(*(owned.admit(OA, ask, timeout_s=5) for _ in range(20)))

    assert all(isinstance(a, Admitted) for a in answers), answers
    assert len({orjson.dumps(a.answer) for a in answers if isinstance(a, Admitted)}) == 1
    assert len([r for r in await service.events() if r.header("kind") == b"admission"]) == 1


async def test_admissions_decided_together_land_in_the_order_decided(
    service: RunningService,
) -> None:
    await ready(service)
    owned = service.client.app[OWNED]
    before = remaining(owned.read(OA))
    assert before is not None

    answers = await asyncio.gather(
        *(owned.admit(OA, Ask("t1", 2, (), 1, f"k{n}", f"h{n}"), timeout_s=5) for n in range(40))
    )

    assert all(isinstance(a, Admitted) and a.answer["granted"] == 1 for a in answers)
    logged = [
        orjson.loads(r.value)["answer"]
        for r in sorted(await service.events(), key=lambda r: r.offset)
        if r.header("kind") == b"admission"
    ]
    # Each decided on what the ones before it left, whether or not they were durable yet.
    assert [a["remaining"] for a in logged] == list(range(before - 1, before - 41, -1))
    assert remaining(owned.read(OA)) == before - 40


@EMBEDDED_ONLY
async def test_an_admission_whose_write_fails_grants_nothing(service: RunningService) -> None:
    """The embedded log's file is held locked by another connection: the first admission's
    write waits for it and lands late, the second is given up on while still queued."""
    await ready(service)
    owned = service.client.app[OWNED]
    before = remaining(owned.read(OA))
    assert before is not None
    assert isinstance(service.log, EmbeddedLog)
    blocker = sqlite3.connect(service.log.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        first = asyncio.create_task(owned.admit(OA, Ask("t1", 2, (), 5, "a", "ha"), timeout_s=0.3))
        await asyncio.sleep(0.1)  # the log's writer has taken its record and waits for the file
        second = asyncio.create_task(owned.admit(OA, Ask("t1", 2, (), 7, "b", "hb"), timeout_s=0.3))
        for task in (first, second):
            with pytest.raises(LogUnavailable):
                await task
        # Neither is counted while the log has not taken it.
        assert remaining(owned.read(OA)) == before
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    async def folded() -> bool:
        return remaining(owned.read(OA)) == before - 5

    await eventually(folded)  # the first landed late: the processor folds it
    again = await owned.admit(OA, Ask("t1", 2, (), 5, "a", "ha"), timeout_s=5)
    assert isinstance(again, Admitted)
    assert again.answer["granted"] == 5
    logged = [
        orjson.loads(r.value)["idempotency_key"]
        for r in await service.events()
        if r.header("kind") == b"admission"
    ]
    assert logged == ["a"]
    assert remaining(owned.read(OA)) == before - 5


async def test_a_send_reported_twice_at_once_is_recorded_once(service: RunningService) -> None:
    await ready(service)
    owned = service.client.app[OWNED]
    sent = str(int(NOW.timestamp() * 1000))
    outcomes = [
        SendOutcome(template_id="t1", tag=2, tracking_id=f"tr-{n}", sent_time=sent, error=0)
        for n in range(50)
    ]

    both = await asyncio.gather(*(owned.record_sends(OA, outcomes, timeout_s=5) for _ in range(2)))

    assert sorted(both, key=str) == [Recorded(0, 50), Recorded(50, 0)]
    assert len([r for r in await service.events() if r.header("kind") == b"send"]) == 50


@EMBEDDED_ONLY
async def test_an_admission_behind_too_many_being_written_is_told_to_come_back(
    service: RunningService,
) -> None:
    await ready(service)
    owned = service.client.app[OWNED]
    assert isinstance(service.log, EmbeddedLog)
    blocker = sqlite3.connect(service.log.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        written = [
            asyncio.create_task(owned.admit(OA, Ask("t1", 2, (), 1, f"w{n}", "h"), timeout_s=5))
            for n in range(AHEAD_AT_MOST)
        ]
        await asyncio.sleep(0.1)
        late = await owned.admit(OA, Ask("t1", 2, (), 1, "late", "h"), timeout_s=0.3)
        assert late == BUSY
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(a, Admitted) for a in await asyncio.gather(*written))
    keys = [
        orjson.loads(r.value)["idempotency_key"]
        for r in await service.events()
        if r.header("kind") == b"admission"
    ]
    assert sorted(keys) == sorted(f"w{n}" for n in range(AHEAD_AT_MOST))
