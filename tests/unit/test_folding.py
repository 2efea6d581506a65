"""`PartitionFolder`: the partition's clock and what it does to the OAs of the partition."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from service.config import Settings
from service.domain import fold as fold_module
from service.domain.fold import Item, advance
from service.domain.records import SendRecord
from service.domain.state import Change, OAState, Policy
from service.log.base import Record
from service.processor import folding
from service.processor.folding import Output, PartitionFolder, PolicyBook
from tests import feed

T = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)  # 10:00 in Vietnam


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Partition:
    """One partition's folder, fed records as the log would give them (offset, log time)."""

    def __init__(self, *, stream_clock: bool, wall: Callable[[], datetime] | None = None) -> None:
        settings = Settings(rules={"clock": "stream" if stream_clock else "wall"})
        self.folder = PartitionFolder(
            "zns.events",
            0,
            PolicyBook(settings),
            stream_clock=stream_clock,
            **({"wall": wall} if wall is not None else {}),
        )
        self.folder.begin(0)
        self.out = Output()
        self.offset = 0

    def append(self, raw: feed.Raw, logged: datetime) -> None:
        record = Record(
            "zns.events", 0, self.offset, raw.key, raw.value, raw.log_headers(), ms(logged)
        )
        self.offset += 1
        self.folder.handle(record, self.out)

    def served(self, oa_id: str):  # type: ignore[no-untyped-def]
        """The OA's state as the API answers from it: a copy brought to the folder's now."""
        state = self.folder.states[oa_id].served_copy()
        advance(state, self.folder.now(), self.folder.policies.for_oa(oa_id))
        return state


def test_a_far_future_time_moves_the_stream_clock_to_its_log_time_plus_five_minutes() -> None:
    p = Partition(stream_clock=True)
    p.append(feed.admission("a1", "t1", 1, 20_000, T, oa_id="900001"), T)
    far = datetime(2100, 1, 1, tzinfo=UTC)
    p.append(feed.send("t1", "tr-far", far, oa_id="900002"), T + timedelta(seconds=1))
    assert p.folder.clock_ms == ms(T + timedelta(seconds=1, minutes=5))
    used_up = p.served("900001")
    assert used_up.remaining_today(p.folder.policies.for_oa("900001").day(p.folder.now())) == 0
    # The clock goes on from the log times, not from the far send.
    later = T + timedelta(minutes=30)
    p.append(feed.receipt("m1", later, oa_id="900001"), later)
    assert p.folder.clock_ms == ms(later)


def test_a_wall_clock_step_forward_and_back_keeps_idempotency_and_dedup_keys() -> None:
    """The API answers a repeated idempotency key from `state.idempotency` of the served
    copy; a step of the wall clock must not make it forget the key, during or after."""
    wall = [T]
    p = Partition(stream_clock=False, wall=lambda: wall[0])
    oa_id = "900001"
    p.append(feed.admission("a1", "t1", 1, 5, T, key="k-1", oa_id=oa_id), T)
    first = p.folder.states[oa_id].idempotency["k-1"]
    p.append(feed.send("t1", "tr-1", T, msg_id="m1", tag=1, oa_id=oa_id), T)

    wall[0] = T + timedelta(days=3)
    assert p.served(oa_id).idempotency.get("k-1") == first
    # A webhook Zalo sent a minute after the admission is folded under the stepped clock.
    p.append(feed.receipt("m1", T + timedelta(minutes=1), oa_id=oa_id), wall[0])
    assert p.served(oa_id).idempotency.get("k-1") == first

    wall[0] = T + timedelta(minutes=2)
    assert p.served(oa_id).idempotency.get("k-1") == first
    assert p.folder.states[oa_id].idempotency.get("k-1") == first
    consumed = p.folder.states[oa_id].consumed.total(0, 10**7)
    p.append(feed.send("t1", "tr-1", T, msg_id="m1", tag=1, oa_id=oa_id), wall[0])  # again
    assert p.folder.states[oa_id].consumed.total(0, 10**7) == consumed


def test_a_record_the_fold_or_its_decisions_fail_on_is_a_dead_letter_and_the_next_folds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever fails on one record (a bug), the partition goes on with the next."""
    p = Partition(stream_clock=True)
    oa_id = "900001"
    real_fold = fold_module.fold

    def failing(state: OAState, item: Item, now: datetime, policy: Policy) -> list[Change]:
        if isinstance(item.body, SendRecord) and item.body.send.tracking_id == "tr-bad-fold":
            raise RuntimeError("a bug in the fold")
        changes = real_fold(state, item, now, policy)
        if isinstance(item.body, SendRecord) and item.body.send.tracking_id == "tr-bad-change":
            changes.append(Change("quality", "odd", None, object(), now))  # not JSON
        return changes

    monkeypatch.setattr(folding, "fold", failing)
    p.append(feed.send("t1", "tr-bad-fold", T, msg_id="m1", tag=2, oa_id=oa_id), T)
    p.append(feed.send("t1", "tr-bad-change", T, msg_id="m2", tag=2, oa_id=oa_id), T)
    p.append(feed.send("t1", "tr-good", T, msg_id="m3", tag=2, oa_id=oa_id), T)
    reasons = [orjson.loads(value)["reason"] for _, value in p.out.dead_letters]
    assert reasons == ["apply_failed", "apply_failed"]
    assert p.folder.states[oa_id].position == 2
    assert p.folder.states[oa_id].sent_ok.total(0, 10**7) == 2
