"""Child process of the durability test: append one record, say where, then wait to be killed.

Usage: python -m tests.integration.append_child BACKEND WHERE PREFIX PARTITIONS KEY VALUE
(WHERE is the SQLite path or the Kafka bootstrap servers.)
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from service.log.base import EventLog, Topics
from service.log.embedded import EmbeddedLog
from service.log.kafka import KafkaLog
from service.logsetup import configure_logging


async def main(
    backend: str, where: str, prefix: str, partitions: int, key: str, value: str
) -> None:
    log: EventLog
    if backend == "kafka":
        log = KafkaLog(where, Topics(prefix), partitions)
    else:
        log = EmbeddedLog(where, Topics(prefix), partitions)
    await log.start()
    position = await log.append(log.topics.events, key.encode(), value.encode(), (("kind", b"t"),))
    sys.stdout.write(
        orjson.dumps({"partition": position.partition, "offset": position.offset}).decode() + "\n"
    )
    sys.stdout.flush()
    await asyncio.sleep(3600)  # never closes: the parent kills this process


if __name__ == "__main__":
    configure_logging(stream=sys.stderr)  # stdout carries only the answer
    b, w, p, n, k, v = sys.argv[1:7]
    asyncio.run(main(b, w, p, int(n), k, v))
