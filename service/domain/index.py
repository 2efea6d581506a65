"""A large index of an OA's state (messages, recipients, dedup keys, idempotency answers):
entries by key, expired by buckets of their expiry so that a day change visits only what
expired, never the whole index. No I/O.

Each key sits in the bucket of the expiry its value had when it was set. A value may be
changed in place later (a recipient seen again), which only ever moves its expiry forward:
`expire_before` re-checks each value it visits and moves it to its new bucket.

`touched` holds the keys changed, deleted or handed out for change since `clear_touched`
(or since the index was built from a snapshot's entries): what a checkpoint has to write.
A value `get` or `[]` hands out may be mutated by the fold, so it counts as touched; a read
that never mutates uses `peek`. Entries that expire are not recorded there: a store keyed
by expiry drops the same ranges itself.

`shared()` is a read-only view for the copies the API answers from: it shares the entries
and, when such a copy is brought past a day change, treats what expired as absent instead
of removing it from the live state.
"""

from __future__ import annotations

from collections.abc import Callable, ItemsView, Iterator, Mapping, MutableMapping, ValuesView
from typing import TypeVar

V = TypeVar("V")

Expiry = Callable[[V], int]
"""A value's expiry as a number (the last day it is kept, the hour of its time): the order
in which `expire_before` forgets entries."""


class Index(MutableMapping[str, V]):
    """Entries by key with buckets by expiry; see the module's docstring."""

    __slots__ = ("_buckets", "_entries", "_expiry", "_gone", "_read_only", "touched")

    def __init__(self, expiry: Expiry[V], entries: Mapping[str, V] | None = None) -> None:
        self._entries: dict[str, V] = {}
        self._buckets: dict[int, list[str]] = {}
        """Expiry -> keys set with it. A key deleted or moved may stay in an older bucket
        until that bucket is visited: a list costs a third of a set per key."""
        self._expiry = expiry
        self._read_only = False
        self._gone: Callable[[V], bool] | None = None
        self.touched: set[str] = set()
        for key, value in (entries or {}).items():
            self._put(key, value)

    # --- reads --------------------------------------------------------------------------

    def peek(self, key: str) -> V | None:
        """The value, for a read that never changes it (not counted as touched)."""
        value = self._entries.get(key)
        if value is None or (self._gone is not None and self._gone(value)):
            return None
        return value

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
        if self._gone is None:
            return iter(self._entries)
        gone = self._gone
        return iter([k for k, v in self._entries.items() if not gone(v)])

    def __len__(self) -> int:
        if self._gone is None:
            return len(self._entries)
        gone = self._gone
        return sum(1 for v in self._entries.values() if not gone(v))

    def items(self) -> ItemsView[str, V]:
        return self.entries().items()

    def values(self) -> ValuesView[V]:
        return self.entries().values()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.entries() == dict(other.items())

    def entries(self) -> dict[str, V]:
        """The entries as a plain dict (for a snapshot document): a copy when this is a
        view past its live state's expiry, else the index's own dict, not to be changed."""
        if self._gone is None:
            return self._entries
        return {k: self._entries[k] for k in self}

    # --- changes ------------------------------------------------------------------------

    def __setitem__(self, key: str, value: V) -> None:
        self._writable()
        self._put(key, value)
        self.touched.add(key)

    def __delitem__(self, key: str) -> None:
        self._writable()
        del self._entries[key]
        self.touched.add(key)

    def clear_touched(self) -> None:
        self.touched = set()

    def expire_before(self, limit: int, keep: Callable[[V], bool] | None = None) -> None:
        """Forget the entries whose expiry is before `limit`, visiting only their buckets;
        an entry `keep` holds stays where it is, to be looked at again by the next call.
        On a shared view nothing is removed: what would be reads as absent (a later call
        supersedes an earlier one, since expiry only moves forward)."""
        if self._read_only:
            expiry = self._expiry
            self._gone = lambda v: expiry(v) < limit and not (keep is not None and keep(v))
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
                elif keep is not None and keep(value):
                    held.append(key)
                else:
                    del entries[key]
            if held:
                buckets.setdefault(due, []).extend(held)

    def shared(self) -> Index[V]:
        """A read-only view of the same entries (see the module's docstring)."""
        view: Index[V] = Index(self._expiry)
        view._entries, view._buckets = self._entries, self._buckets
        view._read_only, view._gone = True, self._gone
        return view

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
        return f"Index({len(self)} entries)"
