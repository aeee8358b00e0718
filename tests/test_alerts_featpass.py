"""The compiled window features (pipeline/monitor/alerts/featpass.py) against their numpy form."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.monitor.alerts.terms import FeatureWork, _features_numpy, window_features

# Exactly numpy's: the same float32 differences and the same order statistic (the log may differ in its
# last bit). The rest: float64 sums against numpy's float32 ones, within float32 rounding.
_EXACT = ("spike", "floor")


def _freq64(y):
    """``freq`` in float64 from the float32 outputs: numpy's form centres them in float32, which a large
    offset over a small variance costs digits that the compiled form (float64) keeps."""
    yd = y.astype(np.float64)
    n, c, w = y.shape
    dd = (np.diff(yd, axis=2) ** 2).sum(axis=(1, 2)) / (c * (w - 1)) if w > 1 else np.zeros(n)
    var = ((yd - yd.mean(axis=2, keepdims=True)) ** 2).sum(axis=(1, 2)) / (c * w)
    return np.log(np.maximum(dd, 1e-30) / np.maximum(var, 1e-30))


def _compare(x, y):
    got, want = window_features(x, y, FeatureWork()), _features_numpy(x, y, None)
    assert got.keys() == want.keys()
    if y is not None:
        want["freq"] = _freq64(y)
    for k in want:
        assert got[k].shape == want[k].shape, k
        if k in _EXACT:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-14, atol=1e-14, err_msg=k)
        elif k == "freq":
            np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-9, err_msg=k)
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-5, err_msg=k)


@pytest.mark.parametrize("shape", [(64, 1, 256), (50, 3, 64), (7, 1, 3000), (3, 2, 1), (1, 1, 2), (5, 1, 3),
                                   (4, 2, 5), (9, 1, 4), (2, 4, 7)])
def test_the_compiled_features_are_numpys(shape):
    rng = np.random.default_rng(sum(shape))
    x = (3 * rng.standard_normal(shape) + 5).astype(np.float32)
    x[:, :, :1] = x.max()  # pinned samples for clip
    x[0] = np.round(x[0])  # a quantised window: ties in both medians
    y = (0.9 * x + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    _compare(x, y)
    _compare(x, None)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 3), w=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       offset=st.sampled_from([0.0, 1e3, -7.5]), step=st.sampled_from([0.0, 1.0, 0.25]))
def test_the_compiled_features_are_numpys_on_any_shape(n, c, w, seed, offset, step):
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal((n, c, w))).astype(np.float32)
    if step:  # a quantised sensor: many equal values and steps
        x = (np.round(x / step) * step).astype(np.float32)
    y = (0.5 * x + 0.1 * rng.standard_normal((n, c, w))).astype(np.float32)
    _compare(x, y)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_call_with_a_non_finite_sample_takes_the_numpy_form():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 1, 64)).astype(np.float32)
    y = (0.9 * x).astype(np.float32)
    for bad_x, bad_y in ((np.nan, None), (np.inf, None), (None, np.nan)):
        xx, yy = x.copy(), y.copy()
        if bad_x is not None:
            xx[2, 0, 10] = bad_x
        if bad_y is not None:
            yy[4, 0, 3] = bad_y
        got, want = window_features(xx, yy), _features_numpy(xx, yy, None)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # NaN where numpy has it
        assert not all(np.isfinite(v).all() for v in got.values())  # the bad window shows
        clean = [i for i in range(6) if i not in (2, 4)]
        good = window_features(x[clean], y[clean])
        for k in good:  # the other windows' features as without the bad one
            np.testing.assert_allclose(got[k][clean], good[k], rtol=2e-5, atol=2e-5, err_msg=k)
