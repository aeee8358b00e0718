"""Micro-batcher: windows from all streams, closed at ``max_batch`` windows or ``max_delay``
after the first window entered, whichever comes first. Pure logic; the clock is injectable."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Hashable, Iterable


class MicroBatcher:
    def __init__(self, max_batch: int, max_delay_s: float, clock: Callable[[], float] = time.monotonic):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._items: deque[tuple[Hashable, Any, float]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: Hashable, item: Any) -> None:
        self._items.append((key, item, self._clock()))

    def extend(self, key: Hashable, items: Iterable[Any]) -> None:
        now = self._clock()
        self._items.extend((key, it, now) for it in items)

    def time_left(self) -> float | None:
        """Seconds until the oldest item's deadline (0 if due now), None when empty."""
        if not self._items:
            return None
        if len(self._items) >= self.max_batch:
            return 0.0
        return max(0.0, self._items[0][2] + self.max_delay_s - self._clock())

    def due(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0.0

    def take(self) -> list[tuple[Hashable, Any]]:
        """Remove and return up to ``max_batch`` items in arrival order."""
        n = min(self.max_batch, len(self._items))
        return [self._items.popleft()[:2] for _ in range(n)]

    def drop(self, predicate: Callable[[Hashable], bool]) -> int:
        """Discard the items whose key matches (e.g. streams of revoked partitions)."""
        kept = deque(x for x in self._items if not predicate(x[0]))
        dropped = len(self._items) - len(kept)
        self._items = kept
        return dropped
