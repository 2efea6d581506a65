"""Snapshots of OA state in `zns.oa-state`: chunked, compressed, each with its log position.

An OA's state document is compressed (zlib) and cut into chunks, so that no
record exceeds 512 KiB. Each chunk is one record keyed `oa_id/state/shard`,
in the `zns.oa-state` partition with the number of the OA's `zns.events`
partition, and carries the schema version, the events topic and partition and
the position (the last offset folded in). The topic is compacted (Kafka's
broker; `EventLog.compact` for the embedded log), so the newest chunk per key
stays.

A crash while a snapshot is written can leave some of its chunks newer than
others. A restore therefore takes, per OA, the newest position for which every
chunk is present; an OA with no complete version left is rebuilt from the log
(`Restored.rebuild`).

An OA's indexes are not in its snapshot but in the partition's index store
(`service.store`). A checkpoint writes the index changes first, then the
snapshots, each naming the store's highest write id it goes with
(`index_upto`), then the mark, which names the same id and the write ids the
store must not trust (`index_void`: writes of checkpoints that never
completed). A snapshot is trusted only with the store as the mark leaves it: one
newer than the mark's store, or from a write the mark voids, is rebuilt from the log.

Beside the OAs, each partition has a mark (key `__partition__/<n>`): the
position of the checkpoint and the partition's stream clock, with the clocks
of the checkpoints before it. A key is a mark only when it is exactly that:
`__partition__` is also a valid OA id, whose chunks are `__partition__/state/<shard>`.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from service.domain.state import SCHEMA_VERSION, OAState
from service.log.base import Record
from service.store.versions import is_void

CHUNK_BYTES = 384 * 1024
"""Compressed bytes per chunk; base64 and the envelope keep a record under 512 KiB."""

MARK_PREFIX = "__partition__/"
_MARK_KEY = re.compile(rb"__partition__/[0-9]+")
_STATE_KEY_END = re.compile(rb"/state/[0-9]+\Z")


class SnapshotChunk(BaseModel):
    """A value of `zns.oa-state` keyed `oa_id/state/shard`: one piece of an OA's state."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schema_version: int
    """The version of the state document inside."""
    oa_id: str
    topic: str
    """The events topic the position is in."""
    partition: int
    position: int
    """The offset of the last record of the partition folded into this state."""
    shard: int = Field(ge=0)
    shards: int = Field(ge=1)
    encoding: Literal["zlib+base64"] = "zlib+base64"
    data: str
    """This shard's piece of the zlib-compressed JSON state document, in base64."""
    index_upto: int = -1
    """The index store's highest write id when this snapshot was taken."""


class PartitionMark(BaseModel):
    """A value of `zns.oa-state` keyed `__partition__/<n>`: a checkpoint of one partition."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schema_version: int
    topic: str
    partition: int
    position: int
    """The offset of the last record of the partition the checkpoint includes (-1: none)."""
    clock_ms: int | None
    """The partition's stream clock: the newest event time seen in it."""
    clocks: list[tuple[int, int | None]] = Field(default_factory=list)
    """(position, clock) of the last checkpoints, this one included: where folding resumes
    from an earlier checkpoint's position, the clock starts from what it was there."""
    written_ms: int | None = None
    """Wall time the checkpoint was written: a restored copy holds every record older."""
    index_upto: int = -1
    """The index store's highest write id this checkpoint includes."""
    index_void: list[tuple[int, int]] = Field(default_factory=list)
    """Write ids of the index store from checkpoints that never completed, `(a, b]`."""

    def clock_at(self, position: int) -> int | None:
        """The stream clock after the record at `position`, as well as the marks tell."""
        if position == self.position:
            return self.clock_ms
        earlier = [clock for at, clock in self.clocks if at <= position]
        return earlier[-1] if earlier else None


CLOCK_HISTORY = 32
"""Checkpoints whose clocks a mark remembers."""


def state_key(oa_id: str, shard: int) -> bytes:
    return f"{oa_id}/state/{shard}".encode()


def mark_key(partition: int) -> bytes:
    return f"{MARK_PREFIX}{partition}".encode()


def encode_state(
    document: bytes, oa_id: str, position: int, topic: str, partition: int, index_upto: int
) -> list[tuple[bytes, bytes]]:
    """The (key, value) records of one snapshot: the OA's core document (`core_json`)."""
    packed = zlib.compress(document, 1)
    pieces = [packed[i : i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)] or [b""]
    return [
        (
            state_key(oa_id, shard),
            orjson.dumps(
                {
                    "schema_version": SCHEMA_VERSION,
                    "oa_id": oa_id,
                    "topic": topic,
                    "partition": partition,
                    "position": position,
                    "shard": shard,
                    "shards": len(pieces),
                    "encoding": "zlib+base64",
                    "data": base64.b64encode(piece).decode(),
                    "index_upto": index_upto,
                }
            ),
        )
        for shard, piece in enumerate(pieces)
    ]


