"""Classical baselines: they improve a noisy sine and tuning picks a sensible parameter."""

import numpy as np
import pytest

from models.evaluation import baselines
from models.signals.families import snr_db


def _sine(n=4000, period=200.0, seed=0, sigma=0.3):
    t = np.arange(n)
    clean = np.sqrt(2) * np.sin(2 * np.pi * t / period).astype(np.float32)
    noisy = clean + sigma * np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    return clean, noisy.astype(np.float32)


@pytest.mark.parametrize("name,params", [("moving_average", {"length": 15}), ("savgol", {"length": 31, "polyorder": 3}),
                                         ("wiener", {"length": 15})])
def test_filters_improve_a_noisy_sine(name, params):
    clean, noisy = _sine()
    out = baselines.apply(name, noisy, **params)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert snr_db(clean, out) - snr_db(clean, noisy) > 5.0


def test_filters_are_per_channel():
    clean, noisy = _sine()
    two = np.stack([noisy, 10 * noisy], axis=1)
    out = baselines.apply("savgol", two, length=21, polyorder=2)
    np.testing.assert_allclose(out[:, 1], 10 * out[:, 0], rtol=1e-5, atol=1e-5)


def test_moving_average_of_length_one_is_identity():
    _, noisy = _sine()
    np.testing.assert_array_equal(baselines.moving_average(noisy, 1), noisy)
    with pytest.raises(ValueError, match="odd"):
        baselines.moving_average(noisy, 4)


def test_tuning_picks_a_sensible_length():
    pairs = [_sine(seed=s) for s in range(3)]
    clean, noisy = [c for c, _ in pairs], [y for _, y in pairs]
    ma = baselines.tune("moving_average", clean, noisy)
    # A boxcar much shorter than the period trades noise for little bias; the best is neither 1 nor huge.
    assert 9 <= ma.params["length"] <= 61
    assert ma.val_gain_db > 8.0
    assert ma.val_gain_db == max(s for _, s in ma.scores)
    # Tuning on a fast sine must choose a shorter window than on a slow one.
    fast = [_sine(period=25.0, seed=s) for s in range(3)]
    ma_fast = baselines.tune("moving_average", [c for c, _ in fast], [y for _, y in fast])
    assert ma_fast.params["length"] < ma.params["length"]
    # Less noise: a shorter (or equal) smoothing length.
    quiet = [_sine(seed=s, sigma=0.03) for s in range(3)]
    sg_quiet = baselines.tune("savgol", [c for c, _ in quiet], [y for _, y in quiet])
    sg = baselines.tune("savgol", clean, noisy)
    assert sg_quiet.params["length"] <= sg.params["length"]
    assert sg.val_gain_db > ma.val_gain_db - 1.0  # SG keeps the peaks a boxcar flattens


def test_tune_all_and_errors():
    c, y = _sine()
    tuned = baselines.tune_all([c], [y])
    assert set(tuned) == {"moving_average", "savgol", "wiener"}
    assert all(t.val_gain_db > 3.0 for t in tuned.values())
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.tune("kalman", [c], [y])
    with pytest.raises(ValueError, match="equally many"):
        baselines.tune("wiener", [c], [])
