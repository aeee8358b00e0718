"""The worker's per-message path without Kafka (pipeline/stream/processor.py).

- No message can stop it: arbitrary keys, headers and payloads end as output or as exactly one
  dead letter (hypothesis).
- Replays are identical: a second owner starting from any commit (offset + resume entries) of the
  first re-publishes only values the first published identically, and together they leave no
  gap, whatever the idle flushes in between (hypothesis).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client import CollectorRegistry

from pipeline.inference.engine import Inference
from pipeline.monitor.metrics import WorkerMetrics
from pipeline.stream.batching import MicroBatcher
from pipeline.stream.processor import StreamProcessor
from pipeline.stream.state import OutputRecord, PartitionState
from pipeline.stream.windowing import StreamWindowing
from pipeline.wire.codec import H_CHANNELS, H_FORMAT, H_INDEX, H_RATE, encode_chunk

W, H = 32, 16
RATE = 100.0


@dataclass
class Meta:
    sample_rates: tuple = (RATE,)


class NonlinearEngine:
    """A stand-in model whose output depends on the whole window: a window cut on another grid,
    or a tail flushed at another point, gives other values."""

    window, hop, version, meta = W, H, "v1", Meta()

    def serves_rate(self, rate):
        return rate == RATE

    def infer(self, data):
        m = data.mean(axis=-1, keepdims=True)
        out = (np.tanh(data - 0.5 * m) + 0.1 * np.roll(data, 1, axis=-1)).astype(np.float32)
        return Inference(out, np.zeros(len(data), np.float32), np.ones(len(data), np.float32))


@dataclass
class Msg:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list
    timestamp: float = 0.0


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@dataclass
class Harness:
    """A processor with recording sinks; ``ack`` says whether the broker acknowledges at once."""

    ack: bool = True
    clock: Clock = field(default_factory=Clock)
    outputs: dict = field(default_factory=lambda: defaultdict(list))  # stream -> [(start, samples)]
    dead: list = field(default_factory=list)  # (offset, reason, detail)
    state_writes: list = field(default_factory=list)
    stages: list = field(default_factory=list)  # (stage, seconds) as the processor reports them

    def __post_init__(self):
        self.p = StreamProcessor(
            NonlinearEngine(), W, H, WorkerMetrics(CollectorRegistry()),
            batcher=MicroBatcher(8, 0.0, clock=self.clock), max_chunk_frames=4096, idle_flush_s=2.0,
            publish=self.publish, dead_letter=self.dead_letter, write_state=self.write_state,
            score=lambda *a: None, observe_batch=lambda *a: None, clock=self.clock,
            on_stage=lambda stage, seconds: self.stages.append((stage, seconds)),
        )
        self.part = self.p.partitions["tp"] = PartitionState("tp", loaded=True)

    def publish(self, seg, rec, samples, version):
        self.outputs[seg.stream.id].append((rec.start, np.array(samples)))
        rec.acked = self.ack

    def dead_letter(self, part, msg, reason, detail):
        self.dead.append((msg.offset, reason, detail))
        part.dead_letters[msg.offset] = OutputRecord(0, 0, None, acked=True)

    def write_state(self, part, stream):
        entry = part.durable[stream.id] = part.entry(stream)
        self.state_writes.append((stream.id, entry))
        return OutputRecord(0, 0, None, acked=True)

    def step(self, msg=None, advance=0.0):
        """``advance`` seconds of silence (the worker's loop goes round), then ``msg``."""
        if advance:
            self.clock.t += advance
            self._round()
        if msg is not None:
            self.p.handle(self.part, msg)
        self._round()

    def _round(self):
        self.p.run_due_batches()
        self.p.idle_flush()
        self.p.release_held()

    def drain(self):
        """Run out everything: the streams go idle and their tails are released."""
        self.step(advance=10.0)
        self.p.finish()
        self.p.release_held()
        self.step(advance=10.0)


# --------------------------------------------------------------------- no message stops it
STREAMS = ["s1", "s2", "s3"]
header_text = st.one_of(
    st.binary(max_size=24),
    st.sampled_from([b"0", b"1", b"12", b" 12", b"+12", b"1_000", b"12\n", b"012", b"-1", b"1e3", b"100", b"100.0",
                     b"nan", b"inf", b"9223372036854775807", b"9223372036854775800", b"64", b"65", b"2"]),
)


@st.composite
def any_message(draw):
    key = draw(st.one_of(st.sampled_from([s.encode() for s in STREAMS]), st.binary(max_size=300), st.none()))
    frames = draw(st.integers(1, 80))
    channels = draw(st.sampled_from([1, 1, 2]))
    if draw(st.booleans()):
        x = draw(st.sampled_from([np.sin, np.cos]))(np.arange(frames * channels, dtype=np.float32)).reshape(frames, -1)
        value = x.astype("<f4").tobytes()
    else:
        value = draw(st.one_of(st.binary(max_size=64), st.none()))
    headers = [(H_FORMAT, b"1"), (H_INDEX, str(draw(st.integers(0, 3000))).encode()),
               (H_RATE, b"100"), (H_CHANNELS, str(channels).encode())]
    for _ in range(draw(st.integers(0, 2))):  # mutate, drop or add headers
        i = draw(st.integers(0, len(headers)))
        kind = draw(st.sampled_from(["replace", "drop", "add"]))
        name = draw(st.sampled_from([H_FORMAT, H_INDEX, H_RATE, H_CHANNELS, "dae.other"]))
        if kind == "replace" and i < len(headers):
            headers[i] = (headers[i][0], draw(header_text))
        elif kind == "drop" and i < len(headers):
            headers.pop(i)
        else:
            headers.append((name, draw(header_text)))
    return key, value, headers, draw(st.floats(0, 3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_message(), min_size=1, max_size=40))
def test_every_message_ends_as_output_or_exactly_one_dead_letter(messages):
    h = Harness()
    valid = []  # (stream, start, end) of the messages the codec accepts
    for offset, (key, value, headers, pause) in enumerate(messages):
        h.step(Msg(offset, key, value, headers), advance=pause)  # never raises
    h.drain()
    dead = {}
    for offset, reason, _ in h.dead:
        assert offset not in dead, f"message {offset} dead-lettered twice"
        dead[offset] = reason
    for offset, (key, value, headers, _) in enumerate(messages):
        if offset in dead:
            continue
        hd = dict(headers)
        start = int(hd[H_INDEX])
        frames = len(value) // (4 * int(hd[H_CHANNELS]))
        valid.append((key.decode(), start, start + frames))
    covered = defaultdict(set)
    for sid, outs in h.outputs.items():
        for start, samples in outs:
            covered[sid].update(range(start, start + len(samples)))
    for sid, a, b in valid:
        missing = set(range(a, b)) - covered[sid]
        assert not missing, f"{sid} [{a}, {b}): {len(missing)} samples neither output nor dead-lettered"
    assert "processing_error" not in dead.values()


def test_a_bug_in_one_message_dead_letters_it_and_the_worker_goes_on():
    h = Harness()
    x = np.ones((50, 1), np.float32)
    h.step(Msg(0, *encode_chunk("ok", 0, RATE, x)))
    h.step(Msg(1, *encode_chunk("bad", 0, RATE, x)))

    def broken(self, frames):
        raise IndexError("index 9223372036854775807 is out of bounds")

    # Only message 2 (of stream "bad") is processed while feed is broken.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StreamWindowing, "feed", broken)
        h.step(Msg(2, *encode_chunk("bad", 50, RATE, x)))
    h.step(Msg(3, *encode_chunk("ok", 50, RATE, x)))
    h.step(Msg(4, *encode_chunk("bad", 100, RATE, x)))
    h.drain()
    assert [(o, r) for o, r, _ in h.dead] == [(2, "processing_error")]
    assert "IndexError: index 9223372036854775807" in h.dead[0][2]
    assert h.p.metrics.processing_errors._value.get() == 1
    ok = sorted(i for s, y in h.outputs["ok"] for i in range(s, s + len(y)))
    assert ok == list(range(100))
    bad = {i for s, y in h.outputs["bad"] for i in range(s, s + len(y))}
    assert set(range(50)) | set(range(100, 150)) <= bad  # before and after the bad message


def test_every_batch_reports_its_stages_once():
    """One on_stage call per stage and batch (never per window or segment); batch_wait on the
    batcher's clock, from the batch's first queued window to its submission."""
    h = Harness()
    h.p.batcher.max_delay_s = 0.5
    x = np.ones((W, 1), np.float32)  # one window per message: the batch (max 8) fills by the deadline only
    h.step(Msg(0, *encode_chunk("a", 0, RATE, x)))
    h.step(Msg(1, *encode_chunk("b", 0, RATE, x)), advance=0.2)  # the batch is not full yet
    assert h.stages == []
    h.step(advance=0.4)  # 0.6 s after the first window: due
    names = [s for s, _ in h.stages]
    assert names == ["batch_wait", "forward", "encode", "score"], names
    assert abs(h.stages[0][1] - 0.6) < 1e-9 and all(v >= 0 for _, v in h.stages)


# ------------------------------------------------------------------------ replays identical
@st.composite
def scenario(draw):
    """Messages of 3 streams (random chunk sizes), some pauses past idle_flush_s, a crash point
    and a commit point before it."""
    pos = {s: 0 for s in STREAMS}
    msgs = []
    for _ in range(draw(st.integers(6, 40))):
        sid = draw(st.sampled_from(STREAMS))
        n = draw(st.integers(1, 70))
        x = np.cos(np.arange(pos[sid], pos[sid] + n, dtype=np.float32) * (0.1 + STREAMS.index(sid) / 7))
        pause = draw(st.sampled_from([0.0, 0.0, 0.0, 0.5, 2.5]))
        msgs.append((sid, pos[sid], x, pause))
        pos[sid] += n
    crash = draw(st.integers(1, len(msgs)))
    commit = draw(st.integers(0, crash))
    # a replaying owner's own stalls (a busy machine), before each message
    stalls = draw(st.lists(st.sampled_from([0.0, 0.0, 2.5]), min_size=len(msgs), max_size=len(msgs)))
    return msgs, commit, crash, stalls


def run_owner(h: Harness, msgs, first: int, last: int, commit_at: int | None = None, paced: bool = True,
              log_end: int | None = None, stalls=None):
    """Feed messages [first, last); after message ``commit_at - 1`` take a commit: (offset, the
    entries durable once it is taken, i.e. its own and the idle-flush records written after it).
    ``log_end``: the partition already holds this many messages (a backlog: the owner is caught up
    only once it has handled them); None: live, each handled as it arrives. ``stalls``: the owner's
    pauses before each message instead of the messages' own."""
    taken = None
    for off in range(first, last):
        if off == commit_at:
            taken = (*h.part.committable(), len(h.state_writes))
        sid, index, x, pause = msgs[off]
        if log_end is not None:
            h.part.caught_up = False  # message ``off`` waits in the log
        pause = stalls[off] if stalls is not None else pause
        h.step(Msg(off, *encode_chunk(sid, index, RATE, x)), advance=pause if paced else 0.0)
        if log_end is not None:
            h.part.caught_up = off + 1 >= log_end
    if commit_at == last:
        taken = (*h.part.committable(), len(h.state_writes))
    offset, entries, n = taken if taken is not None else (first, {}, 0)
    for sid, e in h.state_writes[n:]:
        entries[sid] = e
    return offset, entries


@pytest.mark.parametrize("stalls", [False, True])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario())
def test_a_replay_from_any_commit_republishes_only_identical_values(case, stalls):
    msgs, commit_at, crash, own_stalls = case
    first = Harness()
    # Recorded idle flushes written after the commit are durable too (written before their tails).
    offset, entries = run_owner(first, msgs, 0, crash, commit_at if commit_at else None)
    second = Harness()
    second.part = second.p.partitions["tp"] = PartitionState("tp", resume=dict(entries), loaded=True,
                                                              start=offset, committed=offset)
    # The replay reads a backlog, with stalls of its own (a busy machine): the worker's idle flushes
    # wait until it has read the log to the end, so none happens where the first owner had none.
    run_owner(second, msgs, offset, len(msgs), paced=stalls, log_end=len(msgs), stalls=own_stalls)
    second.drain()
    for sid in STREAMS:
        total = sum(len(x) for s, _, x, _ in msgs if s == sid)
        values = {}
        for h in (first, second):
            for start, y in h.outputs.get(sid, []):
                for i, v in enumerate(y[:, 0]):
                    if start + i in values:
                        assert np.isclose(values[start + i], v, rtol=1e-6, atol=1e-6), \
                            f"{sid}[{start + i}] re-published with another value"
                    values[start + i] = v
        assert set(values) == set(range(total)), f"{sid}: {total - len(values)} samples missing"


