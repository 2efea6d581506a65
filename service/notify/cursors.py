"""The notifier's durable cursors: per target and partition of `zns.decisions`, the offset
below which every decision has been delivered or dead-lettered.

They live in their own compacted topic, `zns.notify-cursor`, one record per target and
partition (key `<target>/<partition>`), written to the same partition number as the
decisions it follows. Why there: a cursor must be readable by whichever instance owns the
partition next (so not a local file), it is written by the owner alone (so no consumer
group is needed: the group of `zns.decisions` would assign its partitions apart from
those of `zns.events`), and a compacted topic keeps only the last value of each key on
both backends (the embedded log is compacted here, Kafka compacts by itself). Nothing
here delivers anything.
"""

from __future__ import annotations

import orjson

from service.log.base import EventLog, TopicPartition

COMPACT_EVERY = 200
"""The embedded log's cursor partition is compacted after this many cursor writes."""


def cursor_key(target: str, partition: int) -> bytes:
    return f"{target}/{partition}".encode()


class Cursors:
    """Reads and writes the cursors of one log."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._writes: dict[int, int] = {}
        """Partition -> cursor writes since this process started."""

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.log.topics.notify_cursor, partition)

    async def load(self, target: str, partition: int) -> int | None:
        """The target's cursor in `partition`, or None when it has none yet."""
        tp = self._tp(partition)
        key = cursor_key(target, partition)
        end = (await self.log.end_offsets([tp]))[tp]
        found: int | None = None
        start = 0
        while start < end and (batch := await self.log.read(tp, start, 500)):
            for record in batch:
                if record.key == key:
                    found = int(orjson.loads(record.value)["next_offset"])
            start = batch[-1].offset + 1
        return found

    async def save(self, target: str, partition: int, next_offset: int) -> None:
        """Make `next_offset` the target's durable cursor in `partition`."""
        tp = self._tp(partition)
        await self.log.append(
            tp.topic,
            cursor_key(target, partition),
            orjson.dumps({"next_offset": next_offset}),
            timeout_s=10.0,
            partition=partition,
        )
        self._writes[partition] = writes = self._writes.get(partition, 0) + 1
        if writes % COMPACT_EVERY == 0:
            end = (await self.log.end_offsets([tp]))[tp]
            await self.log.compact(tp, end)
