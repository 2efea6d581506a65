"""A bounded cache of resolved index values, in memory, shared by a process's stores.

Bounded by an estimate of its bytes (keys, values and a fixed overhead per
entry), evicting the least recently used. An absent entry (None) is cached too:
most lookups of a new recipient find nothing. Entries are kept per `scope`, a
number each store takes when it opens, so a store reopened after a restore
never sees values cached before it; the stale ones simply age out.
"""

from __future__ import annotations

from collections import OrderedDict


class ValueCache:
    OVERHEAD = 120
    """Bytes a cached entry costs beyond its key and value (tuple, dict slot, objects)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[int, bytes], bytes | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, scope: int, key: bytes) -> tuple[bool, bytes | None]:
        """(True, value) when cached, else (False, None)."""
        entry = (scope, key)
        try:
            value = self._entries[entry]
        except KeyError:
            return False, None
        self._entries.move_to_end(entry)
        return True, value

    def put(self, scope: int, key: bytes, value: bytes | None) -> None:
        entry = (scope, key)
        self.pop(scope, key)
        cost = self._cost(key, value)
        if cost > self.max_bytes:
            return
        self._entries[entry] = value
        self.bytes += cost
        while self.bytes > self.max_bytes:
            (_, old_key), old_value = self._entries.popitem(last=False)
            self.bytes -= self._cost(old_key, old_value)

    def pop(self, scope: int, key: bytes) -> None:
        entry = (scope, key)
        if entry in self._entries:
            self.bytes -= self._cost(key, self._entries.pop(entry))

    def _cost(self, key: bytes, value: bytes | None) -> int:
        return self.OVERHEAD + len(key) + (len(value) if value is not None else 0)
