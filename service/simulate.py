"""`zns-gate simulate`: realistic traffic against a running zns-gate (demos, benchmarks, soaks).

For N OAs, each with a template of every tag, it plays what senders and Zalo do:
a sender asks for an admission, reports the send, Zalo delivers the receipt a
little later (a signed webhook) and, for some messages, the recipient's rating
or quick reply, of which the given share are negative (one or two stars). Now
and then Zalo changes a template's quality or status, or delivers a webhook
twice. Requests leave at a steady rate whatever the answers (open loop), at
most `max_in_flight` at a time.

With `--via messages` it sends through zns-gate instead (`POST /messages` to OAs whose
tokens the service holds, against `zns-gate fake-zalo` as Zalo): each flow is one message
of one of the OA's templates, filled to fit the template's params; Zalo (the fake)
posts the receipts and ratings itself.

What is sent is a function of the seed: the same seed gives the same requests,
in the same order, as long as the service gives the same answers at the same
pace (a send only follows a granted admission, once its answer has come).
The summary counts requests by kind and status; `--record FILE` writes one
JSON line per request with its answer, for tests that compare the service's
state with what it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from service.receiver.signature import sign

RECEIPT_DELAY_S = (0.5, 3.0)
"""How long after the send Zalo delivers the receipt."""
SIGNAL_DELAY_S = (1.0, 6.0)
"""How long after the receipt the recipient rates or replies."""
SIGNAL_SHARE = 0.3
"""The share of delivered messages that get a rating or a quick reply."""
DUPLICATE_SHARE = 0.02
"""The share of webhooks Zalo delivers twice."""
MANAGEMENT_SHARE = 0.003
"""The share of requests that are a template quality or status change."""
SEND_ERRORS = (-124, -141)
SEND_ERROR_SHARE = 0.02


class Sink(Protocol):
    """Where the record of each request goes (a file opened for bytes will do)."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class Request:
    kind: str
    """admission, send, receipt, rating, reply, management or duplicate."""
    oa_id: str
    method: str
    path: str
    body: bytes
    headers: dict[str, str]
    flow: int | None = None


@dataclass(order=True)
class _Pending:
    due: float
    order: int
    make: Callable[[], Request | None] = field(compare=False)


