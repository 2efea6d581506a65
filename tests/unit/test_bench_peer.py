"""The processor benchmark's Quix Streams peer folds what the processor folds.

The peer keeps each OA as a document in a key-value state and folds one record
at a time through it; its figures compare with zns-gate's only if that gives
the same states. Quix Streams itself is not needed here (only the peer's fold).
"""

from __future__ import annotations

from typing import Any

from service.config import Settings
from service.log.base import Record
from service.processor.folding import Output, PartitionFolder, PolicyBook
from tests import feed
from tests.bench.quix_peer import PeerFold

SETTINGS = Settings(rules={"clock": "stream"})
LOGGED_MS = 1_900_000_000_000  # a log time after every event: the event times set the clock


def test_the_peer_folding_through_documents_ends_with_the_processors_states() -> None:
    raws = feed.stream(seed=3, oas=4, messages=40)[:-2]  # without the dead letters
    oas = sorted({raw.key for raw in raws})
    records = [  # two partitions, each OA in one of them, as the log keys them
        Record(
            "zns.events",
            oas.index(raw.key) % 2,
            n,
            raw.key,
            raw.value,
            raw.log_headers(),
            LOGGED_MS,
        )
        for n, raw in enumerate(raws)
    ]
    folders = {
        p: PartitionFolder("zns.events", p, PolicyBook(SETTINGS), stream_clock=True) for p in (0, 1)
    }
    out = Output()
    for record in records:
        folders[record.partition].handle(record, out)
    expected = {
        oa_id: state.to_document()
        for folder in folders.values()
        for oa_id, state in folder.states.items()
    }

    peer = PeerFold(SETTINGS, "zns.events")
    documents: dict[tuple[int, bytes | None], dict[str, Any]] = {}
    for record in records:
        document = peer(documents.get((record.partition, record.key)), record)
        assert document is not None
        documents[(record.partition, record.key)] = document

    assert len(expected) == 4
    assert {d["oa_id"]: d for d in documents.values()} == expected
    assert peer.decisions == len(out.decisions)
