"""Snapshots in `zns.oa-state`: what a restore reads back, whatever the OA ids."""

from __future__ import annotations

import pytest

from service.domain.rules import ZBS_2026
from service.domain.state import OAState
from service.log.base import Record
from service.processor.snapshots import Restorer, encode_mark, encode_state, mark_key

TOPIC = "zns.events"


def records(pairs: list[tuple[bytes, bytes]]) -> list[Record]:
    return [Record("zns.oa-state", 0, i, key, value) for i, (key, value) in enumerate(pairs)]


@pytest.mark.parametrize("oa_id", ["__partition__", "__partition__0", "__partition__.1", "388613"])
def test_an_oa_is_restored_whatever_its_id_and_the_mark_too(oa_id: str) -> None:
    state = OAState.new(oa_id, ZBS_2026)
    state.position = 7
    state.idempotency["key-1"] = [1, "0" * 64, {"granted": 1}]
    pairs = encode_state(state, TOPIC, 0)
    pairs.append((mark_key(0), encode_mark(TOPIC, 0, 7, 1234, [])))
    restorer = Restorer(TOPIC, 0)
    restorer.add(records(pairs))
    restored = restorer.result()
    assert restored.rebuild == set()
    assert restored.states[oa_id].idempotency == state.idempotency
    assert restored.mark is not None
    assert (restored.mark.position, restored.mark.clock_ms) == (7, 1234)


def test_an_unreadable_chunk_of_an_oa_named_like_a_mark_rebuilds_that_oa() -> None:
    restorer = Restorer(TOPIC, 0)
    restorer.add(records([(b"__partition__/state/0", b"{not json")]))
    assert restorer.result().rebuild == {"__partition__"}
