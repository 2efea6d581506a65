"""The record of an OA's Zalo tokens in `zns.tokens`, sealed with AES-GCM, and its status.

A value is `{"version", "nonce", "ciphertext"}` (JSON, base64 fields); the
ciphertext holds the pair, its times, its state and last error, and the OA id
is the associated data, so a value copied under another OA's key does not
open. An empty value means the OA's token was deleted. This module does no
I/O and never logs; `TokenStatus` is the one view of a token that may leave
the process (no token in it).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
DELETED = b""
"""The value written when an OA's token is deleted: it supersedes the sealed one, which
compaction then drops."""

StoredState = Literal["valid", "dead"]
State = Literal["valid", "expiring", "dead", "missing"]


class VaultError(Exception):
    """A value that does not open with this key for this OA (wrong key, moved, damaged)."""


@dataclass(frozen=True, slots=True)
class StoredToken:
    """An OA's Zalo tokens as `zns.tokens` keeps them (times in epoch milliseconds)."""

    oa_id: str
    app_id: str
    access_token: str | None
    refresh_token: str
    access_expires_at: int | None
    refresh_expires_at: int
    refreshed_at: int
    state: StoredState = "valid"
    last_error: str | None = None
    expiring_warned: bool = False
    """The `token_expiring` warning was given for this refresh token (a new pair starts
    without it: the warning comes once per refresh token)."""

    def __repr__(self) -> str:  # printed by accident, it shows no token
        return f"StoredToken(oa_id={self.oa_id!r}, state={self.state!r})"

    def dead(self, error: str) -> StoredToken:
        return replace(self, state="dead", last_error=error)

    def state_at(self, now_ms: int, margin_s: int) -> State:
        """`dead`; `expiring` when the access token is missing or has less than
        `margin_s` left; else `valid`."""
        if self.state == "dead":
            return "dead"
        if self.access_expires_at is None or self.access_expires_at - now_ms < margin_s * 1000:
            return "expiring"
        return "valid"


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """What may be shown of an OA's token: never the token."""

    oa_id: str
    app_id: str | None
    state: State
    access_expires_at: int | None = None
    refresh_expires_at: int | None = None
    refreshed_at: int | None = None
    last_error: str | None = None

    @classmethod
    def of(cls, oa_id: str, token: StoredToken | None, now_ms: int, margin_s: int) -> TokenStatus:
        if token is None:
            return cls(oa_id, None, "missing")
        return cls(
            oa_id,
            token.app_id,
            token.state_at(now_ms, margin_s),
            token.access_expires_at,
            token.refresh_expires_at,
            token.refreshed_at,
            token.last_error,
        )

    def answer(self) -> dict[str, Any]:
        """The JSON of `GET /v1/oas/{oa_id}/zalo/token` (times ISO 8601, UTC)."""
        body: dict[str, Any] = {
            "oa_id": self.oa_id,
            "app_id": self.app_id,
            "state": self.state,
            "access_expires_at": _iso(self.access_expires_at),
            "refresh_expires_at": _iso(self.refresh_expires_at),
            "refreshed_at": _iso(self.refreshed_at),
        }
        if self.last_error is not None:
            body["last_error"] = self.last_error
        return body


def derive_key(token_key: bytes, purpose: str) -> bytes:
    """A key of 32 bytes for `purpose`, derived from the token key (HKDF-SHA256), so the
    key that seals tokens is never used for anything else."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=f"zns-gate {purpose}".encode()).derive(
        token_key
    )


class Vault:
    """Seals and opens `zns.tokens` values with one key."""

    def __init__(self, token_key: bytes) -> None:
        self._aead = AESGCM(token_key)

    def seal(self, token: StoredToken) -> bytes:
        plain = orjson.dumps(
            {
                "app_id": token.app_id,
                "access_token": token.access_token,
                "refresh_token": token.refresh_token,
                "access_expires_at": token.access_expires_at,
                "refresh_expires_at": token.refresh_expires_at,
                "refreshed_at": token.refreshed_at,
                "state": token.state,
                "last_error": token.last_error,
                "expiring_warned": token.expiring_warned,
            }
        )
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plain, token.oa_id.encode())
        return orjson.dumps(
            {
                "version": VERSION,
                "nonce": base64.b64encode(nonce).decode(),
                "ciphertext": base64.b64encode(sealed).decode(),
            }
        )

    def open(self, oa_id: str, value: bytes) -> StoredToken | None:
        """The token of a value read under key `oa_id`; None for a deletion."""
        if value == DELETED:
            return None
        try:
            outer = orjson.loads(value)
            if outer["version"] != VERSION:
                raise VaultError(f"unknown record version {outer['version']!r}")
            nonce = base64.b64decode(outer["nonce"], validate=True)
            sealed = base64.b64decode(outer["ciphertext"], validate=True)
            inner = orjson.loads(self._aead.decrypt(nonce, sealed, oa_id.encode()))
            return StoredToken(
                oa_id=oa_id,
                app_id=str(inner["app_id"]),
                access_token=inner["access_token"],
                refresh_token=str(inner["refresh_token"]),
                access_expires_at=inner["access_expires_at"],
                refresh_expires_at=int(inner["refresh_expires_at"]),
                refreshed_at=int(inner["refreshed_at"]),
                state="dead" if inner["state"] == "dead" else "valid",
                last_error=inner["last_error"],
                expiring_warned=bool(inner.get("expiring_warned", False)),
            )
        except InvalidTag:
            raise VaultError("the record does not open with this key for this OA") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise VaultError(f"a damaged record ({type(exc).__name__})") from None
