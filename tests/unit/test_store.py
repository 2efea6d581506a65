"""The index store's pure parts: resolving versions, void ranges, the cache, the changelog codec."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import ProcessorSettings
from service.log.base import Topics
from service.store.cache import ValueCache
from service.store.changelog import decode_change, encode_change
from service.store.local import LocalEntries, RocksEntries, SqliteEntries, read_resolved
from service.store.versions import add_void, resolve


def test_the_index_changelog_is_a_compacted_topic_of_the_prefix() -> None:
    topics = Topics("acme")
    assert topics.oa_index == "acme.oa-index"
    assert topics.oa_index in topics.all()
    assert topics.oa_index in topics.compacted()
    assert topics.oa_state in topics.compacted()


def test_the_processor_keeps_its_stores_under_a_state_dir_with_a_bounded_cache() -> None:
    settings = ProcessorSettings()
    assert str(settings.state_dir) == "var/state"
    assert settings.cache_mb == 256
    with pytest.raises(ValueError, match="cache_mb"):
        ProcessorSettings(cache_mb=0)


@pytest.mark.parametrize(
    ("write_id", "upto", "void", "expected"),
    [
        (5, 5, [], b"after"),  # included by the checkpoint
        (6, 5, [], b"before"),  # written after it: its checkpoint never completed
        (3, 9, [(2, 4)], b"before"),  # inside a void range (2, 4]
        (4, 9, [(2, 4)], b"before"),  # its upper bound is inside
        (2, 9, [(2, 4)], b"after"),  # its lower bound is not
        (5, 9, [(2, 4)], b"after"),  # confirmed after the void range
        (7, 9, [(2, 4), (6, 8)], b"before"),
    ],
)
def test_an_entry_resolves_to_after_only_when_a_completed_checkpoint_includes_it(
    write_id: int, upto: int, void: list[tuple[int, int]], expected: bytes
) -> None:
    assert resolve(write_id, b"before", b"after", upto, void) == expected


def test_a_deleted_or_new_entry_resolves_to_none_on_the_side_that_is_absent() -> None:
    assert resolve(1, b"old", None, 1, []) is None  # a deletion included by the checkpoint
    assert resolve(2, None, b"new", 1, []) is None  # a new entry whose checkpoint failed


def test_void_ranges_grow_only_when_writes_went_past_the_mark_and_merge_when_they_touch() -> None:
    assert add_void([], upto=10, written=10) == []
    assert add_void([], upto=10, written=15) == [(10, 15)]
    # A second crash before any new mark: the same start, a later end.
    assert add_void([(10, 15)], upto=10, written=20) == [(10, 20)]
    assert add_void([(2, 4)], upto=10, written=12) == [(2, 4), (10, 12)]
    assert add_void([(2, 4), (10, 12)], upto=4, written=11) == [(2, 12)]


def test_the_cache_evicts_the_least_recently_used_values_beyond_its_bytes() -> None:
    cache = ValueCache(max_bytes=3 * (ValueCache.OVERHEAD + 2))
    cache.put(1, b"a", b"1")
    cache.put(1, b"b", None)  # an absent entry is worth caching too
    cache.put(1, b"c", b"3")
    assert cache.get(1, b"a") == (True, b"1")  # now the most recent
    cache.put(1, b"d", b"4")  # pushes out b, the least recent
    assert cache.get(1, b"b") == (False, None)
    assert cache.get(1, b"a") == (True, b"1")
    assert cache.get(1, b"d") == (True, b"4")
    assert cache.bytes <= cache.max_bytes


def test_the_cache_keeps_each_store_opening_apart_and_forgets_a_key_on_pop() -> None:
    cache = ValueCache(max_bytes=10_000)
    cache.put(1, b"k", b"old")
    assert cache.get(2, b"k") == (False, None)
    cache.pop(1, b"k")
    assert cache.get(1, b"k") == (False, None)
    assert cache.bytes == 0


@pytest.mark.parametrize(
    ("before", "after", "day"),
    [(None, b"v", 740_000), (b"old", None, 1), (b"", b"", 0), (b"x" * 1000, b"y", 2**31 - 1)],
)
def test_a_change_round_trips_through_its_changelog_value(
    before: bytes | None, after: bytes | None, day: int
) -> None:
    value = encode_change(before, after, day)
    assert value  # never empty: an empty value is how the log hands back a tombstone
    assert decode_change(value) == (before, after, day)


@pytest.fixture(params=["sqlite", "rocksdb"])
def entries(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalEntries]:
    """An empty store's local entries, in a real file of each kind."""
    made: SqliteEntries | RocksEntries
    if request.param == "sqlite":
        made = SqliteEntries(tmp_path / "index.db", "zns.oa-index", 0, "NORMAL")
    else:
        made = RocksEntries(tmp_path / "rocks")
    made.reset("test")
    yield made
    made.close()


