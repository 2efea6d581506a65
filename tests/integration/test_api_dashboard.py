"""The reads the dashboard needs: an OA's hourly history, its last decisions (from the tail
of `zns.decisions`, on both backends), and the dashboard's own files with their CSP."""

from __future__ import annotations

from datetime import timedelta

from service.api.decisions import DECISIONS_SCAN, chosen
from service.log.base import Record
from tests import feed
from tests.conftest import RunningService, ServiceFactory
from tests.integration.test_api import NOW, OA, eventually, get, post, post_webhook, ready, send


async def _delivered_with_one_negative(service: RunningService) -> None:
    """Four sends delivered and one of them rated one star, all folded."""
    await ready(service)
    sends = [send(f"tr{i}", msg_id=f"m{i}", recipient="0901234567") for i in range(4)]
    status, _ = await post(service, f"/v1/oas/{OA}/sends", {"sends": sends})
    assert status == 200
    for i in range(4):
        await post_webhook(service, feed.receipt(f"m{i}", NOW + timedelta(seconds=10)))
    await post_webhook(service, feed.rating("m0", 1, NOW + timedelta(seconds=20)))

    async def folded() -> bool:
        status, quality = await get(service, f"/v1/oas/{OA}/quality")
        return status == 200 and bool(quality["proxy"]["negatives_48h"] == 1)

    await eventually(folded)


async def test_the_history_has_168_hours_with_the_deliveries_in_their_hour(
    service: RunningService,
) -> None:
    await _delivered_with_one_negative(service)
    status, history = await get(service, f"/v1/oas/{OA}/history")
    assert status == 200
    hours = history["hours"]
    assert len(hours) == 168
    assert sum(h["delivered"] for h in hours) == 4
    assert sum(h["negatives"] for h in hours) == 1
    busy = [h for h in hours if h["delivered"]]
    assert len(busy) == 1
    # Receipts are counted in the hour they arrived; the newest hour is the last.
    assert busy[0] in hours[-2:]
    assert history["daily_quota"] == 20_000
    assert history["zalo"] == {"quality_48h": None, "quality_7d": None, "as_of": None}


async def test_an_unknown_oa_has_an_empty_history(service: RunningService) -> None:
    await ready(service)
    status, history = await get(service, "/v1/oas/never-seen/history")
    assert status == 200
    assert len(history["hours"]) == 168
    assert {h["delivered"] + h["negatives"] for h in history["hours"]} == {0}


async def test_the_decisions_are_the_oas_newest_first_each_explained(
    service: RunningService,
) -> None:
    await _delivered_with_one_negative(service)

    async def decided() -> bool:
        status, answer = await get(service, f"/v1/oas/{OA}/decisions")
        return status == 200 and any(d["kind"] == "quality" for d in answer["decisions"])

    await eventually(decided)
    _, answer = await get(service, f"/v1/oas/{OA}/decisions?kind=quality")
    decisions = answer["decisions"]
    assert decisions
    assert {d["kind"] for d in decisions} == {"quality"}
    assert all(d["oa_id"] == OA for d in decisions)
    low = next(d for d in decisions if d["rule"] == "proxy_48h")
    assert low["after"] == "LOW"  # the newest: after the first receipts it was HIGH
    words = f"over 48h went from {low['before']} to LOW (1 negatives of 4 delivered)"
    assert words in low["explanation"]
    assert 0 < answer["scanned"] <= DECISIONS_SCAN
    _, one = await get(service, f"/v1/oas/{OA}/decisions?limit=1")
    assert len(one["decisions"]) == 1
    _, other = await get(service, "/v1/oas/someone-else/decisions")
    assert other["decisions"] == []


async def test_bad_decision_queries_are_422_invalid_request(service: RunningService) -> None:
    await ready(service)
    for query in ("limit=0", "limit=201", "limit=x", "limit=-1", "kind=nonsense", "kind="):
        status, answer = await get(service, f"/v1/oas/{OA}/decisions?{query}")
        assert status == 422, query
        assert answer["error"]["code"] == "invalid_request"
        assert answer["error"]["message"].startswith(query.split("=")[0])


async def test_the_reads_take_a_read_token(service_factory: ServiceFactory) -> None:
    service = await service_factory(api={"tokens": [{"token": "r" * 20, "scopes": ["read"]}]})
    await ready(service)
    for what in ("history", "decisions"):
        status, answer = await get(service, f"/v1/oas/{OA}/{what}")
        assert (status, answer["error"]["code"]) == (401, "unauthenticated")
        status, _ = await get(service, f"/v1/oas/{OA}/{what}", token="r" * 20)
        assert status == 200


def test_only_the_oas_decisions_of_the_chosen_kinds_are_kept() -> None:
    def record(offset: int, oa_id: str, kind: str) -> Record:
        value = (
            f'{{"decision_id":"d{offset}","oa_id":"{oa_id}","kind":"{kind}","rule":"penalty",'
            f'"before":1000,"after":500,"inputs":{{"negatives_today":21,"threshold":20}},'
            f'"at":"2026-01-01T00:00:00+07:00","source":{{"topic":"e","partition":0,'
            f'"offset":{offset}}}}}'
        )
        return Record("zns.decisions", 0, offset, oa_id.encode(), value.encode())

    records = [record(0, "a", "penalty"), record(1, "b", "penalty"), record(2, "a", "tier")]
    records.append(Record("zns.decisions", 0, 3, b"a", b"not json"))
    found = chosen(records, "a", frozenset({"penalty"}), 10)
    assert [d["decision_id"] for d in found] == ["d0"]
    assert "source" not in found[0]
    assert found[0]["explanation"] == (
        "21 negatives today went beyond the threshold of 20: the daily quota dropped one "
        "step, from 1,000 to 500."
    )
    assert [d["decision_id"] for d in chosen(records, "a", None, 1)] == ["d2"]


async def test_the_dashboard_is_served_with_a_strict_csp(service: RunningService) -> None:
    async with service.client.get("/ui/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        page = await response.text()
    assert '<script src="/ui/app.js"' in page
    assert "http://" not in page
    assert "https://" not in page
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        async with service.client.get(f"/ui/{name}") as response:
            assert (response.status, response.content_type) == (200, kind)
            assert "Content-Security-Policy" in response.headers
    async with service.client.get("/ui/../service/app.py") as response:
        assert response.status == 404
    async with service.client.get("/ui/nothing.js") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    async with service.client.get("/ui", allow_redirects=False) as response:
        assert (response.status, response.headers["Location"]) == (302, "/ui/")
