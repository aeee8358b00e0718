"""Bookkeeping behind the worker's commits: which source messages still feed unpublished output,
and where the next owner of a partition picks each stream up.

Pure logic (no Kafka client, no torch) so the offset arithmetic is unit-tested on its own.

Per partition: streams → segments (a segment is a contiguous run of sample indices, see
:mod:`pipeline.stream.windowing`). Each segment remembers the source messages it was fed (offset, sample
range, timestamp) and the output chunks it published (with their acknowledgment state). The
committable offset of a partition is the smallest of: the next offset to consume, the oldest
message still needed by any segment, and every dead-letter write not yet acknowledged.

Each stream also has a :class:`Resume` entry (kept durable by the worker, see README "Delivery"):
which of its messages are done, the grid and first unpublished index of the segment the next one
continues, and the idle flushes (a wall-clock decision) the replay must repeat rather than recompute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.settings import DEFAULT_ROUTE
from pipeline.stream.windowing import StreamWindowing, classify


@dataclass(eq=False, slots=True)
class OutputRecord:
    """Something published on behalf of input messages (a cleaned chunk, an alert event, a dead
    letter): it holds back the commit until the broker acknowledges it (set from the producer's
    IO thread)."""

    start: int
    end: int
    source_ts: float | None  # ms, timestamp of the input record holding the chunk's last sample
    acked: bool = False


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a new owner picks one stream up.

    - ``offset``: the stream's messages before this offset are done (a replay skips them);
    - ``anchor``/``emit_from``: the stream's message at ``offset`` continues a segment on the grid
      ``anchor + k*hop`` whose output before ``emit_from`` is published; None: that message starts a
      new segment (the stream had finished);
    - ``flushes``: offsets (>= ``offset``) of the stream's messages after which an idle flush ended
      the segment: the replay ends it there too, so the released tail is the same;
    - ``needed``: the message at ``offset`` is input to unpublished output, so the partition's
      committed offset must not pass it (False: everything before ``offset`` is done, and a replay
      only needs the entry to know how the stream goes on).
    """

    offset: int
    anchor: int | None = None
    emit_from: int | None = None
    flushes: tuple[int, ...] = ()
    needed: bool = False


@dataclass(eq=False, slots=True)
class InputRecord:
    offset: int
    start: int
    end: int
    timestamp: float | None


def _drop_leading(items: list, done) -> None:
    """Remove the leading items for which ``done`` holds (one slice deletion)."""
    k = 0
    while k < len(items) and done(items[k]):
        k += 1
    if k:
        del items[:k]


# Per-stream objects use __slots__ and lists rather than deques (an empty deque allocates a 64-slot block):
# an open one-chunk stream is ~1.4 KB of Python objects instead of ~3.2 KB (`dae bench --many`;
# tests/test_state.py).
class Segment:
    __slots__ = ("stream", "win", "rate", "version", "route", "served", "inputs", "outputs", "gate")

    def __init__(self, stream: "StreamState", win: StreamWindowing):
        self.stream = stream
        self.win = win
        self.rate = stream.rate
        self.version: str | None = None  # model version of the last batch applied to this segment
        self.route: str = DEFAULT_ROUTE  # the route whose model serves it (pipeline.inference.routing)
        self.served: str = DEFAULT_ROUTE  # the route of the model of the last batch applied (with ``version``)
        self.inputs: list[InputRecord] = []  # oldest first
        self.outputs: list[OutputRecord] = []  # oldest first
        # The durable record of this segment's idle flush: its tail is published only once the
        # record is acknowledged (None: no record to wait for).
        self.gate: OutputRecord | None = None

    def add_input(self, offset: int, start: int, end: int, timestamp: float | None) -> None:
        self.inputs.append(InputRecord(offset, start, end, timestamp))

    def input_timestamp(self, index: int) -> float | None:
        for rec in reversed(self.inputs):
            if rec.start <= index < rec.end:
                return rec.timestamp
        return None

    def first_unpublished(self) -> int:
        """First output sample index not yet acknowledged (acked chunks are dropped from the left)."""
        _drop_leading(self.outputs, lambda rec: rec.acked)
        return self.outputs[0].start if self.outputs else self.win.emitted_until

    def needed_offset(self) -> int | None:
        """Offset of the oldest input message a replay would need, or None if none is needed."""
        if self.done():
            self.inputs.clear()
            return None
        need = self.win.needed_index(self.first_unpublished())
        _drop_leading(self.inputs, lambda rec: rec.end <= need)
        return self.inputs[0].offset if self.inputs else None

    def done(self) -> bool:
        return (
            self.win.flushed
            and self.win.pending_windows == 0
            and self.win.final_index() <= self.win.emitted_until
            and self.first_unpublished() >= self.win.emitted_until
        )


