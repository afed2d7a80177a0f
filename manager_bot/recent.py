"""A dict that keeps only the most recently used entries: for what the manager remembers
per user, which would otherwise grow with every user the bot has ever seen."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
_MISSING = object()

# Per-user memory of the manager: what it costs to forget one is a read of the database
# (or, for the rate limit, a user's count starting afresh). 50,000 small entries are a
# few megabytes; a user seen again after 50,000 others is read anew.
PER_USER = 50_000


class Recent(Generic[K, V]):
    """At most `size` entries; reading or writing one makes it the newest, and adding one
    beyond `size` forgets the oldest. Only what the callers use of a dict."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = PER_USER) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._size = size

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def __getitem__(self, key: K) -> V:
        value = self._entries[key]
        self._entries.move_to_end(key)
        return value

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: V) -> V: ...
    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._entries.get(key, _MISSING)
        if value is _MISSING:
            return default
        self._entries.move_to_end(key)
        return value  # type: ignore[return-value]

    def __setitem__(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._entries.pop(key, default)
