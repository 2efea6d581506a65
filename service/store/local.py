"""Where an index store keeps its entries: SQLite tables, or a RocksDB database.

Both hold, per entry, the write id, `before`, `after` and the expiry day, and
per store its `source` (where the entries come from) and `next_id`: the next
write id on the embedded backend, the changelog offset after the last one
included on Kafka (as Kafka Streams' checkpoint file keeps it). Rows and
`next_id` change in one atomic write, so the two never disagree. Both keep the
entries ordered by expiry day as well, so that expiry costs what it deletes.

The writes run on one thread at a time (the store's own; an embedded store's on
the log's writer thread). The reads, `read_row` and `read_rows`, are safe beside
them, from the loop or the store's thread (a second SQLite connection in WAL
mode; RocksDB's reads are thread-safe).
"""

from __future__ import annotations

import shutil
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import orjson
import rocksdict

from service.log.embedded import STATEMENT_ROWS, insert_rows, transaction
from service.store.changelog import decode_change, encode_change
from service.store.versions import VoidRanges, resolve

Row = tuple[bytes, int, bytes | None, bytes | None, int]
"""(key, write id, before, after, expiry day) of one stored entry."""

Stored = tuple[int, bytes | None, bytes | None]
"""(write id, before, after) of an entry as read."""


class LocalEntries(Protocol):
    def find(self) -> tuple[str, int] | None:
        """(source, next id) of the store, if it has been made."""

    def reset(self, source: str) -> None:
        """Make the store empty, from `source`, with next id 0."""

    def put_rows(self, rows: Sequence[Row], next_id: int) -> None:
        """Store `rows`, replacing earlier versions of their keys, and `next_id`."""

    def apply_changelog(self, records: Sequence[tuple[int, bytes, bytes]], next_id: int) -> None:
        """Apply changelog records (offset, key, value), in offset order; an empty value
        is a tombstone."""

    def read_row(self, key: bytes) -> Stored | None: ...

    def read_rows(self, keys: Sequence[bytes]) -> dict[bytes, Stored]:
        """The rows of those of `keys` the store holds, read together."""

    def keys_expiring(self, before_day: int, limit: int) -> list[bytes]:
        """Up to `limit` keys whose expiry day is before `before_day`; the caller deletes
        them before it asks for more."""

    def keys_with_prefix(self, prefix: bytes, limit: int) -> list[bytes]: ...

    def delete_keys(self, keys: Sequence[bytes], next_id: int | None) -> None:
        """Delete `keys`, and set `next_id` unless it is None."""

    def close(self) -> None: ...


def read_resolved(
    entries: LocalEntries, keys: Sequence[bytes], upto: int, void: VoidRanges
) -> dict[bytes, bytes | None]:
    rows = entries.read_rows(keys)
    out: dict[bytes, bytes | None] = {}
    for key in keys:
        row = rows.get(key)
        out[key] = None if row is None else resolve(row[0], row[1], row[2], upto, void)
    return out


def last_per_key(records: Sequence[tuple[int, bytes, bytes]]) -> dict[bytes, Row | None]:
    """The newest version of each key in changelog records (None: a tombstone)."""
    final: dict[bytes, Row | None] = {}
    for offset, key, value in records:
        if value:
            before, after, day = decode_change(value)
            final[key] = (key, offset, before, after, day)
        else:
            final[key] = None
    return final


def prefix_end(prefix: bytes) -> bytes:
    """The first byte string after every one that starts with `prefix`."""
    stem = prefix.rstrip(b"\xff")
    if not stem:
        raise ValueError("a prefix of only 0xff bytes bounds no range")
    return stem[:-1] + bytes([stem[-1] + 1])


# --- SQLite -------------------------------------------------------------------------------


def _in_pieces(keys: Sequence[bytes]) -> Iterator[tuple[str, Sequence[bytes]]]:
    """`keys` in pieces for one statement each (not one a key, see `insert_rows`), with the
    placeholders of each piece's `IN (...)`: only placeholders, the keys are bound."""
    for start in range(0, len(keys), STATEMENT_ROWS):
        piece = keys[start : start + STATEMENT_ROWS]
        yield ", ".join("?" * len(piece)), piece


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


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # isolation_level=None: transactions are begun and committed explicitly.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.executescript(SCHEMA)
    return conn


