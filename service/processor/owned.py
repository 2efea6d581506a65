"""The states this instance owns, as the API asks for them: the one door into the processor.

The API calls this with plain values and gets plain answers: where an OA is served
(here, at its owner's address, or not now and why), a copy of its state brought to
now, an admission decided, appended and applied at once, send outcomes recorded once,
the OAs held. It never hands out a live state: only folding changes those, and a
live state read across an `await` could change under the reader. HTTP (statuses,
forwarding, headers) stays in the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from service.domain.admission import AdmissionRequest, decide
from service.domain.events import as_datetime
from service.domain.fold import Item, advance
from service.domain.records import AdmissionAnswer, AdmissionRecord, SendOutcome, SendRecord
from service.domain.state import OAState, Policy
from service.log.base import Headers, Position, Record
from service.metrics import ADMISSION_UNITS

if TYPE_CHECKING:
    from service.processor.folding import PartitionFolder
    from service.processor.runner import Processor

T = TypeVar("T")


@dataclass(frozen=True)
class Here:
    """This instance answers for the OA."""

    staleness_ms: int | None
    """None: from the owner's current state; else how much older than now it may be."""


@dataclass(frozen=True)
class Owner:
    """Another instance owns the OA's partition."""

    address: str
    partition: int


@dataclass(frozen=True)
class Unserved:
    """No instance can answer for the OA now; asking again soon may help."""

    code: str
    message: str


@dataclass(frozen=True)
class View:
    """An OA's state as this instance can answer for it: a copy brought to `now`."""

    state: OAState
    now: datetime
    policy: Policy
    staleness_ms: int | None
    """None: the owner's current state; else how much older than now it may be."""


@dataclass(frozen=True)
class Ask:
    """An admission request as the sender gave it (recipients already hashed)."""

    template_id: str
    tag: int | None
    """None: the template's known tag."""
    recipients: tuple[str, ...]
    count: int | None
    idempotency_key: str
    request_hash: str
    """Tells a repeat of the same request from another one under the same key."""


@dataclass(frozen=True)
class Admitted:
    """The admission's answer (the first one again for a repeat), as of `now`."""

    answer: dict[str, Any]
    now: datetime
    policy: Policy


