"""A generated multi-day stream of several OAs through HTTP, with what docs/rules.md implies
checked after every step, on both backends, and a replay of the log checked against the
live states.

The stream mixes what makes the rules subtle: syncs, admissions and the sends naming them
(also late, after `grant_ttl`), -144, -146, -141 and -124 errors, Zalo's quota in send
answers, receipts that come before their send record and receipts with no send at all,
ratings, template status and quality events, and operators' resumes. Some requests are
sent twice. The clock is the stream's, so the answers depend on the records alone and
the same stream gives the same answers on either backend.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import PROCESSOR, build_app
from service.processor.replay import replay
from tests import feed, zalo
from tests.conftest import LogOpener, RunningService, make_settings
from tests.integration.test_api import get, post, ready
from tests.integration.test_api_denials import folded

VN = ZoneInfo("Asia/Ho_Chi_Minh")
FIRST_DAY = (datetime.now(VN) - timedelta(days=6)).replace(
    hour=0, minute=0, second=0, microsecond=0
)
TEMPLATES = {"t1": 1, "t2": 2, "t3": 3}
PHONES = [f"09{n:08d}" for n in range(8)]
SETTINGS_SECTIONS: dict[str, Any] = {"rules": {"clock": "stream"}}


@dataclass
class Step:
    """One request of the stream, posted at `posted` (event times may be earlier)."""

    posted: datetime
    oa_id: str
    kind: str
    """webhook, send, admission, sync, resume or template_resume."""
    body: Any
    admission: int | None = None
    """For a send: the index of the step whose admission it names."""
    repeat: bool = False


@dataclass
class Stream:
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> int:
        self.steps.append(step)
        return len(self.steps) - 1


def ms(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def generate(seed: int, oas: int = 4, days: int = 6) -> list[Step]:
    rng = random.Random(seed)
    stream = Stream()
    for n in range(oas):
        oa_id = f"52{seed:04d}{n:06d}"
        message = 0
        for day in range(days):
            moment = FIRST_DAY + timedelta(days=day, hours=8, minutes=rng.randint(0, 30))
            if day == 0 or rng.random() < 0.5:
                daily = rng.choice([10_000, 20_000, 50_000])
                sync: dict[str, Any] = {
                    "as_of": ms(moment),
                    "daily_quota": daily,
                    "remaining_quota": rng.randint(0, daily),
                    "templates": [{"template_id": "t1", "status": "ENABLE", "quality": "HIGH"}],
                }
                stream.add(Step(moment, oa_id, "sync", sync))
            for _ in range(3):
                moment += timedelta(minutes=rng.randint(20, 90))
                template = rng.choice(list(TEMPLATES))
                phones = rng.sample(PHONES, 2)
                asked = {
                    "template_id": template,
                    "tag": TEMPLATES[template],
                    "recipients": phones,
                    "idempotency_key": f"k{day}-{message}",
                }
                admission = stream.add(Step(moment, oa_id, "admission", asked))
                for phone in phones:
                    message += 1
                    msg_id = f"{oa_id}-m{message}"
                    sent_at = moment + timedelta(seconds=rng.randint(1, 60))
                    error = rng.choice([0] * 8 + [-144, -146, -141, -124])
                    outcome: dict[str, Any] = {
                        "template_id": template,
                        "tag": TEMPLATES[template],
                        "recipient": phone,
                        "tracking_id": f"tr{message}",
                        "sent_time": ms(sent_at),
                        "error": error,
                    }
                    if error == 0:
                        outcome["msg_id"] = msg_id
                    if rng.random() < 0.2:
                        outcome["quota"] = {"dailyQuota": 20_000, "remainingQuota": 15_000}
                    delivered = sent_at + timedelta(seconds=rng.randint(1, 30))
                    # The sender reports some sends after Zalo's receipt has come.
                    reported = delivered + timedelta(seconds=5) if rng.random() < 0.3 else sent_at
                    stream.add(Step(reported, oa_id, "send", {"sends": [outcome]}, admission))
                    if error != 0:
                        continue
                    receipt = feed.receipt(msg_id, delivered, oa_id=oa_id)
                    stream.add(Step(delivered, oa_id, "webhook", receipt))
                    if rng.random() < 0.4:
                        rated = delivered + timedelta(minutes=1)
                        rating = feed.rating(msg_id, rng.randint(1, 5), rated, oa_id=oa_id)
                        stream.add(Step(rated, oa_id, "webhook", rating))
                if rng.random() < 0.3:  # a send reported after its grant's TTL
                    message += 1
                    late = moment + timedelta(hours=2)
                    outcome = {
                        "template_id": template,
                        "tag": TEMPLATES[template],
                        "tracking_id": f"tr{message}",
                        "msg_id": f"{oa_id}-m{message}",
                        "sent_time": ms(late),
                        "error": 0,
                    }
                    stream.add(Step(late, oa_id, "send", {"sends": [outcome]}, admission))
            moment += timedelta(minutes=rng.randint(1, 60))
            unsent = feed.receipt(f"{oa_id}-u{day}", moment, oa_id=oa_id)  # no send record
            stream.add(Step(moment, oa_id, "webhook", unsent))
            moment += timedelta(minutes=rng.randint(1, 60))
            status = rng.choice(["ENABLE", "PENDING_REVIEW"])
            event = rng.choice(
                [
                    feed.template_status("t2", status, moment, oa_id=oa_id),
                    feed.template_quality("t1", rng.choice(["LOW", "HIGH"]), moment, oa_id=oa_id),
                ]
            )
            stream.add(Step(moment, oa_id, "webhook", event))
            moment += timedelta(minutes=rng.randint(1, 60))
            kind = rng.choice(["resume", "template_resume"])
            stream.add(Step(moment, oa_id, kind, {}))
    steps = sorted(stream.steps, key=lambda s: s.posted)
    # Sends name admissions by their place in the stream; keep them pointing right.
    order = {id(step): i for i, step in enumerate(steps)}
    for step in steps:
        if step.admission is not None:
            step.admission = order[id(stream.steps[step.admission])]
        step.repeat = rng.random() < 0.2
    return steps


def _path(step: Step) -> str:
    base = f"/v1/oas/{step.oa_id}"
    return {
        "send": f"{base}/sends",
        "admission": f"{base}/admissions",
        "sync": f"{base}/sync",
        "resume": f"{base}/resume",
        "template_resume": f"{base}/templates/t1/resume",
    }[step.kind]


async def _post(service: RunningService, step: Step, ids: dict[int, str]) -> Any:
    if step.kind == "webhook":
        raw: feed.Raw = step.body
        payload = orjson.loads(raw.value)
        status, answer = await service.post(
            zalo.Webhooks().from_payload(payload, server=raw.headers.get("server"))
        )
        assert status == 200, answer
        return answer
    body = step.body
    if step.kind == "send" and step.admission is not None:
        body = {"sends": [{**body["sends"][0], "admission_id": ids[step.admission]}]}
    status, answer = await post(service, _path(step), body)
    assert status == 200, (step, answer)
    return answer


async def _quota(service: RunningService, oa_id: str) -> dict[str, Any]:
    await folded(service)
    status, quota = await get(service, f"/v1/oas/{oa_id}/quota")
    assert status == 200
    check_quota(quota)
    return dict(quota)


async def run(service: RunningService, steps: list[Step]) -> list[Any]:
    """Post the stream, checking the invariants after each step; every answer in order,
    without what differs by run (an admission's random id)."""
    answers: list[Any] = []
    ids: dict[int, str] = {}
    for index, step in enumerate(steps):
        before = await _quota(service, step.oa_id)  # admissions decide on all before them
        answer = await _post(service, step, ids)
        if step.kind == "admission":
            ids[index] = answer.pop("admission_id")
        quota = await _quota(service, step.oa_id)
        if step.kind in ("resume", "template_resume"):  # a command raises nothing
            assert quota["remaining_today"] <= before["remaining_today"], step
        if step.repeat:
            again = await _post(service, step, ids)
            if step.kind == "admission":
                assert again.pop("admission_id") == ids[index]
            if step.kind == "send":
                assert again == {"accepted": 0, "duplicates": 1}, step
            else:
                assert again == answer, step
            after = await _quota(service, step.oa_id)
            assert after == quota, f"repeating step {index} ({step.kind}) changed the quota"
        answers.append({"step": index, "answer": answer, "quota": quota})
    return answers


def check_quota(quota: dict[str, Any]) -> None:
    """docs/rules.md#tier-daily-quota: remaining today = the daily quota - what was consumed today:
    never above the quota, never below 0."""
    remaining, daily = quota["remaining_today"], quota["daily_quota"]
    assert remaining >= 0, quota
    if daily is not None:
        assert remaining <= daily, quota
    assert all(units >= 0 for units in quota["by_tag"].values()), quota
    assert quota["promotion"]["remaining_month"] >= 0, quota


async def start(opener: LogOpener) -> RunningService:
    log = await opener(start=False)
    app = build_app(make_settings(**SETTINGS_SECTIONS), log)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return RunningService(client, log)


async def live_and_replayed(service: RunningService) -> tuple[dict[str, Any], dict[str, Any]]:
    processor = service.client.app[PROCESSOR]
    live = {
        oa_id: (await folder.whole(oa_id)).to_document()
        for folder in processor.folders.values()
        for oa_id in folder.states
    }
    rebuilt = await replay(service.log, make_settings(**SETTINGS_SECTIONS), write=False)
    return live, {oa_id: state.to_document() for oa_id, state in rebuilt.states.items()}


async def test_a_generated_stream_keeps_the_invariants_on_both_backends_and_in_a_replay(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """docs/rules.md#tier-daily-quota: remaining today never above the daily quota nor below 0;
    docs/rules.md and docs/api.md: a repeated request never changes an answer;
    docs/rules.md#time-and-windows: "a replay of last
    month gives the same decisions live traffic did", and with `clock = "stream"` "in both
    backends, so they behave the same"; an operator's command "takes effect at the OA's current now"
    (it raises nothing)."""
    steps = generate(seed=7)
    answers = []
    for opener in (
        LogOpener("embedded", str(tmp_path / "log.db")),
        LogOpener("kafka", kafka_bootstrap),
    ):
        service = await start(opener)
        try:
            await ready(service)
            answers.append(await run(service, steps))
            live, rebuilt = await live_and_replayed(service)
            assert rebuilt == live, f"zns-gate replay rebuilt other states ({opener.backend})"
        finally:
            await service.client.close()
            await opener.close_all()
    embedded, kafka = answers
    assert kafka == embedded
