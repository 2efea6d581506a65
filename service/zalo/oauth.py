"""Zalo's OAuth v4 for an OA: refresh a token pair, exchange a permission code for one.

Each call is one POST on a session the caller owns; the answer is parsed into a
`Pair` or raised as `OAuthRefused`, which says whether trying again later can
help (a rate limit, a transport failure: the token stays) or not (any other
refusal: the refresh token is dead). It keeps nothing, logs nothing, and never
puts a token, code, verifier or secret into an error's text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

TOKEN_PATH = "/v4/oa/access_token"  # noqa: S105 (a path, not a secret)


@dataclass(frozen=True, slots=True)
class Pair:
    """What Zalo answers a token call with."""

    access_token: str
    refresh_token: str
    expires_in: int
    """Seconds the access token lives (Zalo sends a string, `"90000"`)."""

    def __repr__(self) -> str:  # a pair printed by accident shows no token
        return f"Pair(expires_in={self.expires_in})"


@dataclass(frozen=True, slots=True)
class Refusal:
    """How one kind of refusal is taken."""

    code: str
    """Machine-readable: `rate_limited`, `transport`, or `zalo_<error>`."""
    retry: bool
    """True: try again later, the token stays; False: the refresh token (or code) is dead."""


class OAuthRefused(Exception):
    """Zalo did not give a pair. `refusal.retry` says whether trying again can help."""

    def __init__(self, refusal: Refusal, detail: str) -> None:
        super().__init__(f"{refusal.code}: {detail}")
        self.refusal = refusal
        self.detail = detail

    @property
    def code(self) -> str:
        return self.refusal.code

    @property
    def retry(self) -> bool:
        return self.refusal.retry


RATE_LIMITED = Refusal("rate_limited", retry=True)
TRANSPORT = Refusal("transport", retry=True)

RETRY_LATER_ERRORS: Mapping[int, Refusal] = {-32: RATE_LIMITED}
"""Zalo `error` codes after which the same refresh token is tried again later. Zalo
publishes no OAuth rate-limit code with certainty; -32 is its "too many requests" of
the business API. Every other code is a refusal that kills the token."""

RETRY_LATER_STATUSES: Mapping[int, Refusal] = {
    429: RATE_LIMITED,
    500: TRANSPORT,
    502: TRANSPORT,
    503: TRANSPORT,
    504: TRANSPORT,
}
"""HTTP statuses that are Zalo's trouble, not the token's."""


def refusal_of(error: int) -> Refusal:
    """How Zalo's `error` code is taken: from the table, else the token is dead."""
    return RETRY_LATER_ERRORS.get(error) or Refusal(f"zalo_{error}", retry=False)


def _integer(value: Any) -> int | None:
    """A count Zalo may send as a number or as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def parse_answer(body: Any) -> Pair:
    """A pair from the JSON of Zalo's answer; raises `OAuthRefused` for a refusal (with
    `error` != 0: `error_name`/`error_description`, or `message`) or a shape not known."""
    if not isinstance(body, dict):
        raise OAuthRefused(TRANSPORT, "the answer is not a JSON object")
    error = _integer(body.get("error"))
    if error is not None and error != 0:
        name = body.get("error_name") or body.get("message") or "refused"
        raise OAuthRefused(refusal_of(error), str(name)[:200])
    access, refresh = body.get("access_token"), body.get("refresh_token")
    expires_in = _integer(body.get("expires_in"))
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
        raise OAuthRefused(TRANSPORT, "the answer has no token pair")
    if expires_in is None or expires_in <= 0:
        raise OAuthRefused(TRANSPORT, "the answer has no valid expires_in")
    return Pair(access, refresh, expires_in)


async def _token_call(
    session: aiohttp.ClientSession,
    oauth_url: str,
    app_secret: str,
    form: dict[str, str],
    timeout_s: float,
) -> Pair:
    try:
        async with session.post(
            oauth_url + TOKEN_PATH,
            data=form,
            headers={"secret_key": app_secret},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as answer:
            raw = await answer.read()
            status = answer.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OAuthRefused(TRANSPORT, type(exc).__name__) from None
    if status != 200:
        # Zalo refuses a token with HTTP 200 and an `error`: any other status is a proxy, a
        # wrong oauth_url or an outage, never a verdict on the token.
        refusal = RETRY_LATER_STATUSES.get(status, Refusal(f"http_{status}", retry=True))
        raise OAuthRefused(refusal, f"HTTP {status}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise OAuthRefused(TRANSPORT, "the answer is not JSON") from None
    return parse_answer(body)


async def refresh(
    session: aiohttp.ClientSession,
    oauth_url: str,
    app_id: str,
    app_secret: str,
    refresh_token: str,
    timeout_s: float,
) -> Pair:
    """A new pair for `refresh_token`, which Zalo then no longer accepts."""
    form = {"refresh_token": refresh_token, "app_id": app_id, "grant_type": "refresh_token"}
    return await _token_call(session, oauth_url, app_secret, form, timeout_s)


async def exchange_code(
    session: aiohttp.ClientSession,
    oauth_url: str,
    app_id: str,
    app_secret: str,
    code: str,
    code_verifier: str,
    timeout_s: float,
) -> Pair:
    """The pair for a permission page's `code` (PKCE: the verifier of its challenge)."""
    form = {
        "code": code,
        "app_id": app_id,
        "grant_type": "authorization_code",
        "code_verifier": code_verifier,
    }
    return await _token_call(session, oauth_url, app_secret, form, timeout_s)
