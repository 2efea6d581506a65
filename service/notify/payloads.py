"""What a notification target receives: the body (standard or Slack), its Standard Webhooks
signature, and the one-sentence explanation of a decision.

Pure functions of a decision, a key and a time: no I/O, so the tests and a receiver
in another language can compute the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

import orjson

from service.domain.explain import explain as explained
from service.domain.records import DecisionRecord

Format = Literal["standard", "slack"]

def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`: the `webhook-signature` header."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (a retry is signed again, with its own
    time: receivers refuse a timestamp more than a few minutes old)."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }


def body(decision: DecisionRecord, fmt: Format) -> bytes:
    """The bytes posted for `decision`: Standard Webhooks' envelope (`type`, `timestamp`,
    `data` = the record as `zns.decisions` holds it, plus `explanation`), or Slack's
    `{"text": ...}`."""
    text = explain(decision)
    if fmt == "slack":
        return orjson.dumps({"text": text})
    return orjson.dumps(
        {
            "type": f"decision.{decision.kind}",
            "timestamp": decision.at,
            "data": decision.model_dump(mode="json"),
            "explanation": text,
        }
    )


def explain(decision: DecisionRecord) -> str:
    """One sentence a person reads in a chat: which OA, what changed and why, and when
    (the dashboard shows the same sentence, without the OA and the time)."""
    return f"OA {decision.oa_id} at {decision.at}: {explained(decision.model_dump(mode='json'))}"