class Plan:
    """The traffic of one seed: which request to send at each moment."""

    def __init__(
        self,
        seed: int,
        oas: int,
        negative_rate: float,
        app_id: str,
        secret: str,
        *,
        messages: Mapping[str, list[Template]] | None = None,
    ) -> None:
        """`messages`: OA -> its templates, to send through `POST /messages` (the OAs
        are these then, not `oas` made-up ones)."""
        self.rng = random.Random(seed)  # noqa: S311 (repeatable traffic, not secrets)
        self.seed = seed
        self.messages = messages
        self.oa_ids = (
            sorted(messages) if messages else [f"5{seed % 1000:03d}{n:012d}" for n in range(oas)]
        )
        self.negative_rate = negative_rate
        self.app_id, self.secret = app_id, secret
        self._pending: list[_Pending] = []
        self._order = 0
        self._flows = 0
        self.granted: dict[int, str | None] = {}
        """Flow -> its admission id once answered (None: nothing was granted)."""
        self._webhooks: list[Request] = []
        self.phones = {
            oa_id: [f"849{self.rng.randrange(10**8):08d}" for _ in range(200)]
            for oa_id in self.oa_ids
        }
        """Each OA's recipients."""
        self.reached: dict[str, list[str]] = {oa_id: [] for oa_id in self.oa_ids}
        """Recipients a tag 1 or 2 message reached: the ones a promotion (tag 3) may go to."""

    def next(self, now: float) -> Request | None:
        """The request for `now` (seconds since the start): a step of a flow that has come
        due, else a management event now and then, else a new flow's admission."""
        while self._pending and self._pending[0].due <= now:
            step = heapq.heappop(self._pending)
            made = step.make()
            if made is not None:
                return made
        if self._webhooks and self.rng.random() < DUPLICATE_SHARE:
            original = self.rng.choice(self._webhooks[-500:])
            return Request(
                "duplicate", original.oa_id, "POST", original.path, original.body, original.headers
            )
        if self.messages is not None:
            return self._message()
        if self.rng.random() < MANAGEMENT_SHARE:
            return self._management()
        return self._admission(now)

    def _later(self, due: float, make: Callable[[], Request | None]) -> None:
        self._order += 1
        heapq.heappush(self._pending, _Pending(due, self._order, make))

    # --- a message's flow ---------------------------------------------------------------

    def _admission(self, now: float) -> Request:
        rng = self.rng
        flow = self._flows
        self._flows += 1
        oa_id = rng.choice(self.oa_ids)
        tag = rng.choice((1, 2, 2, 3))
        if tag == 3 and not self.reached[oa_id]:
            tag = 2  # a promotion only goes to someone a transaction or care message reached
        template_id = f"{oa_id[-6:]}{tag}"
        phone = rng.choice(self.reached[oa_id] if tag == 3 else self.phones[oa_id])
        error = rng.choice(SEND_ERRORS) if rng.random() < SEND_ERROR_SHARE else 0
        body = {
            "template_id": template_id,
            "tag": tag,
            "recipients": [phone],
            "idempotency_key": f"sim-{self.seed}-{flow}",
        }
        self._later(now + 0.2, lambda: self._send(flow, oa_id, template_id, tag, phone, error, now))
        return self._api("admission", oa_id, "admissions", body, flow)

    def _message(self) -> Request:
        """One message through zns-gate; Zalo does the rest (receipt, rating)."""
        assert self.messages is not None
        rng = self.rng
        flow = self._flows
        self._flows += 1
        oa_id = rng.choice(self.oa_ids)
        template = rng.choice(self.messages[oa_id])
        body = {
            "idempotency_key": f"sim-{self.seed}-{flow}",
            "messages": [
                {
                    "template_id": template.template_id,
                    "phone": rng.choice(self.phones[oa_id]),
                    "template_data": template.data,
                }
            ],
        }
        return self._api("message", oa_id, "messages", body, flow)

    def _send(
        self, flow: int, oa_id: str, template_id: str, tag: int, phone: str, error: int, t0: float
    ) -> Request | None:
        if flow not in self.granted:  # not answered yet: a sender waits for its answer
            self._later(
                t0 + 1.0, lambda: self._send(flow, oa_id, template_id, tag, phone, error, t0 + 1.0)
            )
            return None
        admission_id = self.granted.pop(flow)
        if admission_id is None:
            return None  # denied: nothing is sent
        msg_id = f"sim{self.seed}m{flow}"
        now_ms = int(time.time() * 1000)
        item: dict[str, Any] = {
            "template_id": template_id,
            "tag": tag,
            "recipient": phone,
            "tracking_id": f"sim-{self.seed}-{flow}",
            "admission_id": admission_id,
            "sent_time": str(now_ms),
            "error": error,
        }
        if error == 0:
            item["msg_id"] = msg_id
            if tag != 3 and phone not in self.reached[oa_id][-50:]:
                self.reached[oa_id].append(phone)
            receipt_at = t0 + 0.2 + self.rng.uniform(*RECEIPT_DELAY_S)
            self._later(receipt_at, lambda: self._receipt(oa_id, msg_id, phone, receipt_at))
        return self._api("send", oa_id, "sends", {"sends": [item]}, flow)

    def _receipt(self, oa_id: str, msg_id: str, phone: str, at: float) -> Request:
        rng = self.rng
        if rng.random() < SIGNAL_SHARE:
            signal_at = at + rng.uniform(*SIGNAL_DELAY_S)
            self._later(signal_at, lambda: self._signal(oa_id, msg_id))
        payload = {
            "event_name": "user_received_message",
            "sender": {"id": oa_id},
            "recipient": {"id": phone},
            "message": {
                "delivery_time": str(int(time.time() * 1000)),
                "msg_id": msg_id,
                "tracking_id": msg_id,
            },
        }
        return self._webhook("receipt", oa_id, payload, server="ZNS")

    def _signal(self, oa_id: str, msg_id: str) -> Request:
        rng = self.rng
        now_ms = str(int(time.time() * 1000))
        if rng.random() < 0.2:  # a quick reply: neutral unless configured as negative
            payload: dict[str, Any] = {
                "event_name": "user_click_response_button",
                "oa_id": oa_id,
                "msg_id": msg_id,
                "message": {"submit_time": now_ms, "button_type": "response", "data": "OK"},
            }
            return self._webhook("reply", oa_id, payload)
        stars = rng.choice((1, 2)) if rng.random() < self.negative_rate else rng.choice((4, 5))
        payload = {
            "event_name": "user_feedback",
            "oa_id": oa_id,
            "message": {
                "msg_id": msg_id,
                "rate": stars,
                "submit_time": now_ms,
                "rating_type": "csat",
                "option": "five_emotions",
            },
        }
        return self._webhook("rating", oa_id, payload)

    def _management(self) -> Request:
        rng = self.rng
        oa_id = rng.choice(self.oa_ids)
        template_id = f"{oa_id[-6:]}{rng.choice((1, 2, 3))}"
        if rng.random() < 0.5:
            payload: dict[str, Any] = {
                "event_name": "change_template_quality",
                "oa_id": oa_id,
                "template_id": template_id,
                "quality": rng.choice(("HIGH", "MEDIUM")),
            }
        else:
            payload = {
                "event_name": "change_template_status",
                "oa_id": oa_id,
                "template_id": template_id,
                "status": {"prev_status": "ENABLE", "new_status": "ENABLE"},
            }
        return self._webhook("management", oa_id, payload)

    # --- requests -----------------------------------------------------------------------

    def _api(self, kind: str, oa_id: str, what: str, body: Any, flow: int) -> Request:
        headers = {"Content-Type": "application/json"}
        return Request(
            kind, oa_id, "POST", f"/v1/oas/{oa_id}/{what}", orjson.dumps(body), headers, flow
        )

    def _webhook(
        self, kind: str, oa_id: str, payload: dict[str, Any], server: str | None = None
    ) -> Request:
        timestamp = str(int(time.time() * 1000))
        payload = {**payload, "app_id": self.app_id, "timestamp": timestamp}
        raw = orjson.dumps(payload)
        headers = {
            "Content-Type": "application/json",
            "X-ZEvent-Signature": sign(self.app_id, raw, timestamp, self.secret),
        }
        if server is not None:
            headers["X-ZEvent-Server"] = server
        request = Request(kind, oa_id, "POST", "/webhooks/zalo", raw, headers)
        self._webhooks.append(request)
        if len(self._webhooks) > 2000:
            del self._webhooks[:1000]
        return request


