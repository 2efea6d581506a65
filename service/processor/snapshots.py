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
chunk is present, looking at the last two versions of each key; an OA with no
complete version left is rebuilt from the log (`Restored.rebuild`).

Beside the OAs, each partition has a mark (key `__partition__/<n>`): the
position of the checkpoint and the partition's stream clock.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from service.domain.state import SCHEMA_VERSION, OAState
from service.log.base import Record

CHUNK_BYTES = 384 * 1024
"""Compressed bytes per chunk; base64 and the envelope keep a record under 512 KiB."""

MARK_PREFIX = "__partition__/"


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


def state_key(oa_id: str, shard: int) -> bytes:
    return f"{oa_id}/state/{shard}".encode()


def mark_key(partition: int) -> bytes:
    return f"{MARK_PREFIX}{partition}".encode()


def encode_state(state: OAState, topic: str, partition: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) records of one snapshot of `state`."""
    packed = zlib.compress(state.to_json(), 1)
    pieces = [packed[i : i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)] or [b""]
    return [
        (
            state_key(state.oa_id, shard),
            orjson.dumps(
                {
                    "schema_version": SCHEMA_VERSION,
                    "oa_id": state.oa_id,
                    "topic": topic,
                    "partition": partition,
                    "position": state.position,
                    "shard": shard,
                    "shards": len(pieces),
                    "encoding": "zlib+base64",
                    "data": base64.b64encode(piece).decode(),
                }
            ),
        )
        for shard, piece in enumerate(pieces)
    ]


def encode_mark(topic: str, partition: int, position: int, clock_ms: int | None) -> bytes:
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "topic": topic,
            "partition": partition,
            "position": position,
            "clock_ms": clock_ms,
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
    """Reads a partition of `zns.oa-state` in pieces and assembles the latest snapshots."""

    def __init__(self, topic: str, partition: int) -> None:
        self._topic = topic
        self._partition = partition
        self._versions: dict[bytes, list[SnapshotChunk]] = {}
        """key -> its last two chunks (oldest first)."""
        self._mark: PartitionMark | None = None
        self._unreadable: set[str] = set()

    def add(self, records: Iterable[Record]) -> None:
        for record in records:
            if record.key is None:
                continue
            if record.key.startswith(MARK_PREFIX.encode()):
                mark = PartitionMark.model_validate_json(record.value)
                if mark.topic == self._topic and mark.schema_version == SCHEMA_VERSION:
                    self._mark = mark
                continue
            try:
                chunk = SnapshotChunk.model_validate_json(record.value)
            except ValueError:
                self._unreadable.add(record.key.decode(errors="replace").split("/")[0])
                continue
            if chunk.topic != self._topic or chunk.partition != self._partition:
                continue  # a snapshot of another topic's layout: not ours
            versions = self._versions.setdefault(record.key, [])
            versions.append(chunk)
            del versions[:-2]

    def result(self) -> Restored:
        by_oa: dict[str, list[SnapshotChunk]] = {}
        for versions in self._versions.values():
            for chunk in versions:
                by_oa.setdefault(chunk.oa_id, []).append(chunk)
        restored = Restored(mark=self._mark, rebuild=set(self._unreadable))
        for oa_id, chunks in by_oa.items():
            state = _newest_complete(chunks)
            if state is None:
                restored.rebuild.add(oa_id)
            else:
                restored.states[oa_id] = state
        restored.rebuild -= restored.states.keys()
        return restored


def _newest_complete(chunks: list[SnapshotChunk]) -> OAState | None:
    for position in sorted({c.position for c in chunks}, reverse=True):
        version = {c.shard: c for c in chunks if c.position == position}
        shards = next(iter(version.values())).shards
        if sorted(version) != list(range(shards)) or any(
            c.shards != shards for c in version.values()
        ):
            continue
        if any(c.schema_version != SCHEMA_VERSION for c in version.values()):
            return None  # another layout of the state: rebuilt from the log
        packed = b"".join(base64.b64decode(version[i].data) for i in range(shards))
        try:
            state = OAState.from_document(orjson.loads(zlib.decompress(packed)))
        except (zlib.error, orjson.JSONDecodeError, TypeError, KeyError):
            continue
        state.position = position
        return state
    return None
