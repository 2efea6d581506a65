"""Which app may sign webhooks for which OA: `[[apps]] oa_ids`."""

from __future__ import annotations

from tests import zalo
from tests.conftest import ServiceFactory

OTHER_APP = "3074138120372622547"
OTHER_SECRET = "the-other-apps-secret"
THEIR_OA = "488613280878808646"
UNLISTED_OA = "588613280878808647"


async def test_an_app_signs_only_for_its_own_oas(service_factory: ServiceFactory) -> None:
    service = await service_factory(
        apps=[
            {"app_id": zalo.APP_ID, "secrets": [zalo.SECRET], "oa_ids": [zalo.OA_ID]},
            {"app_id": OTHER_APP, "secrets": [OTHER_SECRET], "oa_ids": [THEIR_OA]},
        ]
    )
    ours, theirs = zalo.Webhooks(), zalo.Webhooks(app_id=OTHER_APP, secret=OTHER_SECRET)
    accepted = [ours.build("user_feedback"), theirs.build("user_feedback", oa_id=THEIR_OA)]
    for hook in accepted:
        assert (await service.post(hook))[0] == 200
    refused = [
        ours.build("user_feedback", oa_id=THEIR_OA),
        ours.build("user_feedback", oa_id=UNLISTED_OA),
        theirs.build("user_feedback"),
    ]
    for hook in refused:
        status, body = await service.post(hook)
        assert (status, body["error"]["code"]) == (401, "unknown_app"), body
    assert sorted(r.value for r in await service.events()) == sorted(h.body for h in accepted)


async def test_an_app_without_oa_ids_signs_any_oa_not_listed_elsewhere(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(
        apps=[
            {"app_id": zalo.APP_ID, "secrets": [zalo.SECRET]},
            {"app_id": OTHER_APP, "secrets": [OTHER_SECRET], "oa_ids": [THEIR_OA]},
        ]
    )
    ours = zalo.Webhooks()
    assert (await service.post(ours.build("user_feedback", oa_id=UNLISTED_OA)))[0] == 200
    status, body = await service.post(ours.build("user_feedback", oa_id=THEIR_OA))
    assert (status, body["error"]["code"]) == (401, "unknown_app"), body
    # An event without an OA id names no OA to check: kept, as before (DLQ downstream).
    orphan = ours.from_payload(
        {
            "event_name": "change_template_quality",
            "template_id": "9",
            "quality": "LOW",
            "app_id": zalo.APP_ID,
            "timestamp": "1700000000001",
        }
    )
    assert (await service.post(orphan))[0] == 200
    assert len(await service.events()) == 2


async def test_an_event_naming_two_oas_is_refused(service_factory: ServiceFactory) -> None:
    """The OA a webhook is authorised and keyed for must be the OA the fold applies it to:
    a body whose `oa_id` and `oaId` differ (no Zalo event has both) could otherwise pass
    the app's check for one OA and change another's quota."""
    service = await service_factory(
        apps=[
            {"app_id": zalo.APP_ID, "secrets": [zalo.SECRET], "oa_ids": [zalo.OA_ID]},
            {"app_id": OTHER_APP, "secrets": [OTHER_SECRET], "oa_ids": [THEIR_OA]},
        ]
    )
    forged = zalo.Webhooks().from_payload(
        {
            "event_name": "change_oa_daily_quota",
            "oa_id": zalo.OA_ID,
            "oaId": THEIR_OA,
            "app_id": zalo.APP_ID,
            "quota": {"old_value": "2000", "new_value": "1000000"},
            "timestamp": "1700000000001",
        }
    )
    status, body = await service.post(forged)
    assert (status, body["error"]["code"]) == (400, "conflicting_oa_id"), body
    assert await service.events() == []
