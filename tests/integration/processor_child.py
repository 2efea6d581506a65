"""Child process of the crash tests: run a processor over the log until it has caught up.

Usage: python -m tests.integration.processor_child BACKEND WHERE PREFIX PARTITIONS DIE
(WHERE is the SQLite path or the Kafka bootstrap servers; DIE is `never`, or `fold:N`,
`append:N`, `index:N`, `precommit:N` or `commit:N`: kill this process with SIGKILL at the
Nth record folded, record appended, just after the Nth index store write (before its
snapshots), or just before or after the Nth offset commit of this run.)
Prints `caught up` and exits 0 when it is done.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from service.config import Settings
from service.log.base import EventLog, LogConsumer, Position, TopicPartition, Topics
from service.log.embedded import EmbeddedLog
from service.log.kafka import KafkaLog
from service.logsetup import configure_logging
from service.processor.runner import Processor, ProcessorOptions


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Countdown:
    def __init__(self, what: str, spec: str) -> None:
        kind, _, count = spec.partition(":")
        self.left = int(count) if kind == what else -1

    def tick(self, amount: int = 1) -> None:
        if self.left < 0:
            return
        self.left -= amount
        if self.left <= 0:
            die()


async def main(backend: str, where: str, prefix: str, partitions: int, spec: str) -> None:
    log: EventLog
    if backend == "kafka":
        log = KafkaLog(where, Topics(prefix), partitions, session_timeout_ms=6_000)
    else:
        log = EmbeddedLog(where, Topics(prefix), partitions)
    await log.start()
    settings = Settings(
        rules={"clock": "stream"},
        processor={"state_dir": os.environ.get("ZNS_GATE_TEST_STATE_DIR", "var/state")},
    )
    processor = Processor(
        log,
        settings,
        ProcessorOptions(
            group_id=f"{prefix}-processor",
            checkpoint_interval_s=0.02,
            checkpoint_records=100,
            fetch_records=50,
            compact_every=3,
        ),
    )
    appends, folds, commits, precommits, indexes = (
        Countdown(w, spec) for w in ("append", "fold", "commit", "precommit", "index")
    )

    real_append = log.append

    async def append(*args: Any, **kwargs: Any) -> Position:
        appends.tick()
        return await real_append(*args, **kwargs)

    log.append = append  # type: ignore[method-assign]
    real_fold = processor._fold

    def fold(records: list[Any], seeks: dict[int, int]) -> None:
        for record in records:
            folds.tick()
            real_fold([record], seeks)

    processor._fold = fold  # type: ignore[method-assign]
    real_write_indexes = processor._write_indexes

    async def write_indexes(*args: Any) -> Any:
        written = await real_write_indexes(*args)
        indexes.tick()  # the index entries are durable, the snapshots and the mark not yet
        return written

    processor._write_indexes = write_indexes  # type: ignore[method-assign,assignment]
    await processor.start()
    consumer: LogConsumer | None = processor._consumer
    assert consumer is not None
    real_commit = consumer.commit

    async def commit(offsets: Any) -> None:
        precommits.tick()  # everything of the checkpoint is durable, the offsets not yet
        await real_commit(offsets)
        commits.tick()

    consumer.commit = commit  # type: ignore[method-assign]
    events = [TopicPartition(log.topics.events, p) for p in range(partitions)]
    ends = await log.end_offsets(events)
    while True:
        await asyncio.sleep(0.05)
        folders = processor.folders
        if len(folders) == partitions and all(
            folders[tp.partition].position + 1 >= end for tp, end in ends.items()
        ):
            break
    await processor.close()
    await log.close()
    sys.stdout.write("caught up\n")
    sys.stdout.flush()


if __name__ == "__main__":
    configure_logging(stream=sys.stderr)
    b, w, p, n, d = sys.argv[1:6]
    asyncio.run(main(b, w, p, int(n), d))
