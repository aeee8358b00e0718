"""Stream arithmetic of windowing + overlap-add: property tests over random chunkings."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pipeline.stream.windowing import (
    StreamWindowing,
    classify,
    denoise_offline,
    synthesis_window,
)


def nonlinear(batch: np.ndarray) -> np.ndarray:
    """A stand-in 'model' on (N, C, W) that depends on the whole window (misplaced windows show)."""
    m = batch.mean(axis=-1, keepdims=True)
    return np.tanh(batch - 0.5 * m) + 0.1 * np.roll(batch, 1, axis=-1)


def stream_through(x, chunks, window, hop, fn=nonlinear, batch_every=3, start=0, **kw):
    """Feed `x` in the given chunk sizes, run windows in small batches, collect the output."""
    stw = StreamWindowing(window, hop, x.shape[1], start, **kw)
    out, pending, pos = [], [], 0

    def run():
        if pending:
            ys = fn(np.concatenate([b.data for b in pending]))
            i = 0
            for b in pending:
                stw.add_output(b.start, ys[i : i + len(b)])
                i += len(b)
            pending.clear()
        c = stw.ready()
        if c is not None:
            out.append(c)

    for i, n in enumerate(chunks):
        block = stw.feed(x[pos : pos + n])
        if block is not None:
            pending.append(block)
        pos += n
        if i % batch_every == 0:
            run()
    tail = stw.flush()
    if tail is not None:
        pending.append(tail)
    run()
    return out


def chunk_sizes(total, draw_sizes):
    sizes, left = [], total
    for s in draw_sizes:
        if left <= 0:
            break
        s = min(s, left)
        sizes.append(s)
        left -= s
    if left > 0:
        sizes.append(left)
    return sizes


# (16, 12): a hop of 3W/4 (`window.hop` can set any), which does not divide W/2: the weights' sum varies
geometry = st.sampled_from([(8, 4), (16, 8), (16, 4), (12, 6), (32, 16), (10, 10), (16, 12)])


@settings(max_examples=150, deadline=None)
@given(
    geom=geometry,
    total=st.integers(1, 300),
    channels=st.integers(1, 3),
    sizes=st.lists(st.integers(1, 70), min_size=1, max_size=40),
    batch_every=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_streaming_equals_offline_for_any_chunking(geom, total, channels, sizes, batch_every, seed):
    window, hop = geom
    x = np.random.default_rng(seed).normal(size=(total, channels)).astype(np.float32)
    chunks = chunk_sizes(total, sizes)
    out = stream_through(x, chunks, window, hop, batch_every=batch_every)
    # Every input index appears exactly once, in order, with no gap.
    idx = np.concatenate([np.arange(c.start, c.end) for c in out])
    np.testing.assert_array_equal(idx, np.arange(total))
    y = np.concatenate([c.samples for c in out])
    ref = denoise_offline(x, nonlinear, window, hop)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window,hop", [(16, 8), (64, 32), (64, 16), (256, 128), (256, 192)])
def test_identity_model_reconstructs_input_exactly(window, hop):
    x = np.random.default_rng(1).normal(size=(1000, 2)).astype(np.float32)
    y = denoise_offline(x, lambda b: b, window, hop)
    np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window,hop", [(16, 8), (64, 16), (64, 32), (30, 15)])
def test_synthesis_window_sums_to_constant_at_hop(window, hop):
    w = synthesis_window(window)
    total = np.zeros(window * 4)
    for s in range(0, window * 3 + 1, hop):
        total[s : s + window] += w
    core = total[window : 3 * window]
    np.testing.assert_allclose(core, window / (2 * hop), rtol=1e-12)
    assert (w > 0).all()


def test_no_seams_with_constant_output():
    # A model that outputs a constant must give that constant everywhere, edges included.
    x = np.zeros((777, 1), np.float32)
    for hop in (32, 48):  # W/2, and 3W/4 where the weights' sum is not constant
        y = denoise_offline(x, lambda b: np.full_like(b, 3.0), 64, hop)
        np.testing.assert_allclose(y, 3.0, rtol=1e-6)


def test_short_segment_is_reflect_padded_and_fully_emitted():
    x = np.arange(5, dtype=np.float32)[:, None]
    y = denoise_offline(x, lambda b: b, 16, 8)
    np.testing.assert_allclose(y, x)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), extra=st.integers(1, 700), channels=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_flush_window_is_padded_as_np_pad_reflect(n, extra, channels, seed):
    """The tail window of a flush: the real samples, then their reflection (edge for one sample),
    exactly as np.pad(mode="reflect") gives it, for pads longer than the samples too."""
    W = n + extra
    x = np.random.default_rng(seed).standard_normal((n, channels)).astype(np.float32)
    win = StreamWindowing(W, W, channels, 0)
    assert win.feed(x) is None  # shorter than a window: nothing cut before the flush
    block = win.flush()
    assert block.start == 0 and len(block) == 1
    want = np.pad(x, ((0, W - n), (0, 0)), mode="reflect" if n > 1 else "edge")
    np.testing.assert_array_equal(block.data[0].T, want)
    assert block.data.dtype == np.float32 and block.data.flags.c_contiguous


def test_single_sample_segment():
    y = denoise_offline(np.array([[2.5]], np.float32), lambda b: b * 2, 8, 4)
    np.testing.assert_allclose(y, [[5.0]])


@settings(max_examples=100, deadline=None)
@given(
    geom=geometry,
    total=st.integers(40, 400),
    cut_at=st.floats(0.05, 0.95),
    published_frac=st.floats(0.0, 1.0),
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=30),
    seed=st.integers(0, 2**16),
)
def test_resume_reproduces_unpublished_output_exactly(geom, total, cut_at, published_frac, sizes, seed):
    """A replay from the message holding needed_index(U) re-creates outputs >= U bit for bit."""
    window, hop = geom
    x = np.random.default_rng(seed).normal(size=(total, 1)).astype(np.float32)
    full = np.concatenate([c.samples for c in stream_through(x, chunk_sizes(total, sizes), window, hop)])
    # First run: consume a prefix, publish some of what was released.
    chunks = chunk_sizes(total, sizes)
    starts = np.cumsum([0] + chunks[:-1])
    k = max(1, int(len(chunks) * cut_at))
    first = StreamWindowing(window, hop, 1, 0)
    released = 0
    for s, n in zip(starts[:k], chunks[:k]):
        b = first.feed(x[s : s + n])
        if b is not None:
            first.add_output(b.start, nonlinear(b.data))
        c = first.ready()
        if c is not None:
            released = c.end
    unpublished = int(released * published_frac)
    need = first.needed_index(unpublished)
    # The replay starts at the message (chunk) that holds sample `need`.
    j = int(np.searchsorted(starts, need, side="right") - 1)
    j = max(j, 0)
    resumed = stream_through(
        x[starts[j] :], chunks[j:], window, hop, start=int(starts[j]),
        anchor=first.anchor, emit_from=unpublished,
    )
    idx = np.concatenate([np.arange(c.start, c.end) for c in resumed])
    np.testing.assert_array_equal(idx, np.arange(unpublished, total))
    y = np.concatenate([c.samples for c in resumed])
    np.testing.assert_allclose(y, full[unpublished:], rtol=1e-6, atol=1e-7)


def test_classify_gap_and_rewind():
    assert classify(None, 10) == "start"
    assert classify(10, 10) == "next"
    assert classify(10, 12) == "gap"
    assert classify(10, 3) == "rewind"


def test_block_windows_sit_on_the_grid():
    x = np.arange(100, dtype=np.float32)[:, None]
    stw = StreamWindowing(16, 4, 1, 10)
    b = stw.feed(x[:50])
    assert b.start == 10 and len(b) == (50 - 16) // 4 + 1
    np.testing.assert_array_equal(b.data[3, 0], x[12:28, 0])
    np.testing.assert_array_equal(b.starts[:3], [10, 14, 18])


def test_outputs_out_of_order_are_refused():
    stw = StreamWindowing(8, 4, 1, 0)
    b = stw.feed(np.zeros((20, 1), np.float32))
    with pytest.raises(ValueError, match="in order"):
        stw.add_output(b.start + 4, b.data[1:])


def test_feed_rejects_wrong_channel_count():
    stw = StreamWindowing(8, 4, 2, 0)
    with pytest.raises(ValueError, match="2 channel"):
        stw.feed(np.zeros((5, 3), np.float32))


@settings(max_examples=150, deadline=None)
@given(
    geom=st.sampled_from([(8, 4), (16, 4), (10, 4), (7, 3), (10, 10), (256, 128), (256, 192)]),
    anchor_back=st.integers(0, 40),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    cuts=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=6),
)
def test_steady_weight_sums_are_the_window_by_window_sums_bit_for_bit(geom, anchor_back, sizes, cuts):
    """The overlap-add normaliser's steady-state table gives what summing window by window gives,
    to the bit, for any range of cut windows (streams resumed off-grid included)."""
    window, hop = geom
    start = 1000
    stw = StreamWindowing(window, hop, 1, start, anchor=start - anchor_back)
    x = np.random.default_rng(len(sizes)).normal(size=(sum(sizes), 1)).astype(np.float32)
    pos = 0
    for n in sizes:
        stw.feed(x[pos : pos + n])
        pos += n
        lo, hi = stw.first, stw._cut_end
        for u, v in cuts:
            a = lo + int(u * (hi - lo))
            b = a + int(v * (hi - a))
            np.testing.assert_array_equal(stw._weight_sum(a, b), stw._weight_sum_any(a, b))
        if hi - lo > 2 * window:  # a long steady range: the table's own path, wrap-around included
            a = lo + window
            np.testing.assert_array_equal(stw._weight_sum(a, hi), stw._weight_sum_any(a, hi))


def test_steady_weight_sums_past_the_table_wrap_by_phase(monkeypatch):
    """Ranges longer than the shared table take the sums by phase, still bit for bit."""
    import pipeline.stream.windowing as windowing

    monkeypatch.setattr(windowing, "_TILE", 24)
    windowing._steady_weights.cache_clear()
    try:
        for window, hop in [(16, 4), (10, 4), (256, 128)]:
            stw = StreamWindowing(window, hop, 1, 5, anchor=2)
            stw.feed(np.ones((40 * window, 1), np.float32))
            a = stw.first + window
            assert stw._cut_end - a > windowing._steady_weights(window, hop).shape[0]
            np.testing.assert_array_equal(stw._weight_sum(a, stw._cut_end), stw._weight_sum_any(a, stw._cut_end))
    finally:
        windowing._steady_weights.cache_clear()
