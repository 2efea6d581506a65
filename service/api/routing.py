"""Which instance answers for an OA, and forwarding a request to it
(docs/api.md#forwarding-and-503).

The instance whose processor owns the OA's partition answers. The processor
group's assignor gives every member the table partition -> owner's address
(`service/log/assignor.py`), so another instance forwards the request there
and passes the answer back. A forwarded request carries `X-Zns-Gate-Forwarded`
and is never forwarded again: an instance that gets one for an OA it does not
own (the table moved meanwhile) answers 503 with `Retry-After`.

The hop is signed with the cluster's secret (`api.cluster_secret`): an HMAC
over the method, the raw path with its query, the body's hash and the time, so
the owner acts only on requests another instance sent, for this very path and
body, recently. The path is forwarded exactly as the client sent it: decoded
and encoded again, `%2F` or `%3F` in an OA id would name another resource.
Without a secret nothing is forwarded (503 `forwarding_disabled`).

While partitions move, a read may be answered from a copy (a partition still
catching up after its restore, or one just revoked) with `X-Staleness-Ms`: how
much older than now its newest certain information may be. An admission is
only decided by an owner that is caught up and in contact with its group.
Every answer for an OA says which instance gave it in `X-Served-By`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import time

import aiohttp
from aiohttp import web
from yarl import URL

from service.config import Settings
from service.http import SETTINGS, Handler, error_response
from service.logsetup import get_logger
from service.metrics import FORWARDED

_log = get_logger("api")

FORWARDED_HEADER = "X-Zns-Gate-Forwarded"
TIMESTAMP_HEADER = "X-Zns-Gate-Timestamp"
SIGNATURE_HEADER = "X-Zns-Gate-Signature"
MAX_SKEW_S = 30
"""A forwarded request signed longer ago (or further ahead) than this is refused: the
hop takes milliseconds, and a copied request must not stay usable."""
SERVED_BY = "X-Served-By"
STALENESS = "X-Staleness-Ms"

# Headers of the owner's answer that are passed back to the sender.
_ANSWER_HEADERS = (
    "Content-Type",
    "Retry-After",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "WWW-Authenticate",
    STALENESS,
    SERVED_BY,
)
# Headers of the sender's request that the owner needs.
_REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept")


def advertised_url(settings: Settings) -> str | None:
    """Where other instances reach this one; None when it cannot be known (port 0)."""
    if settings.api.advertised_url is not None:
        return settings.api.advertised_url
    host, port = settings.server.host, settings.server.port
    if port == 0:
        return None
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (a comparison: find a reachable name)
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def sign_forward(secret: bytes, method: str, raw_path: str, body: bytes, timestamp: str) -> str:
    """The signature of one forwarded request (hex HMAC-SHA256)."""
    signed = "\n".join(
        ("zns-gate forward", method.upper(), raw_path, hashlib.sha256(body).hexdigest(), timestamp)
    )
    return hmac.new(secret, signed.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def _secret(request: web.Request) -> bytes | None:
    configured = request.app[SETTINGS].api.cluster_secret
    return None if configured is None else configured.get_secret_value().encode()


@web.middleware
async def forwarded_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request that says it was forwarded by another instance must prove it."""
    if FORWARDED_HEADER not in request.headers:
        return await handler(request)
    secret = _secret(request)
    try:
        async with asyncio.timeout(request.app[SETTINGS].api.read_timeout_s):
            body = await request.read()
    except TimeoutError:
        return error_response(408, "request_timeout", "the body arrived too slowly")
    timestamp = request.headers.get(TIMESTAMP_HEADER, "")
    claimed = request.headers.get(SIGNATURE_HEADER, "")
    try:
        fresh = abs(time.time() - int(timestamp)) <= MAX_SKEW_S
    except ValueError:
        fresh = False
    if secret is None or not fresh:
        return _unverified()
    expected = sign_forward(secret, request.method, request.raw_path, body, timestamp)
    if not hmac.compare_digest(claimed.encode("utf-8", "surrogateescape"), expected.encode()):
        return _unverified()
    return await handler(request)


def _unverified() -> web.Response:
    return error_response(
        401,
        "invalid_forward_signature",
        "a forwarded request must be signed, recently, with the cluster's secret",
    )


class Forwarder:
    """The HTTP client that forwards requests to other instances."""

    def __init__(self, address: str | None, timeout_s: float) -> None:
        self.address = address
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self._session

    @staticmethod
    def was_forwarded(request: web.Request) -> bool:
        return FORWARDED_HEADER in request.headers

    async def forward(self, request: web.Request, address: str, body: bytes) -> web.Response:
        """Send `request` (its body already read: `body`) to `address`; its answer."""
        secret = _secret(request)
        if secret is None:
            FORWARDED.labels("disabled").inc()
            return error_response(
                503,
                "forwarding_disabled",
                "another instance owns this OA, and without api.cluster_secret this "
                "instance forwards to none",
            )
        headers = {
            name: request.headers[name] for name in _REQUEST_HEADERS if name in request.headers
        }
        timestamp = str(int(time.time()))
        headers[FORWARDED_HEADER] = self.address or "unknown"
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign_forward(
            secret, request.method, request.raw_path, body, timestamp
        )
        url = URL(address + request.raw_path, encoded=True)
        try:
            async with self._client().request(
                request.method, url, data=body or None, headers=headers
            ) as answer:
                content = await answer.read()
                passed = {
                    name: answer.headers[name] for name in _ANSWER_HEADERS if name in answer.headers
                }
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            FORWARDED.labels("unreachable").inc()
            _log.warning("owner unreachable", owner=address, path=request.path, error=repr(exc))
            raise OwnerUnreachable(address) from exc
        FORWARDED.labels("answered").inc()
        response = web.Response(body=content, status=status)
        response.headers.update(passed)
        return response


class OwnerUnreachable(Exception):
    """The owner did not answer a forwarded request."""

    def __init__(self, address: str) -> None:
        super().__init__(f"the owner of this OA at {address} did not answer")
        self.address = address
