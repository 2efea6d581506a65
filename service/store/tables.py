"""The SQLite tables of the index stores; every function here runs on a store's own thread.

The same two tables serve both backends: in the embedded log's file, or in a
store's local file on Kafka. `index_stores` has one row per (changelog topic,
partition): where its entries come from (`source`) and `next_id`, the next write
id (embedded: a counter; Kafka: the changelog offset after the last one the
file includes, as Kafka Streams' checkpoint file keeps it). Entries are keyed by
(store, key); an index on (store, expiry day) makes expiry cost what it deletes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from service.store.changelog import decode_change
from service.store.versions import VoidRanges, resolve

SCHEMA = """
CREATE TABLE IF NOT EXISTS index_stores (
    store_id  INTEGER PRIMARY KEY,
    topic     TEXT    NOT NULL,
    partition INTEGER NOT NULL,
    source    TEXT    NOT NULL,
    next_id   INTEGER NOT NULL,
    UNIQUE (topic, partition)
);
CREATE TABLE IF NOT EXISTS index_entries (
    store_id   INTEGER NOT NULL,
    key        BLOB    NOT NULL,
    write_id   INTEGER NOT NULL,
    before     BLOB,
    after      BLOB,
    expiry_day INTEGER NOT NULL,
    PRIMARY KEY (store_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS index_entries_expiry ON index_entries (store_id, expiry_day);
"""

Row = tuple[bytes, int, bytes | None, bytes | None, int]
"""(key, write id, before, after, expiry day) of one stored entry."""


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # isolation_level=None: transactions are begun and committed explicitly.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.executescript(SCHEMA)
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def find_store(conn: sqlite3.Connection, topic: str, partition: int) -> tuple[int, str, int] | None:
    """(store id, source, next id) of a store, if the file has one."""
    row = conn.execute(
        "SELECT store_id, source, next_id FROM index_stores WHERE topic = ? AND partition = ?",
        (topic, partition),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def reset_store(conn: sqlite3.Connection, topic: str, partition: int, source: str) -> int:
    """An empty store for (topic, partition) from `source`; its store id."""
    with transaction(conn):
        conn.execute(
            "DELETE FROM index_entries WHERE store_id IN"
            " (SELECT store_id FROM index_stores WHERE topic = ? AND partition = ?)",
            (topic, partition),
        )
        conn.execute(
            "DELETE FROM index_stores WHERE topic = ? AND partition = ?", (topic, partition)
        )
        cursor = conn.execute(
            "INSERT INTO index_stores (topic, partition, source, next_id) VALUES (?, ?, ?, 0)",
            (topic, partition, source),
        )
    assert cursor.lastrowid is not None  # an INSERT always has one
    return cursor.lastrowid


def put_rows(conn: sqlite3.Connection, store: int, rows: Sequence[Row], next_id: int) -> None:
    """Store `rows` (replacing earlier versions of their keys) and the store's next id."""
    with transaction(conn):
        _upsert(conn, store, rows)
        conn.execute("UPDATE index_stores SET next_id = ? WHERE store_id = ?", (next_id, store))


def _upsert(conn: sqlite3.Connection, store: int, rows: Sequence[Row]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO index_entries"
        " (store_id, key, write_id, before, after, expiry_day) VALUES (?, ?, ?, ?, ?, ?)",
        [(store, *row) for row in rows],
    )


def apply_changelog(
    conn: sqlite3.Connection, store: int, records: Sequence[tuple[int, bytes, bytes]], next_id: int
) -> None:
    """Apply changelog records (offset, key, value; an empty value is a tombstone)."""
    final: dict[bytes, Row | None] = {}  # records come in offset order: the last one wins
    for offset, key, value in records:
        if value:
            before, after, day = decode_change(value)
            final[key] = (key, offset, before, after, day)
        else:
            final[key] = None
    with transaction(conn):
        conn.executemany(
            "DELETE FROM index_entries WHERE store_id = ? AND key = ?",
            [(store, key) for key, row in final.items() if row is None],
        )
        _upsert(conn, store, [row for row in final.values() if row is not None])
        conn.execute("UPDATE index_stores SET next_id = ? WHERE store_id = ?", (next_id, store))


def read_row(
    conn: sqlite3.Connection, store: int, key: bytes
) -> tuple[int, bytes | None, bytes | None] | None:
    row = conn.execute(
        "SELECT write_id, before, after FROM index_entries WHERE store_id = ? AND key = ?",
        (store, key),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def read_resolved(
    conn: sqlite3.Connection, store: int, keys: Sequence[bytes], upto: int, void: VoidRanges
) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    for key in keys:
        row = read_row(conn, store, key)
        out[key] = None if row is None else resolve(row[0], row[1], row[2], upto, void)
    return out


def keys_expiring(conn: sqlite3.Connection, store: int, before_day: int, limit: int) -> list[bytes]:
    rows = conn.execute(
        "SELECT key FROM index_entries WHERE store_id = ? AND expiry_day < ? LIMIT ?",
        (store, before_day, limit),
    )
    return [key for (key,) in rows]


def keys_with_prefix(
    conn: sqlite3.Connection, store: int, prefix: bytes, limit: int
) -> list[bytes]:
    # Keys sort as bytes, so those starting with `prefix` are one range of the primary key.
    end = prefix.rstrip(b"\xff")
    if not end:
        raise ValueError("a prefix of only 0xff bytes bounds no range")
    end = end[:-1] + bytes([end[-1] + 1])
    rows = conn.execute(
        "SELECT key FROM index_entries WHERE store_id = ? AND key >= ? AND key < ? LIMIT ?",
        (store, prefix, end, limit),
    )
    return [key for (key,) in rows]


def delete_keys(
    conn: sqlite3.Connection, store: int, keys: Sequence[bytes], next_id: int | None
) -> None:
    with transaction(conn):
        conn.executemany(
            "DELETE FROM index_entries WHERE store_id = ? AND key = ?", [(store, k) for k in keys]
        )
        if next_id is not None:
            conn.execute("UPDATE index_stores SET next_id = ? WHERE store_id = ?", (next_id, store))