_NO_REPLAY: frozenset[int] = frozenset()
# A stream's retired/closing segments and flushes while it has none: the shared empty tuple, not an empty
# list each (56 B x 3 of an open one-chunk stream's ~1.3 KB); a list of its own once it has one.
_NONE: tuple = ()


class StreamState:
    __slots__ = ("id", "tp", "rate", "channels", "expected", "open", "retired", "closing", "last_seen",
                 "last_offset", "flushes", "replay")

    def __init__(self, stream_id: str, tp: Any):
        self.id = stream_id
        self.tp = tp
        self.rate: float = 0.0
        self.channels: int = 0
        self.expected: int | None = None  # index of the next sample we expect
        self.open: Segment | None = None
        self.retired: list[Segment] | tuple = _NONE  # flushed (or being flushed) segments with unpublished output
        self.closing: list[Segment] | tuple = _NONE  # segments to flush now (filled by route())
        self.last_seen = 0.0
        self.last_offset: int | None = None  # offset of the stream's last message routed
        self.flushes: list[int] | tuple = _NONE  # idle flushes (after these offsets) a replay must repeat
        # recorded flushes this owner has still to repeat (a set of its own once there are any)
        self.replay: set[int] | frozenset[int] = _NO_REPLAY

    def segments(self) -> list[Segment]:
        return [*self.retired, self.open] if self.open is not None else list(self.retired)

    def retire(self, seg: Segment) -> None:
        self.retired = [*self.retired, seg]

    def flushed_at(self, offset: int) -> None:
        """An idle flush after ``offset``: a replay from before it must repeat it."""
        self.flushes = [*self.flushes, offset]


