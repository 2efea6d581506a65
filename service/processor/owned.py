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
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from service.domain.admission import Admission, AdmissionRequest, decide, grantable
from service.domain.events import as_datetime
from service.domain.fold import Item, advance, fold_ahead
from service.domain.fold.grants import ADMITTED
from service.domain.governor import governor
from service.domain.messages import Checked, Outgoing, check, planned, tracking_id_for
from service.domain.records import (
    AdmissionAnswer,
    AdmissionRecord,
    PlannedMessage,
    ProxyRequest,
    SendOutcome,
    SendRecord,
)
from service.domain.state import (
    ENTRY_ANSWER,
    ENTRY_HASH,
    ENTRY_MESSAGES,
    ENTRY_OUTCOMES,
    OAState,
    Policy,
)
from service.log.base import Headers, LogError, Position, Record
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
    messages: tuple[Outgoing, ...] | None = None
    """A send through zns-gate (`POST /messages`): its messages, checked first; the
    recipients are those that pass, and `recipients` is not used."""


@dataclass(frozen=True)
class Messages:
    """The messages of a send through zns-gate, as its admission left them."""

    planned: list[PlannedMessage]
    checked: list[Checked] | None
    """The checks of a new decision (what each admitted message is sent to); None for
    a repeat."""
    results: dict[str, dict[str, Any]]
    """A repeat's outcomes recorded so far, by the message's place in the request."""


@dataclass(frozen=True)
class Admitted:
    """The admission's answer (the first one again for a repeat), as of `now`."""

    answer: dict[str, Any]
    now: datetime
    policy: Policy
    messages: Messages | None = None
    """For a send through zns-gate."""


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
    last_offset: int = field(default=-1, compare=False)
    """The offset of the last record appended (-1: none)."""


@dataclass(frozen=True)
class Listing:
    """The OAs of the partitions this instance serves, each shaped by the caller."""

    partitions: list[int]
    oas: list[Any]


BUSY = Unserved("busy", "the OA's earlier requests were still being decided and written; ask again")
"""A request that waited its whole deadline for the OA's earlier ones: the log or this
instance is behind, and queueing more would only make every answer later."""


@dataclass(frozen=True)
class _Held:
    folder: PartitionFolder
    staleness_ms: int | None


@dataclass(frozen=True)
class _Placed:
    """An admission decided and placed in the log, not applied to the owner's state yet."""

    item: Item
    value: bytes
    landing: asyncio.Future[Position]
    key: str
    """Its idempotency key."""
    answer: dict[str, Any]
    now: datetime
    policy: Policy
    messages: Messages | None


_Send = tuple[str, str | None, "asyncio.Future[Position]"]
"""A send outcome placed in the log: its tracking key, its message key if it sent one,
and its record's durable write."""

AHEAD_AT_MOST = 8
"""Admissions of one OA under way at most (from the decision until the record is durable):
each decision folds the ones placed before it into its copy of the state, so a log that
falls behind slows the decisions down instead of making each one cost more."""

PREFETCH_FROM = 100
"""An admission naming more recipients than this reads them off the loop first (a point
read costs a few microseconds; thousands of them would hold the loop)."""

PREFETCH_MESSAGES = 16
"""A send of at least this many messages reads their tracking ids off the loop first;
for fewer, handing the reads to a thread costs more than making them."""


