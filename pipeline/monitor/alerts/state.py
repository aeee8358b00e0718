"""Per-stream alert state, one update call's windows, and the bookkeeping the steps share (pure numpy)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.terms import Robust


@dataclass
class StreamState:
    stats: dict[str, Robust]  # term -> its running statistics
    slow: dict[str, deque] = field(default_factory=dict)  # feature -> its last slow_windows values
    last_start: int | None = None
    recent: deque = field(default_factory=deque)  # (start, score, hot) of the last n windows
    active: bool = False
    alert_start: int = 0
    alert_end: int = 0
    alert_peak: float = 0.0
    below: int = 0  # consecutive windows below resolve_threshold while active
    cooldown: int = 0  # windows left in which no alert may be raised
    in_alert: int = 0  # windows seen during the current alert (for alert_admit_every)
    quiet: int = 0  # consecutive windows neither hot nor in an alert
    fast_below: int = 0  # consecutive windows whose per-window score is below resolve_threshold
    range_done: bool = False  # the per-window evidence of the current alert has resolved


class Batch:
    """One update call's inputs (per window) and outputs, shared by the steps."""

    __slots__ = ("stream", "starts", "window", "finite", "values", "log_err", "score", "zs", "act", "events",
                 "ts", "names", "_stacked", "bad")

    def __init__(self, stream: str, starts: np.ndarray, window: int, finite: np.ndarray,
                 values: dict[str, np.ndarray], log_err: np.ndarray, score: np.ndarray,
                 zs: dict[str, np.ndarray], act: np.ndarray, events: list[AlertEvent], ts: float):
        self.stream, self.starts, self.window, self.finite = stream, starts, window, finite
        self.values, self.log_err, self.score, self.zs, self.act = values, log_err, score, zs, act
        self.events, self.ts = events, ts
        self.names = tuple(values)
        self._stacked: np.ndarray | None = None
        # Windows the vectorised paths never take: non-finite, or not after the previous one (rewind).
        bad = ~finite
        bad[1:] |= starts[1:] <= starts[:-1]
        self.bad = np.flatnonzero(bad)

    def rows(self) -> np.ndarray:
        """The per-window values as one ``(len(names), N)`` matrix (stacked on first use)."""
        if self._stacked is None:
            self._stacked = np.stack([self.values[t] for t in self.names])
        return self._stacked


def run_length(st: StreamState, b: Batch, a: int) -> int:
    """How many windows from ``a`` on are ordinary (finite, after the previous one) for a stream with
    no alert up; 0 when the stream has an alert up or window ``a`` is not ordinary."""
    if st.active or not b.finite[a] or (st.last_start is not None and int(b.starts[a]) <= st.last_start):
        return 0
    k = int(np.searchsorted(b.bad, a, side="right"))
    return (int(b.bad[k]) if k < b.bad.size else b.starts.size) - a


def record_quiet_run(st: StreamState, b: Batch, a: int, n: int, sc: np.ndarray, zs: dict[str, np.ndarray],
                     n_recent: int) -> None:
    """Record windows ``[a, a + n)`` of a run none of which is hot and no alert is up: scores and
    terms into the batch's outputs, the debounce history, last start, cooldown and quiet counters
    (what the scalar step does window by window for such windows)."""
    end = a + n
    b.score[a:end] = sc[:n]
    for t, zz in zs.items():
        b.zs[t][a:end] = zz[:n]
    starts = b.starts
    for i in range(max(0, n - n_recent), n):
        st.recent.append((int(starts[a + i]), float(sc[i]), False))
    while len(st.recent) > n_recent:
        st.recent.popleft()
    st.last_start = int(starts[end - 1])
    st.cooldown = max(0, st.cooldown - n)
    st.quiet += n
