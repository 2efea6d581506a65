"""Zalo's webhook signature: `X-ZEvent-Signature: mac=<hex>`.

hex = sha256(app_id + raw body + timestamp + OA secret key), plain SHA-256 over
the concatenation (not an HMAC), as Zalo documents it and as working
integrations compute it (docs/rules.md#webhook-signature). The body must be the bytes
as received: re-serialised JSON hashes differently. Comparisons take constant
time so a forger learns nothing from how long a refusal takes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

_PREFIX = "mac="


def _unkeyed(app_id: str, raw_body: bytes, timestamp: str) -> hashlib._Hash:
    """The hash state before the secret: shared by every secret tried."""
    digest = hashlib.sha256(app_id.encode())
    digest.update(raw_body)
    digest.update(timestamp.encode())
    return digest


def signature_hex(app_id: str, raw_body: bytes, timestamp: str, secret: str) -> str:
    """The lowercase hex digest Zalo sends for this body."""
    digest = _unkeyed(app_id, raw_body, timestamp)
    digest.update(secret.encode())
    return digest.hexdigest()


def sign(app_id: str, raw_body: bytes, timestamp: str, secret: str) -> str:
    """The header value Zalo would send: `mac=<hex>` (for tests and the simulator)."""
    return _PREFIX + signature_hex(app_id, raw_body, timestamp, secret)


def _claimed_hex(header: str) -> str:
    value = header.strip()
    if value[: len(_PREFIX)].lower() == _PREFIX:
        value = value[len(_PREFIX) :].strip()
    return value.lower()


def verify(
    header: str | None, app_id: str, raw_body: bytes, timestamp: str, secrets: Iterable[str]
) -> bool:
    """Whether `header` is the signature of this body under any of `secrets` (rotation).

    The `mac=` prefix may be in any letter case or left out; hex in any case.
    Every secret is tried, so the time taken does not say which one matched.
    """
    if not header:
        return False
    claimed = _claimed_hex(header).encode("ascii", "replace")
    unkeyed = _unkeyed(app_id, raw_body, timestamp)  # the body is hashed once
    matched = False
    for secret in secrets:
        digest = unkeyed.copy()
        digest.update(secret.encode())
        matched |= hmac.compare_digest(claimed, digest.hexdigest().encode())
    return matched