def test_a_compacted_changelog_still_restores_the_values_of_the_last_completed_checkpoint(
    entries: LocalEntries,
) -> None:
    a, b, c = b"oa\x00msg\x00a", b"oa\x00msg\x00b", b"oa\x00msg\x00c"
    changelog = [
        (0, a, encode_change(None, b"a1", 5)),
        (1, b, encode_change(None, b"b1", 5)),
        (2, c, encode_change(None, b"c1", 5)),  # the mark says upto = 2
        (3, a, encode_change(b"a1", b"a2", 5)),
        (4, b, encode_change(b"b1", None, 5)),
        (5, c, b""),  # a tombstone: expired
    ]
    # Compaction keeps only the newest record of each key.
    compacted = [record for record in changelog if record[0] >= 3]
    entries.apply_changelog(compacted, next_id=6)
    void = add_void([], upto=2, written=5)
    assert read_resolved(entries, [a, b, c], upto=2, void=void) == {a: b"a1", b: b"b1", c: None}
    assert read_resolved(entries, [a, b, c], upto=5, void=[]) == {a: b"a2", b: None, c: None}
    assert entries.find() == ("test", 6)


def test_within_one_piece_of_the_changelog_the_last_record_of_a_key_wins(
    entries: LocalEntries,
) -> None:
    a, b = b"a", b"b"
    piece = [
        (0, a, encode_change(None, b"a1", 5)),
        (1, a, b""),
        (2, a, encode_change(None, b"a2", 5)),
        (3, b, encode_change(None, b"b1", 5)),
        (4, b, b""),
    ]
    entries.apply_changelog(piece, next_id=5)
    assert entries.read_row(a) == (2, None, b"a2")
    assert entries.read_row(b) is None


def test_expiry_follows_an_entry_to_its_newest_day(entries: LocalEntries) -> None:
    a, b, c = b"oa\x00m\x00a", b"oa\x00m\x00b", b"ob\x00m\x00c"
    entries.put_rows([(a, 0, None, b"1", 5), (b, 1, None, b"1", 5), (c, 2, None, b"1", 7)], 3)
    entries.put_rows([(a, 3, b"1", b"2", 9)], 4)  # written again: it lives longer now
    assert sorted(entries.keys_expiring(8, limit=100)) == [b, c]
    assert entries.keys_expiring(8, limit=1) in ([b], [c])
    assert entries.keys_expiring(5, limit=100) == []
    assert sorted(entries.keys_with_prefix(b"oa\x00", limit=100)) == [a, b]
    entries.delete_keys([b, c], next_id=None)
    assert entries.keys_expiring(10, limit=100) == [a]
    assert entries.find() == ("test", 4)


def test_a_reset_leaves_an_empty_store_of_the_new_source(entries: LocalEntries) -> None:
    entries.put_rows([(b"k", 0, None, b"v", 5)], 1)
    entries.reset("other")
    assert entries.read_row(b"k") is None
    assert entries.keys_expiring(10, limit=10) == []
    assert entries.find() == ("other", 0)


def test_an_expiry_in_pieces_finds_every_expired_key_once(entries: LocalEntries) -> None:
    entries.put_rows([(b"k%02d" % i, i, None, b"v", 5 + i % 3) for i in range(20)], 20)
    found: list[bytes] = []
    while keys := entries.keys_expiring(8, limit=10):
        found.extend(keys)
        entries.delete_keys(keys, next_id=None)
        if len(found) == 10:  # a write between two pieces, of a key that expires at once
            entries.put_rows([(b"late", 20, None, b"v", 1)], 21)
    assert sorted(found) == sorted([b"k%02d" % i for i in range(20)] + [b"late"])
    assert entries.keys_expiring(100, limit=10) == []


def _changelog(seed: int, records: int, keys: int) -> list[tuple[int, bytes, bytes]]:
    """A changelog where keys come back many times, on changing days, and are tombstoned."""
    rng = random.Random(seed)
    out: list[tuple[int, bytes, bytes]] = []
    for offset in range(records):
        key = b"oa%d\x00rcp\x00%04d" % (rng.randrange(3), rng.randrange(keys))
        if rng.random() < 0.2:
            out.append((offset, key, b""))
        else:
            before = None if rng.random() < 0.5 else b"b%d" % offset
            out.append((offset, key, encode_change(before, b"a%d" % offset, 5 + rng.randrange(6))))
    return out


def _pieces(
    records: list[tuple[int, bytes, bytes]], rng: random.Random
) -> Iterator[list[tuple[int, bytes, bytes]]]:
    start = 0
    while start < len(records):
        size = rng.randrange(1, 400)
        yield records[start : start + size]
        start += size