class SqliteEntries:
    """Tables in a SQLite file (the embedded log's own, or a local file), one store's rows
    keyed by (store id, key). `read_row` uses a second connection."""

    def __init__(self, path: Path, topic: str, partition: int, synchronous: str) -> None:
        self.topic = topic
        self.partition = partition
        self._writer = connect(path, synchronous)
        self._reader = connect(path, synchronous)
        self._store = 0
        self.find()

    def find(self) -> tuple[str, int] | None:
        row = self._writer.execute(
            "SELECT store_id, source, next_id FROM index_stores WHERE topic = ? AND partition = ?",
            (self.topic, self.partition),
        ).fetchone()
        if row is None:
            return None
        self._store = row[0]
        return row[1], row[2]

    def reset(self, source: str) -> None:
        conn, where = self._writer, (self.topic, self.partition)
        with transaction(conn):
            conn.execute(
                "DELETE FROM index_entries WHERE store_id IN"
                " (SELECT store_id FROM index_stores WHERE topic = ? AND partition = ?)",
                where,
            )
            conn.execute("DELETE FROM index_stores WHERE topic = ? AND partition = ?", where)
            cursor = conn.execute(
                "INSERT INTO index_stores (topic, partition, source, next_id) VALUES (?, ?, ?, 0)",
                (*where, source),
            )
        assert cursor.lastrowid is not None  # an INSERT always has one
        self._store = cursor.lastrowid

    def put_rows(self, rows: Sequence[Row], next_id: int) -> None:
        with transaction(self._writer):
            self._upsert(rows)
            self._set_next(next_id)

    def apply_changelog(self, records: Sequence[tuple[int, bytes, bytes]], next_id: int) -> None:
        final = last_per_key(records)
        with transaction(self._writer):
            self._delete([key for key, row in final.items() if row is None])
            self._upsert([row for row in final.values() if row is not None])
            self._set_next(next_id)

    def read_row(self, key: bytes) -> Stored | None:
        row = self._reader.execute(
            "SELECT write_id, before, after FROM index_entries WHERE store_id = ? AND key = ?",
            (self._store, key),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def read_rows(self, keys: Sequence[bytes]) -> dict[bytes, Stored]:
        out: dict[bytes, Stored] = {}
        for marks, piece in _in_pieces(keys):
            rows = self._reader.execute(
                "SELECT key, write_id, before, after FROM index_entries"  # noqa: S608
                f" WHERE store_id = ? AND key IN ({marks})",
                (self._store, *piece),
            )
            out.update((key, (write_id, before, after)) for key, write_id, before, after in rows)
        return out

    def keys_expiring(self, before_day: int, limit: int) -> list[bytes]:
        rows = self._writer.execute(
            "SELECT key FROM index_entries WHERE store_id = ? AND expiry_day < ? LIMIT ?",
            (self._store, before_day, limit),
        )
        return [key for (key,) in rows]

    def keys_with_prefix(self, prefix: bytes, limit: int) -> list[bytes]:
        # Keys sort as bytes, so those starting with `prefix` are one range of the primary key.
        rows = self._writer.execute(
            "SELECT key FROM index_entries WHERE store_id = ? AND key >= ? AND key < ? LIMIT ?",
            (self._store, prefix, prefix_end(prefix), limit),
        )
        return [key for (key,) in rows]

    def delete_keys(self, keys: Sequence[bytes], next_id: int | None) -> None:
        with transaction(self._writer):
            self._delete(keys)
            if next_id is not None:
                self._set_next(next_id)

    def close(self) -> None:
        self._writer.close()
        self._reader.close()

    def _upsert(self, rows: Sequence[Row]) -> None:
        insert_rows(
            self._writer,
            "INSERT OR REPLACE INTO index_entries"
            " (store_id, key, write_id, before, after, expiry_day)",
            [(self._store, *row) for row in rows],
        )

    def _delete(self, keys: Sequence[bytes]) -> None:
        for marks, piece in _in_pieces(keys):
            self._writer.execute(
                f"DELETE FROM index_entries WHERE store_id = ? AND key IN ({marks})",  # noqa: S608
                (self._store, *piece),
            )

    def _set_next(self, next_id: int) -> None:
        self._writer.execute(
            "UPDATE index_stores SET next_id = ? WHERE store_id = ?", (next_id, self._store)
        )


# --- RocksDB ------------------------------------------------------------------------------

_META = b"m"  # -> {"source", "next_id", "days_indexed"}
_ENTRY = b"e"  # e<key> -> write id, then the changelog encoding (before, after, day)
_BY_DAY = b"d"  # d<day, 4 bytes big-endian><key> -> empty: the entries in expiry order
_WRITE_ID = struct.Struct(">q")
_DAY = struct.Struct(">I")
_WRITE_PIECE = 1_000
_CHANGE_HEAD = 9
"""Bytes of a changelog value before `before`: its expiry day (4, big-endian), flags, length."""


class RocksEntries:
    """A RocksDB database (`rocksdict`) of one store, in its own directory.

    Writes go through RocksDB's write-ahead log without an fsync of their own: a
    write lost to a power cut is read again from the changelog.

    A rebuild (`rebuild`, then `apply_changelog`, then `index_days`) writes only the
    entries, each changelog value stored as it is behind its write id, with no
    lookup of what a key held before: keeping the by-day keys right as a key moves
    from day to day needs that lookup, and a store made from nothing needs none if
    its by-day keys are made once, from the entries as they end up. Until then the
    meta says `days_indexed: false`, so a rebuild cut short goes on the same way.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = self._open()
        self._expiring: tuple[int, bytes] = (-1, b"")
        """(before_day, day key to go on from) of the expiry running."""
        self._source = ""
        self._days_indexed = True
        """False from `rebuild` until `index_days` has made every by-day key."""
        self._indexing_from: bytes | None = None
        """The entry key `index_days` goes on from, once it has begun."""
        self.find()

    def _open(self) -> rocksdict.Rdict:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        return rocksdict.Rdict(str(self.path), options)

    def find(self) -> tuple[str, int] | None:
        meta = self._db.get(_META)
        if meta is None:
            return None
        found = orjson.loads(meta)
        self._source = str(found["source"])
        self._days_indexed = bool(found.get("days_indexed", True))
        return self._source, int(found["next_id"])

    def reset(self, source: str) -> None:
        self._reset(source, days_indexed=True)

    def rebuild(self, source: str) -> None:
        """`reset`, for a rebuild from the changelog's start: the records that follow
        write entries alone, until `index_days` makes their by-day keys."""
        self._reset(source, days_indexed=False)

    def _reset(self, source: str, *, days_indexed: bool) -> None:
        # Dropping the directory costs nothing, deleting a million keys would.
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()
        self._source, self._days_indexed, self._indexing_from = source, days_indexed, None
        self._db.put(_META, self._meta(0))

    @property
    def days_indexed(self) -> bool:
        return self._days_indexed

    def _meta(self, next_id: int) -> bytes:
        meta: dict[str, object] = {"source": self._source, "next_id": next_id}
        if not self._days_indexed:
            meta["days_indexed"] = False
        return orjson.dumps(meta)

    def put_rows(self, rows: Sequence[Row], next_id: int) -> None:
        self._expiring = (-1, b"")  # a new entry may expire before where an expiry went on from
        self._write_pieces([(row[0], row) for row in rows], next_id)

    def apply_changelog(self, records: Sequence[tuple[int, bytes, bytes]], next_id: int) -> None:
        self._expiring = (-1, b"")
        if self._days_indexed:
            self._write_pieces(list(last_per_key(records).items()), next_id)
        else:
            self._write_entries(records, next_id)

    def index_days(self, limit: int) -> bool:
        """Make the by-day keys of up to `limit` entries, after a rebuild; True once every
        entry has its by-day key (then it is a store like any other)."""
        if self._days_indexed:
            return True
        batch = rocksdict.WriteBatch(raw_mode=True)
        if self._indexing_from is None:
            # A rebuild cut short while indexing may have left by-day keys of entries
            # that changed since: every one is made again.
            batch.delete_range(_BY_DAY, _ENTRY)
            self._indexing_from = _ENTRY
        skip, day_end = len(_ENTRY), _WRITE_ID.size + _DAY.size
        done = True
        for count, (key, value) in enumerate(self._db.items(from_key=self._indexing_from)):
            if not isinstance(key, bytes) or not key.startswith(_ENTRY):
                break
            if count == limit:
                self._indexing_from, done = key, False
                break
            if count and count % _WRITE_PIECE == 0:  # as `_write_pieces` does, for the GIL
                self._db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
            batch.put(_BY_DAY + value[_WRITE_ID.size : day_end] + key[skip:], b"")
        if done:
            meta = self._db.get(_META)
            next_id = 0 if meta is None else int(orjson.loads(meta)["next_id"])
            self._days_indexed, self._indexing_from = True, None
            batch.put(_META, self._meta(next_id))
        self._db.write(batch)
        return done

    def read_row(self, key: bytes) -> Stored | None:
        value = self._db.get(_ENTRY + key)
        if value is None:
            return None
        before, after, _ = decode_change(value[_WRITE_ID.size :])
        return _WRITE_ID.unpack_from(value)[0], before, after

    def read_rows(self, keys: Sequence[bytes]) -> dict[bytes, Stored]:
        out: dict[bytes, Stored] = {}
        for key in keys:
            row = self.read_row(key)
            if row is not None:
                out[key] = row
        return out

    def keys_expiring(self, before_day: int, limit: int) -> list[bytes]:
        if not self._days_indexed:
            raise RuntimeError("the store's by-day keys are not made yet (index_days)")
        end = _BY_DAY + _DAY.pack(max(0, before_day))
        # An expiry deletes what one call returns before it asks for more, and an
        # iterator started at the beginning would step over every key deleted so
        # far (RocksDB's deletes are tombstones until compaction): go on from the
        # last key returned while the same expiry runs.
        start = self._expiring[1] if self._expiring[0] == before_day else _BY_DAY
        found = self._keys_between(start, end, limit)
        self._expiring = (before_day, found[-1] + b"\x00") if len(found) == limit else (-1, b"")
        skip = len(_BY_DAY) + _DAY.size
        return [day_key[skip:] for day_key in found]

    def keys_with_prefix(self, prefix: bytes, limit: int) -> list[bytes]:
        found = self._keys_between(_ENTRY + prefix, _ENTRY + prefix_end(prefix), limit)
        return [entry_key[len(_ENTRY) :] for entry_key in found]

    def _keys_between(self, start: bytes, end: bytes, limit: int) -> list[bytes]:
        out: list[bytes] = []
        for found in self._db.keys(from_key=start):
            if not isinstance(found, bytes) or found >= end or len(out) >= limit:
                break
            out.append(found)
        return out

    def delete_keys(self, keys: Sequence[bytes], next_id: int | None) -> None:
        self._write_pieces([(key, None) for key in keys], next_id)

    def close(self) -> None:
        self._db.close()

    def _old_day(self, key: bytes) -> int | None:
        value = self._db.get(_ENTRY + key)
        return None if value is None else decode_change(value[_WRITE_ID.size :])[2]

    def _put(self, batch: rocksdict.WriteBatch, row: Row) -> None:
        key, write_id, before, after, day = row
        old_day = self._old_day(key)
        if old_day is not None and old_day != day:
            batch.delete(_BY_DAY + _DAY.pack(old_day) + key)
        batch.put(_ENTRY + key, _WRITE_ID.pack(write_id) + encode_change(before, after, day))
        batch.put(_BY_DAY + _DAY.pack(day) + key, b"")

    def _remove(self, batch: rocksdict.WriteBatch, key: bytes) -> None:
        old_day = self._old_day(key)
        if old_day is not None:
            batch.delete(_ENTRY + key)
            batch.delete(_BY_DAY + _DAY.pack(old_day) + key)

    def _write_entries(self, records: Sequence[tuple[int, bytes, bytes]], next_id: int) -> None:
        """`apply_changelog` during a rebuild: each record as its key's entry (a tombstone
        deletes it), no by-day keys, nothing looked up. RocksDB applies the writes in
        order, so a key's newest record wins without finding it first."""
        pack_id = _WRITE_ID.pack
        for start in range(0, max(1, len(records)), _WRITE_PIECE):
            batch = rocksdict.WriteBatch(raw_mode=True)
            for offset, key, value in records[start : start + _WRITE_PIECE]:
                if not value:
                    batch.delete(_ENTRY + key)
                    continue
                # The by-day key will take the day's 4 bytes as they are, as `_DAY` packs
                # a day that is not negative: a value too short or of a negative day is
                # no change this store ever wrote.
                if len(value) < _CHANGE_HEAD or value[0] & 0x80:
                    raise ValueError(f"changelog record {offset} is not an index change")
                batch.put(_ENTRY + key, pack_id(offset) + value)
            if start + _WRITE_PIECE >= len(records):
                batch.put(_META, self._meta(next_id))
            self._db.write(batch)

    def _write_pieces(
        self, changes: Sequence[tuple[bytes, Row | None]], next_id: int | None
    ) -> None:
        """Write (key, row or None to delete) changes, and `next_id` with the last piece.

        rocksdict holds the GIL while RocksDB writes, and so holds the event loop:
        a batch of ten thousand entries would stop it for tens of milliseconds, so
        they go in pieces. A crash between pieces is harmless on Kafka: `next_id`
        still names the first of these records, which are read again from the
        changelog on restart.
        """
        for start in range(0, max(1, len(changes)), _WRITE_PIECE):
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, row in changes[start : start + _WRITE_PIECE]:
                if row is None:
                    self._remove(batch, key)
                else:
                    self._put(batch, row)
            if start + _WRITE_PIECE >= len(changes) and next_id is not None:
                batch.put(_META, self._meta(next_id))
            self._db.write(batch)
