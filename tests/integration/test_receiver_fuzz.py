"""Fuzzing the receiver over a real socket: no input makes it fail, nothing unsigned is published.

Each example is one HTTP request to a running service on the embedded log. The
invariant is checked per request: a 200 adds exactly one record, holding the
exact bytes sent, and every other answer is a 4xx that adds nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from service.app import build_app
from service.log.base import TopicPartition
from service.log.embedded import EmbeddedLog
from service.receiver.signature import sign
from tests import zalo
from tests.conftest import make_settings

hooks = zalo.Webhooks()


class Target:
    """A running service and a way to post to it from synchronous Hypothesis tests."""

    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.log = EmbeddedLog(path, partitions=3)
        app = build_app(make_settings(receiver={"max_body_bytes": 8192}), self.log)

        async def start() -> TestClient[web.Request, web.Application]:
            client: TestClient[web.Request, web.Application] = TestClient(
                TestServer(app, host="127.0.0.1")
            )
            await client.start_server()
            return client

        self.client = self.loop.run_until_complete(start())
        self.topic = self.log.topics.events

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()

    def total(self) -> dict[TopicPartition, int]:
        partitions = [TopicPartition(self.topic, p) for p in range(self.log.partitions)]
        return self.loop.run_until_complete(self.log.end_offsets(partitions))

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async def send() -> tuple[int, Any]:
            async with self.client.post("/webhooks/zalo", data=body, headers=headers) as r:
                return r.status, orjson.loads(await r.read())

        return self.loop.run_until_complete(send())

    def check(self, body: bytes, headers: dict[str, str]) -> int:
        """Post and check the invariant; returns the status."""
        before = self.total()
        status, answer = self.post(body, headers)
        after = self.total()
        grew = {tp: after[tp] - before[tp] for tp in after if after[tp] != before[tp]}
        assert status < 500, answer
        if status == 200:
            [(tp, added)] = grew.items()
            assert added == 1
            [record] = self.loop.run_until_complete(self.log.read(tp, before[tp], 1))
            assert record.value == body
        else:
            assert 400 <= status < 500
            assert set(answer) == {"error"}
            assert grew == {}, f"a refused request ({status}) reached the log"
        return status


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    running = Target(tmp_path_factory.mktemp("fuzz") / "log.db")
    yield running
    running.close()


JSON_HEADERS = {"Content-Type": "application/json"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(body=st.binary(max_size=2000), signature=st.text(max_size=80))
def test_random_bytes(target: Target, body: bytes, signature: str) -> None:
    headers = dict(JSON_HEADERS)
    if signature.isascii() and signature.isprintable():
        headers["X-ZEvent-Signature"] = signature
    assert target.check(body, headers) in (400, 401)


@given(
    extra=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    app_id=st.sampled_from([zalo.APP_ID, "other-app", 123, None, ""]),
    timestamp=st.one_of(st.text(max_size=15), st.integers(), st.none()),
    signed=st.booleans(),
)
def test_random_json_objects(
    target: Target, extra: dict[str, Any], app_id: object, timestamp: object, signed: bool
) -> None:
    payload = dict(extra, app_id=app_id, timestamp=timestamp)
    body = json.dumps(payload).encode()  # the standard library writes any integer
    headers = dict(JSON_HEADERS)
    if signed:
        headers["X-ZEvent-Signature"] = sign(str(app_id), body, str(timestamp), zalo.SECRET)
    status = target.check(body, headers)
    valid_fields = isinstance(timestamp, int) or (isinstance(timestamp, str) and timestamp)
    expected_ok = signed and app_id == zalo.APP_ID and valid_fields
    assert (status == 200) == bool(expected_ok), (status, payload)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid webhook body, and the same body with one random edit."""
    name = draw(st.sampled_from(sorted(zalo.EXAMPLES)))
    body = hooks.build(name, fresh=False, timestamp="1700000000000").body
    at = draw(st.integers(min_value=0, max_value=len(body) - 1))
    kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
    if kind == "flip":
        edited = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
    elif kind == "delete":
        edited = body[:at] + body[at + draw(st.integers(1, 10)) :]
    elif kind == "insert":
        edited = body[:at] + draw(st.binary(min_size=1, max_size=10)) + body[at:]
    else:
        edited = body[:at]
    return body, edited


@given(pair=mutated(), resign=st.booleans())
def test_mutated_valid_webhooks(target: Target, pair: tuple[bytes, bytes], resign: bool) -> None:
    original, edited = pair
    fields = orjson.loads(original)
    headers = dict(JSON_HEADERS)
    headers["X-ZEvent-Signature"] = sign(
        fields["app_id"], edited if resign else original, fields["timestamp"], zalo.SECRET
    )
    status = target.check(edited, headers)
    if edited != original and not resign:
        assert status != 200  # the signature covers every byte
