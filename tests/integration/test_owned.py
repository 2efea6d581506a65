"""The processor's owned-state interface, as the API calls it, on both backends."""

from __future__ import annotations

import dataclasses

import orjson

from service.api import views
from service.domain.records import SendOutcome
from service.processor.owned import OWNED, Admitted, Ask, Here, Recorded, Refused, View
from tests.conftest import RunningService
from tests.integration.test_api import NOW, ready

OA = "oa-owned"


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