@dataclass(frozen=True)
class Refused:
    """The request cannot be decided as it was asked; asking the same again will not help."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class Recorded:
    """Send outcomes appended (`accepted`), and those already recorded (`duplicates`)."""

    accepted: int
    duplicates: int


@dataclass(frozen=True)
class Listing:
    """The OAs of the partitions this instance serves, each shaped by the caller."""

    partitions: list[int]
    oas: list[Any]


@dataclass(frozen=True)
class _Held:
    folder: PartitionFolder
    staleness_ms: int | None


PREFETCH_FROM = 100
"""An admission naming more recipients than this reads them off the loop first (a point
read costs a few microseconds; thousands of them would hold the loop)."""


class OwnedStates:
    """The processor's states, read and decided on for the API."""

    def __init__(self, processor: Processor) -> None:
        self._processor = processor
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._unfolded: weakref.WeakKeyDictionary[PartitionFolder, dict[str, int]] = (
            weakref.WeakKeyDictionary()
        )
        """Per partition: the dedup keys of sends appended here that the processor has not
        folded yet -> their offset. A repeat that arrives before the fold is a duplicate too."""

    # --- where and what -------------------------------------------------------------------

    def where(self, oa_id: str, *, admit: bool = False) -> Here | Owner | Unserved:
        """Whether this instance answers for the OA now, or which owner does. An admission
        is decided only from current state, by an owner in contact with its group; a read
        may come from a copy."""
        found = self._where(oa_id, admit=admit)
        return Here(found.staleness_ms) if isinstance(found, _Held) else found

    def read(self, oa_id: str) -> View | Owner | Unserved:
        """The OA's state to answer a read from here, or where it is answered."""
        found = self._where(oa_id, admit=False)
        return self._view(oa_id, found) if isinstance(found, _Held) else found

    async def listing(self, shape: Callable[[OAState, datetime, Policy], T]) -> Listing:
        """Every OA of the partitions served here, as `shape` makes it of its state."""
        processor = self._processor
        partitions = sorted(processor.ready())
        oas = []
        for partition in partitions:
            folder = processor.folders.get(partition)
            if folder is None:
                continue  # revoked while an earlier one was read
            now = folder.now()
            # Read as they are (no copy brought to now, which would cost a copy per OA): a
            # day change not yet applied shows at the OA's next record or query. The OAs
            # out of memory are read from the store off the loop, and stay out.
            away = await folder.read_evicted()
            for oa_id in sorted(folder.states.keys() | away.keys()):
                state = folder.states.get(oa_id) or away[oa_id]
                oas.append(shape(state, now, processor.policies.for_oa(oa_id)))
                if len(oas) % 500 == 0:
                    await asyncio.sleep(0)  # thousands of OAs: let requests through
        return Listing(partitions, oas)

    def other_owners(self) -> list[str]:
        """The addresses of the group's other members that own partitions."""
        mine = self._processor.options.address or ""
        return sorted(set(self._processor.owners().values()) - {mine})

    # --- decisions ------------------------------------------------------------------------

    async def admit(
        self, oa_id: str, ask: Ask, *, timeout_s: float
    ) -> Admitted | Refused | Unserved:
        """Decide the request, append the decision, apply it to the owner's state, answer.

        One decision of the OA at a time, so concurrent requests never grant more than
        remains. The same idempotency key with the same request gets the first answer
        again (also after a restart: the key is kept in the OA's state)."""
        async with self._deciding(oa_id, oa_id) as held:
            if not isinstance(held, _Held):
                return held
            if len(ask.recipients) > PREFETCH_FROM:
                await held.folder.prefetch(oa_id, "recipients", ask.recipients)
            view = self._view(oa_id, held)
            state, now, policy = view.state, view.now, view.policy
            earlier = state.idempotency.peek(ask.idempotency_key)
            if earlier is not None:
                if earlier[1] != ask.request_hash:
                    return Refused(
                        409,
                        "idempotency_conflict",
                        "this idempotency_key was used with another body",
                    )
                return Admitted(earlier[2], now, policy)
            template = state.templates.get(ask.template_id)
            tag = ask.tag or (template.tag if template is not None else None)
            if tag is None:
                return Refused(422, "tag_required", "the template's tag is not known: give `tag`")
            units = len(ask.recipients) or ask.count or 1
            admission_id = uuid.uuid4().hex
            wanted = AdmissionRequest(ask.template_id, tag, ask.recipients, units)
            decided = decide(state, wanted, now, policy, admission_id)
            _count_units(decided.answer)
            record = AdmissionRecord(
                oa_id=oa_id,
                admission_id=admission_id,
                idempotency_key=ask.idempotency_key,
                request_hash=ask.request_hash,
                template_id=ask.template_id,
                tag=tag,
                granted_recipients=decided.granted_recipients,
                at=str(int(now.timestamp() * 1000)),
                answer=decided.answer,
            )
            value = record.model_dump_json().encode()
            position = await self._append(oa_id, "admission", value, timeout_s)
            # The grant counts from now on, not when the processor folds the record: it
            # recognises the admission by its id then and does not count it again.
            item = Item("admission", oa_id, record, as_datetime(record.at))
            await self._processor.apply_ahead(item, _as_record(position, oa_id, value, "admission"))
        return Admitted(decided.answer.model_dump(mode="json"), now, policy)

    async def record_sends(
        self, oa_id: str, outcomes: Iterable[SendOutcome], *, timeout_s: float
    ) -> Recorded | Unserved:
        """Append each send outcome not recorded yet.

        A duplicate (by tracking id, or by message for a successful send) is one in the
        OA's dedup index, among the sends appended here but not folded yet, or earlier in
        `outcomes`; it is not appended, the fold would drop it anyway. One call of the
        OA at a time, so that concurrent repeats find each other."""
        async with self._deciding(oa_id, "sends:" + oa_id) as held:
            if not isinstance(held, _Held):
                return held
            unfolded = self._unfolded_sends(held.folder)
            state = held.folder.state_of(oa_id)
            seen: set[str] = set()  # this call's own keys
            new: list[tuple[str, str | None, bytes]] = []
            duplicates = 0
            for outcome in outcomes:
                tracking, message = _send_keys(oa_id, outcome)
                if (
                    tracking in unfolded
                    or tracking in seen
                    or (message is not None and (message in unfolded or message in seen))
                    or _recorded(state, outcome)
                ):
                    duplicates += 1
                    continue
                sent = message if outcome.error == 0 else None  # a failed send sends no message
                seen.update(key for key in (tracking, sent) if key is not None)
                record = SendRecord(oa_id=oa_id, send=outcome)
                new.append((tracking, sent, record.model_dump_json(exclude_unset=True).encode()))
            # Appended together: each append takes its place in the log before it waits, so
            # the records keep their order and a report of many sends costs about one
            # durable write.
            results = await asyncio.gather(
                *(self._append(oa_id, "send", value, timeout_s) for _, _, value in new),
                return_exceptions=True,
            )
            failed: BaseException | None = None
            accepted = 0
            for (tracking, sent, _), result in zip(new, results, strict=True):
                if isinstance(result, BaseException):
                    failed = failed or result
                    continue
                unfolded[tracking] = result.offset
                if sent is not None:
                    unfolded[sent] = result.offset
                accepted += 1
            if failed is not None:
                raise failed  # what did land is known now: a retry finds it a duplicate
        return Recorded(accepted, duplicates)

    # --- inside ---------------------------------------------------------------------------

    def _where(self, oa_id: str, *, admit: bool) -> _Held | Owner | Unserved:
        processor = self._processor
        partition = processor.log.partition_for(oa_id.encode())
        held = processor.reader(partition)
        if held is not None and not (admit and partition not in processor.folders):
            folder, staleness_ms = held
            if admit and staleness_ms is not None:
                return Unserved("restoring", f"partition {partition} is moving to this instance")
            if admit and not processor.in_contact():
                return Unserved(
                    "out_of_contact", "this instance has lost contact with its group; not granting"
                )
            return _Held(folder, staleness_ms)
        # Not held here, or only as a copy of a revoked partition: an admission goes to the owner.
        owner = processor.owner_of(partition)
        if owner is None or owner == processor.options.address:
            return Unserved("restoring", f"partition {partition} is not served yet")
        return Owner(owner, partition)

    def _view(self, oa_id: str, held: _Held) -> View:
        policy = self._processor.policies.for_oa(oa_id)
        live = held.folder.state_of(oa_id)
        state = live.served_copy() if live is not None else OAState.new(oa_id, policy.rules)
        now = held.folder.now()
        advance(state, now, policy)
        return View(state, now, policy, held.staleness_ms)

    @contextlib.asynccontextmanager
    async def _deciding(self, oa_id: str, lock: str) -> AsyncIterator[_Held | Unserved]:
        """Under the OA's lock `lock` and the partition's guard (a revocation waits for the
        appends made under it, so the next owner reads them): the partition as it is once
        both are held, since the wait may have moved it."""
        partition = self._processor.log.partition_for(oa_id.encode())
        async with self._lock(lock), self._processor.admitting(partition):
            found = self._where(oa_id, admit=True)
            if isinstance(found, Owner):
                yield Unserved("not_owner", "the OA's partition moved; ask again")
            else:
                yield found

    def _lock(self, name: str) -> asyncio.Lock:
        """A lock held weakly: it lives while callers hold or wait for it, then goes, so
        that idle OAs cost nothing here."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _unfolded_sends(self, folder: PartitionFolder) -> dict[str, int]:
        """The partition's sends appended but not folded yet; the folded ones leave it (they
        are in the OA's state by then). Keys go in in about offset order, so only the front
        is looked at."""
        unfolded = self._unfolded.setdefault(folder, {})  # a partition restored again starts afresh
        while unfolded:
            key, offset = next(iter(unfolded.items()))
            if offset > folder.position:
                break
            del unfolded[key]
        return unfolded

    async def _append(self, oa_id: str, kind: str, value: bytes, timeout_s: float) -> Position:
        log = self._processor.log
        return await log.append(
            log.topics.events, oa_id.encode(), value, _headers(kind), timeout_s=timeout_s
        )


def _headers(kind: str) -> Headers:
    return (("kind", kind.encode()),)


def _as_record(position: Position, oa_id: str, value: bytes, kind: str) -> Record:
    """The record as the log now holds it (what its decisions name as their source)."""
    return Record(
        position.topic, position.partition, position.offset, oa_id.encode(), value, _headers(kind)
    )


def _count_units(answer: AdmissionAnswer) -> None:
    if answer.granted:
        ADMISSION_UNITS.labels("granted").inc(answer.granted)
    for denial in answer.denied:
        ADMISSION_UNITS.labels(denial.reason).inc(denial.count)


def _send_keys(oa_id: str, item: SendOutcome) -> tuple[str, str | None]:
    """The keys of a send among the unfolded ones: its tracking id, and its message."""
    message = None if item.msg_id is None else f"{oa_id}/msg:{item.msg_id}"
    return f"{oa_id}/send:{item.tracking_id}", message


def _recorded(state: OAState | None, item: SendOutcome) -> bool:
    """The OA's dedup index already has the send, by its tracking id or its message."""
    if state is None:
        return False
    if "send:" + item.tracking_id in state.dedup:
        return True
    message = state.messages.peek(item.msg_id) if item.msg_id is not None else None
    return message is not None and message.sent


OWNED = web.AppKey("owned", OwnedStates)
"""The application's door to the states of its processor (absent when it runs none)."""
