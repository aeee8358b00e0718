"""Bookkeeping behind the worker's commits: which source messages still feed unpublished output.

Pure logic (no Kafka client, no torch) so the offset arithmetic is unit-tested on its own.

Per partition: streams → segments (a segment is a contiguous run of sample indices, see
:mod:`pipeline.stream.windowing`). Each segment remembers the source messages it was fed (offset, sample
range, timestamp) and the output chunks it published (with their acknowledgment state). The
committable offset of a partition is the smallest of: the next offset to consume, the oldest
message still needed by any segment, and every dead-letter write not yet acknowledged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pipeline.stream.windowing import StreamWindowing, classify


@dataclass(eq=False)
class OutputRecord:
    """Something published on behalf of input messages (a cleaned chunk, an alert event, a dead
    letter): it holds back the commit until the broker acknowledges it (set from the producer's
    IO thread)."""

    start: int
    end: int
    source_ts: float | None  # ms, timestamp of the input record holding the chunk's last sample
    acked: bool = False


@dataclass(eq=False)
class InputRecord:
    offset: int
    start: int
    end: int
    timestamp: float | None


class Segment:
    def __init__(self, stream: "StreamState", win: StreamWindowing):
        self.stream = stream
        self.win = win
        self.rate = stream.rate
        self.version: str | None = None  # model version of the last batch applied to this segment
        self.inputs: deque[InputRecord] = deque()
        self.outputs: deque[OutputRecord] = deque()

    def add_input(self, offset: int, start: int, end: int, timestamp: float | None) -> None:
        self.inputs.append(InputRecord(offset, start, end, timestamp))

    def input_timestamp(self, index: int) -> float | None:
        for rec in reversed(self.inputs):
            if rec.start <= index < rec.end:
                return rec.timestamp
        return None

    def first_unpublished(self) -> int:
        """First output sample index not yet acknowledged (acked chunks are dropped from the left)."""
        while self.outputs and self.outputs[0].acked:
            self.outputs.popleft()
        return self.outputs[0].start if self.outputs else self.win.emitted_until

    def needed_offset(self) -> int | None:
        """Offset of the oldest input message a replay would need, or None if none is needed."""
        if self.done():
            self.inputs.clear()
            return None
        need = self.win.needed_index(self.first_unpublished())
        while self.inputs and self.inputs[0].end <= need:
            self.inputs.popleft()
        return self.inputs[0].offset if self.inputs else None

    def done(self) -> bool:
        return (
            self.win.flushed
            and self.win.pending_windows == 0
            and self.win.final_index() <= self.win.emitted_until
            and self.first_unpublished() >= self.win.emitted_until
        )


class StreamState:
    def __init__(self, stream_id: str, tp: Any):
        self.id = stream_id
        self.tp = tp
        self.rate: float = 0.0
        self.channels: int = 0
        self.expected: int | None = None  # index of the next sample we expect
        self.open: Segment | None = None
        self.retired: list[Segment] = []  # flushed (or being flushed) segments with unpublished output
        self.closing: list[Segment] = []  # segments to flush now (filled by route())
        self.last_seen = 0.0

    def segments(self) -> list[Segment]:
        return self.retired + ([self.open] if self.open is not None else [])


@dataclass
class PartitionState:
    tp: Any
    # From the last commit's metadata: stream -> (offset, anchor, first unpublished index).
    resume: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    consumed: int | None = None  # next offset to consume
    loaded: bool = False  # resume points read from the committed offset's metadata
    streams: dict[str, StreamState] = field(default_factory=dict)
    # Dead-letter writes by source offset; an unacknowledged one (failed ones stay so) holds the commit.
    dead_letters: dict[int, OutputRecord] = field(default_factory=dict)
    # Alert events sent but not yet acknowledged, each with the offset the commit must not pass.
    events: list[tuple[int, OutputRecord]] = field(default_factory=list)

    def stream(self, stream_id: str) -> StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            st = self.streams[stream_id] = StreamState(stream_id, self.tp)
        return st

    def route(self, stream: StreamState, chunk, offset: int, window: int, hop: int) -> tuple[Segment | None, str]:
        """Pick (or open) the segment for ``chunk``; returns (segment, kind).

        kind: "next" (contiguous), "start" (new stream or after an idle flush), "resume" (first
        chunk after a restart/rebalance, continuing a committed segment), "skip" (published
        before the last commit; segment None), "gap", "rewind" or "format" (rate/channels
        changed): the last three retire the open segment into ``stream.closing`` for flushing.
        """
        r = self.resume.get(stream.id)
        if stream.open is None and stream.expected is None and r is not None:
            r_offset, anchor, emit_from = r
            if offset < r_offset:
                return None, "skip"
            del self.resume[stream.id]
            if anchor <= chunk.index <= emit_from:
                seg = self._open(stream, chunk, window, hop, anchor=anchor, emit_from=emit_from)
                return seg, "resume"
        kind = classify(stream.expected, chunk.index)
        if stream.open is not None and (chunk.rate != stream.rate or chunk.channels != stream.channels):
            kind = "format"
        if kind == "next":
            if stream.open is not None:
                stream.expected = chunk.end
                return stream.open, "next"
            kind = "start"  # continuation after an idle flush: a new segment, nothing lost
        if stream.open is not None:
            stream.closing.append(stream.open)
            stream.retired.append(stream.open)
            stream.open = None
        return self._open(stream, chunk, window, hop), kind

    def _open(self, stream: StreamState, chunk, window: int, hop: int, **resume) -> Segment:
        win = StreamWindowing(window, hop, chunk.channels, chunk.index, **resume)
        stream.rate, stream.channels = chunk.rate, chunk.channels
        seg = Segment(stream, win)
        stream.open = seg
        stream.expected = chunk.end
        return seg

    def forget_finished(self) -> None:
        """Drop finished segments, and streams with nothing left in flight."""
        for sid in list(self.streams):
            st = self.streams[sid]
            st.retired = [s for s in st.retired if not s.done()]
            if st.open is not None and st.open.win.flushed:
                if st.open.done():
                    st.open = None
                else:
                    st.retired.append(st.open)
                    st.open = None
            if st.open is None and not st.retired and not st.closing:
                del self.streams[sid]

    def committable(self) -> tuple[int, dict[str, list[int]]]:
        """(offset to commit, resume metadata) for this partition."""
        candidates = [self.consumed] if self.consumed is not None else []
        meta: dict[str, list[int]] = {}
        for sid, st in self.streams.items():
            for seg in st.segments():
                off = seg.needed_offset()
                if off is None:
                    continue
                candidates.append(off)
                if sid not in meta:
                    meta[sid] = [off, seg.win.anchor, seg.first_unpublished()]
        for sid, r in self.resume.items():  # committed streams not seen again yet: keep them
            if sid not in meta:
                candidates.append(r[0])
                meta[sid] = list(r)
        for off in sorted(self.dead_letters):
            if self.dead_letters[off].acked:
                del self.dead_letters[off]
            else:
                candidates.append(off)
        self.events = [(off, rec) for off, rec in self.events if not rec.acked]
        candidates.extend(off for off, _ in self.events)
        if not candidates:
            raise ValueError(f"{self.tp}: nothing consumed yet, nothing to commit")
        return min(candidates), meta
