"""Commit bookkeeping without Kafka: which offset is committable, the resume entries, and
resuming from them."""

import numpy as np

from pipeline.wire.codec import Chunk
from pipeline.stream.state import OutputRecord, PartitionState, Resume

W, H = 32, 16


def chunk(stream, index, n, rate=100.0, channels=1):
    return Chunk(stream, index, rate, np.random.default_rng(index).normal(size=(n, channels)).astype(np.float32))


def process(part, stream_id, offset, c, *, ack=True):
    """Route, feed, 'infer' (identity), overlap-add, publish; returns the published records."""
    st = part.stream(stream_id)
    seg, kind = part.route(st, c, offset, W, H)
    part.consumed = offset + 1
    if seg is None:
        return kind, []
    seg.add_input(offset, c.index, c.end, 0.0)
    b = seg.win.feed(c.samples)
    recs = []
    if b is not None:
        seg.win.add_output(b.start, b.data)
        out = seg.win.ready()
        if out is not None:
            rec = OutputRecord(out.start, out.end, None, acked=ack)
            seg.outputs.append(rec)
            recs.append(rec)
    return kind, recs


def test_unacknowledged_output_holds_the_commit_back():
    part = PartitionState("tp", loaded=True)
    recs = []
    for off in range(5):
        recs += process(part, "s", off, chunk("s", off * 100, 100), ack=False)[1]
    offset, meta = part.committable()
    assert offset == 0 and meta["s"] == Resume(0, 0, 0, needed=True)
    for r in recs:
        r.acked = True
    offset, meta = part.committable()
    seg = part.streams["s"].open
    unpublished = seg.first_unpublished()
    assert unpublished == recs[-1].end
    need = seg.win.needed_index(unpublished)
    assert offset == need // 100  # the message holding the first sample a replay needs
    assert meta["s"] == Resume(offset, 0, unpublished, needed=True)


def test_committed_offset_is_the_minimum_over_streams_and_dead_letters():
    part = PartitionState("tp", loaded=True)
    process(part, "a", 0, chunk("a", 0, 100), ack=False)
    for off in range(1, 6):
        process(part, "b", off, chunk("b", (off - 1) * 100, 100))
    part.dead_letters[6] = OutputRecord(0, 0, None)
    part.consumed = 7
    assert part.committable()[0] == 0
    seg_a = part.streams["a"].open
    seg_a.outputs[0].acked = True
    # Stream a's last samples still feed a window that is not cut yet: message 0 stays needed.
    assert part.committable()[0] == 0
    tail = seg_a.win.flush()
    seg_a.win.add_output(tail.start, tail.data)
    out = seg_a.win.ready()
    seg_a.outputs.append(OutputRecord(out.start, out.end, None, acked=True))
    assert out.end == 100 and seg_a.done()
    offset, _ = part.committable()
    assert 1 <= offset <= 6
    part.dead_letters[6].acked = True
    assert part.committable()[0] == offset


def test_failed_dead_letter_write_is_never_committed_past():
    part = PartitionState("tp", loaded=True)
    part.dead_letters[3] = OutputRecord(0, 0, None)  # refused by the broker: never acknowledged
    part.consumed = 10
    assert part.committable()[0] == 3


def test_resume_skips_published_messages_and_continues_the_grid():
    part = PartitionState("tp", loaded=True)
    for off in range(6):
        process(part, "s", off, chunk("s", off * 100, 100))
    offset, meta = part.committable()
    # A new owner with that commit: messages before the committed one are not even seen...
    new = PartitionState("tp", resume=dict(meta), loaded=True)
    r_off, anchor, emit_from = meta["s"].offset, meta["s"].anchor, meta["s"].emit_from
    # ...but if it sees an older message of the stream (commit held back by another stream), it skips it.
    if r_off > 0:
        assert process(new, "s", r_off - 1, chunk("s", (r_off - 1) * 100, 100))[0] == "skip"
    kind, recs = process(new, "s", r_off, chunk("s", r_off * 100, 100))
    assert kind == "resume"
    seg = new.streams["s"].open
    assert seg.win.anchor == anchor and seg.win.emit_from == emit_from
    assert all(r.start >= emit_from for r in recs)