def next_clocks(
    history: list[tuple[int, int | None]], position: int, clock_ms: int | None
) -> list[tuple[int, int | None]]:
    """The clock history of a mark at `position`, after one whose history was `history`."""
    kept = [(at, clock) for at, clock in history if at < position]
    return [*kept, (position, clock_ms)][-CLOCK_HISTORY:]


def encode_mark(
    topic: str,
    partition: int,
    position: int,
    clock_ms: int | None,
    history: list[tuple[int, int | None]],
    written_ms: int | None = None,
    index_upto: int = -1,
    index_void: list[tuple[int, int]] | None = None,
) -> bytes:
    """The mark of a checkpoint; `history` is the previous mark's `clocks` (or [])."""
    clocks = next_clocks(history, position, clock_ms)
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "topic": topic,
            "partition": partition,
            "position": position,
            "clock_ms": clock_ms,
            "clocks": clocks,
            "written_ms": written_ms,
            "index_upto": index_upto,
            "index_void": index_void or [],
        }
    )


@dataclass
class Restored:
    """What the snapshots of one partition hold."""

    states: dict[str, OAState] = field(default_factory=dict)
    rebuild: set[str] = field(default_factory=set)
    """OAs with chunks but no complete, readable version: to be rebuilt from the log."""
    mark: PartitionMark | None = None


class Restorer:
    """Reads a partition of `zns.oa-state` in pieces and assembles the latest snapshots.

    Per OA it keeps the chunks of its newest complete version, and the chunks of
    newer versions that are not complete yet (a snapshot write that a crash cut
    short stays incomplete for ever and is ignored).
    """

    def __init__(self, topic: str, partition: int) -> None:
        self._topic = topic
        self._partition = partition
        self._complete: dict[str, list[SnapshotChunk]] = {}
        self._partial: dict[str, dict[int, dict[int, SnapshotChunk]]] = {}
        """oa_id -> position -> shard -> chunk, for versions still missing chunks."""
        self._mark: PartitionMark | None = None
        self._unreadable: set[str] = set()

    def add(self, records: Iterable[Record]) -> None:
        for record in records:
            if record.key is None:
                continue
            if _MARK_KEY.fullmatch(record.key):
                try:
                    mark = PartitionMark.model_validate_json(record.value)
                except ValueError:
                    continue  # an older mark may still be readable
                if mark.topic == self._topic and mark.schema_version == SCHEMA_VERSION:
                    self._mark = mark
                continue
            try:
                chunk = SnapshotChunk.model_validate_json(record.value)
            except ValueError:
                self._unreadable.add(_oa_of_key(record.key))
                continue
            if chunk.topic == self._topic and chunk.partition == self._partition:
                self._add_chunk(chunk)

    def _add_chunk(self, chunk: SnapshotChunk) -> None:
        complete = self._complete.get(chunk.oa_id)
        if complete is not None and complete[0].position > chunk.position:
            return  # older than what is already whole
        versions = self._partial.setdefault(chunk.oa_id, {})
        version = versions.setdefault(chunk.position, {})
        version[chunk.shard] = chunk
        if len(version) == chunk.shards and all(c.shards == chunk.shards for c in version.values()):
            self._complete[chunk.oa_id] = [version[i] for i in range(chunk.shards)]
            for position in [p for p in versions if p <= chunk.position]:
                del versions[position]

    def result(self) -> Restored:
        restored = Restored(mark=self._mark, rebuild=set(self._unreadable))
        upto = -1 if self._mark is None else self._mark.index_upto
        void = [] if self._mark is None else self._mark.index_void
        for oa_id, chunks in self._complete.items():
            index_upto = chunks[0].index_upto
            if index_upto > upto or is_void(index_upto, void):
                restored.rebuild.add(oa_id)  # its index entries are not in the store as it was
                continue
            state = _decode(chunks)
            if state is None:
                restored.rebuild.add(oa_id)
            else:
                restored.states[oa_id] = state
        for oa_id, versions in self._partial.items():
            if versions and oa_id not in restored.states:
                restored.rebuild.add(oa_id)  # chunks, but never a whole version
        restored.rebuild -= restored.states.keys()
        return restored


def _oa_of_key(key: bytes) -> str:
    """The OA id of a chunk's key `oa_id/state/shard`."""
    end = _STATE_KEY_END.search(key)
    return (key[: end.start()] if end else key).decode(errors="replace")


def _decode(chunks: list[SnapshotChunk]) -> OAState | None:
    if any(c.schema_version != SCHEMA_VERSION for c in chunks):
        return None  # another layout of the state: rebuilt from the log
    try:
        packed = b"".join(base64.b64decode(c.data) for c in chunks)
        state = OAState.from_document(orjson.loads(zlib.decompress(packed)))
    except Exception:  # any snapshot that does not read back is rebuilt from the log
        return None
    state.position = chunks[0].position
    return state
