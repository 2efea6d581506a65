"""Signed Zalo webhooks for tests: every ZNS event of docs/rules.md#event-payloads, as Zalo sends
it.

`Webhooks(app_id, secret).build("user_feedback", ...)` gives the raw body and
the headers Zalo would send; `sign_body` signs any bytes. Payloads are the
documented examples with fresh ids, so many webhooks can be told apart.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.receiver.signature import sign

APP_ID = "2074138120372622546"
SECRET = "oa-secret-key-for-tests"
OLD_SECRET = "the-secret-before-rotation"
OA_ID = "388613280878808645"

# The documented payloads (docs/rules.md#event-payloads), without app_id and timestamp.
EXAMPLES: dict[str, dict[str, Any]] = {
    "user_received_message": {
        "sender": {"id": OA_ID},
        "recipient": {"id": "84123456789"},
        "event_name": "user_received_message",
        "message": {
            "delivery_time": "1602960467432",
            "msg_id": "15a0cc0bbb13bd4ce403",
            "tracking_id": "tracking_id",
        },
    },
    "user_feedback": {
        "event_name": "user_feedback",
        "oa_id": OA_ID,
        "message": {
            "msg_id": "7e4c33cfc20b05575c18",
            "tracking_id": "order-1956",
            "rate": 5,
            "note": "Tôi rất hài lòng.",
            "feedbacks": ["Nhân viên vui vẻ", "Giao hàng nhanh"],
            "submit_time": "1616673095659",
            "rating_type": "csat",
            "option": "five_emotions",
        },
    },
    "user_click_response_button": {
        "event_name": "user_click_response_button",
        "oa_id": OA_ID,
        "msg_id": "msgA0001",
        "message": {
            "submit_time": "1759215799072",
            "button_type": "response",
            "data": "Tiếp tục học",
            "tracking_id": "trackA0001",
        },
    },
    "change_template_status": {
        "event_name": "change_template_status",
        "oa_id": OA_ID,
        "template_id": "31239",
        "status": {"prev_status": "PENDING_REVIEW", "new_status": "REJECT"},
        "reason": "Mẫu tin bị lặp; Logo không hợp lệ",
    },
    "change_template_quality": {
        "event_name": "change_template_quality",
        "oa_id": OA_ID,
        "template_id": "31239",
        "quality": "LOW",
    },
    "change_oa_daily_quota": {
        "event_name": "change_oa_daily_quota",
        "oaId": OA_ID,
        "quota": {"prev_value": 5000, "new_value": 10000},
    },
    # Events known by name only: kept as generic events.
    "change_oa_template_tags": {"event_name": "change_oa_template_tags", "oa_id": OA_ID},
    "change_template_quota": {
        "event_name": "change_template_quota",
        "oa_id": OA_ID,
        "template_id": "31239",
    },
    "event_journey_acknowledged": {
        "event_name": "event_journey_acknowledged",
        "oa_id": OA_ID,
        "journey_id": "j-1",
    },
    "event_journey_time_out": {
        "event_name": "event_journey_time_out",
        "oa_id": OA_ID,
        "journey_id": "j-2",
    },
}

# The servers Zalo names in X-ZEvent-Server.
SERVER = {"user_received_message": "ZNS"}

# Fields holding a message id or template id, refreshed per webhook so each is distinct.
_FRESH_IDS = (("message", "msg_id"), (None, "msg_id"), (None, "template_id"), (None, "journey_id"))


def sign_body(raw: bytes, app_id: str = APP_ID, timestamp: str = "", secret: str = SECRET) -> str:
    """The `X-ZEvent-Signature` value for any body."""
    return sign(app_id, raw, timestamp, secret)


@dataclass
class Webhook:
    body: bytes
    headers: dict[str, str]
    payload: dict[str, Any]

    @property
    def event_name(self) -> str:
        name: str = self.payload["event_name"]
        return name


@dataclass
class Webhooks:
    """Builds signed webhooks for one app."""

    app_id: str = APP_ID
    secret: str = SECRET
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def payload(self, event_name: str, fresh: bool = True, **fields: Any) -> dict[str, Any]:
        """The documented payload of `event_name`, with distinct ids unless `fresh=False`."""
        payload = copy.deepcopy(EXAMPLES[event_name])
        n = next(self._serial)
        if fresh:
            for outer, name in _FRESH_IDS:
                holder = payload.get(outer, {}) if outer else payload
                if isinstance(holder, dict) and name in holder:
                    holder[name] = f"{holder[name]}-{n}"
        payload["app_id"] = self.app_id
        payload["timestamp"] = str(int(time.time() * 1000) + n)
        oa_id = fields.pop("oa_id", None)
        if oa_id is not None:  # where this event names its OA (one place: see find_oa_id)
            if event_name == "user_received_message":
                payload["sender"]["id"] = oa_id
            elif "oaId" in payload:
                payload["oaId"] = oa_id
            else:
                payload["oa_id"] = oa_id
        payload.update(fields)
        return payload

    def build(self, event_name: str, fresh: bool = True, **fields: Any) -> Webhook:
        return self.from_payload(self.payload(event_name, fresh, **fields))

    def from_payload(
        self, payload: dict[str, Any], server: str | None = None, body: bytes | None = None
    ) -> Webhook:
        """Sign `payload` (serialised compactly unless `body` gives the exact bytes)."""
        raw = body if body is not None else orjson.dumps(payload)
        app_id = str(payload.get("app_id", self.app_id))
        timestamp = str(payload.get("timestamp", ""))
        headers = {
            "Content-Type": "application/json",
            "X-ZEvent-Signature": sign(app_id, raw, timestamp, self.secret),
            "User-Agent": "ZaloWebhook",
        }
        name = payload.get("event_name")
        chosen = server if server is not None else SERVER.get(str(name))
        if chosen:
            headers["X-ZEvent-Server"] = chosen
        return Webhook(raw, headers, payload)