class OwnedStates:
    """The processor's states, read and decided on for the API."""

    def __init__(self, processor: Processor) -> None:
        self._processor = processor
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._semaphores: weakref.WeakValueDictionary[str, asyncio.Semaphore] = (
            weakref.WeakValueDictionary()
        )
        self._unfolded: weakref.WeakKeyDictionary[PartitionFolder, dict[str, int]] = (
            weakref.WeakKeyDictionary()
        )
        """Per partition: the dedup keys of sends appended here that the processor has not
        folded yet -> their offset. A repeat that arrives before the fold is a duplicate too."""
        self._writing: weakref.WeakKeyDictionary[
            PartitionFolder, dict[str, asyncio.Future[Position]]
        ] = weakref.WeakKeyDictionary()
        """Per partition: the dedup keys of sends placed in the log, not durable yet."""
        self._placed: dict[str, list[_Placed]] = {}
        """Per OA: the admissions placed in the log, in order, not applied yet."""

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
        remains; but a decision does not wait for the durable write of the one before:
        each is placed in the log in the order decided, and the next decides on a copy
        of the state with the admissions placed but not durable yet folded in. The
        answer comes once the record is durable. The same idempotency key with the same
        request gets the first answer again (also after a restart: the key is kept in
        the OA's state); a repeat of one still being written waits for it."""
        partition = self._processor.log.partition_for(oa_id.encode())
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            # A place among the OA's admissions being written, then the OA's lock: each
            # waits its turn, and one whose turn does not come by the deadline is told
            # to come back instead of making every later answer later.
            slot = await _within(self._slots(oa_id), deadline)
            if slot is None:
                return BUSY
            try:
                # The partition's guard lasts until the record is durable: a revocation
                # waits for it, so that the next owner reads it.
                async with self._processor.admitting(partition):
                    lock = await _within(self._lock(oa_id), deadline)
                    if lock is None:
                        return BUSY
                    try:
                        step = await self._decide(oa_id, ask, _left(deadline))
                    finally:
                        lock.release()
                    if isinstance(step, _Placed):
                        try:
                            await step.landing
                        finally:
                            async with self._lock(oa_id):
                                await self._settle(oa_id)
                        return Admitted(step.answer, step.now, step.policy, step.messages)
                    if not isinstance(step, asyncio.Future):
                        return step
            finally:
                slot.release()
            # The same request placed before is being written: once it is, decide again
            # (this one then finds the first answer, or nothing if that write failed).
            done, _ = await asyncio.wait([step], timeout=_left(deadline))
            if not done:
                return BUSY

    async def _decide(
        self, oa_id: str, ask: Ask, timeout_s: float
    ) -> _Placed | Admitted | Refused | Unserved | asyncio.Future[Position]:
        """Under the OA's lock: the decision on `ask`, placed in the log (or the first
        answer again, or why it cannot be decided, or the durable write of the same
        request placed before, to wait for)."""
        held = self._where(oa_id, admit=True)
        if isinstance(held, Owner):
            return Unserved("not_owner", "the OA's partition moved; ask again")
        if isinstance(held, Unserved):
            return held
        await self._settle(oa_id)
        placed = self._placed.get(oa_id, [])
        for earlier_one in placed:
            if earlier_one.key == ask.idempotency_key:
                return earlier_one.landing
        if len(ask.recipients) > PREFETCH_FROM:
            await held.folder.prefetch(oa_id, "recipients", ask.recipients)
        view = self._view(oa_id, held, ahead=placed)
        state, now, policy = view.state, view.now, view.policy
        earlier = state.idempotency.peek(ask.idempotency_key)
        if earlier is not None:
            if earlier[ENTRY_HASH] != ask.request_hash:
                return Refused(
                    409, "idempotency_conflict", "this idempotency_key was used with another body"
                )
            answer = earlier[ENTRY_ANSWER]
            return Admitted(answer, now, policy, _repeated_messages(earlier))
        template = state.templates.get(ask.template_id)
        tag = ask.tag or (template.tag if template is not None else None)
        if tag is None:
            return Refused(422, "tag_required", "the template's tag is not known: give `tag`")
        recipients, checked = ask.recipients, None
        if ask.messages is not None:
            checked = await self._check(oa_id, ask, held, state)
            recipients = tuple(c.recipient for c in checked if c.recipient is not None)
        admission_id = uuid.uuid4().hex
        if checked is not None and not recipients:
            # No message passed the checks: an admission of nothing, written all the same,
            # so that a repeat gets this answer even once the template's params change.
            limits = governor(state, now, policy)
            left = grantable(state, tag, now, policy, limits)
            empty = AdmissionAnswer(admission_id=admission_id, granted=0, remaining=left)
            decided = Admission(empty)
        else:
            units = len(recipients) or ask.count or 1
            wanted = AdmissionRequest(ask.template_id, tag, recipients, units)
            decided = decide(state, wanted, now, policy, admission_id)
        messages = None
        if checked is not None:
            messages = Messages(planned(checked, decided.each), checked, {})
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
            messages=None if messages is None else messages.planned,
        )
        value = record.model_dump_json().encode()
        log = self._processor.log
        landing = log.place(
            log.topics.events, oa_id.encode(), value, _headers("admission"), timeout_s
        )
        _count_units(decided.answer)
        item = Item("admission", oa_id, record, as_datetime(record.at))
        answer = decided.answer.model_dump(mode="json")
        mine = _Placed(item, value, landing, ask.idempotency_key, answer, now, policy, messages)
        self._placed.setdefault(oa_id, []).append(mine)
        return mine

    async def _check(self, oa_id: str, ask: Ask, held: _Held, state: OAState) -> list[Checked]:
        """Under the OA's lock: the checks of a send's messages. A tracking id a send
        recorded already, or one being written, is refused."""
        assert ask.messages is not None
        if len(ask.messages) >= PREFETCH_MESSAGES:
            # The checks look each tracking id up: many are read off the loop, at once.
            tracking = [
                m.tracking_id or tracking_id_for(ask.idempotency_key, i)
                for i, m in enumerate(ask.messages)
            ]
            keys = [prefix + t for t in tracking for prefix in ("send:", ADMITTED)]
            await held.folder.prefetch(oa_id, "dedup", keys)
        unfolded = self._unfolded_sends(held.folder)
        writing = self._writing.get(held.folder, {})

        def recorded(tracking_id: str) -> bool:
            """A send with this tracking id is recorded or being written, or a message
            with it was admitted (the state here has the admissions placed folded in)."""
            key = f"{oa_id}/send:{tracking_id}"
            return (
                key in unfolded
                or key in writing
                or "send:" + tracking_id in state.dedup
                or ADMITTED + tracking_id in state.dedup
            )

        template = state.templates.get(ask.template_id)
        params = template.params if template is not None else None
        return check(ask.messages, ask.idempotency_key, params, recorded)

    async def _settle(self, oa_id: str) -> None:
        """Under the OA's lock: apply to the owner's state, in the order placed, the
        admissions whose records are durable now, and forget the failed ones (a record
        given up on may still land: the processor folds it then). The grant counts from
        its durable write on, not when the processor folds the record: it recognises the
        admission by its id then and does not count it again."""
        placed = self._placed.get(oa_id)
        while placed and placed[0].landing.done():
            first = placed[0]
            landing = first.landing
            if not landing.cancelled() and landing.exception() is None:
                record = _as_record(landing.result(), oa_id, first.value, "admission")
                await self._processor.apply_ahead(first.item, record)
            placed.pop(0)
        if not placed:
            self._placed.pop(oa_id, None)

    async def record_sends(
        self,
        oa_id: str,
        outcomes: Iterable[SendOutcome],
        *,
        timeout_s: float,
        request: ProxyRequest | None = None,
        new: bool = False,
    ) -> Recorded | Unserved:
        """Append each send outcome not recorded yet.

        A duplicate (by tracking id, or by message for a successful send) is one in the
        OA's dedup index, among the sends appended here but not folded yet, or earlier in
        `outcomes`; it is not appended, the fold would drop it anyway. One call of the
        OA decides at a time, so that concurrent repeats find each other; the records are
        placed in the log under the lock and waited for outside it, and a call naming a
        send still being written waits for it first. `request`: the one outcome is a
        message of that `POST /messages` request. `new`: the caller knows the outcomes
        are not in the OA's dedup index (the send proxy checked their tracking ids when
        it admitted them, and Zalo's message ids are fresh), so it is not read."""
        outcomes = list(outcomes)
        partition = self._processor.log.partition_for(oa_id.encode())
        deadline = asyncio.get_running_loop().time() + timeout_s
        found = self._where(oa_id, admit=True)
        if isinstance(found, _Held) and len(outcomes) > 1 and not new:
            await _prefetch_sends(found.folder, oa_id, outcomes)
        while True:
            async with self._processor.admitting(partition):
                lock = await _within(self._lock("sends:" + oa_id), deadline)
                if lock is None:
                    return BUSY
                try:
                    held = self._where(oa_id, admit=True)
                    if isinstance(held, Owner):
                        return Unserved("not_owner", "the OA's partition moved; ask again")
                    if isinstance(held, Unserved):
                        return held
                    writing = self._writing.setdefault(held.folder, {})
                    waits = _being_written(oa_id, outcomes, writing)
                    placed: list[_Send] = []
                    duplicates = 0
                    if not waits:
                        placed, duplicates = self._place_sends(
                            oa_id, outcomes, held, _left(deadline), request, new
                        )
                finally:
                    lock.release()
                if waits:
                    done, _ = await asyncio.wait(waits, timeout=_left(deadline))
                    if len(done) < len(waits):
                        return BUSY
                    continue
                return await self._sends_landed(held.folder, placed, duplicates)

    def _place_sends(
        self,
        oa_id: str,
        outcomes: list[SendOutcome],
        held: _Held,
        timeout_s: float,
        request: ProxyRequest | None,
        new: bool,
    ) -> tuple[list[_Send], int]:
        """Under the OA's sends lock: place the new outcomes in the log, in order."""
        unfolded = self._unfolded_sends(held.folder)
        writing = self._writing[held.folder]
        state = held.folder.state_of(oa_id)
        seen: set[str] = set()  # this call's own keys
        placed: list[_Send] = []
        duplicates = 0
        log = self._processor.log
        for outcome in outcomes:
            tracking, message = _send_keys(oa_id, outcome)
            if (
                tracking in unfolded
                or tracking in seen
                or (message is not None and (message in unfolded or message in seen))
                or (not new and _recorded(state, outcome))
            ):
                duplicates += 1
                continue
            sent = message if outcome.error == 0 else None  # a failed send sends no message
            seen.update(key for key in (tracking, sent) if key is not None)
            record = SendRecord(oa_id=oa_id, send=outcome, request=request)
            value = record.model_dump_json(exclude_unset=True)
            try:
                landing = log.place(
                    log.topics.events, oa_id.encode(), value.encode(), _headers("send"), timeout_s
                )
            except LogError as exc:  # the ones placed already are written and waited for
                landing = asyncio.get_running_loop().create_future()
                landing.set_exception(exc)
            placed.append((tracking, sent, landing))
            for key in (tracking, sent):
                if key is not None:
                    writing[key] = landing
        return placed, duplicates

    async def _sends_landed(
        self,
        folder: PartitionFolder,
        placed: list[_Send],
        duplicates: int,
    ) -> Recorded:
        """The sends placed, once each is durable or failed: durable ones count among the
        unfolded sends (a repeat is a duplicate from then on), failed ones may be sent
        again."""
        results = await asyncio.gather(
            *(landing for _, _, landing in placed), return_exceptions=True
        )
        unfolded = self._unfolded_sends(folder)
        writing = self._writing.get(folder, {})
        failed: BaseException | None = None
        accepted, last_offset = 0, -1
        for (tracking, sent, _), result in zip(placed, results, strict=True):
            for key in (tracking, sent):
                if key is not None:
                    writing.pop(key, None)
            if isinstance(result, BaseException):
                failed = failed or result
                continue
            unfolded[tracking] = result.offset
            if sent is not None:
                unfolded[sent] = result.offset
            accepted += 1
            last_offset = max(last_offset, result.offset)
        if failed is not None:
            raise failed  # what did land is known now: a retry finds it a duplicate
        return Recorded(accepted, duplicates, last_offset)

    async def append_send(
        self, oa_id: str, outcome: SendOutcome, request: ProxyRequest, *, timeout_s: float
    ) -> int:
        """Append one outcome of a send zns-gate made, whichever instance owns the OA now
        (its partition moved while the send was made: the new owner folds the record);
        its offset."""
        log = self._processor.log
        record = SendRecord(oa_id=oa_id, send=outcome, request=request)
        position = await log.append(
            log.topics.events,
            oa_id.encode(),
            record.model_dump_json(exclude_unset=True).encode(),
            _headers("send"),
            timeout_s=timeout_s,
        )
        return position.offset

    def decided(self, oa_id: str, idempotency_key: str) -> bool:
        """Whether an admission under `idempotency_key` is placed in the log or in the
        OA's state here: a request under it is a repeat."""
        if any(p.key == idempotency_key for p in self._placed.get(oa_id, ())):
            return True
        found = self._where(oa_id, admit=False)
        if not isinstance(found, _Held):
            return False
        state = found.folder.state_of(oa_id)
        return state is not None and state.idempotency.peek(idempotency_key) is not None

    def folded(self, oa_id: str, offset: int) -> bool:
        """Whether the processor here has folded the OA's partition past `offset` (or no
        longer holds it)."""
        partition = self._processor.log.partition_for(oa_id.encode())
        folder = self._processor.folders.get(partition)
        return folder is None or folder.position >= offset

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

    def _view(self, oa_id: str, held: _Held, ahead: list[_Placed] | None = None) -> View:
        """A copy of the OA's state brought to now, with the admissions `ahead` (placed,
        not applied yet) folded in."""
        policy = self._processor.policies.for_oa(oa_id)
        live = held.folder.state_of(oa_id)
        if live is not None:
            state = live.served_copy(layered=bool(ahead))
        else:
            state = OAState.new(oa_id, policy.rules)
        now = held.folder.now()
        for placed in ahead or ():
            fold_ahead(state, placed.item, now, policy)
        advance(state, now, policy)
        return View(state, now, policy, held.staleness_ms)

    def _slots(self, oa_id: str) -> asyncio.Semaphore:
        """The places among an OA's admissions being written, held weakly as the locks."""
        slots = self._semaphores.get(oa_id)
        if slots is None:
            slots = self._semaphores[oa_id] = asyncio.Semaphore(AHEAD_AT_MOST)
        return slots

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


