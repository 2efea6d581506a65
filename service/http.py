"""HTTP plumbing shared by every route: application keys, JSON bodies, the error body.

Every error leaves the service as {"error": {"code": ..., "message": ...}}
(docs/api.md#errors), whichever layer raised it; this module is the one place
that maps exceptions to statuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from service.config import Settings
from service.log.base import EventLog, LogUnavailable
from service.logsetup import get_logger

SETTINGS = web.AppKey("settings", Settings)
LOG = web.AppKey("log", EventLog)

_log = get_logger("http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The one error body of the service: {"error": {"code": ..., "message": ...}}."""
    return json_response({"error": {"code": code, "message": message}}, status, headers)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


# What aiohttp decodes by itself (br and zstd with the Brotli and zstd packages, which the
# project depends on for that: without them aiohttp refuses such a request before any
# handler, in plain text). With any other encoding the handlers would read the encoded
# bytes as if they were the body.
_READABLE_ENCODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors and anything unexpected, as JSON error bodies."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _READABLE_ENCODINGS:
        return error_response(
            415,
            "unsupported_media_type",
            "the body must be sent as it is, or encoded with gzip, deflate, br or zstd",
        )
    try:
        return await handler(request)
    except web.RequestPayloadError:
        # The client's bytes: a body that is not what its Content-Encoding says.
        return error_response(400, "bad_request", "the body could not be decoded")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, headers)
    except LogUnavailable as exc:
        _log.warning("log unavailable", path=request.path, error=str(exc))
        return error_response(
            503, "log_unavailable", "the event log is unavailable", {"Retry-After": "5"}
        )
    except Exception:
        _log.exception("unhandled error", path=request.path, method=request.method)
        return error_response(500, "internal_error", "internal error")