@dataclass(frozen=True)
class Template:
    """A template to send through `POST /messages`, and values that fit its params."""

    template_id: str
    data: dict[str, str]

    @classmethod
    def of(cls, answer: Mapping[str, Any]) -> Template:
        """From the gate's `GET .../templates/{id}` answer: each param filled with digits
        of a length it takes."""
        data = {}
        for param in answer.get("params") or []:
            length = param.get("min_length") or 1
            longest = param.get("max_length")
            length = min(max(length, 6), longest) if longest else max(length, 6)
            data[param["name"]] = "1" * length
        return cls(str(answer["template_id"]), data)


async def templates_of(
    target: str, oa_ids: list[str], token: str | None = None
) -> dict[str, list[Template]]:
    """The enabled templates the service knows (from Zalo, by its poller) of each OA."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    out: dict[str, list[Template]] = {}
    async with aiohttp.ClientSession(headers=auth) as session:
        for oa_id in oa_ids:
            async with session.get(f"{target}/v1/oas/{oa_id}/templates") as answer:
                body = await answer.json() if answer.status == 200 else {}
            usable = [
                Template.of(t)
                for t in body.get("templates", [])
                if t.get("status") == "ENABLE" and t.get("tag") in (1, 2)
            ]
            if not usable:
                raise ValueError(f"the service knows no enabled template of OA {oa_id} yet")
            out[oa_id] = usable
    return out


@dataclass
class Summary:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    """`<kind> <status>` -> count (status 0: no answer)."""
    denied: int = 0
    """Admissions answered 200 that granted nothing."""
    elapsed_s: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    """Kind -> seconds from each request's send to its answer."""

    def as_json(self) -> dict[str, Any]:
        accepted = sum(n for key, n in self.statuses.items() if key.split()[1].startswith("2"))
        refused: Counter[str] = Counter()
        for key, n in self.statuses.items():
            status = key.split()[1]
            if not status.startswith("2"):
                refused[status] += n
        return {
            "sent": self.sent,
            "accepted": accepted,
            "refused_by_status": dict(sorted(refused.items())),
            "by_kind": dict(sorted(self.statuses.items())),
            "admissions_denied": self.denied,
            "elapsed_s": round(self.elapsed_s, 2),
            "rate": round(self.sent / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "latency_ms": {
                kind: {
                    "p50": round(percentile(times, 50) * 1000, 2),
                    "p99": round(percentile(times, 99) * 1000, 2),
                }
                for kind, times in sorted(self.latencies.items())
            },
        }


def percentile(values: list[float], p: float) -> float:
    """The value below which `p` percent of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def simulate(
    target: str,
    plan: Plan,
    rate: float,
    duration_s: float,
    *,
    token: str | None = None,
    record: Sink | None = None,
    progress: Callable[[int], object] | None = None,
    max_in_flight: int = 256,
) -> Summary:
    """Send `rate` requests a second for `duration_s` seconds to `target`."""
    summary = Summary()
    limit = asyncio.Semaphore(max_in_flight)
    timeout = aiohttp.ClientTimeout(total=30)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()

    async def send(session: aiohttp.ClientSession, request: Request) -> None:
        status, answer = 0, None
        sent_at = time.perf_counter()
        try:
            async with session.request(
                request.method,
                target + request.path,
                data=request.body,
                headers={**request.headers, **auth},
            ) as response:
                status = response.status
                answer = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            pass
        finally:
            limit.release()
        summary.statuses[f"{request.kind} {status}"] += 1
        if status:
            summary.latencies.setdefault(request.kind, []).append(time.perf_counter() - sent_at)
        parsed = _json(answer)
        if request.kind == "admission" and request.flow is not None:
            granted = status == 200 and isinstance(parsed, dict) and parsed.get("granted", 0) > 0
            plan.granted[request.flow] = parsed["admission_id"] if granted else None
            summary.denied += status == 200 and not granted
        if record is not None:
            line = {"kind": request.kind, "oa_id": request.oa_id, "status": status}
            line["body"] = _json(request.body)
            line["answer"] = parsed
            record.write(orjson.dumps(line) + b"\n")
        if progress is not None:
            progress(1)

    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=max_in_flight)
    ) as session:
        total = int(rate * duration_s)
        for n in range(total):
            due = started + n / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            request = plan.next(time.monotonic() - started)
            if request is None:
                continue
            await limit.acquire()
            summary.sent += 1
            task = asyncio.create_task(send(session, request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    summary.elapsed_s = time.monotonic() - started
    return summary


def _json(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def run(args: Any, app_id: str, secret: str) -> dict[str, Any]:
    """`zns-gate simulate` with parsed arguments; the summary."""
    from tqdm import tqdm

    templates = None
    if args.via == "messages":
        if not args.oa_id:
            raise ValueError("--via messages needs the OAs to send for (--oa-id)")
        templates = asyncio.run(templates_of(args.target.rstrip("/"), args.oa_id, args.token))
    plan = Plan(args.seed, args.oas, args.negative_rate, app_id, secret, messages=templates)
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(Path(args.record).open("wb")) if args.record else None
        bar = stack.enter_context(
            tqdm(total=int(args.rate * args.duration), unit="req", disable=args.quiet)
        )
        summary = asyncio.run(
            simulate(
                args.target.rstrip("/"),
                plan,
                args.rate,
                args.duration,
                token=args.token,
                record=sink,
                progress=bar.update,
            )
        )
    return summary.as_json()
