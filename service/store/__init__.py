"""Per-partition key-value stores for the OAs' large indexes, with their changelog.

`IndexStores` opens one `IndexStore` per partition of `zns.events`: tables in the
embedded log's SQLite file, or on Kafka a local RocksDB database under
`processor.state_dir` rebuilt from the compacted changelog `zns.oa-index`.
Keys and values are opaque bytes here; the store knows nothing of the domain.
"""

from service.store.stores import (
    EmbeddedIndexStore,
    IndexStore,
    IndexStoreError,
    IndexStores,
    KafkaIndexStore,
)

__all__ = [
    "EmbeddedIndexStore",
    "IndexStore",
    "IndexStoreError",
    "IndexStores",
    "KafkaIndexStore",
]
