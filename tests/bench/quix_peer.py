"""The processor's fold written with Quix Streams' State API: a peer to compare zns-gate with.

The same records of `zns.events` are folded by the same domain code
(`PartitionFolder.handle`: read_item, the partition's stream clock, fold) as
in zns-gate's processor, but each OA's state lives in a Quix Streams
`StreamingDataFrame.apply(..., stateful=True)` state, kept per key in RocksDB
with its changelog topic, the way a Quix application keeps state: every record
reads the OA's document from the store and writes it back. Not a test; used by
`tests.bench.processor`.

Quix Streams is not a dependency of zns-gate (it pins pydantic and
pydantic-settings below the versions zns-gate runs with), so it is imported
only when the peer runs: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from typing import Any

from service.config import Settings
from service.domain.state import OAState
from service.log.base import Record
from service.processor.folding import Output, PartitionFolder, PolicyBook

STATE_KEY = "oa"
"""The name of the OA's document in its key's state."""

INSTALL_HINT = "pip install -e '.[bench]'"


class PeerFold:
    """Folds one record into an OA's state document: what the stateful `apply` runs.

    A `PartitionFolder` per partition keeps the partition's stream clock (the newest
    event time the partition has seen, across its OAs); the OA's state is taken from
    the document for the record and given back as a document after it.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.policies = PolicyBook(settings)
        self.stream_clock = settings.rules.clock == "stream"
        self.topic = topic
        self.folders: dict[int, PartitionFolder] = {}
        self.decisions = 0

    def __call__(self, document: dict[str, Any] | None, record: Record) -> dict[str, Any] | None:
        """The OA's document after `record` (None when the record names no OA's state:
        it went to the dead letters)."""
        folder = self.folders.get(record.partition)
        if folder is None:
            folder = self.folders[record.partition] = PartitionFolder(
                self.topic, record.partition, self.policies, stream_clock=self.stream_clock
            )
        folder.states.clear()
        if document is not None:
            state = OAState.from_document(document)
            folder.states[state.oa_id] = state
        out = Output()
        folder.handle(record, out)
        self.decisions += len(out.decisions)
        folded = next(iter(folder.states.values()), None)
        return None if folded is None else folded.to_document()


def measure_quix(bootstrap: str, topic: str, count: int, settings: Settings) -> float:
    """Records per second a Quix Streams application folds, from its first record to the
    `count`th (as the processor is timed: without starting and closing)."""
    # Imported here: Quix Streams is optional (see the note above).
    from quixstreams import Application
    from quixstreams.context import message_context

    peer = PeerFold(settings, topic)
    seen = 0
    started = ended = 0.0

    def fold_one(value: bytes, key: bytes, timestamp: int, headers: Any, state: Any) -> int:
        # `state` is Quix's State of the record's key.
        nonlocal seen, started, ended
        if seen == 0:
            started = time.perf_counter()
        context = message_context()
        record = Record(
            topic,
            context.partition,
            context.offset,
            key,
            value,
            tuple(headers or ()),
            timestamp,
        )
        document = peer(state.get(STATE_KEY), record)
        if document is not None:
            state.set(STATE_KEY, document)
        seen += 1
        if seen == count:
            ended = time.perf_counter()
        return seen

    with tempfile.TemporaryDirectory(prefix="quix-peer-") as state_dir:
        app = Application(
            broker_address=bootstrap,
            consumer_group=f"quix-peer-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel="WARNING",
        )
        source = app.topic(topic, key_deserializer="bytes", value_deserializer="bytes")
        app.dataframe(source).apply(fold_one, stateful=True, metadata=True)
        app.run(count=count, collect=False)
    return count / (ended - started)
