"""Read a topic of chunks (by default the cleaned one) back into whole per-stream arrays.

No consumer group: all partitions are assigned and read from the beginning, so capturing never
disturbs the workers' commits and can be repeated. Reads with ``isolation_level=read_committed`` by
default: an exactly-once worker's output counts once its transaction commits, and never when it was
aborted; an at-least-once worker writes outside transactions, which read_committed sees at once.
Chunks are assembled by sample index, so arrival order (partitions, retries, replays after a crash)
does not matter; what the report tells is whether every stream is whole (gaps), delivered more than
once (duplicates) and consistent (mismatched duplicates: the same ``(stream, index)`` with
different values).
"""

from __future__ import annotations

import bisect
import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kafka import TopicPartition

from pipeline.wire.codec import Chunk, DecodeError, decode_chunk
from pipeline.kafka.clients import make_consumer
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

# Duplicates whose values differ by more than this (absolute and relative) count as mismatched.
DUP_TOL = 1e-6
# Poll timeout: bounds how late the idle/expected/max_seconds checks run.
_POLL_MS = 200


@dataclass
class CaptureReport:
    streams: dict[str, np.ndarray]  # (frames, channels) float32 from start[s]; missing frames are NaN
    start: dict[str, int]  # lowest sample index seen
    gaps: dict[str, list[tuple[int, int]]]  # missing [a, b) between the lowest and highest index
    duplicates: dict[str, int]  # extra copies of samples already seen
    mismatched_duplicates: dict[str, int]  # of those, copies whose values differ (> DUP_TOL)
    models: dict[str, list[tuple[int, str]]]  # (first sample index, version) at each model change
    messages: int
    undecodable: int = 0  # messages that failed decode_chunk (skipped)
    channel_mismatch: dict[str, int] = field(default_factory=dict)  # chunks skipped: other channel count
    missing: list[str] = field(default_factory=list)  # streams in ``expected`` never seen
    seconds: float = 0.0
    written: list[Path] = field(default_factory=list)  # the <stream>.npy files written (out_dir)
    # (first sample index, route) at each change of the dae.route header (docs/routing.md)
    routes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"captured {self.messages} messages, {len(self.streams)} streams in {self.seconds:.1f} s"]
        for sid in sorted(self.streams):
            x = self.streams[sid]
            missing = sum(b - a for a, b in self.gaps.get(sid, []))
            line = (f"  {sid}: {x.shape[0]} frames x {x.shape[1]} ch from index {self.start[sid]}, "
                    f"{len(self.gaps.get(sid, []))} gap(s) ({missing} samples missing), "
                    f"{self.duplicates.get(sid, 0)} duplicate(s)")
            if self.mismatched_duplicates.get(sid):
                line += f" ({self.mismatched_duplicates[sid]} with different values)"
            if self.channel_mismatch.get(sid):
                line += f", {self.channel_mismatch[sid]} chunk(s) skipped (channel count changed)"
            models = self.models.get(sid)
            if models:
                line += ", model " + " → ".join(f"{v}@{i}" for i, v in models)
            lines.append(line)
        if self.missing:
            lines.append(f"  never seen: {', '.join(sorted(self.missing))}")
        if self.undecodable:
            lines.append(f"  {self.undecodable} undecodable message(s) skipped")
        if self.written:
            lines.append(f"wrote {len(self.written)} file(s) to {self.written[0].parent}")
        return "\n".join(lines)


class _Coverage:
    """Sorted disjoint [a, b) intervals seen so far (chunks mostly arrive in order: cheap merges)."""

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, a: int, b: int) -> None:
        i = bisect.bisect_left(self.ends, a)  # first interval that ends at or after a
        j = bisect.bisect_right(self.starts, b)  # intervals [i, j) touch or overlap [a, b)
        if i < j:
            a = min(a, self.starts[i])
            b = max(b, self.ends[j - 1])
        self.starts[i:j] = [a]
        self.ends[i:j] = [b]

    def covers(self, a: int, b: int) -> bool:
        i = bisect.bisect_right(self.starts, a) - 1
        return i >= 0 and self.ends[i] >= b


