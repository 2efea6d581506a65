"""An async client for senders: send through zns-gate in one call, or ask before sending
and report what was sent (docs/api.md, docs/send-proxy.md).

    async with Client("http://127.0.0.1:8080", token="...") as gate:
        answer = await gate.send_messages(oa_id, messages, idempotency_key=batch_id)
        for result in answer.results:
            ...  # sent, denied, rejected, failed or unknown, each with its reason

    Or, when the sender sends through Zalo itself (or a BSP):

        answer = await gate.admit(oa_id, "template-1", recipients=phones, idempotency_key=batch_id)
        send_to = phones[: answer.granted]
        ...
        await gate.report_sends(oa_id, outcomes)

Any instance may be asked: the owner of the OA answers. A 503 (the OA's
partition moving, the log briefly away) is asked again after its
`Retry-After`, and a lost connection after a short pause, until `retry_for_s`
has passed (so are a proxy's 502 and 504). An admission and a send keep their
idempotency key across these retries, so a retry never grants or sends twice (a
retry of a send still under way waits for it); reported sends are recognised by
`tracking_id`.
Any other error raises `GateError` at once.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel

from service.api.models import (
    MessageItem,
    MessagesAnswer,
    QualityAnswer,
    QuotaAnswer,
    SendItem,
    SendsAnswer,
    TemplatesAnswer,
    ZaloQuotaAnswer,
)
from service.domain.records import AdmissionAnswer

AnswerT = TypeVar("AnswerT", bound=BaseModel)

RETRIED = frozenset({502, 503, 504})
"""Statuses asked again: zns-gate's own 503, and a proxy's in front of it."""
MIN_WAIT_S = 0.05


class GateError(Exception):
    """zns-gate answered with an error (or, for `Unavailable`, never answered in time)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Unavailable(GateError):
    """Still a 503 or no answer when `retry_for_s` ran out."""


class Admission(AdmissionAnswer):
    """An admission's answer, with what its headers said."""

    rate_limit_reset_s: int | None = None
    """Seconds until the daily quota resets."""


class Client:
    """One sender's connection to zns-gate (any instance of it)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        retry_for_s: float = 30.0,
        max_wait_s: float = 5.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retry_for_s = retry_for_s
        self.max_wait_s = max_wait_s
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # --- the calls ----------------------------------------------------------------------

    async def quota(self, oa_id: str) -> QuotaAnswer:
        return await self._call("GET", f"/v1/oas/{oa_id}/quota", QuotaAnswer)

    async def zalo_quota(self, oa_id: str) -> ZaloQuotaAnswer:
        return await self._call("GET", f"/v1/oas/{oa_id}/message/quota", ZaloQuotaAnswer)

    async def quality(self, oa_id: str) -> QualityAnswer:
        return await self._call("GET", f"/v1/oas/{oa_id}/quality", QualityAnswer)

    async def templates(self, oa_id: str) -> TemplatesAnswer:
        return await self._call("GET", f"/v1/oas/{oa_id}/templates", TemplatesAnswer)

    async def admit(
        self,
        oa_id: str,
        template_id: str,
        *,
        tag: int | None = None,
        recipients: Iterable[str] | None = None,
        count: int | None = None,
        idempotency_key: str | None = None,
    ) -> Admission:
        """Ask to send `template_id` to `recipients` (or `count` messages). Partial grants
        follow the order of the recipients; `granted` says how many may go now.

        The retries of this call reuse one idempotency key. To ask again after
        `Unavailable` without risking a second grant, give your own `idempotency_key`
        (one per batch) and pass the same one again."""
        body: dict[str, Any] = {
            "template_id": template_id,
            "idempotency_key": idempotency_key or uuid.uuid4().hex,
        }
        if tag is not None:
            body["tag"] = tag
        if recipients is not None:
            body["recipients"] = list(recipients)
        if count is not None:
            body["count"] = count
        answer, headers = await self._request("POST", f"/v1/oas/{oa_id}/admissions", body)
        reset = headers.get("X-RateLimit-Reset")
        return Admission.model_validate(
            {**answer, "rate_limit_reset_s": int(reset) if reset else None}
        )

    async def send_messages(
        self,
        oa_id: str,
        messages: Iterable[MessageItem | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        mode: str | None = None,
    ) -> MessagesAnswer:
        """Send 1 to 100 messages of one template through Zalo: each is checked, admitted
        and sent, and its outcome recorded. Give your own `idempotency_key` (one per
        batch) to ask again safely after `Unavailable`: a repeat sends nothing twice."""
        body: dict[str, Any] = {
            "idempotency_key": idempotency_key or uuid.uuid4().hex,
            "messages": [
                m.model_dump(mode="json", exclude_none=True)
                if isinstance(m, MessageItem)
                else dict(m)
                for m in messages
            ],
        }
        if mode is not None:
            body["mode"] = mode
        return await self._call("POST", f"/v1/oas/{oa_id}/messages", MessagesAnswer, body)

    async def report_sends(
        self, oa_id: str, sends: Iterable[SendItem | Mapping[str, Any]]
    ) -> SendsAnswer:
        """Report what Zalo answered to each send (at most 1,000 at a time)."""
        items = [
            s.model_dump(mode="json", exclude_none=True) if isinstance(s, SendItem) else dict(s)
            for s in sends
        ]
        return await self._call("POST", f"/v1/oas/{oa_id}/sends", SendsAnswer, {"sends": items})

    # --- plumbing -----------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, model: type[AnswerT], body: Any = None
    ) -> AnswerT:
        answer, _ = await self._request(method, path, body)
        return model.model_validate(answer)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._own_session = True
        return self._session

    async def _request(
        self, method: str, path: str, body: Any = None
    ) -> tuple[Any, Mapping[str, str]]:
        """The answer's JSON and headers; 503s and lost connections asked again."""
        data = None if body is None else orjson.dumps(body)
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        deadline = time.monotonic() + self.retry_for_s
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._client().request(
                    method, self.base_url + path, data=data, headers=headers
                ) as response:
                    status = response.status
                    raw = await response.read()
                    answer_headers = response.headers
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                wait = min(self.max_wait_s, 0.1 * 2**attempt)
                if time.monotonic() + wait > deadline:
                    raise Unavailable(0, "no_answer", repr(exc)) from exc
                await asyncio.sleep(wait)
                continue
            answer = _json(raw)
            if status == 200:
                return answer, answer_headers
            code, message = _error(answer, status)
            if status not in RETRIED:
                raise GateError(status, code, message)
            wait = _retry_after(answer_headers.get("Retry-After"), self.max_wait_s)
            if time.monotonic() + wait > deadline:
                raise Unavailable(status, code, message)
            await asyncio.sleep(wait)


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _error(answer: Any, status: int) -> tuple[str, str]:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        error = answer["error"]
        return str(error.get("code", f"http_{status}")), str(error.get("message", ""))
    return f"http_{status}", "an answer without the error body"


def _retry_after(value: str | None, cap: float) -> float:
    """The wait a 503 asks for (seconds), capped, with a little jitter so that many
    senders told the same do not all come back at once."""
    try:
        wait = float(value) if value is not None else 1.0
    except ValueError:
        wait = 1.0
    return min(cap, max(MIN_WAIT_S, wait)) * random.uniform(0.9, 1.1)  # noqa: S311 (jitter)