def sig(sid, index, n):
    return np.cos(np.arange(index, index + n, dtype=np.float32) * (0.1 + STREAMS.index(sid) / 7))


def test_replay_skips_a_stream_that_finished_behind_the_commit():
    """s1 finishes (idle flush, tail published, state dropped) while s2 still holds the commit at an
    older message: the replay from that commit meets s1's last messages again and must neither
    restart s1 on a new grid there nor re-publish it."""
    msgs = [("s1", 0, sig("s1", 0, 40), 0.0), ("s2", 0, sig("s2", 0, 10), 0.0),
            ("s1", 40, sig("s1", 40, 30), 0.0), ("s1", 70, sig("s1", 70, 30), 0.0),
            ("s2", 10, sig("s2", 10, 5), 1.5),
            ("s2", 15, sig("s2", 15, 5), 1.5)]  # s1 has been silent for 3 s: flushed; s2 for 1.5 s
    first = Harness()
    offset, entries = run_owner(first, msgs, 0, len(msgs), commit_at=len(msgs))
    assert "s1" not in first.part.streams and offset <= 1
    assert entries["s1"].anchor is None and entries["s1"].offset == 4
    second = Harness()
    second.part = second.p.partitions["tp"] = PartitionState("tp", resume=dict(entries), loaded=True, start=offset)
    run_owner(second, msgs, offset, len(msgs), paced=False)
    second.drain()
    assert "s1" not in second.outputs  # nothing of s1 published again
    got = {i for s, y in second.outputs["s2"] for i in range(s, s + len(y))}
    assert got >= set(range(10, 15))


