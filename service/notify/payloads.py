"""What a notification target receives: the body (standard or Slack), its Standard Webhooks
signature, and the one-sentence explanation of a decision.

Pure functions of a decision, a key and a time: no I/O, so the tests and a receiver
in another language can compute the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Literal

import orjson

from service.domain.records import DecisionRecord

Format = Literal["standard", "slack"]

_KIND_WORDS = {
    "quality": "quality level",
    "tier": "daily quota",
    "penalty": "daily quota (penalty)",
    "pause": "pause",
    "suspension": "suspension",
    "template": "template status",
    "token": "Zalo token",
}


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
    """One sentence a person reads in a chat: what changed for which OA, by which rule."""
    who = f"OA {decision.oa_id}"
    if decision.template_id is not None:
        who += f", template {decision.template_id}"
    if decision.kind == "warning":
        return f"{who}: {_warning(decision.rule, decision.inputs)} (at {decision.at})."
    what = _KIND_WORDS.get(decision.kind, decision.kind)
    return (
        f"{who}: {what} {_shown(decision.before)} → {_shown(decision.after)} "
        f"(rule {decision.rule}, at {decision.at})."
    )


def _warning(rule: str, inputs: dict[str, Any]) -> str:
    if rule == "penalty_near":
        return (
            f"warning penalty_near: {inputs.get('negatives_today')} negatives today, the "
            f"penalty (one tier down) comes above {inputs.get('threshold')}"
        )
    if rule == "tier_down_likely":
        return (
            f"warning tier_down_likely: the next evaluation "
            f"({inputs.get('next_evaluation_at')}) projects the daily quota "
            f"{_shown(inputs.get('daily_quota'))} → {_shown(inputs.get('projected_daily_quota'))}"
        )
    if rule == "token_expiring":
        return (
            f"warning token_expiring: the Zalo refresh token expires at "
            f"{inputs.get('refresh_expires_at')}; connect the OA again before then"
        )
    return f"warning {rule}"


def _shown(value: Any) -> str:
    return "unlimited" if value is None else str(value)