@dataclass
class PartitionState:
    tp: Any
    # Resume entries read on assignment, of streams not seen again yet.
    resume: dict[str, Resume] = field(default_factory=dict)
    consumed: int | None = None  # next offset to consume
    loaded: bool = False  # committed offset and resume entries read
    start: int | None = None  # the committed offset when loaded: earlier records are not handled
    committed: int | None = None  # the last offset the broker confirmed for this partition
    # This owner has consumed everything the broker had when last asked (the worker sets it after
    # each poll): only then may a silent stream be idle-flushed. A stream whose next message waits
    # in a backlog is queued, not idle, and a replay (a backlog) must not flush where the previous
    # owner did not: the re-published values would differ.
    caught_up: bool = True
    # Entries of streams that finished (all output published, state dropped), kept until the
    # committed offset passes them: a replay from an older commit must not restart them mid-way.
    finished: dict[str, Resume] = field(default_factory=dict)
    # The entry last written (or read) per stream: only changes are written.
    durable: dict[str, Resume] = field(default_factory=dict)
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
        before the last commit; segment None), "gap", "rewind" or "format" (rate/channels changed,
        or the model serving the stream now has another window/hop): the last three retire the open
        segment into ``stream.closing`` for flushing.
        """
        stream.last_offset = offset
        r = self.resume.get(stream.id)
        if stream.open is None and stream.expected is None and r is not None:
            if offset < r.offset:
                return None, "skip"
            del self.resume[stream.id]
            stream.flushes = list(r.flushes)
            stream.replay = set(r.flushes)
            if r.anchor is not None and r.anchor <= chunk.index <= r.emit_from:
                seg = self._open(stream, chunk, window, hop, anchor=r.anchor, emit_from=r.emit_from)
                return seg, "resume"
        kind = classify(stream.expected, chunk.index)
        if stream.open is not None and (chunk.rate != stream.rate or chunk.channels != stream.channels
                                        or (stream.open.win.window, stream.open.win.hop) != (window, hop)):
            kind = "format"
        if kind == "next":
            if stream.open is not None:
                stream.expected = chunk.end
                return stream.open, "next"
            kind = "start"  # continuation after an idle flush: a new segment, nothing lost
        if stream.open is not None:
            stream.closing = [*stream.closing, stream.open]
            stream.retire(stream.open)
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
            if st.retired:
                st.retired = [s for s in st.retired if not s.done()] or _NONE
            if st.open is not None and st.open.win.flushed:
                if st.open.done():
                    st.open = None
                else:
                    st.retire(st.open)
                    st.open = None
            if st.open is None and not st.retired and not st.closing:
                del self.streams[sid]
                self.finished[sid] = Resume(st.last_offset + 1)

    def entry(self, st: StreamState) -> Resume:
        """The stream's resume entry now."""
        for seg in st.segments():  # oldest first: the segment a replay has to continue
            off = seg.needed_offset()
            if off is not None:
                st.flushes = _since(st.flushes, off)
                return Resume(off, seg.win.anchor, seg.first_unpublished(), tuple(st.flushes), needed=True)
        nxt = st.last_offset + 1
        st.flushes = _since(st.flushes, nxt)
        seg = st.open
        if seg is not None and not seg.win.flushed:  # open, but no input needed yet: continue it
            return Resume(nxt, seg.win.anchor, seg.first_unpublished(), tuple(st.flushes))
        return Resume(nxt, flushes=tuple(st.flushes))

    def committable(self) -> tuple[int, dict[str, Resume]]:
        """(offset to commit, every stream's resume entry) for this partition. The entries must be
        durable before the offset is committed (and a replay from the offset never meets a message
        of a stream without an entry that does not start a new segment there)."""
        candidates = [self.consumed] if self.consumed is not None else []
        if self.committed is not None:  # a finished stream's entry matters only to replays before it
            self.finished = {sid: r for sid, r in self.finished.items() if r.offset > self.committed}
            self.resume = {sid: r for sid, r in self.resume.items()
                           if r.anchor is not None or r.offset > self.committed}
        entries: dict[str, Resume] = dict(self.finished)
        entries.update(self.resume)  # streams not seen again yet keep their entries
        for sid, st in self.streams.items():
            if sid not in self.resume:  # (a stream still in resume was only seen in skipped messages)
                entries[sid] = self.entry(st)
        candidates.extend(e.offset for e in entries.values() if e.needed)
        for off in sorted(self.dead_letters):
            if self.dead_letters[off].acked:
                del self.dead_letters[off]
            else:
                candidates.append(off)
        self.events = [(off, rec) for off, rec in self.events if not rec.acked]
        candidates.extend(off for off, _ in self.events)
        if not candidates:
            raise ValueError(f"{self.tp}: nothing consumed yet, nothing to commit")
        return min(candidates), entries

    def changes(self, entries: dict[str, Resume]) -> list[tuple[str, Resume | None]]:
        """Entries that differ from the durable ones (None: delete), recorded as written."""
        out: list[tuple[str, Resume | None]] = [(sid, e) for sid, e in entries.items() if self.durable.get(sid) != e]
        out += [(sid, None) for sid in self.durable if sid not in entries]
        for sid, e in out:
            if e is None:
                del self.durable[sid]
            else:
                self.durable[sid] = e
        return out


def _since(flushes: list[int] | tuple, offset: int) -> list[int] | tuple:
    """The flushes at or after ``offset`` (the shared empty tuple when none)."""
    return ([o for o in flushes if o >= offset] or _NONE) if flushes else flushes