Held = TypeVar("Held", asyncio.Lock, asyncio.Semaphore)


async def _within(held: Held, deadline: float) -> Held | None:
    """`held` acquired, or None if it could not be by `deadline` (loop time)."""
    try:
        async with asyncio.timeout_at(deadline):
            await held.acquire()
    except TimeoutError:
        return None
    return held


def _left(deadline: float) -> float:
    """The time left until `deadline` (loop time), a little at least: an append given no
    time at all would fail even when the log is quick."""
    return max(0.05, deadline - asyncio.get_running_loop().time())


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


def _repeated_messages(entry: list[Any]) -> Messages | None:
    """The messages of a send through zns-gate kept with its idempotency entry."""
    if len(entry) <= ENTRY_OUTCOMES:
        return None
    planned = [PlannedMessage.model_validate(m) for m in entry[ENTRY_MESSAGES]]
    return Messages(planned, None, dict(entry[ENTRY_OUTCOMES]))


def _send_keys(oa_id: str, item: SendOutcome) -> tuple[str, str | None]:
    """The keys of a send among the unfolded ones: its tracking id, and its message."""
    message = None if item.msg_id is None else f"{oa_id}/msg:{item.msg_id}"
    return f"{oa_id}/send:{item.tracking_id}", message


async def _prefetch_sends(
    folder: PartitionFolder, oa_id: str, outcomes: list[SendOutcome]
) -> None:
    """Read off the loop what checking these sends and folding them will read: their
    dedup keys and messages (most are new: absent), and their recipients."""
    await folder.prefetch(oa_id, "dedup", ["send:" + o.tracking_id for o in outcomes])
    await folder.prefetch(oa_id, "messages", [o.msg_id for o in outcomes if o.msg_id])
    await folder.prefetch(oa_id, "recipients", [o.recipient for o in outcomes if o.recipient])


def _being_written(
    oa_id: str, outcomes: list[SendOutcome], writing: dict[str, asyncio.Future[Position]]
) -> set[asyncio.Future[Position]]:
    """The durable writes under way of sends among `outcomes` (by either key). One that
    has ended is forgotten here: its caller may have been cancelled before it could."""
    waits = set()  # a send's two keys name the same write
    for outcome in outcomes:
        for key in _send_keys(oa_id, outcome):
            landing = None if key is None else writing.get(key)
            if key is None or landing is None:
                continue
            if landing.done():
                del writing[key]
            else:
                waits.add(landing)
    return waits


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
