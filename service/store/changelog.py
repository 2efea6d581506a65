"""The changelog of the index stores on Kafka: `zns.oa-index`, one record per changed entry.

A record's key is the entry's key; its value carries `before`, `after` and the
expiry day, because compaction keeps only the newest record of a key and a
restore may still need the value from before that write. A deleted entry
(expired, or its OA dropped) is a tombstone, so compaction removes it for good.

`ChangelogWriter` owns one idempotent producer (`acks=all`) for a process's
stores and returns the offset of every record, which the stores use as write ids.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.log.base import LogUnavailable

_HEAD = struct.Struct(">iBI")  # expiry day, which sides are present, length of `before`
_BEFORE, _AFTER = 1, 2
_MAX_BATCH_BYTES = 1_000_000


def encode_change(before: bytes | None, after: bytes | None, expiry_day: int) -> bytes:
    """The changelog value of one write; never empty (an empty value reads as a tombstone)."""
    flags = (_BEFORE if before is not None else 0) | (_AFTER if after is not None else 0)
    head = _HEAD.pack(expiry_day, flags, len(before or b""))
    return head + (before or b"") + (after or b"")


def decode_change(value: bytes) -> tuple[bytes | None, bytes | None, int]:
    """(before, after, expiry day) of a changelog value."""
    day, flags, before_len = _HEAD.unpack_from(value)
    start = _HEAD.size
    before = value[start : start + before_len] if flags & _BEFORE else None
    after = value[start + before_len :] if flags & _AFTER else None
    return before, after, day


class ChangelogWriter:
    """Writes batches of changelog records and returns their offsets, once durable."""

    def __init__(self, bootstrap_servers: str, *, request_timeout_ms: int = 10_000) -> None:
        self._common: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": "zns-gate-index",
            "request_timeout_ms": request_timeout_ms,
        }
        self._producer: AIOKafkaProducer[bytes, bytes] | None = None
        self.cluster_id = ""
        """The Kafka cluster's id: a local store made against another cluster is not trusted."""

    async def start(self) -> None:
        try:
            admin = AIOKafkaAdminClient(**self._common)
            await admin.start()
            try:
                self.cluster_id = str((await admin.describe_cluster()).get("cluster_id") or "")
            finally:
                await admin.close()
            producer: AIOKafkaProducer[bytes, bytes] = AIOKafkaProducer(
                **self._common,
                acks="all",
                enable_idempotence=True,
                linger_ms=0,
                max_batch_size=_MAX_BATCH_BYTES,
            )
            await producer.start()
        except KafkaError as exc:
            raise LogUnavailable(f"cannot reach Kafka for the index changelog: {exc}") from exc
        self._producer = producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(
        self, topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None]]
    ) -> list[int]:
        """Append (key, value or None for a tombstone) records in order; their offsets."""
        producer = self._producer
        if producer is None:
            raise LogUnavailable("the index changelog is not open")
        # Filling batches costs microseconds a record: ten thousand would hold the loop.
        batches = await asyncio.to_thread(_fill_batches, producer, records)
        try:
            sent = [
                (count, await producer.send_batch(batch, topic, partition=partition))
                for batch, count in batches
            ]
            offsets: list[int] = []
            for count, delivered in sent:
                base = (await delivered).offset
                offsets.extend(range(base, base + count))
        except KafkaError as exc:
            raise LogUnavailable(f"the index changelog did not accept the records: {exc}") from exc
        return offsets


def _fill_batches(
    producer: AIOKafkaProducer[bytes, bytes], records: Sequence[tuple[bytes, bytes | None]]
) -> list[tuple[Any, int]]:
    """The records in as few batches as fit, with the number of records in each."""
    batches: list[tuple[Any, int]] = []
    index = 0
    while index < len(records):
        batch = producer.create_batch()
        first = index
        while index < len(records):
            key, value = records[index]
            if batch.append(key=key, value=value, timestamp=None) is None:
                break
            index += 1
        if index == first:
            raise LogUnavailable(
                f"an index record of {len(records[index][1] or b'')} bytes does not fit a batch"
            )
        batches.append((batch, index - first))
    return batches