def _contents(path: Path) -> dict[bytes, bytes]:
    """Every key and value of a closed RocksDB store, meta included."""
    entries = RocksEntries(path)
    out: dict[bytes, bytes] = {}
    try:
        for key, value in entries._db.items():
            assert isinstance(key, bytes)
            assert isinstance(value, bytes)
            out[key] = value
        return out
    finally:
        entries.close()


def _applied(path: Path, records: list[tuple[int, bytes, bytes]], seed: int) -> None:
    """The changelog applied the way every other write is, a lookup for each key."""
    entries = RocksEntries(path)
    entries.reset("kafka:test")
    for piece in _pieces(records, random.Random(seed)):
        entries.apply_changelog(piece, piece[-1][0] + 1)
    entries.close()


@pytest.mark.parametrize("seed", range(4))
def test_a_rebuild_writes_the_same_store_as_applying_every_record_with_lookups(
    tmp_path: Path, seed: int
) -> None:
    records = _changelog(seed, 3_000, keys=150)  # each key about 20 times, in many pieces
    _applied(tmp_path / "looked-up", records, seed)
    rebuilt = RocksEntries(tmp_path / "rebuilt")
    rebuilt.rebuild("kafka:test")
    for piece in _pieces(records, random.Random(seed)):
        rebuilt.apply_changelog(piece, piece[-1][0] + 1)
    assert not rebuilt.days_indexed
    while not rebuilt.index_days(37):
        pass
    assert rebuilt.days_indexed
    assert rebuilt.find() == ("kafka:test", len(records))
    rebuilt.close()
    expected = _contents(tmp_path / "looked-up")
    assert _contents(tmp_path / "rebuilt") == expected
    assert any(key.startswith(b"d") for key in expected)  # by-day keys were compared too


def test_a_rebuild_cut_short_goes_on_after_a_reopen_and_ends_the_same(tmp_path: Path) -> None:
    records = _changelog(9, 3_000, keys=150)
    _applied(tmp_path / "looked-up", records, 9)
    path = tmp_path / "rebuilt"
    rebuilt = RocksEntries(path)
    rebuilt.rebuild("kafka:test")
    rebuilt.apply_changelog(records[:1_000], 1_000)
    rebuilt.close()  # stopped while reading the changelog
    rebuilt = RocksEntries(path)
    assert rebuilt.find() == ("kafka:test", 1_000)
    assert not rebuilt.days_indexed
    rebuilt.apply_changelog(records[1_000:2_000], 2_000)
    assert not rebuilt.index_days(50)
    rebuilt.close()  # stopped while making the by-day keys, which later records then change
    rebuilt = RocksEntries(path)
    assert not rebuilt.days_indexed
    rebuilt.apply_changelog(records[2_000:], len(records))
    while not rebuilt.index_days(50):
        pass
    rebuilt.close()
    assert _contents(path) == _contents(tmp_path / "looked-up")


def test_a_rebuilt_store_expires_and_drops_like_any_other(tmp_path: Path) -> None:
    a, b, c = b"oa\x00m\x00a", b"oa\x00m\x00b", b"ob\x00m\x00c"
    rebuilt = RocksEntries(tmp_path / "rebuilt")
    rebuilt.rebuild("kafka:test")
    rebuilt.apply_changelog([(0, a, encode_change(None, b"1", 5))], 1)
    rebuilt.apply_changelog(
        [(1, b, encode_change(None, b"1", 5)), (2, a, encode_change(b"1", b"2", 9))], 3
    )
    rebuilt.apply_changelog([(3, c, encode_change(None, b"1", 7)), (4, b, b"")], 5)
    with pytest.raises(RuntimeError, match="by-day"):
        rebuilt.keys_expiring(8, limit=100)  # not before its by-day keys are made
    assert rebuilt.index_days(100)
    assert rebuilt.keys_expiring(8, limit=100) == [c]  # a moved to day 9, b is deleted
    assert rebuilt.read_row(a) == (2, b"1", b"2")
    assert rebuilt.read_row(b) is None
    rebuilt.delete_keys([c], next_id=6)
    assert rebuilt.keys_expiring(10, limit=100) == [a]
    assert rebuilt.find() == ("kafka:test", 6)
    rebuilt.close()


def test_a_rebuild_refuses_a_record_that_is_no_index_change(tmp_path: Path) -> None:
    rebuilt = RocksEntries(tmp_path / "rebuilt")
    rebuilt.rebuild("kafka:test")
    with pytest.raises(ValueError, match="record 7"):
        rebuilt.apply_changelog([(7, b"k", b"short")], 8)
    with pytest.raises(ValueError, match="record 8"):
        rebuilt.apply_changelog([(8, b"k", encode_change(None, b"v", -1))], 9)
    rebuilt.close()
