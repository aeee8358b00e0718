"""StreamDenoiser / denoise_signal: the worker's windowing, overlap-add and engine for one stream."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from models.archs import DenoisingAutoencoder, MLPConfig
from models.checkpoint import meta_for
from pipeline.inference.engine import InferenceEngine
from pipeline.stream.denoiser import StreamDenoiser, denoise_signal
from pipeline.stream.windowing import StreamWindowing


def engine(window=32, seed=0):
    torch.manual_seed(seed)
    m = DenoisingAutoencoder(MLPConfig(window=window, hidden=64))
    meta = meta_for(m, "mlp", window=window, hop=window // 2, sample_rates=[100.0], normalisation="window_standardize",
                    corruption={}, training={}, metrics={}, error_quantiles={}, created="t")
    return InferenceEngine(m, meta, device="cpu", version="vt")


_E = engine()


def whole_signal_reference(e, x):
    """All windows of the signal in one forward pass, then overlap-add (no chunking at all)."""
    st_ = StreamWindowing(e.window, e.hop, x.shape[1], 0)
    blocks = [b for b in (st_.feed(x), st_.flush()) if b is not None]
    outs = e.infer(np.concatenate([b.data for b in blocks])).outputs
    i = 0
    for b in blocks:
        st_.add_output(b.start, outs[i : i + len(b)])
        i += len(b)
    return st_.ready().samples


@settings(max_examples=30, deadline=None)
@given(total=st.integers(1, 500), sizes=st.lists(st.integers(1, 120), min_size=1, max_size=40),
       seed=st.integers(0, 1000), batch_windows=st.sampled_from([1, 3, 1024]))
def test_feeding_any_chunking_equals_the_whole_signal(total, sizes, seed, batch_windows):
    x = np.random.default_rng(seed).normal(size=(total, 1)).astype(np.float32)
    d = StreamDenoiser(_E, batch_windows=batch_windows)
    out, pos, i = [], 0, 0
    while pos < total:
        n = sizes[i % len(sizes)]
        got = d.feed(x[pos : pos + n])
        assert got.shape[1] == 1 and got.dtype == np.float32
        out.append(got)
        pos, i = pos + n, i + 1
        # What comes out is everything up to the next cleaned index, never more than was fed.
        assert d.index == sum(len(o) for o in out) <= pos
    out.append(d.flush())
    y = np.concatenate(out)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, whole_signal_reference(_E, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(denoise_signal(_E, x, batch_windows=batch_windows), y, rtol=1e-6, atol=1e-6)


def test_shapes_mono_and_multichannel():
    rng = np.random.default_rng(1)
    mono = rng.normal(size=700).astype(np.float32)
    y = denoise_signal(_E, mono)
    assert y.shape == (700,) and y.dtype == np.float32
    assert not np.allclose(y, mono)  # the model did something
    multi = rng.normal(size=(700, 3)).astype(np.float32)
    ym = denoise_signal(_E, multi)
    assert ym.shape == (700, 3)
    for c in range(3):  # every channel is denoised on its own
        np.testing.assert_allclose(ym[:, c], denoise_signal(_E, multi[:, c]), rtol=1e-6, atol=1e-6)


def test_long_signal_in_pieces_equals_one_piece():
    x = np.random.default_rng(2).normal(size=(5000, 1)).astype(np.float32)
    np.testing.assert_allclose(denoise_signal(_E, x, batch_windows=7), whole_signal_reference(_E, x),
                               rtol=1e-6, atol=1e-6)


def test_empty_and_bad_shapes():
    assert denoise_signal(_E, np.zeros(0, np.float32)).shape == (0,)
    with pytest.raises(ValueError, match="frames"):
        denoise_signal(_E, np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="batch_windows"):
        StreamDenoiser(_E, batch_windows=0)
