"""The replay cache of signed requests: nonces seen recently, with a quota per key.

Rules:
- A nonce is kept until its request's timestamp leaves the window (its
  expiry, rounded up to the second: kept up to a second longer, never shorter).
- Each key holds at most ``per_key`` live nonces and the cache ``max_entries``:
  a key over its quota gets 503 rather than a forgotten nonce (which would
  allow a replay), and with ``per_key`` x keys <= ``max_entries`` (what
  ``[auth]`` enforces) no key's nonces can take another key's room.
"""

from __future__ import annotations

import heapq
import math

from pymgr.errors import Unavailable

__all__ = ["NonceCache"]


class NonceCache:
    """Nonces seen recently, each until its expiry; at most ``per_key`` live ones per key id.

    Entries are grouped by their expiry second (rounded up: a nonce may be
    remembered up to a second longer, never shorter); a heap of those seconds
    finds what to forget, so an add costs O(1) plus O(log seconds in the window).
    The whole cache holds at most ``max_entries``; with ``per_key`` x keys
    <= ``max_entries`` (what ``[auth]`` enforces) only the per-key quota is
    ever reached, so one key filling its own quota refuses no one else.

    Raises:
        ValueError: ``max_entries`` or ``per_key`` is not positive.
    """

    def __init__(self, max_entries: int, per_key: int | None = None) -> None:
        per_key = max_entries if per_key is None else per_key
        if max_entries < 1 or per_key < 1:
            raise ValueError(f"max_entries and per_key must be positive, not {max_entries} and {per_key}")
        self.max_entries = max_entries
        self.per_key = per_key
        self._seen: set[str] = set()
        self._by_second: dict[int, list[str]] = {}
        self._seconds: list[int] = []
        self._per_key: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def count(self, key_id: str) -> int:
        """Live nonces of one key (for tests and metrics)."""
        return self._per_key.get(key_id, 0)

    def seen(self, key_id: str, nonce: str, now: float) -> bool:
        """Whether the nonce is remembered (a replay), without storing anything."""
        if self._seconds and self._seconds[0] < now:
            self._evict(now)
        return f"{key_id}\x00{nonce}" in self._seen

    def add(self, key_id: str, nonce: str, expires_at: float, now: float) -> bool:
        """Remember a nonce; False if it is already there (a replay).

        Raises:
            Unavailable: the key's quota (or the whole cache) is full of nonces that have not expired.
        """
        if self._seconds and self._seconds[0] < now:
            self._evict(now)
        entry = f"{key_id}\x00{nonce}"  # NUL is in neither: the pair is unambiguous
        if entry in self._seen:
            return False
        held = self._per_key.get(key_id, 0)
        if held >= self.per_key or len(self._seen) >= self.max_entries:
            raise self._full(key_id, held)
        self._seen.add(entry)
        self._per_key[key_id] = held + 1
        second = math.ceil(expires_at)
        bucket = self._by_second.get(second)
        if bucket is None:
            self._by_second[second] = [entry]
            heapq.heappush(self._seconds, second)
        else:
            bucket.append(entry)
        return True

    def _full(self, key_id: str, held: int) -> Unavailable:
        if held >= self.per_key and len(self._seen) < self.max_entries:
            return Unavailable(
                f"key {key_id!r} has {held} live nonces, its quota (nonce_quota_per_key={self.per_key}); retry "
                "in a few seconds, send timestamps close to the server's time (their nonces expire sooner), "
                "or raise [auth] nonce_quota_per_key",
                details={"limit": self.per_key},
            )
        return Unavailable(
            f"the nonce cache is full ({self.max_entries} live nonces, nonce_cache_max); retry in a few "
            "seconds, or raise [auth] nonce_cache_max",
            details={"limit": self.max_entries},
        )

    def _evict(self, now: float) -> None:
        seconds, per_key = self._seconds, self._per_key
        while seconds and seconds[0] < now:
            expired = self._by_second.pop(heapq.heappop(seconds))
            self._seen.difference_update(expired)
            for entry in expired:
                key_id = entry[: entry.index("\x00")]
                left = per_key[key_id] - 1
                if left:
                    per_key[key_id] = left
                else:
                    del per_key[key_id]
