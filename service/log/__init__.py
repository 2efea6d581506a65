"""The event log: one interface (`base`), an embedded SQLite backend and a Kafka backend."""

from __future__ import annotations

from service.config import LogSettings
from service.log.base import EventLog, Topics


def create_log(settings: LogSettings) -> EventLog:
    """The backend the settings name, not yet started."""
    topics = Topics(settings.topic_prefix)
    if settings.backend == "kafka":
        from service.log.kafka import KafkaLog

        return KafkaLog(
            settings.bootstrap_servers,
            topics,
            settings.partitions,
            retention_days=settings.retention_days,
            replication_factor=settings.replication_factor,
            client_id=settings.client_id,
            request_timeout_ms=settings.request_timeout_ms,
            session_timeout_ms=settings.session_timeout_ms,
        )
    from service.log.embedded import EmbeddedLog

    return EmbeddedLog(
        settings.path,
        topics,
        settings.partitions,
        synchronous=settings.synchronous,
        group_commit_max=settings.group_commit_max,
        retention_days=settings.retention_days,
    )