def test_replay_repeats_a_recorded_idle_flush():
    """s1 was idle-flushed after message 1 and continued; the replay (a backlog: no pause) ends the
    segment after message 1 too, so the re-published tail has the first owner's values."""
    msgs = [("s1", 0, sig("s1", 0, 50), 0.0), ("s1", 50, sig("s1", 50, 20), 0.0),
            ("s1", 70, sig("s1", 70, 60), 2.5), ("s1", 130, sig("s1", 130, 40), 0.0)]
    first = Harness()
    offset, entries = run_owner(first, msgs, 0, len(msgs), commit_at=1)
    assert offset == 0 and entries["s1"].flushes == (1,)
    second = Harness()
    second.part = second.p.partitions["tp"] = PartitionState("tp", resume=dict(entries), loaded=True, start=offset)
    run_owner(second, msgs, offset, len(msgs), paced=False)
    second.drain()
    a = {s + i: v for s, y in first.outputs["s1"] for i, v in enumerate(y[:, 0])}
    b = {s + i: v for s, y in second.outputs["s1"] for i, v in enumerate(y[:, 0])}
    common = sorted(set(a) & set(b))
    assert 60 in common  # the tail before the flush point was published again...
    np.testing.assert_allclose([a[i] for i in common], [b[i] for i in common], rtol=1e-6, atol=1e-6)  # ...identically
