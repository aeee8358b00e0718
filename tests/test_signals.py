"""Synthetic signal families: shape, dtype, scale, determinism, spectra, noise and SNR helpers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from models.signals.families import FAMILIES, add_noise, generate, snr_db


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rate", [100.0, 1000.0, 16000.0])
def test_generate_is_float32_unit_rms_zero_mean(family, rate):
    x = generate(family, 20_000, rate, np.random.default_rng(1))
    assert x.dtype == np.float32 and x.shape == (20_000,)
    assert np.all(np.isfinite(x))
    assert abs(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) - 1.0) < 1e-3
    assert abs(float(x.mean())) < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_is_deterministic_per_seed(family):
    a = generate(family, 4096, 500.0, np.random.default_rng(7))
    b = generate(family, 4096, 500.0, np.random.default_rng(7))
    c = generate(family, 4096, 500.0, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rate", [100.0, 1000.0, 16000.0])
def test_spectrum_is_mostly_below_a_quarter_of_the_rate(family, rate):
    # "Denoisable at window 256": nearly all the power sits well below Nyquist.
    x = generate(family, 32_768, rate, np.random.default_rng(3)).astype(np.float64)
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size)
    assert p[f < 0.25].sum() / p.sum() > 0.98


def test_vibration_frequencies_put_a_few_periods_in_a_window():
    x = generate("vibration", 65_536, 1000.0, np.random.default_rng(0)).astype(np.float64)
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size)
    band = p[(f >= 2.0 / 256) & (f <= 0.11)].sum() / p.sum()
    assert band > 0.95


def test_ecg_heart_rate_scales_with_sample_rate():
    for rate in (100.0, 1000.0):
        x = generate("ecg", int(60 * rate), rate, np.random.default_rng(5))
        peaks = np.flatnonzero((x[1:-1] > x[:-2]) & (x[1:-1] >= x[2:]) & (x[1:-1] > 0.5 * x.max())) + 1
        assert 45 <= peaks.size <= 105, (rate, peaks.size)  # 50-100 bpm over one minute


def test_audio_has_silences_and_bursts():
    x = generate("audio", 50_000, 16000.0, np.random.default_rng(2))
    assert np.any(x == 0.0)  # gaps between bursts stay exactly silent
    assert np.mean(x != 0.0) > 0.5


def test_unknown_family_names_it_and_the_valid_ones():
    with pytest.raises(ValueError) as e:
        generate("seismic", 10, 100.0, np.random.default_rng())
    msg = str(e.value)
    assert "seismic" in msg and all(f in msg for f in FAMILIES)


@pytest.mark.parametrize("n, rate", [(-1, 100.0), (10, 0.0), (10, float("nan")), (2.5, 100.0)])
def test_bad_arguments_are_refused(n, rate):
    with pytest.raises(ValueError):
        generate("drift", n, rate, np.random.default_rng())


def test_zero_length():
    assert generate("ecg", 0, 100.0, np.random.default_rng()).shape == (0,)


@settings(max_examples=30, deadline=None)
@given(target=st.floats(-5, 30), seed=st.integers(0, 2**32 - 1))
def test_add_noise_hits_the_requested_snr(target, seed):
    rng = np.random.default_rng(seed)
    x = generate("vibration", 20_000, 1000.0, rng)
    y = add_noise(x, target, rng)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert abs(snr_db(x, y) - target) < 0.3


def test_snr_db_definition_and_edges():
    c = np.array([1.0, -1.0, 2.0])
    e = c + np.array([0.1, 0.0, -0.1])
    assert snr_db(c, e) == pytest.approx(10 * math.log10(6.0 / 0.02))
    assert snr_db(c, c) == math.inf
    with pytest.raises(ValueError):
        snr_db(c, c[:2])