def test_gap_and_rewind_start_new_segments_and_retire_the_old():
    part = PartitionState("tp", loaded=True)
    process(part, "s", 0, chunk("s", 0, 100))
    kind, _ = process(part, "s", 1, chunk("s", 150, 100))
    assert kind == "gap" and len(part.streams["s"].retired) == 1 and part.streams["s"].closing
    part.streams["s"].closing = ()
    kind, _ = process(part, "s", 2, chunk("s", 0, 100))
    assert kind == "rewind" and len(part.streams["s"].retired) == 2
    kind, _ = process(part, "s", 3, chunk("s", 100, 100, rate=200.0))
    assert kind == "format"


def finish(part, stream_id):
    """Flush the stream's open segment, 'infer', publish (acknowledged) and forget what is done."""
    st = part.streams[stream_id]
    seg = st.open
    st.retire(seg)
    st.open = None
    tail = seg.win.flush()
    if tail is not None:
        seg.win.add_output(tail.start, tail.data)
    out = seg.win.ready()
    if out is not None:
        seg.outputs.append(OutputRecord(out.start, out.end, None, acked=True))
    part.forget_finished()


def test_a_finished_stream_keeps_an_entry_until_the_commit_passes_it():
    """Stream a finishes while b holds the commit back: a replay from that commit must not restart
    a on a new grid in the middle of its data, so a's entry says its messages are done."""
    part = PartitionState("tp", loaded=True)
    process(part, "b", 0, chunk("b", 0, 100), ack=False)
    for off in range(1, 4):
        process(part, "a", off, chunk("a", (off - 1) * 100, 100))
    finish(part, "a")
    assert "a" not in part.streams
    offset, entries = part.committable()
    assert offset == 0 and entries["a"] == Resume(4)  # not needed: does not hold the commit
    # A new owner from that commit skips a's old messages, and starts a fresh segment after them.
    new = PartitionState("tp", resume=dict(entries), loaded=True, start=offset)
    assert process(new, "a", 2, chunk("a", 100, 100))[0] == "skip"
    assert process(new, "a", 4, chunk("a", 300, 100))[0] == "start"
    # Once the committed offset passes it, the entry goes (a tombstone in the changes).
    part.durable = dict(entries)
    part.committed = 5
    part.consumed = 5
    part.streams["b"].open.outputs[0].acked = True
    _, entries = part.committable()
    assert "a" not in entries
    assert ("a", None) in part.changes(entries)
    assert "a" not in part.durable and part.changes(entries) == []


def test_changes_are_only_the_entries_that_differ():
    part = PartitionState("tp", loaded=True)
    process(part, "s", 0, chunk("s", 0, 100))
    _, entries = part.committable()
    assert [sid for sid, _ in part.changes(entries)] == ["s"]
    _, entries = part.committable()
    assert part.changes(entries) == []
    process(part, "s", 1, chunk("s", 100, 100))
    _, entries = part.committable()
    assert [sid for sid, _ in part.changes(entries)] == ["s"]


def test_recorded_idle_flushes_travel_in_the_entry_and_are_replayed():
    part = PartitionState("tp", loaded=True)
    process(part, "s", 0, chunk("s", 0, 100), ack=False)
    st = part.streams["s"]
    st.flushed_at(0)  # an idle flush after message 0
    e = part.entry(st)
    assert e.flushes == (0,) and e.needed and e.offset == 0
    new = PartitionState("tp", resume={"s": e}, loaded=True)
    process(new, "s", 0, chunk("s", 0, 100))
    assert new.streams["s"].replay == {0} and new.streams["s"].flushes == [0]


def test_an_open_one_chunk_stream_costs_under_1200_bytes_of_python_objects():
    """Bounded memory per stream: 20,000 open one-chunk streams (`dae bench --many`) held ~3.2 KB of
    Python objects each with deques and a per-segment copy of the synthesis window (~6.4 KB in all);
    with __slots__, lists and the shared window ~1.34 KB; with no empty list or array of their own
    (shared empty tuples and arrays until they have something) ~1.05 KB (window 256, 64 samples)."""
    import tracemalloc

    part = PartitionState("t-0")
    n = 2000
    samples = [chunk(f"stream-{i:06d}", 0, 64) for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, c in enumerate(samples):
            st = part.stream(c.stream)
            seg, _ = part.route(st, c, i, 256, 128)
            seg.add_input(i, c.index, c.end, 0.0)
            assert seg.win.feed(c.samples) is None  # 64 samples: no window yet
        per_stream = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(part.streams) == n
    assert per_stream < 1200, f"{per_stream:.0f} bytes per open stream"
