"""The isolated-sample test (pipeline.monitor.alerts.isolated): a sample that leaves its neighbours on
both sides at once. Pure logic: no Kafka, no torch; every outcome is fixed by the seeds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.monitor.alerts.isolated import FEATURE, K, isolated_features, samples_tested
from pipeline.monitor.alerts.sequential import SeqPlan
from pipeline.settings import AlertSettings
from tests import raw_feed

W, H = 64, 32
CAL = {"q50": 0.01, "q90": 0.02, "q99": 0.05, "q999": 0.1}


def engine(**kw):
    base = dict(min_windows=8, warmup_windows=16, stats_windows=128, refresh_every=4, slow_terms=(),
                sequential=(), isolated_z=5.0, sequential_memory=256)
    base.update(kw)
    return AlertEngine(AlertSettings(**base), CAL, "v7", window=W, hop=H)


def feed(eng, streams: dict, cuts, detector="isolated"):
    return raw_feed.feed(eng, streams, cuts, detector, W, H)


def knocks(n, rng, every=400):
    """Decaying resonances (4 to 60 samples a period, 10 to 100 samples' decay) of 10 to 30 noise std, as
    the held-out ``impacts`` family has them, over unit white noise."""
    x = rng.standard_normal(n)
    for at in range(100, n - 800, every):
        f, tau = rng.uniform(1 / 60, 0.15), rng.uniform(10, 100)
        t = np.arange(800)
        x[at : at + 800] += rng.uniform(10, 30) * np.exp(-t / tau) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
    return x


def test_the_feature_is_the_largest_neighbour_contrast_of_each_windows_tested_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(5, 2, W)).astype(np.float32)
    x[2, 1, 50] += 40.0
    got = isolated_features(x, H)[FEATURE]
    t = samples_tested(W, H)
    want = np.zeros(5)
    for i in range(5):
        for c in range(2):
            s = x[i, c].astype(np.float64)
            d = np.abs(np.diff(s[W - t - 2 * K :]))
            f = np.median(d) / (0.6744897501960817 * np.sqrt(2))
            for j in range(W - t - K, W - K):
                nb = np.concatenate((s[j - K : j], s[j + 1 : j + K + 1]))
                want[i] = max(want[i], abs(s[j] - nb.mean()) / np.sqrt(nb.var() + f * f))
    np.testing.assert_allclose(got, want, rtol=2e-4)
    assert got[2] > 10 and np.all(np.delete(got, 2) < 6)


def test_a_window_too_short_for_the_neighbours_or_not_finite_is_not_scored():
    assert samples_tested(2 * K, 4) == 0 and isolated_features(np.ones((3, 1, 2 * K), np.float32), 4)[FEATURE].tolist() == [0] * 3
    x = np.random.default_rng(1).standard_normal((2, 1, W)).astype(np.float32)
    x[1, 0, W - 10] = np.nan
    z = isolated_features(x, H)[FEATURE]
    assert np.isfinite(z[0]) and np.isnan(z[1])
    assert isolated_features(np.full((1, 1, W), 7.0, np.float32), H)[FEATURE].tolist() == [0.0]  # flat: 0, not 0/0


def test_one_sample_raises_once_and_resolves():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(12_000)
    x[8000] += 12.0  # z about 12 / sqrt(2) = 8.5, past the floor of 5
    ev = feed(engine(), {"s": x}, range(0, 400, 9))["s"]
    assert [e[0] for e in ev] == ["raised", "resolved"]
    assert ev[0][1] <= 8000 < ev[0][2] and ev[0][3] >= 5.0


def test_gaussian_noise_raises_nothing():
    rng = np.random.default_rng(4)
    streams = {f"s{i}": rng.normal(i, 1 + i, 75_000) for i in range(4)}
    assert feed(engine(), streams, range(0, 2400, 64)) == {k: [] for k in streams}


def test_knocks_far_larger_than_a_spike_raise_nothing_the_spike_between_them_does():
    rng = np.random.default_rng(7)
    n = 80_000
    x = knocks(n, rng)
    clean = x.copy()
    at = (30_250, 60_250)  # between knocks (every 400 from 100), where the last one has died down
    x[list(at)] += np.array([16.0, -16.0])  # 16 noise std: smaller than the knocks' 10 to 30
    ev = feed(engine(), {"spiked": x, "clean": clean}, range(0, n // H, 40))
    assert ev["clean"] == []
    raised = [e for e in ev["spiked"] if e[0] == "raised"]
    assert len(raised) == 2 and all(r[1] <= a < r[2] for r, a in zip(raised, at))
    # the stream's own extremes are the knocks: its record outlier test, calibrated above them, misses it
    assert np.abs(clean).max() > 16
    rec = feed(engine(isolated_z=0, outlier_z=7.0, outlier_memory=2048), {"spiked": x}, [], "outlier")
    assert rec == {"spiked": []}


def test_multichannel_windows_are_tested_per_channel():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 12_000))
    x[0] *= 100.0  # a loud channel beside a quiet one: the quiet one's spike still counts
    x[1, 9000] += 12.0
    ev = feed(engine(), {"s": x}, [])["s"]
    assert [e[0] for e in ev] == ["raised", "resolved"] and ev[0][1] <= 9000 < ev[0][2]


def test_on_by_default_off_when_isolated_z_is_0_and_before_the_warm_up():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(6000)
    x[5000] = 50.0
    assert feed(engine(isolated_z=0), {"s": x}, [])["s"] == []
    assert AlertSettings().isolated_z == 5.0 and AlertEngine(AlertSettings(), CAL, "v7")._raw.iso is not None
    assert AlertEngine(AlertSettings(isolated_z=0), CAL, "v7")._raw.iso is None
    assert [e[0] for e in feed(engine(), {"s": x}, [])["s"]] == ["raised", "resolved"]
    y = rng.standard_normal(6000)
    y[200] = 50.0  # min_windows (8) windows, then warmup_windows (16) quiet ones before the test votes
    assert feed(engine(), {"s": y}, [])["s"] == []


def test_the_test_takes_an_equal_share_of_the_false_alarm_budget():
    eng = AlertEngine(AlertSettings(), CAL, "v7")
    off = SeqPlan.build(AlertSettings(isolated_z=0), eng._scoring, 256, None)
    on = SeqPlan.build(AlertSettings(isolated_z=5.0), eng._scoring, 256, None)
    assert 0.2 / on.per_test_rate == pytest.approx(0.2 / off.per_test_rate + 1)  # one share more


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 180), max_size=12), seed=st.integers(0, 2**16),
       spikes=st.lists(st.tuples(st.integers(1000, 5900), st.floats(-30, 30)), max_size=4))
def test_the_decisions_do_not_depend_on_how_the_calls_cut_the_streams(cuts, seed, spikes):
    rng = np.random.default_rng(seed)
    streams = {k: rng.normal(0, 1, 6000 - 500 * j) for j, k in enumerate("abc")}
    for at, amp in spikes:
        for x in streams.values():
            x[at % x.size] += amp
    one = feed(engine(), streams, [])
    cut = engine()
    assert feed(cut, streams, cuts) == one


def test_a_sensor_at_rest_is_not_tested_a_noisy_quantised_one_is():
    rng = np.random.default_rng(9)
    x = np.full(20_000, 412.0)
    flick = rng.choice(np.arange(300, 20_000), 60, replace=False)
    x[flick] += rng.choice([-1.0, 1.0], flick.size)  # one count, now and then, among equal values
    x[15_000] += 20.0
    assert isolated_features(raw_feed.windows_of(x, W, H)[1], H)[FEATURE].max() == 0.0
    assert feed(engine(), {"s": x}, [])["s"] == []
    y = np.round(412.0 + 2.0 * rng.standard_normal(20_000))  # counts of a noisy sensor
    y[15_000] += 30.0  # 15 noise std
    ev = feed(engine(), {"s": y}, [])["s"]
    assert [e[0] for e in ev] == ["raised", "resolved"] and ev[0][1] <= 15_000 < ev[0][2]


def test_a_large_offset_does_not_change_the_feature():
    # ADC counts or pascals: an offset of 1e5 over unit noise keeps the same z (float32 sums of squares
    # about zero would lose the noise's digits)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((64, 1, W))
    x[5, 0, 50] += 12.0
    z0 = isolated_features(x.astype(np.float32), H)[FEATURE]
    z1 = isolated_features((x + 1e5).astype(np.float32), H)[FEATURE]
    np.testing.assert_allclose(z1, z0, rtol=0.02)


def test_the_feature_does_not_depend_on_the_units_even_where_float32_squares_would_overflow():
    # z is scale-free; at 1e25 the float32 squares overflow, and the batch is taken in float64
    # (a nan in another window of the batch must not hide that)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((16, 2, W))
    x[3, 1, 50] += 12.0
    z0 = isolated_features(x.astype(np.float32), H)[FEATURE]
    for scale in (1e-20, 1e25):
        y = (x * scale).astype(np.float32)
        y[7, 0, 40] = np.nan
        z1 = isolated_features(y, H)[FEATURE]
        assert np.isnan(z1[7]) and np.isfinite(np.delete(z1, 7)).all()
        np.testing.assert_allclose(np.delete(z1, 7), np.delete(z0, 7), rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 24), c=st.integers(1, 3), exp=st.floats(-20, 20),
       offset=st.sampled_from([0.0, 37.0, -3e6]), fault=st.sampled_from(["none", "nan", "inf", "stuck", "spike", "huge"]))
def test_the_compiled_feature_is_numpys_to_the_last_bit(seed, n, c, exp, offset, fault):
    # _z_max does numpy's float32 arithmetic window by window; a non-finite sample or float32 squares that
    # could overflow send the call to numpy itself (nans, float64)
    from pipeline.monitor.alerts.isolated import _features_numpy

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, W)) * 10.0**exp + offset
    i = int(rng.integers(n))
    if fault == "nan":
        x[i, -1, W - 5] = np.nan
    elif fault == "inf":
        x[i, 0, W - 20] = np.inf
    elif fault == "stuck":
        x[i, -1, :] = offset
    elif fault == "spike":
        x[i, 0, W - 20] += 30 * 10.0**exp
    elif fault == "huge":
        x[i, 0, W - 20] = 1e35
    x = x.astype(np.float32)
    t = samples_tested(W, H)
    got = isolated_features(x, H)[FEATURE]
    want = _features_numpy(np.ascontiguousarray(x[:, :, W - t - 2 * K :]), t)
    np.testing.assert_array_equal(got, want)
