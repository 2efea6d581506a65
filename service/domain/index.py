"""A large index of an OA's state (messages, recipients, dedup keys, idempotency answers):
entries by key, expired by buckets of their expiry so that a day change visits only what
expired, never the whole index. No I/O of its own.

Each key sits in the bucket of the expiry its value had when it was set. A value may be
changed in place later (a recipient seen again), which only ever moves its expiry forward:
`expire_before` re-checks each value it visits and moves it to its new bucket.

An entry is live while its expiry is at least the index's `limit` (or, with `keep_from`,
while its time is at least that): the last `expire_before` sets both. A value set with an
expiry already past them reads as absent at once, exactly as one read back later would.

An index may have a `source`: the entries the partition's index store holds (what the
last checkpoints wrote). Then memory holds only the entries read or changed since the last
checkpoint: a key not in memory is read from the source, and `release` drops what a
checkpoint has made durable. Such an index cannot be iterated: it does not know all its keys.

`touched` holds the keys changed, deleted or handed out for change since `take_changes`
(or `clear_touched`): what a checkpoint has to write. A value `get` or `[]` hands out may
be mutated by the fold, so it counts as touched; a read that never mutates uses `peek`.

`shared()` is a read-only view for the copies the API answers from: it shares the entries
and the source and, when such a copy is brought past a day change, treats what expired as
absent instead of removing it from the live state. `layered()` is a writable one for a
scratch copy that records are folded into: what it reads it copies, what it changes stays
in it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, ItemsView, Iterator, Mapping, MutableMapping, ValuesView
from typing import TypeVar

V = TypeVar("V")

Expiry = Callable[[V], int]
"""A value's expiry as a number (the last day it is kept, the hour of its time): the order
in which `expire_before` forgets entries."""

Source = Callable[[str], V | None]
"""The value the index store holds for a key, or None."""

NEVER = -(1 << 62)
"""The limit of an index nothing has expired yet."""


class Index(MutableMapping[str, V]):
    """Entries by key with buckets by expiry; see the module's docstring."""

    __slots__ = (
        "_buckets",
        "_deleted",
        "_entries",
        "_expiry",
        "_read_only",
        "_time",
        "horizon",
        "keep_from",
        "limit",
        "releases",
        "source",
        "touched",
    )

    def __init__(
        self,
        expiry: Expiry[V],
        entries: Mapping[str, V] | None = None,
        *,
        time: Callable[[V], int] | None = None,
    ) -> None:
        self._entries: dict[str, V] = {}
        self._buckets: dict[int, list[str]] = {}
        """Expiry -> keys set with it. A key deleted or moved may stay in an older bucket
        until that bucket is visited: a list costs a third of a set per key."""
        self._deleted: set[str] = set()
        """Keys deleted here that the source may still hold (until a checkpoint writes
        the deletion), and keys found absent from the source (`offer`)."""
        self._expiry = expiry
        self._time = time
        self._read_only = False
        self.limit = NEVER
        self.keep_from: int | None = None
        self.source: Source[V] | None = None
        self.horizon: Callable[[V], bool] | None = None
        """Whether a value is within what the partition's store keeps (see `OAState.bound`):
        one the store may have dropped reads as absent, in memory too."""
        self.touched: set[str] = set()
        self.releases = 0
        """How often `release` dropped entries: a value read from the source before one
        may be older than what was dropped, so it is not offered after it."""
        for key, value in (entries or {}).items():
            self._put(key, value)

    # --- reads --------------------------------------------------------------------------

    def live(self, value: V) -> bool:
        if self.horizon is not None and not self.horizon(value):
            return False
        return self._expiry(value) >= self.limit or self._kept(value)

    def _kept(self, value: V) -> bool:
        """Kept past its expiry by its time."""
        keep_from, time = self.keep_from, self._time
        return keep_from is not None and time is not None and time(value) >= keep_from

    def peek(self, key: str) -> V | None:
        """The value, for a read that never changes it (not counted as touched)."""
        value = self._entries.get(key)
        if value is None:
            if self.source is None or key in self._deleted:
                return None
            value = self.source(key)
            if value is None:
                return None
            self._put(key, value)  # changed in place later, it must be the one kept
        return value if self.live(value) else None

    def __getitem__(self, key: str) -> V:
        value = self.peek(key)
        if value is None:
            raise KeyError(key)
        if not self._read_only:
            self.touched.add(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.peek(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self.entries())

    def items(self) -> ItemsView[str, V]:
        return self.entries().items()

    def values(self) -> ValuesView[V]:
        return self.entries().values()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.entries() == dict(other.items())

    def entries(self) -> dict[str, V]:
        """The live entries as a plain dict (for a whole document); only an index without
        a source knows them all."""
        if self.source is not None:
            raise TypeError("an index backed by a store does not hold all its entries")
        return {k: v for k, v in self._entries.items() if self.live(v)}

    def resident(self) -> set[str]:
        """The keys held in memory (read, or changed since the last checkpoint)."""
        return set(self._entries) | self._deleted

    def offer(self, key: str, value: V | None, releases: int) -> None:
        """Hold `value` (None: the source holds no such key), read from the source off the
        loop when `releases` was the count, unless the key was set or deleted here
        meanwhile, or entries were released since (then what is here, or what was dropped,
        is newer). A key known to be absent reads as absent without asking the source
        again, until the next `release`."""
        if self.source is None or releases != self.releases:
            return
        if key in self._entries or key in self._deleted:
            return
        if value is None:
            self._deleted.add(key)
        else:
            self._put(key, value)

    # --- changes ------------------------------------------------------------------------

    def __setitem__(self, key: str, value: V) -> None:
        self._writable()
        self._put(key, value)
        self._deleted.discard(key)
        self.touched.add(key)

    def __delitem__(self, key: str) -> None:
        self._writable()
        if self.peek(key) is None:
            raise KeyError(key)
        del self._entries[key]
        self._deleted.add(key)
        self.touched.add(key)

    def clear_touched(self) -> None:
        self.touched = set()

    def touch_all(self) -> None:
        """Every entry is to be written (an index held only in memory goes to a store)."""
        self.touched = set(self.entries())

    def take_changes(self) -> dict[str, V | None]:
        """The touched keys' values (None: absent) for a checkpoint, which writes them;
        `touched` starts afresh."""
        entries, deleted = self._entries, self._deleted
        # What no longer reads as live is written as it is: reads hide it the same way,
        # and the store drops it by its expiry day. A key an expiry took out of memory
        # is not written at all: what the store holds for it is older, so it has expired
        # too, and a restore from an earlier checkpoint still needs it.
        changes = {
            key: entries.get(key) for key in self.touched if key in entries or key in deleted
        }
        self.touched = set()
        if self.source is None:
            self._deleted -= changes.keys()  # nothing to read back a deleted value from
        return changes

    def release(self) -> None:
        """A checkpoint has written everything changed before the last `take_changes`:
        drop from memory what has not been touched since (the source holds it)."""
        if self.source is None:
            raise TypeError("an index without a source holds its only copy of each entry")
        if not self._entries and not self._deleted:
            return  # an idle OA's: every checkpoint asks each OA of the partition
        touched = self.touched
        for key in [k for k in self._entries if k not in touched]:
            del self._entries[key]
        self._deleted &= touched
        self._buckets.clear()  # in place: the views share it
        for key, value in self._entries.items():
            self._buckets.setdefault(self._expiry(value), []).append(key)
        self.releases += 1

    def expire_before(self, limit: int, keep_from: int | None = None) -> None:
        """Forget the entries whose expiry is before `limit`, visiting only their buckets;
        an entry whose time is `keep_from` or later stays, to be looked at again by the
        next call. On a shared view nothing is removed: what would be reads as absent (a
        later call supersedes an earlier one, since expiry only moves forward)."""
        self.limit, self.keep_from = limit, keep_from
        if self._read_only:
            return
        buckets, entries, expiry = self._buckets, self._entries, self._expiry
        for due in sorted(b for b in buckets if b < limit):
            held: list[str] = []
            for key in buckets.pop(due):
                value = entries.get(key)
                if value is None:
                    continue  # deleted, or moved and visited from its new bucket
                moved = expiry(value)
                if moved >= limit:
                    if moved != due:
                        buckets.setdefault(moved, []).append(key)
                elif self._kept(value):
                    held.append(key)
                else:
                    del entries[key]  # the store drops the same by its expiry ranges
            if held:
                buckets.setdefault(due, []).extend(held)

    def shared(self) -> Index[V]:
        """A read-only view of the same entries (see the module's docstring)."""
        view: Index[V] = Index(self._expiry, time=self._time)
        view._entries, view._buckets, view._deleted = self._entries, self._buckets, self._deleted
        view.source, view.limit, view.keep_from = self.source, self.limit, self.keep_from
        view.horizon = self.horizon
        view._read_only = True
        return view

    def layered(self) -> Index[V]:
        """A writable view for a scratch copy (see the module's docstring). A key is read
        through to this index and its value copied (a value changed in place is a flat
        record), so nothing done to the view reaches this index; it costs what is read
        through it, whatever this index's size."""
        view: Index[V] = Index(self._expiry, time=self._time)
        view.source = self._copy_of
        view.limit, view.keep_from, view.horizon = self.limit, self.keep_from, self.horizon
        return view

    def _copy_of(self, key: str) -> V | None:
        value = self.peek(key)
        return None if value is None else copy.copy(value)

    def _put(self, key: str, value: V) -> None:
        old = self._entries.get(key)
        expiry = self._expiry(value)
        if old is None or self._expiry(old) != expiry:
            self._buckets.setdefault(expiry, []).append(key)
        self._entries[key] = value

    def _writable(self) -> None:
        if self._read_only:
            raise TypeError("a served copy shares this index with the live state: read-only")

    def __repr__(self) -> str:
        return f"Index({len(self._entries)} entries in memory)"
