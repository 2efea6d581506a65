"""Snapshots in `zns.oa-state`: what a restore reads back, whatever the OA ids."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import orjson
import pytest

from service.domain.index import Index
from service.domain.records import recipient_hash
from service.domain.rules import ZBS_2026
from service.domain.state import SCHEMA_VERSION, OAState, index_key, store_entry
from service.log.base import Record
from service.processor.snapshots import Restorer, encode_mark, encode_state, mark_key
from tests import feed
from tests.unit.test_fold import D, Oa, plus, vn

TOPIC = "zns.events"
OTHER = recipient_hash("0912345678")


def records(pairs: list[tuple[bytes, bytes]]) -> list[Record]:
    return [Record("zns.oa-state", 0, i, key, value) for i, (key, value) in enumerate(pairs)]


@pytest.mark.parametrize("oa_id", ["__partition__", "__partition__0", "__partition__.1", "388613"])
def test_an_oa_is_restored_whatever_its_id_and_the_mark_too(oa_id: str) -> None:
    state = OAState.new(oa_id, ZBS_2026)
    state.position = 7
    state.daily_quota = 123
    state.idempotency.expire_before(40, keep_from=9)
    pairs = encode_state(state.core_json(), oa_id, state.position, TOPIC, 0, 5)
    pairs.append((mark_key(0), encode_mark(TOPIC, 0, 7, 1234, [], None, 5, [])))
    restorer = Restorer(TOPIC, 0)
    restorer.add(records(pairs))
    restored = restorer.result()
    assert restored.rebuild == set()
    again = restored.states[oa_id]
    assert (again.position, again.daily_quota) == (7, 123)
    assert (again.idempotency.limit, again.idempotency.keep_from) == (40, 9)
    assert restored.mark is not None
    assert (restored.mark.position, restored.mark.clock_ms) == (7, 1234)


def test_an_unreadable_chunk_of_an_oa_named_like_a_mark_rebuilds_that_oa() -> None:
    restorer = Restorer(TOPIC, 0)
    restorer.add(records([(b"__partition__/state/0", b"{not json")]))
    assert restorer.result().rebuild == {"__partition__"}


def test_a_state_document_written_before_the_indexes_restores_to_an_equal_state() -> None:
    """`state_document_v1.json` is what `to_json` wrote when the indexes were plain dicts,
    for the records below: it restores, without a schema change, to the state those
    records fold to now, and is written back as it was, with only the fields added since
    (at their defaults)."""
    oa = Oa()
    oa.apply(feed.admission("a1", "t1", 2, 5, vn(D, 9), key="k-1"))
    oa.apply(feed.send("t1", "tr-1", vn(D, 9, 5), msg_id="m1", tag=2))
    oa.apply(feed.receipt("m1", vn(D, 9, 6)))
    oa.apply(feed.receipt("m2", vn(D, 10)))
    refused = recipient_hash(feed.PHONE)
    oa.apply(feed.send("t1", "tr-2", vn(D, 11), msg_id="m3", tag=1, error=-141, recipient=refused))
    oa.apply(feed.send("t1", "tr-3", vn(D, 12), msg_id="m4", tag=1, recipient=OTHER))
    oa.at(vn(plus(1), 8))
    written = (Path(__file__).parent / "state_document_v1.json").read_bytes()
    restored = OAState.from_document(orjson.loads(written))
    # Added since the file was written: the memory of the warnings given. These records
    # project a step down (the warning was given); the file cannot know it.
    assert oa.state.warned_tier_down
    assert not restored.warned_tier_down
    restored.warned_tier_down = True
    assert restored == oa.state
    expected = orjson.loads(written)
    expected.setdefault("warned_penalty_day", None)
    expected.setdefault("warned_tier_down", True)
    for template in expected["templates"].values():
        template.setdefault("zalo_tag", False)  # added since the file was written
        template.setdefault("params", None)  # added since the file was written
    for message in expected["messages"].values():
        message.setdefault("pending", None)  # added since the file was written
    assert restored.to_document() == expected
    assert oa.state.to_document() == expected
    assert isinstance(restored.messages, Index)
    assert restored.recipients.peek(refused) == oa.state.recipients.peek(refused)
    assert sorted(restored.dedup) == sorted(oa.state.dedup)
    assert restored.idempotency.peek("k-1") == oa.state.idempotency.peek("k-1")


def test_a_checkpoint_takes_the_index_entries_changed_since_the_last_one_and_only_those() -> None:
    """Keys touched since the last checkpoint are what a checkpoint writes, each with its
    value, or None when it is gone; the next checkpoint has only what changed after."""
    oa = Oa()
    oa.apply(feed.admission("a1", "t1", 2, 5, vn(D, 9), key="k-1"))
    oa.apply(feed.send("t1", "tr-1", vn(D, 9, 5), msg_id="m1", tag=2, recipient=OTHER))
    indexes = [getattr(oa.state, name) for name in OAState.SHARED_INDEXES]
    assert all(index.touched for index in indexes)
    changes = oa.state.index_changes(48 * 3_600_000)
    assert index_key(oa.state.oa_id, "messages", "m1") in changes
    assert index_key(oa.state.oa_id, "idempotency", "k-1") in changes
    assert all(value is not None for value, _ in changes.values())
    assert [index.touched for index in indexes] == [set()] * 4
    assert oa.state.index_changes(48 * 3_600_000) == {}
    del oa.state.messages["m1"]
    assert oa.state.index_changes(48 * 3_600_000) == {
        index_key(oa.state.oa_id, "messages", "m1"): (None, 0)
    }


def test_an_entry_written_straight_into_the_store_is_what_a_checkpoint_writes() -> None:
    """`store_entry` gives a value and expiry day equal to those a checkpoint takes for
    the same entry, so that entries written without a fold (a bulk load) read back and
    expire as the fold's own."""
    oa = Oa()
    oa.apply(feed.admission("a1", "t1", 2, 5, vn(D, 9), key="k-1"))
    oa.apply(feed.send("t1", "tr-1", vn(D, 9, 5), msg_id="m1", tag=2, recipient=OTHER))
    ttl_ms = 48 * 3_600_000
    state = oa.state
    entries = {
        (name, key): state_index.peek(key)
        for name in OAState.SHARED_INDEXES
        for state_index in [getattr(state, name)]
        for key in state_index.touched
    }
    changes = state.index_changes(ttl_ms)
    assert {"messages", "recipients", "dedup", "idempotency"} == {n for n, _ in entries}
    for (name, key), value in entries.items():
        assert store_entry(name, value, ttl_ms) == changes[index_key(state.oa_id, name, key)]


@pytest.mark.parametrize(
    "document",
    [{"oa_id": "388613", "rules": "zbs-2026", "templates": [1, 2]}, {"oa_id": "388613"}, [1]],
)
def test_a_snapshot_whose_document_does_not_read_back_rebuilds_its_oa(document: object) -> None:
    """Whatever is wrong with a snapshot's document, the restore goes on and the OA is
    folded again from the log; it never stops the partition's restore."""
    chunk = {
        "schema_version": SCHEMA_VERSION,
        "oa_id": "388613",
        "topic": TOPIC,
        "partition": 0,
        "position": 3,
        "shard": 0,
        "shards": 1,
        "encoding": "zlib+base64",
        "data": base64.b64encode(zlib.compress(orjson.dumps(document))).decode(),
    }
    restorer = Restorer(TOPIC, 0)
    restorer.add(records([(b"388613/state/0", orjson.dumps(chunk))]))
    restored = restorer.result()
    assert restored.rebuild == {"388613"}
    assert restored.states == {}