def safe_filename(stream: str) -> str:
    """A file name for a stream id; ids that had to change get a short hash so none collide."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stream).lstrip(".") or "_"
    if name != stream:
        name = f"{name[:200]}-{zlib.crc32(stream.encode('utf-8')):08x}"
    return name


def capture(
    k: KafkaSettings,
    *,
    topic: str | None = None,
    idle_s: float = 5.0,
    max_seconds: float | None = None,
    expected: dict[str, int] | None = None,
    out_dir: Path | None = None,
    wait: bool = True,
    read_committed: bool = True,
) -> CaptureReport:
    """Read ``topic`` (default the cleaned topic) from the beginning into per-stream arrays.

    Stops when nothing has arrived for ``idle_s`` (counted from the last message, or from the start
    while none has arrived unless ``wait``: waiting for a worker to start is normal for a caller that
    just started one), when ``max_seconds`` have passed, or as soon as every stream in ``expected``
    (stream -> sample count) covers [0, count) without gaps. ``out_dir``: also write
    ``<out_dir>/<stream>.npy`` (listed in the report's ``written``). ``read_committed=False`` also
    reads the records of open and aborted transactions (what a crashed exactly-once worker left).
    """
    topic = topic or k.clean_topic
    t0 = time.monotonic()
    deadline = t0 + max_seconds if max_seconds is not None else None
    got = _Collected(dict(expected or {}))
    last_msg: float | None = None if wait else t0

    consumer = make_consumer(k, allow_auto_create_topics=False, fetch_max_wait_ms=100,
                             isolation_level="read_committed" if read_committed else "read_uncommitted")
    try:
        assigned: set[TopicPartition] = set()
        checked = 0.0
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if last_msg is not None and now - last_msg >= idle_s:
                break
            if got.expected and not got.incomplete:
                break
            if not assigned or now - checked > 2.0:
                checked = now
                assigned = _assign_new(consumer, topic, assigned)
                if not assigned:
                    time.sleep(min(0.5, _POLL_MS / 1000))
                    continue
            batch = consumer.poll(timeout_ms=_POLL_MS)
            if not batch:
                continue
            last_msg = time.monotonic()
            for records in batch.values():
                for m in records:
                    got.add(m)
    finally:
        consumer.close()

    rep = CaptureReport(streams={}, start={}, gaps={}, duplicates={}, mismatched_duplicates={}, models={},
                        messages=got.messages, undecodable=got.undecodable,
                        missing=[s for s in got.expected if s not in got.chunks])
    for sid, cs in got.chunks.items():
        _assemble(rep, sid, cs)
    rep.seconds = time.monotonic() - t0
    if out_dir is not None:
        write_streams(rep, Path(out_dir))
    return rep


def _assign_new(consumer, topic: str, assigned: set[TopicPartition]) -> set[TopicPartition]:
    """(Re)assign when the topic appears or gains partitions; new ones are read from the beginning."""
    tps = {TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()}
    if tps - assigned:
        consumer.assign(sorted(tps, key=lambda tp: tp.partition))
        consumer.seek_to_beginning(*(tps - assigned))
        return tps
    return assigned


class _Collected:
    """The chunks read so far by stream, and which ``expected`` streams are not yet covered."""

    def __init__(self, expected: dict[str, int]):
        self.expected = expected
        self.incomplete = {s for s, n in expected.items() if n > 0}
        self.chunks: dict[str, list[Chunk]] = {}
        self.coverage: dict[str, _Coverage] = {}
        self.messages = self.undecodable = 0

    def add(self, m) -> None:
        self.messages += 1
        try:
            c = decode_chunk(m.key, m.value, m.headers, check_finite=False)
        except DecodeError as exc:
            self.undecodable += 1
            log.warning("%s[%d]@%d: undecodable, skipped: %s", m.topic, m.partition, m.offset, exc)
            return
        self.chunks.setdefault(c.stream, []).append(c)
        cov = self.coverage.setdefault(c.stream, _Coverage())
        cov.add(c.index, c.end)
        if c.stream in self.incomplete and cov.covers(0, self.expected[c.stream]):
            self.incomplete.discard(c.stream)


def write_streams(rep: CaptureReport, out_dir: Path) -> None:
    """``<out_dir>/<stream>.npy`` for every captured stream, listed in ``rep.written``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for sid, x in rep.streams.items():
        path = out_dir / f"{safe_filename(sid)}.npy"
        np.save(path, x)
        rep.written.append(path)


def _assemble(rep: CaptureReport, sid: str, cs: list[Chunk]) -> None:
    """Place one stream's chunks by index: numpy slices per chunk, never a loop per sample."""
    order = sorted(range(len(cs)), key=lambda i: (cs[i].index, i))  # ties keep arrival order
    cs = [cs[i] for i in order]
    channels = cs[0].channels
    skipped = sum(1 for c in cs if c.channels != channels)
    if skipped:
        rep.channel_mismatch[sid] = skipped
        cs = [c for c in cs if c.channels == channels]
    lo = cs[0].index
    hi = max(c.end for c in cs)
    out = np.full((hi - lo, channels), np.nan, dtype=np.float32)
    seen = np.zeros(hi - lo, dtype=bool)
    dups = mismatched = 0
    models: list[tuple[int, str]] = []
    routes: list[tuple[int, str]] = []
    for c in cs:
        a, b = c.index - lo, c.end - lo
        s = seen[a:b]
        if s.any():
            # Overlap with earlier chunks: compare the repeated frames, keep the first copy.
            prev, new = out[a:b][s], c.samples[s]
            dups += int(s.sum())
            mismatched += int(np.count_nonzero(
                ~np.isclose(prev, new, rtol=DUP_TOL, atol=DUP_TOL, equal_nan=True).all(axis=1)))
            fresh = ~s
            out[a:b][fresh] = c.samples[fresh]
        else:
            out[a:b] = c.samples
        seen[a:b] = True
        if c.model is not None and (not models or models[-1][1] != c.model):
            models.append((c.index, c.model))
        if c.route is not None and (not routes or routes[-1][1] != c.route):
            routes.append((c.index, c.route))
    # Gaps: runs of unseen frames, found from the edges of the boolean mask.
    edges = np.diff(np.concatenate([[False], ~seen, [False]]).astype(np.int8))
    gap_starts = np.flatnonzero(edges == 1)
    gap_ends = np.flatnonzero(edges == -1)
    rep.streams[sid] = out
    rep.start[sid] = lo
    rep.gaps[sid] = [(int(a) + lo, int(b) + lo) for a, b in zip(gap_starts, gap_ends)]
    rep.duplicates[sid] = dups
    rep.mismatched_duplicates[sid] = mismatched
    rep.models[sid] = models
    rep.routes[sid] = routes
