"""Per-stream windowing and weighted overlap-add. Pure numpy: no Kafka, no torch.

A *segment* is a run of contiguous sample indices of one stream. Windows of W frames start on a
grid ``anchor + k*H`` (the anchor is where the segment started). Model outputs are recombined by
normalised weighted overlap-add::

    y[n] = sum_k w[n - s_k] * out_k[n - s_k] / sum_k w[n - s_k]

with the half-sample-shifted periodic Hann ``w[i] = sin^2(pi * (i + 0.5) / W)``. It sums to exactly
W/(2H) wherever the grid fully covers n (any H dividing W/2), so the steady state has no seams,
and it is strictly positive, so the first H samples of a segment (covered by one window) are well
defined without padding. The tail is released by :meth:`StreamWindowing.flush`, which adds the
next grid window reflect-padded past the last sample (also for a segment shorter than W).

Because window positions depend only on the anchor and the data, any chunking of the same
segment yields the same windows: streaming output equals offline whole-signal output.

Resume after a restart or a rebalance: a new owner that knows the segment's ``anchor`` and the
first sample index not yet published (``emit_from``) and starts from a message at or before
``needed_index(emit_from)`` reproduces every output sample from ``emit_from`` on exactly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np


def synthesis_window(window: int) -> np.ndarray:
    i = np.arange(window, dtype=np.float64)
    return np.sin(np.pi * (i + 0.5) / window) ** 2


def default_hop(window: int) -> int:
    return window // 2


def validate_geometry(window: int, hop: int) -> None:
    if window < 2:
        raise ValueError(f"window must be at least 2 samples, got {window}")
    if not 1 <= hop <= window:
        raise ValueError(f"hop must be in [1, window={window}], got {hop}")


@dataclass(frozen=True, slots=True)
class Window:
    start: int  # sample index of the window's first frame
    data: np.ndarray  # (W, channels) float32, owned copy


@dataclass(frozen=True, slots=True)
class OutputChunk:
    start: int  # sample index of the first frame
    samples: np.ndarray  # (frames, channels) float32

    @property
    def end(self) -> int:
        return self.start + int(self.samples.shape[0])


class StreamWindowing:
    """Window cutter plus overlap-add accumulator for one segment of one stream."""

    def __init__(
        self,
        window: int,
        hop: int,
        channels: int,
        start: int,
        *,
        anchor: int | None = None,
        emit_from: int | None = None,
    ):
        validate_geometry(window, hop)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        anchor = start if anchor is None else anchor
        if anchor > start:
            raise ValueError(f"anchor {anchor} lies after the segment's first sample {start}")
        self.window, self.hop, self.channels = window, hop, channels
        self.anchor = anchor
        # First grid point at or after `start`: frames before it only feed windows we cannot cut.
        self.first = anchor + -(-(start - anchor) // hop) * hop
        self.start = start
        self.end = start  # next expected sample index
        self.emit_from = max(start, emit_from if emit_from is not None else start)
        self._w = synthesis_window(window)
        self._buf = np.empty((0, channels), dtype=np.float32)
        self._buf_start = self.first
        self._next_win = self.first
        self._pending: deque[int] = deque()  # starts of windows cut but whose output is not added
        self._acc = np.zeros((0, channels), dtype=np.float64)
        self._wsum = np.zeros(0, dtype=np.float64)
        self._acc_start = self.first
        self.flushed = False
        self.emitted_until = self.emit_from  # sample index after the last output released

    # ----------------------------------------------------------------------------- cutting
    def feed(self, frames: np.ndarray) -> list[Window]:
        """Append the next frames (the caller guarantees they start at ``self.end``)."""
        if self.flushed:
            raise RuntimeError("feed() after flush(): start a new segment")
        frames = np.asarray(frames)
        if frames.ndim == 1:
            frames = frames[:, None]
        if frames.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channel(s), got {frames.shape[1]}")
        n = frames.shape[0]
        skip = min(n, max(0, self._buf_start - self.end))  # resume: frames before the grid
        self.end += n
        if skip < n:
            self._buf = np.concatenate((self._buf, frames[skip:].astype(np.float32, copy=False)))
        windows = []
        W, H = self.window, self.hop
        while self._next_win + W <= self.end:
            off = self._next_win - self._buf_start
            windows.append(Window(self._next_win, self._buf[off : off + W].copy()))
            self._pending.append(self._next_win)
            self._next_win += H
        # Keep only what future grid windows (and the padded flush window) need.
        keep_from = max(self._buf_start, self._next_win)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start :]
            self._buf_start = keep_from
        return windows

    def flush(self) -> list[Window]:
        """Release the tail: at most one final grid window, reflect-padded past the last sample."""
        if self.flushed:
            return []
        self.flushed = True
        W = self.window
        covered = self._next_win - self.hop + W if self._next_win > self.first else self.first
        if self.end <= covered:
            return []
        s = self._next_win
        real = self._buf[s - self._buf_start :]
        mode = "reflect" if real.shape[0] > 1 else "edge"
        data = np.pad(real, ((0, W - real.shape[0]), (0, 0)), mode=mode).astype(np.float32)
        self._pending.append(s)
        self._buf = self._buf[:0]
        return [Window(s, data)]

    # ----------------------------------------------------------------------- overlap-add
    def add_output(self, start: int, out: np.ndarray) -> None:
        """Accumulate the model's output for the window that started at ``start``."""
        try:
            self._pending.remove(start)
        except ValueError:
            raise ValueError(f"no pending window starts at {start}") from None
        out = np.asarray(out)
        if out.ndim == 1:
            out = out[:, None]
        lo = start - self._acc_start
        hi = lo + self.window
        if hi > self._acc.shape[0]:
            grow = hi - self._acc.shape[0]
            self._acc = np.concatenate((self._acc, np.zeros((grow, self.channels))))
            self._wsum = np.concatenate((self._wsum, np.zeros(grow)))
        self._acc[lo:hi] += self._w[:, None] * out
        self._wsum[lo:hi] += self._w

    def final_index(self) -> int:
        """Every output sample below this index is final (no pending or future window covers it)."""
        if self._pending:
            return min(self._pending)
        return self.end if self.flushed else self._next_win

    def ready(self) -> OutputChunk | None:
        """Pop the output that became final since the last call (only samples >= emit_from)."""
        f = min(self.final_index(), self.end)
        n = f - self._acc_start
        if n <= 0:
            return None
        out = (self._acc[:n] / self._wsum[:n, None]).astype(np.float32)
        start = self._acc_start
        self._acc = self._acc[n:]
        self._wsum = self._wsum[n:]
        self._acc_start = f
        if start < self.emit_from:
            cut = min(n, self.emit_from - start)
            out, start = out[cut:], start + cut
        if out.shape[0] == 0:
            return None
        self.emitted_until = start + out.shape[0]
        return OutputChunk(start, out)

    @property
    def pending_windows(self) -> int:
        return len(self._pending)

    def needed_index(self, unpublished_from: int) -> int:
        """Oldest input sample a replay needs to reproduce outputs from ``unpublished_from`` on.

        That is the first grid window overlapping that output sample (never before ``first``).
        Commit the offset of the message holding this sample, and store ``anchor`` and
        ``unpublished_from`` with it (see :class:`ResumePoint`).
        """
        W, H = self.window, self.hop
        k = max(0, (unpublished_from - W - self.anchor) // H + 1)
        return max(self.first, self.anchor + k * H)


@dataclass(frozen=True, slots=True)
class ResumePoint:
    anchor: int  # grid anchor of the segment
    emit_from: int  # first output sample index not yet published


def classify(expected: int | None, index: int) -> str:
    """Gap/rewind policy for a chunk starting at ``index`` when ``expected`` was next.

    - "start": no open segment for this stream;
    - "next": contiguous, append;
    - "gap": samples were skipped: flush the open segment, start a new one at ``index``;
    - "rewind": the index went back (restarted producer): flush, start a new segment at ``index``.
    Gaps and rewinds are counted by the caller, never glued silently.
    """
    if expected is None:
        return "start"
    if index == expected:
        return "next"
    return "gap" if index > expected else "rewind"


def denoise_offline(
    signal: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    window: int,
    hop: int,
    start: int = 0,
) -> np.ndarray:
    """Whole-signal reference: all windows of one segment through ``fn`` at once, then overlap-add.

    ``fn`` maps (N, W, C) float32 to (N, W, C). Returns the cleaned signal shaped like ``signal``.
    """
    x = np.asarray(signal, dtype=np.float32)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    st = StreamWindowing(window, hop, x.shape[1], start)
    wins = st.feed(x) + st.flush()
    outs = fn(np.stack([w.data for w in wins])) if wins else np.empty((0, window, x.shape[1]))
    for w, o in zip(wins, outs):
        st.add_output(w.start, o)
    chunk = st.ready()
    y = chunk.samples if chunk is not None else np.empty((0, x.shape[1]), np.float32)
    assert y.shape[0] == x.shape[0], (y.shape, x.shape)
    return y[:, 0] if squeeze else y
