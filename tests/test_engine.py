import numpy as np
import pytest
import torch

from models.checkpoint import meta_for
from models.archs import DenoisingAutoencoder, MLPConfig
from pipeline.inference.engine import InferenceEngine
from pipeline.stream.windowing import denoise_offline


def engine(window=64, seed=0):
    torch.manual_seed(seed)
    m = DenoisingAutoencoder(MLPConfig(window=window, hidden=64))
    meta = meta_for(m, "mlp", window=window, hop=window // 2, sample_rates=[100.0], normalisation="window_standardize",
                    corruption={}, training={}, metrics={}, error_quantiles={}, created="t")
    return InferenceEngine(m, meta, device="cpu", version="vt")


def test_output_of_a_window_does_not_depend_on_its_batch():
    e = engine()
    x = np.random.default_rng(0).normal(size=(300, 1, 64)).astype(np.float32)
    full = e.infer(x).outputs
    for lo, hi in [(0, 1), (3, 5), (10, 21), (7, 300)]:
        np.testing.assert_array_equal(e.infer(x[lo:hi]).outputs, full[lo:hi])


def test_warm_up_runs_the_largest_batch_and_changes_no_output():
    x = np.random.default_rng(1).normal(size=(40, 2, 64)).astype(np.float32)
    cold = engine().infer(x)
    e = engine()
    assert e.warmed_rows == 0
    assert e.warm(512) > 0
    assert e.warmed_rows == 512
    warm = e.infer(x)
    np.testing.assert_array_equal(warm.outputs, cold.outputs)
    np.testing.assert_array_equal(warm.errors, cold.errors)


@pytest.mark.parametrize("scale,offset", [(1e-3, 0.0), (1.0, 0.0), (1e3, 0.0), (1.0, 50.0), (1e-3, -2.0)])
def test_scale_and_offset_equivariance(scale, offset):
    """Standardising each window means any scale/offset is denoised alike (and undone)."""
    e = engine()
    x = np.random.default_rng(1).normal(size=(8, 1, 64)).astype(np.float32)
    ref = e.infer(x)
    got = e.infer((x * scale + offset).astype(np.float32))
    np.testing.assert_allclose(got.outputs, ref.outputs * scale + offset, rtol=1e-4, atol=1e-4 * scale + 1e-6 * abs(offset))
    np.testing.assert_allclose(got.errors, ref.errors, rtol=1e-3, atol=1e-6)


def test_channels_are_denoised_independently():
    e = engine()
    x = np.random.default_rng(2).normal(size=(5, 3, 64)).astype(np.float32)
    both = e.infer(x).outputs
    for ch in range(3):
        np.testing.assert_allclose(both[:, ch], e.infer(x[:, ch : ch + 1]).outputs[:, 0], rtol=1e-6, atol=1e-6)


def test_streamed_engine_output_equals_offline_within_1e5():
    e = engine()
    x = np.random.default_rng(3).normal(size=(1000, 1)).astype(np.float32)
    ref = denoise_offline(x, lambda b: e.infer(b).outputs, 64, 32)
    from tests.test_windowing import stream_through

    out = stream_through(x, [1, 5, 63, 64, 65, 200, 2, 600], 64, 32, fn=lambda b: e.infer(b).outputs)
    y = np.concatenate([c.samples for c in out])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_rejects_wrong_window_length():
    with pytest.raises(ValueError, match=r"\(N, C, 64\)"):
        engine().infer(np.zeros((2, 1, 32), np.float32))


def test_serves_rate():
    e = engine()
    assert e.serves_rate(100.0) and not e.serves_rate(44100.0)
    # Answers are kept per rate, in a bounded table, and stay those of the metadata.
    rates = [100.0 * (1 + k * 1e-7) for k in range(-30, 30)] + [float(r) for r in range(1, 400)]
    for _ in range(2):
        for r in rates:
            assert e.serves_rate(r) == e.meta.serves_rate(r)
            assert len(e._rates_seen) <= 256
    assert sum(e.meta.serves_rate(r) for r in rates) >= 21  # 100 Hz within 1e-6, and 100.0 itself


from hypothesis import given, settings, strategies as st  # noqa: E402

_E = engine(window=32)


@settings(max_examples=40, deadline=None)
@given(
    total=st.integers(1, 400),
    sizes=st.lists(st.integers(1, 90), min_size=1, max_size=30),
    batch_every=st.integers(1, 5),
    seed=st.integers(0, 1000),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_streaming_through_the_model_equals_offline_for_any_chunking(total, sizes, batch_every, seed, scale):
    from tests.test_windowing import chunk_sizes, stream_through

    x = (np.random.default_rng(seed).normal(size=(total, 1)) * scale).astype(np.float32)
    fn = lambda b: _E.infer(b).outputs  # noqa: E731
    ref = denoise_offline(x, fn, 32, 16)
    out = stream_through(x, chunk_sizes(total, sizes), 32, 16, fn=fn, batch_every=batch_every)
    y = np.concatenate([c.samples for c in out])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * scale)
