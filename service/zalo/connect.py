"""Connecting an OA: the permission page's URL with PKCE, and the signed `state` it returns.

The state carries the app id, a random nonce and an expiry, signed with HMAC
(a key derived from `zalo.token_key`), so any instance of the cluster can check
a callback without storing anything. The PKCE verifier is never in the URL: it
is derived from the nonce with another derived key, so only an instance holding
the token key can recompute it. No I/O, no logging.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson

from service.zalo.vault import derive_key

STATE_LIFETIME_S = 600
"""Zalo's code lives 10 minutes; a state older than that is no use either."""


class BadState(Exception):
    """A callback's `state` that this cluster did not sign, or signed too long ago."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Connect:
    """Where to send an OA admin, and the state of that visit."""

    url: str
    state: str


class Connector:
    def __init__(self, token_key: bytes) -> None:
        self._sign_key = derive_key(token_key, "connect state")
        self._verifier_key = derive_key(token_key, "pkce verifier")

    def verifier(self, nonce: bytes) -> str:
        """The PKCE code verifier of a visit (43 characters of base64url)."""
        return _b64(hmac.new(self._verifier_key, nonce, hashlib.sha256).digest())

    def start(self, permission_url: str, app_id: str, redirect_uri: str, now_s: float) -> Connect:
        nonce = os.urandom(16)
        payload = _b64(
            orjson.dumps(
                {"app_id": app_id, "nonce": _b64(nonce), "exp": int(now_s) + STATE_LIFETIME_S}
            )
        )
        signature = _b64(hmac.new(self._sign_key, payload.encode(), hashlib.sha256).digest())
        state = f"{payload}.{signature}"
        challenge = _b64(hashlib.sha256(self.verifier(nonce).encode()).digest())
        query = urlencode(
            {
                "app_id": app_id,
                "redirect_uri": redirect_uri,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": state,
            }
        )
        return Connect(f"{permission_url}?{query}", state)

    def check(self, state: str, now_s: float) -> tuple[str, str]:
        """The app id and PKCE verifier of a state this cluster signed, not expired;
        raises `BadState`."""
        payload, _, signature = state.partition(".")
        expected = _b64(hmac.new(self._sign_key, payload.encode(), hashlib.sha256).digest())
        if not signature or not hmac.compare_digest(signature.encode(), expected.encode()):
            raise BadState("the state is not one this service signed")
        try:
            body = orjson.loads(_unb64(payload))
            app_id, nonce, expires = str(body["app_id"]), _unb64(body["nonce"]), int(body["exp"])
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            raise BadState("the state is malformed") from None
        if now_s > expires:
            raise BadState("the state has expired; connect again")
        return app_id, self.verifier(nonce)
