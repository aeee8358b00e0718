"""Micro-batcher: windows from all streams, closed at ``max_batch`` windows or ``max_delay``
after the first window entered, whichever comes first. Pure logic; the clock is injectable.

Items are blocks of windows (one block per input chunk); a block is never split, so a batch may
exceed ``max_batch`` only when a single chunk alone holds more windows than that.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Hashable


class MicroBatcher:
    def __init__(self, max_batch: int, max_delay_s: float, clock: Callable[[], float] = time.monotonic):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._items: deque[tuple[Hashable, Any, int, float]] = deque()
        self._windows = 0
        self.last_wait = 0.0  # seconds the last batch taken waited: its first item's enqueue -> take()

    def __len__(self) -> int:
        """Windows waiting."""
        return self._windows

    def add(self, key: Hashable, item: Any, windows: int = 1) -> None:
        self._items.append((key, item, windows, self._clock()))
        self._windows += windows

    def time_left(self) -> float | None:
        """Seconds until the oldest item's deadline (0 if due now), None when empty."""
        if not self._items:
            return None
        if self._windows >= self.max_batch:
            return 0.0
        return max(0.0, self._items[0][3] + self.max_delay_s - self._clock())

    def due(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0.0

    def take(self) -> list[tuple[Hashable, Any]]:
        """Remove and return items in arrival order, up to ``max_batch`` windows (at least one item)."""
        out, n = [], 0
        if self._items:
            self.last_wait = max(0.0, self._clock() - self._items[0][3])
        while self._items and (not out or n + self._items[0][2] <= self.max_batch):
            key, item, w, _ = self._items.popleft()
            out.append((key, item))
            n += w
        self._windows -= n
        return out

    def drop(self, predicate: Callable[[Hashable], bool]) -> int:
        """Discard the items whose key matches (e.g. streams of revoked partitions); returns windows dropped."""
        kept = deque(x for x in self._items if not predicate(x[0]))
        dropped = self._windows - sum(x[2] for x in kept)
        self._items = kept
        self._windows -= dropped
        return dropped
