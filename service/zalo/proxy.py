"""The send proxy: one `POST /v1/oas/{oa_id}/messages` checks the messages, admits those
that pass, sends each granted one through Zalo with the OA's token, records every outcome
as a `send` record and answers them all.

Exactly once towards Zalo: a message is sent only by the request that admitted it, once
its admission is durable, and never again; a repeat of a request (the same idempotency
key and body) answers the first answer, waiting for it while the first is still
sending, and after a restart is answered from the log (a message admitted whose outcome
was not recorded is `unknown`). A request runs in its own task, so a sender that hangs
up does not stop a batch half-way. Zalo's slowness stays Zalo's: at most
`zalo.send_concurrency` calls of an OA are in flight, outside every lock, so nothing
else waits for them. This module decides nothing itself: the admission decides, the
fold counts.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from service.config import Settings
from service.domain.fold.sends import outcome_of
from service.domain.messages import Checked, Outgoing, result_of, tracking_id_for
from service.domain.records import ProxyRequest, SendOutcome, ZaloQuota
from service.log.base import LogError
from service.logsetup import get_logger
from service.metrics import PROXY_MESSAGES
from service.processor.owned import Admitted, Ask, Messages, OwnedStates, Refused, Unserved
from service.zalo.access import AccessTokens
from service.zalo.client import NotSent, SendResult, SendUnknown, Sent, ZaloClient

_log = get_logger("zalo.proxy")

KEEP_RESULTS = 100_000
"""Messages whose answers are kept in memory after their request ended, until the
processor has folded their records (from then on the OA's state answers a repeat). An
answer pushed out earlier by this bound is answered from the state too, where an
outcome not folded yet reads as `unknown`: never a second send."""


@dataclass(frozen=True)
class Request:
    """A `POST /messages` request, its body already checked against its model."""

    oa_id: str
    idempotency_key: str
    request_hash: str
    template_id: str
    tag: int | None
    mode: str
    messages: tuple[Outgoing, ...]


@dataclass(frozen=True)
class Answered:
    """The answer (the first one again for a repeat)."""

    body: dict[str, Any]
    now: datetime
    zone: ZoneInfo


Outcome = Answered | Refused | Unserved


@dataclass
class _Kept:
    request_hash: str
    answer: Answered
    last_offset: int


class SendProxy:
    """Sends of every OA this instance owns."""

    def __init__(
        self, settings: Settings, owned: OwnedStates, tokens: AccessTokens, client: ZaloClient
    ) -> None:
        self.settings = settings
        self.owned = owned
        self.tokens = tokens
        self.client = client
        self._running: dict[tuple[str, str], tuple[str, asyncio.Task[Outcome]]] = {}
        self._answered: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        self._held = 0
        """The messages of the answers in `_answered`."""
        self._in_flight: weakref.WeakValueDictionary[str, asyncio.Semaphore] = (
            weakref.WeakValueDictionary()
        )

    async def close(self) -> None:
        """Let the requests under way finish their sends and records."""
        running = [task for _, task in self._running.values()]
        if running:
            await asyncio.wait(running)

    async def send(self, request: Request) -> Outcome:
        """The answer to `request`: its own, or the first one of its idempotency key."""
        key = (request.oa_id, request.idempotency_key)
        running = self._running.get(key)
        if running is None:
            kept = self._kept(key)
            if kept is not None:
                return _same(request, kept.request_hash, kept.answer)
            task = asyncio.create_task(self._run(request))
            self._running[key] = running = (request.request_hash, task)
            task.add_done_callback(lambda _: self._running.pop(key, None))
        first_hash, task = running
        if first_hash != request.request_hash:
            return _conflict()
        # Shielded: a sender that hangs up does not stop the batch.
        return await asyncio.shield(task)

    @property
    def answers_held(self) -> int:
        """Answers held in memory until the OA's state has their records."""
        return len(self._answered)

    def _kept(self, key: tuple[str, str]) -> _Kept | None:
        kept = self._answered.get(key)
        if kept is not None and self.owned.folded(key[0], kept.last_offset):
            self._forget(key)  # the OA's state has it from now on
            return None
        return kept

    def _keep(self, request: Request, answer: Answered, last_offset: int) -> None:
        key = (request.oa_id, request.idempotency_key)
        self._answered[key] = _Kept(request.request_hash, answer, last_offset)
        self._held += len(answer.body["results"])
        # The oldest first: those the state has now, and those beyond the bound.
        while self._answered:
            oldest, kept = next(iter(self._answered.items()))
            if self._held <= KEEP_RESULTS and not self.owned.folded(oldest[0], kept.last_offset):
                break
            self._forget(oldest)

    def _forget(self, key: tuple[str, str]) -> None:
        kept = self._answered.pop(key)
        self._held -= len(kept.answer.body["results"])

    async def _run(self, request: Request) -> Outcome:
        oa_id = request.oa_id
        deadline_s = self.settings.receiver.publish_deadline_s
        token = await self.tokens.access_token(oa_id)
        if token is None and not self.owned.decided(oa_id, request.idempotency_key):
            # A new request: nothing is admitted or written, nothing is taken. (A repeat
            # is answered its first answer below, token or not.)
            return self._without_token(request)
        ask = Ask(
            template_id=request.template_id,
            tag=request.tag,
            recipients=(),
            count=None,
            idempotency_key=request.idempotency_key,
            request_hash=request.request_hash,
            messages=request.messages,
        )
        admitted = await self.owned.admit(oa_id, ask, timeout_s=deadline_s)
        if not isinstance(admitted, Admitted):
            return admitted
        messages = admitted.messages
        assert messages is not None  # an admission of messages
        zone = admitted.policy.zone
        if messages.checked is None:  # a repeat: the first one's answer, from the log
            results = [
                result_of(planned, messages.results.get(str(i)))
                for i, planned in enumerate(messages.planned)
            ]
            return Answered(_answer_body(admitted.answer, results, zone), admitted.now, zone)
        sent, last_offset = await self._send_admitted(request, admitted.answer, messages)
        results = [
            result_of(planned, sent.get(i)) for i, planned in enumerate(messages.planned)
        ]
        answer = Answered(_answer_body(admitted.answer, results, zone), admitted.now, zone)
        for result in results:
            PROXY_MESSAGES.labels(result["status"]).inc()
        self._keep(request, answer, last_offset)
        return answer

    async def _send_admitted(
        self, request: Request, admission: Mapping[str, Any], messages: Messages
    ) -> tuple[dict[int, dict[str, Any]], int]:
        """Send every admitted message (`send_concurrency` of the OA at a time), record
        each outcome; the outcomes by the message's place in the request, and the last
        offset written."""
        assert messages.checked is not None
        admission_id = admission["admission_id"]
        outcomes: dict[int, dict[str, Any]] = {}
        offsets: list[int] = []
        slots = self._slots(request.oa_id)

        async def one(index: int, checked: Checked) -> None:
            async with slots:
                result = await self.client.send(
                    request.oa_id,
                    _zalo_body(request, index, checked),
                    hashed=request.messages[index].hash_phone is not None,
                )
            outcome = _outcome(request, admission_id, checked, result)
            outcomes[index] = outcome_of(outcome)
            offsets.append(await self._record(request, index, outcome))

        admitted = [
            (i, checked)
            for i, (planned, checked) in enumerate(
                zip(messages.planned, messages.checked, strict=True)
            )
            if planned.status == "admitted"
        ]
        await asyncio.gather(*(one(i, checked) for i, checked in admitted))
        return outcomes, max(offsets, default=-1)

    async def _record(self, request: Request, index: int, outcome: SendOutcome) -> int:
        """Append the outcome as a `send` record; the offset written (-1: none). A record
        that cannot be written is logged: the message was sent (or tried), and sending it
        again would be worse than a count the processor estimates."""
        ref = ProxyRequest(idempotency_key=request.idempotency_key, index=index)
        deadline_s = self.settings.receiver.publish_deadline_s
        try:
            recorded = await self.owned.record_sends(
                request.oa_id, [outcome], timeout_s=deadline_s, request=ref, new=True
            )
            if isinstance(recorded, Unserved):  # the OA moved away while it was sent
                return await self.owned.append_send(
                    request.oa_id, outcome, ref, timeout_s=deadline_s
                )
        except LogError as exc:
            # The answer still tells the sender what Zalo said; the count is then the
            # processor's estimate (a receipt, or grant_ttl), and a repeat after a restart
            # answers `unknown` for it: never a second send.
            _log.error(
                "a send's outcome could not be recorded",
                oa_id=request.oa_id,
                tracking_id=outcome.tracking_id,
                error=str(exc),
            )
            return -1
        return recorded.last_offset

    def _slots(self, oa_id: str) -> asyncio.Semaphore:
        slots = self._in_flight.get(oa_id)
        if slots is None:
            slots = self._in_flight[oa_id] = asyncio.Semaphore(self.settings.zalo.send_concurrency)
        return slots

    def _without_token(self, request: Request) -> Answered:
        zone = self.settings.rules.zone
        results = [
            {
                "tracking_id": m.tracking_id or tracking_id_for(request.idempotency_key, i),
                "status": "failed",
                "reason": "no_token",
            }
            for i, m in enumerate(request.messages)
        ]
        body = {"admission_id": None, "remaining": None, "results": results}
        return Answered(body, datetime.now(zone), zone)


def _zalo_body(request: Request, index: int, checked: Checked) -> dict[str, Any]:
    """Zalo's body of one send (`/message/template`, or `/hashphone` with `hash_phone`)."""
    message = request.messages[index]
    body: dict[str, Any] = {
        "hash_phone" if message.hash_phone is not None else "phone": checked.to,
        "template_id": request.template_id,
        "template_data": dict(message.template_data),
        "tracking_id": checked.tracking_id,
    }
    if request.mode == "development":
        body["mode"] = "development"
    return body


def _outcome(
    request: Request, admission_id: str, checked: Checked, result: SendResult
) -> SendOutcome:
    """The send record's outcome of one message sent."""
    common: dict[str, Any] = {
        "template_id": request.template_id,
        "recipient": checked.recipient,
        "tracking_id": checked.tracking_id,
        "admission_id": admission_id,
    }
    if request.tag is not None:
        common["tag"] = request.tag
    now_ms = str(int(datetime.now().timestamp() * 1000))
    if isinstance(result, Sent):
        quota: dict[str, Any] = {}
        if result.daily_quota is not None:
            quota["dailyQuota"] = result.daily_quota
        if result.remaining_quota is not None:
            quota["remainingQuota"] = result.remaining_quota
        return SendOutcome(
            **common,
            msg_id=result.msg_id,
            sent_time=result.sent_time,
            error=0,
            quota=ZaloQuota(**quota) if quota else None,
        )
    if isinstance(result, SendUnknown):
        return SendOutcome(**common, sent_time=now_ms, error=None)
    assert isinstance(result, NotSent)
    if result.reason == "zalo_error":
        return SendOutcome(
            **common, sent_time=now_ms, error=result.error, zalo_message=result.message[:500]
        )
    return SendOutcome(**common, sent_time=now_ms, error=None, not_sent=result.reason)


def _answer_body(
    admission: Mapping[str, Any], results: list[dict[str, Any]], zone: ZoneInfo
) -> dict[str, Any]:
    for result in results:
        if "sent_time" in result:
            ms = int(result["sent_time"])
            moment = datetime.fromtimestamp(ms / 1000, tz=zone)
            result["sent_time"] = moment.isoformat(timespec="milliseconds")
    return {
        "admission_id": admission.get("admission_id"),
        "remaining": admission.get("remaining"),
        "results": results,
    }


def _same(request: Request, first_hash: str, answer: Answered) -> Answered | Refused:
    return answer if first_hash == request.request_hash else _conflict()


def _conflict() -> Refused:
    return Refused(409, "idempotency_conflict", "this idempotency_key was used with another body")


