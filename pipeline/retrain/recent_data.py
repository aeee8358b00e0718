"""Training data from a Kafka topic of raw chunks: the last N seconds or the last N samples per stream.

``read_topic`` reads the wire format of ``pipeline.wire.codec`` from **every partition without a consumer
group** (``assign`` + ``seek``: nothing is committed, the workers' group is never joined or
rebalanced, and a read can be repeated). Where it starts:

- ``last_seconds=T``: per partition, the first offset whose message timestamp is at or after
  now − T (``offsets_for_times``; the timestamp is the producer's create time unless the topic uses
  log-append time). That is "what arrived in the last T seconds", not T seconds of signal.
- ``last_samples=N``: the newest N frames of every stream. Kafka cannot seek by sample, so each
  partition is read backwards in growing steps from its end (first a small tail, then an estimate
  from the frames per message seen so far, at least doubling each time) until every stream seen has
  N frames or the partition's beginning is reached.
- both: start at now − T, then keep each stream's last N frames; neither: the whole retained topic.

It stops at the end offsets taken when the read starts (messages published meanwhile are not
waited for), so a read of a busy topic still terminates.

Assembly (per stream key): chunks are placed by their ``dae.index`` header, so partition and arrival
order do not matter; a frame delivered twice (producer retries, replays) is kept once (the first
copy read). **Gaps** (indices never seen, e.g. a producer restart that skipped samples, or the start
of the read window): ``gaps="concat"`` (the default) joins the contiguous segments in index order —
nothing is lost, and a training window straddling a junction is rare (one per junction, out of all
the segment's windows); ``gaps="longest"`` keeps only the longest contiguous segment. Chunks whose
channel count differs from the stream's first chunk, and undecodable messages (bad headers, NaN/Inf,
wrong length: what the worker would dead-letter), are skipped and counted in the ``TopicRead``.

``train_from_topic`` feeds the streams to ``models.training.train_arrays`` with the noisy-target
objective by default: live data has no clean version.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.wire.codec import Chunk, DecodeError, decode_chunk
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

GAP_POLICIES = ("concat", "longest")
_POLL_MS = 200
# last_samples: messages read from the end of each partition on the first pass.
_FIRST_TAIL = 256


@dataclass
class TopicRead:
    """What ``read_topic_report`` read: the streams and an account of what was skipped."""

    streams: dict[str, np.ndarray]  # stream id -> float32 (frames, channels), sample order
    start: dict[str, int]  # sample index of each stream's first returned frame (before concat)
    rates: dict[str, float]  # sample rate from the stream's headers (its first chunk)
    gaps: dict[str, list[tuple[int, int]]]  # missing [a, b) index ranges inside what was read
    duplicates: dict[str, int]  # frames delivered more than once (kept once)
    offsets: dict[int, tuple[int, int]]  # partition -> [first, end) offsets read
    messages: int = 0
    undecodable: int = 0  # messages that failed decode_chunk (skipped)
    undecodable_reasons: dict[str, int] = field(default_factory=dict)
    channel_mismatch: dict[str, int] = field(default_factory=dict)  # chunks skipped per stream
    complete: bool = True  # False when max_wait_s ran out before every end offset was reached
    seconds: float = 0.0

    def summary(self) -> dict:
        """A JSON-ready description (stored in a checkpoint's training data)."""
        return {
            "streams": len(self.streams),
            "frames": int(sum(x.shape[0] for x in self.streams.values())),
            "messages": self.messages,
            "undecodable": self.undecodable,
            "undecodable_reasons": dict(self.undecodable_reasons),
            "gaps": int(sum(len(g) for g in self.gaps.values())),
            "duplicates": int(sum(self.duplicates.values())),
            "channel_mismatch_chunks": int(sum(self.channel_mismatch.values())),
            "offsets": {str(p): list(r) for p, r in sorted(self.offsets.items())},
            "complete": self.complete,
        }


def read_topic(
    k: KafkaSettings,
    topic: str,
    *,
    last_seconds: float | None = None,
    last_samples: int | None = None,
    max_wait_s: float = 10,
    gaps: str = "concat",
) -> dict[str, np.ndarray]:
    """Stream id -> float32 (frames, channels) of the raw chunks in ``topic`` (see the module doc)."""
    return read_topic_report(k, topic, last_seconds=last_seconds, last_samples=last_samples,
                             max_wait_s=max_wait_s, gaps=gaps).streams


def read_topic_report(
    k: KafkaSettings,
    topic: str,
    *,
    last_seconds: float | None = None,
    last_samples: int | None = None,
    max_wait_s: float = 10,
    gaps: str = "concat",
) -> TopicRead:
    """``read_topic`` with the account of offsets, gaps, duplicates and skipped messages.

    ``max_wait_s`` bounds the wait for the topic's metadata (a missing topic raises LookupError)
    and the time without progress while reading; a read cut short returns what it has with
    ``complete=False`` (and a warning), rather than hanging on an unreachable partition.
    """
    if last_seconds is not None and not (math.isfinite(last_seconds) and last_seconds > 0):
        raise ValueError(f"last_seconds must be a positive number of seconds, got {last_seconds!r}")
    if last_samples is not None and (isinstance(last_samples, bool) or int(last_samples) != last_samples
                                     or last_samples < 1):
        raise ValueError(f"last_samples must be a positive integer, got {last_samples!r}")
    if gaps not in GAP_POLICIES:
        raise ValueError(f"gaps must be one of {GAP_POLICIES}, got {gaps!r}")
    if not max_wait_s > 0:
        raise ValueError(f"max_wait_s must be > 0, got {max_wait_s!r}")

    from kafka import TopicPartition

    from pipeline.kafka.clients import make_consumer

    t0 = time.monotonic()
    # "The last N seconds" as of the call, not of whenever the consumer has its metadata.
    since_ms = None if last_seconds is None else int((time.time() - last_seconds) * 1000)
    acc = _Accumulator()
    consumer = make_consumer(k, group_id=None, allow_auto_create_topics=False, fetch_max_wait_ms=100)
    try:
        parts = None
        while True:
            parts = consumer.partitions_for_topic(topic)
            if parts or time.monotonic() - t0 > max_wait_s:
                break
            time.sleep(0.1)
        if not parts:
            raise LookupError(f"topic {topic!r} not found at {k.bootstrap_servers} within {max_wait_s:g} s")
        tps = sorted((TopicPartition(topic, p) for p in parts), key=lambda tp: tp.partition)
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        if last_seconds is not None:
            found = consumer.offsets_for_times({tp: since_ms for tp in tps})
            starts = {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}
        else:
            starts = dict(begins)
        starts = {tp: min(max(starts[tp], begins[tp]), ends[tp]) for tp in tps}

        if last_samples is None:
            complete = _read_ranges(consumer, {tp: (starts[tp], ends[tp]) for tp in tps}, acc, max_wait_s)
            first = starts
        else:
            complete, first = _read_tail(consumer, tps, starts, ends, int(last_samples), acc, max_wait_s)
    finally:
        consumer.close()

    rep = acc.assemble(gaps, last_samples)
    rep.offsets = {tp.partition: (int(first[tp]), int(ends[tp])) for tp in tps}
    rep.complete = complete
    rep.seconds = time.monotonic() - t0
    if not complete:
        log.warning("read_topic %s: no progress for %.1f s, returning what was read (%d messages)",
                    topic, max_wait_s, rep.messages)
    if rep.undecodable:
        log.warning("read_topic %s: %d undecodable message(s) skipped: %s", topic, rep.undecodable,
                    rep.undecodable_reasons)
    return rep


def _read_tail(consumer, tps, lower, ends, n: int, acc: "_Accumulator", max_wait_s: float):
    """Read each partition backwards from its end until every stream seen has ``n`` frames.

    ``lower``: the earliest offset that may be read per partition (beginning, or the last_seconds
    start). Returns (complete, first offset read per partition)."""
    first = dict(ends)
    step = {tp: _FIRST_TAIL for tp in tps}
    complete = True
    while True:
        ranges = {}
        for tp in tps:
            if first[tp] <= lower[tp]:
                continue
            short = acc.short_streams(n, tp.partition)
            if first[tp] < ends[tp] and not short:
                continue  # everything this partition holds already has n frames
            want = step[tp]
            if short:  # estimate: missing frames / frames per message, over the partition's streams
                fpm = acc.frames_per_message(tp.partition)
                need = max(n - acc.frames(s) for s in short)
                want = max(want, int(1.2 * need / max(fpm, 1.0) * max(1, acc.streams_in(tp.partition))))
            a = max(lower[tp], first[tp] - want)
            ranges[tp] = (a, first[tp])
            step[tp] = 2 * (first[tp] - a)
        if not ranges:
            return complete, first
        complete = _read_ranges(consumer, ranges, acc, max_wait_s) and complete
        for tp, (a, _) in ranges.items():
            first[tp] = a


def _read_ranges(consumer, ranges: dict, acc: "_Accumulator", max_wait_s: float) -> bool:
    """Read offsets [a, b) of each partition; False when no record came for ``max_wait_s``."""
    todo = {tp: ab for tp, ab in ranges.items() if ab[0] < ab[1]}
    if not todo:
        return True
    consumer.pause(*[tp for tp in consumer.assignment() if tp not in todo])
    for tp, (a, _) in todo.items():
        consumer.resume(tp)
        consumer.seek(tp, a)
    last = time.monotonic()
    while todo:
        batch = consumer.poll(timeout_ms=_POLL_MS)
        now = time.monotonic()
        if batch:
            last = now
        elif now - last > max_wait_s:
            consumer.pause(*todo)
            return False
        for tp, records in batch.items():
            if tp in todo:
                a, b = todo[tp]
                for m in records:
                    if a <= m.offset < b:
                        acc.add(m, tp.partition)
        # Done by position, not by the last record: offsets can skip (transaction markers).
        for tp in [tp for tp, (_, b) in todo.items() if consumer.position(tp) >= b]:
            consumer.pause(tp)
            del todo[tp]
    return True


class _Accumulator:
    """Decoded chunks per stream (copied out of the message buffers), plus counts."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[Chunk]] = {}
        self.partition_streams: dict[int, set[str]] = {}
        self.partition_msgs: dict[int, list[int]] = {}  # [messages, frames]
        self.messages = 0
        self.undecodable = 0
        self.reasons: dict[str, int] = {}

    def add(self, m, partition: int) -> None:
        self.messages += 1
        try:
            c = decode_chunk(m.key, m.value, m.headers)
        except DecodeError as exc:
            self.undecodable += 1
            self.reasons[exc.reason] = self.reasons.get(exc.reason, 0) + 1
            return
        self.chunks.setdefault(c.stream, []).append(c)
        self.partition_streams.setdefault(partition, set()).add(c.stream)
        pm = self.partition_msgs.setdefault(partition, [0, 0])
        pm[0] += 1
        pm[1] += c.frames

    def frames(self, stream: str) -> int:
        return sum(c.frames for c in self.chunks.get(stream, ()))

    def short_streams(self, n: int, partition: int) -> list[str]:
        return [s for s in self.partition_streams.get(partition, ()) if self.frames(s) < n]

    def frames_per_message(self, partition: int) -> float:
        m, f = self.partition_msgs.get(partition, (0, 0))
        return f / m if m else 1.0

    def streams_in(self, partition: int) -> int:
        return len(self.partition_streams.get(partition, ()))

    def assemble(self, gaps: str, last_samples: int | None) -> TopicRead:
        rep = TopicRead(streams={}, start={}, rates={}, gaps={}, duplicates={}, offsets={},
                        messages=self.messages, undecodable=self.undecodable, undecodable_reasons=dict(self.reasons))
        for sid, cs in self.chunks.items():
            _assemble(rep, sid, cs, gaps, last_samples)
        return rep


def _assemble(rep: TopicRead, sid: str, cs: list[Chunk], gaps: str, last_samples: int | None) -> None:
    cs = sorted(cs, key=lambda c: c.index)  # stable: equal indices keep read order
    channels = cs[0].channels
    skipped = sum(1 for c in cs if c.channels != channels)
    if skipped:
        rep.channel_mismatch[sid] = skipped
        cs = [c for c in cs if c.channels == channels]
    # Contiguous segments by index; overlapping frames (duplicates) keep the first copy placed.
    segments: list[tuple[int, list[np.ndarray]]] = []  # (start index, pieces)
    end = None
    dups = 0
    missing: list[tuple[int, int]] = []
    for c in cs:
        if end is None or c.index > end:
            if end is not None:
                missing.append((end, c.index))
            segments.append((c.index, []))
            end = c.index
        skip = end - c.index  # frames of this chunk already placed
        if skip >= c.frames:
            dups += c.frames
            continue
        dups += skip
        segments[-1][1].append(np.array(c.samples[skip:], dtype=np.float32))
        end = c.end
    segs = [(s, np.concatenate(p)) for s, p in segments]
    if last_samples is not None:  # the newest frames first: drop whole old segments, then trim
        kept, total = [], 0
        for s, x in reversed(segs):
            if total >= last_samples:
                break
            take = min(x.shape[0], last_samples - total)
            kept.append((s + x.shape[0] - take, x[x.shape[0] - take :]))
            total += take
        segs = kept[::-1]
    if gaps == "longest" and len(segs) > 1:
        segs = [max(reversed(segs), key=lambda sx: sx[1].shape[0])]  # ties: the newest
    lo, hi = segs[0][0], segs[-1][0] + segs[-1][1].shape[0]
    rep.streams[sid] = segs[0][1] if len(segs) == 1 else np.concatenate([x for _, x in segs])
    rep.start[sid] = int(segs[0][0])
    rep.rates[sid] = float(cs[0].rate)
    rep.gaps[sid] = [(int(a), int(b)) for a, b in missing if a >= lo and b <= hi]
    rep.duplicates[sid] = int(dups)


def train_from_topic(
    k: KafkaSettings,
    topic: str,
    cfg,
    *,
    last_seconds: float | None = None,
    last_samples: int | None = None,
    objective: str = "noisier2noise",
    max_wait_s: float = 10,
    gaps: str = "concat",
    progress: bool = True,
):
    """Train on the raw streams of ``topic`` (``read_topic``); returns ``(model, meta)``.

    ``objective`` replaces ``cfg.objective``: "noisier2noise" by default, because live streams have
    no clean version (pass "clean" only for a topic known to carry clean signals). Streams at a
    sample rate other than ``cfg.sample_rate`` are left out (logged); each channel is one training
    stream, and the train/validation split is by stream (``models.training.train_arrays``).
    """
    from models.training import train_arrays

    cfg = dataclasses.replace(cfg, objective=objective)
    rep = read_topic_report(k, topic, last_seconds=last_seconds, last_samples=last_samples,
                            max_wait_s=max_wait_s, gaps=gaps)
    rate = float(cfg.sample_rate)
    ok = {s: x for s, x in rep.streams.items() if abs(rep.rates[s] - rate) <= 1e-9 * rate}
    other = sorted(set(rep.streams) - set(ok))
    if other:
        log.warning("train_from_topic: %d stream(s) not at %g Hz left out: %s", len(other), rate, other[:10])
    ok = {s: x for s, x in ok.items() if x.shape[0] >= cfg.window}
    if not ok:
        raise ValueError(f"topic {topic!r} holds no stream at {rate:g} Hz with at least one window "
                         f"({cfg.window} frames) in the requested range ({rep.messages} messages read)")
    names = sorted(ok)
    model, meta = train_arrays(cfg, [ok[s] for s in names], progress=progress, source=f"kafka:{topic}")
    meta.training["data"]["kafka"] = {
        "topic": topic,
        "last_seconds": last_seconds,
        "last_samples": last_samples,
        "gaps": gaps,
        "stream_ids": names[:1000],
        "left_out_other_rate": other[:1000],
        **rep.summary(),
    }
    return model, meta
