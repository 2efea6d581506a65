"""Requests that aiohttp itself finds odd still get the service's error body and a 4xx."""

from __future__ import annotations

import asyncio
import io
import sys
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import orjson
import pytest

from service.logsetup import configure_logging
from tests import zalo
from tests.conftest import RunningService, ServiceFactory

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

TOKEN = "a-token-long-enough-0123"
OA = "388613280878808645"


async def raw_request(service: RunningService, head: bytes, body: bytes = b"") -> tuple[int, Any]:
    """Status and JSON body of one request written byte for byte."""
    reader, writer = await asyncio.open_connection(service.client.host, service.client.port)
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, content = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), orjson.loads(content)


def post_head(path: str, length: int, **headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: gate",
        "Connection: close",
        f"Content-Length: {length}",
    ]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
async def guarded(service_factory: ServiceFactory) -> RunningService:
    return await service_factory(api={"tokens": [{"token": TOKEN, "scopes": ["read", "send"]}]})


async def test_a_non_utf8_authorization_is_unauthenticated(guarded: RunningService) -> None:
    head = b"GET /v1/oas/1/quota HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n"
    status, body = await raw_request(guarded, head + b"Authorization: Bearer \xff\xfe\r\n\r\n")
    assert (status, body["error"]["code"]) == (401, "unauthenticated"), body


async def post_encoded(
    service: RunningService, hook: zalo.Webhook, encoding: str
) -> tuple[int, Any]:
    """The webhook's plain bytes, sent as if they were `encoding`-encoded."""
    head = post_head(
        "/webhooks/zalo",
        len(hook.body),
        Content_Type="application/json",
        Content_Encoding=encoding,
        X_ZEvent_Signature=hook.headers["X-ZEvent-Signature"],
    )
    return await raw_request(service, head, hook.body)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
async def test_a_body_that_is_not_what_its_encoding_says_is_400(
    guarded: RunningService, encoding: str
) -> None:
    hook = zalo.Webhooks().build("user_feedback")
    status, body = await post_encoded(guarded, hook, encoding)
    assert (status, body["error"]["code"]) == (400, "bad_request"), body
    sends = b'{"sends": []}'
    head = post_head(
        f"/v1/oas/{OA}/sends",
        len(sends),
        Content_Type="application/json",
        Content_Encoding=encoding,
        Authorization=f"Bearer {TOKEN}",
    )
    status, body = await raw_request(guarded, head, sends)
    assert (status, body["error"]["code"]) == (400, "bad_request"), body
    assert await guarded.events() == []


PACKERS = {
    "gzip": lambda body: zlib.compress(body, wbits=31),
    "br": brotli.compress,
    "zstd": lambda body: zstd.ZstdCompressor().compress(body, zstd.ZstdCompressor.FLUSH_FRAME),
}


@pytest.mark.parametrize("encoding", sorted(PACKERS))
async def test_a_genuine_encoded_body_is_read(guarded: RunningService, encoding: str) -> None:
    hook = zalo.Webhooks().build("user_feedback")
    packed = PACKERS[encoding](hook.body)
    head = post_head(
        "/webhooks/zalo",
        len(packed),
        Content_Type="application/json",
        Content_Encoding=encoding,
        X_ZEvent_Signature=hook.headers["X-ZEvent-Signature"],
    )
    status, body = await raw_request(guarded, head, packed)
    assert status == 200, body
    assert [r.value for r in await guarded.events()] == [hook.body]


@pytest.mark.parametrize("encoding", ["compress", "x-unknown"])
async def test_an_unsupported_encoding_is_415(guarded: RunningService, encoding: str) -> None:
    hook = zalo.Webhooks().build("user_feedback")
    status, body = await post_encoded(guarded, hook, encoding)
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type"), body
    assert await guarded.events() == []


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("INFO", stream=out, json=True)
    yield out
    configure_logging("INFO", json=True)  # as the rest of the session has it


async def test_a_malformed_header_line_is_logged_once_without_its_text(
    service: RunningService, captured: io.StringIO
) -> None:
    head = (
        b"GET /v1/oas/1/quota?token=query-secret-123 HTTP/1.1\r\nHost: gate\r\n"
        b"Authorization: Bearer header-secret-456\x01\r\n"
        b"X-ZEvent-Signature: mac=0123456789abcdef\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(service.client.host, service.client.port)
    writer.write(head)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    assert answer.startswith(b"HTTP/1.")
    assert b" 400 " in answer.split(b"\r\n")[0]
    text = captured.getvalue()
    for secret in ("header-secret-456", "query-secret-123", "0123456789abcdef", "Bearer"):
        assert secret not in text, text
    lines = [orjson.loads(line) for line in text.splitlines()]
    bad = [line for line in lines if line.get("component") == "aiohttp"]
    assert len(bad) == 1, lines
    assert "exception" not in bad[0]
    assert "Traceback" not in text
    assert bad[0]["level"] == "warning"
    assert bad[0]["remote"] == "127.0.0.1"
