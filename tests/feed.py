"""Records of `zns.events` as the receiver and the API write them, for the fold and processor tests.

Each function returns a `Raw` (kind, key, value, headers): exactly what a
consumer reads, so the same records can be folded directly or appended to a log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import orjson

from service.domain.events import dedup_key, find_oa_id
from tests.zalo import APP_ID, OA_ID

PHONE = "84901234567"


class Raw(NamedTuple):
    kind: str
    key: bytes
    value: bytes
    headers: dict[str, str]

    def log_headers(self) -> tuple[tuple[str, bytes], ...]:
        return tuple((k, v.encode()) for k, v in self.headers.items())


def ms(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def webhook(body: dict[str, Any], server: str | None = None) -> Raw:
    value = orjson.dumps(body)
    oa_id = find_oa_id(body) or APP_ID
    headers = {
        "kind": "webhook",
        "event_name": str(body.get("event_name")),
        "dedup_key": dedup_key(body, value),
    }
    if server is not None:
        headers["server"] = server
    return Raw("webhook", oa_id.encode(), value, headers)


def zalo_event(event_name: str, at: datetime, server: str | None = None, **fields: Any) -> Raw:
    """Zalo's webhook `event_name`, sent at `at`, with its own fields."""
    body = {"app_id": APP_ID, "event_name": event_name, "timestamp": ms(at), **fields}
    return webhook(body, server=server)


def receipt(msg_id: str, at: datetime, recipient: str = PHONE, oa_id: str = OA_ID) -> Raw:
    return zalo_event(
        "user_received_message",
        at,
        server="ZNS",
        sender={"id": oa_id},
        recipient={"id": recipient},
        message={"delivery_time": ms(at), "msg_id": msg_id, "tracking_id": "t-" + msg_id},
    )


def rating(msg_id: str, rate: int, at: datetime, oa_id: str = OA_ID) -> Raw:
    message = {"msg_id": msg_id, "rate": rate, "submit_time": ms(at), "note": "free text"}
    return zalo_event("user_feedback", at, oa_id=oa_id, message={**message, "feedbacks": []})


def quick_reply(msg_id: str, label: str, at: datetime, oa_id: str = OA_ID) -> Raw:
    message = {"submit_time": ms(at), "button_type": "response", "data": label}
    return zalo_event("user_click_response_button", at, oa_id=oa_id, msg_id=msg_id, message=message)


def template_status(template_id: str, status: str, at: datetime, oa_id: str = OA_ID) -> Raw:
    status_change = {"new_status": status}
    return zalo_event(
        "change_template_status", at, oa_id=oa_id, template_id=template_id, status=status_change
    )


def template_quality(template_id: str, quality: str, at: datetime, oa_id: str = OA_ID) -> Raw:
    return zalo_event(
        "change_template_quality", at, oa_id=oa_id, template_id=template_id, quality=quality
    )


def daily_quota(new_value: int | None, at: datetime, oa_id: str = OA_ID) -> Raw:
    quota = {"prev_value": None, "new_value": new_value}
    return zalo_event("change_oa_daily_quota", at, oaId=oa_id, quota=quota)


def _record(kind: str, oa_id: str, value: dict[str, Any]) -> Raw:
    return Raw(kind, oa_id.encode(), orjson.dumps({"oa_id": oa_id, **value}), {"kind": kind})


def send(
    template_id: str,
    tracking_id: str,
    at: datetime,
    *,
    error: int = 0,
    msg_id: str | None = None,
    tag: int | None = None,
    admission_id: str | None = None,
    recipient: str | None = None,
    quota: dict[str, Any] | None = None,
    oa_id: str = OA_ID,
) -> Raw:
    outcome: dict[str, Any] = {
        "template_id": template_id,
        "tracking_id": tracking_id,
        "sent_time": ms(at),
        "error": error,
    }
    for name, value in (
        ("msg_id", msg_id),
        ("tag", tag),
        ("admission_id", admission_id),
        ("recipient", recipient),
        ("quota", quota),
    ):
        if value is not None:
            outcome[name] = value
    return _record("send", oa_id, {"send": outcome})


def admission(
    admission_id: str,
    template_id: str,
    tag: int,
    granted: int,
    at: datetime,
    *,
    recipients: tuple[str, ...] = (),
    key: str | None = None,
    oa_id: str = OA_ID,
) -> Raw:
    return _record(
        "admission",
        oa_id,
        {
            "admission_id": admission_id,
            "idempotency_key": key or "key-" + admission_id,
            "request_hash": "0" * 64,
            "template_id": template_id,
            "tag": tag,
            "granted_recipients": list(recipients),
            "at": ms(at),
            "answer": {
                "admission_id": admission_id,
                "granted": granted,
                "denied": [],
                "remaining": None,
            },
        },
    )


def sync(at: datetime, oa_id: str = OA_ID, **fields: Any) -> Raw:
    return _record("sync", oa_id, {"as_of": ms(at), **fields})


def command(action: str, at: datetime, template_id: str | None = None, oa_id: str = OA_ID) -> Raw:
    value: dict[str, Any] = {"action": action, "at": ms(at)}
    if template_id is not None:
        value["template_id"] = template_id
    return _record("command", oa_id, value)


def stream(seed: int, oas: int = 12, messages: int = 120) -> list[Raw]:
    """A deterministic mixed stream: for each OA sends, receipts, ratings, quick replies,
    admissions, template events and Zalo's repeats, in event-time order per OA, plus one
    event without an OA id and one malformed record (both for the dead-letter topic)."""
    import random
    from datetime import UTC, timedelta

    rng = random.Random(seed)
    start = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)  # 23:00 in Vietnam: it crosses midnight
    out: list[Raw] = []
    for n in range(oas):
        oa_id = f"9{n:05d}{seed:04d}"
        moment = start + timedelta(minutes=rng.randint(0, 30))
        out.append(admission(f"adm-{oa_id}", "t1", 2, 40, moment, oa_id=oa_id))
        for i in range(messages):
            moment += timedelta(seconds=rng.randint(1, 90))
            msg_id = f"{oa_id}-m{i}"
            template = rng.choice(["t1", "t2", "t3"])
            error = rng.choice([0] * 12 + [-141, -144, -124])
            out.append(
                send(
                    template,
                    f"tr-{msg_id}",
                    moment,
                    error=error,
                    tag=2,
                    msg_id=msg_id if error == 0 else None,
                    admission_id=f"adm-{oa_id}" if template == "t1" else None,
                    oa_id=oa_id,
                )
            )
            if error:
                continue
            later = moment + timedelta(seconds=rng.randint(1, 20))
            out.append(receipt(msg_id, later, oa_id=oa_id))
            if rng.random() < 0.1:
                out.append(out[-1])  # Zalo delivered it again
            if rng.random() < 0.3:
                out.append(
                    rating(msg_id, rng.randint(1, 5), later + timedelta(seconds=5), oa_id=oa_id)
                )
            if rng.random() < 0.1:
                out.append(
                    quick_reply(
                        msg_id,
                        rng.choice(["Ngừng nhận", "OK"]),
                        later + timedelta(seconds=7),
                        oa_id=oa_id,
                    )
                )
        out.append(template_quality("t2", "MEDIUM", moment, oa_id=oa_id))
    out.append(webhook({"app_id": APP_ID, "event_name": "user_feedback", "timestamp": "1"}))
    out.append(Raw("send", b"900000", b"{not json", {"kind": "send"}))
    return out
