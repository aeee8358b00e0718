"""The record outlier test (pipeline.monitor.alerts.outliers): each window's new raw samples against the
stream's long exponential memory. Pure logic: no Kafka, no torch; every outcome is fixed by the seeds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.monitor.alerts.outliers import BLOCK, FEATURES, MEAN, NS, VAR, record_features
from pipeline.settings import AlertSettings
from tests import raw_feed

W, H = 64, 32
CAL = {"q50": 0.01, "q90": 0.02, "q99": 0.05, "q999": 0.1}


def engine(**kw):
    base = dict(min_windows=8, warmup_windows=16, stats_windows=128, refresh_every=4, slow_terms=(),
                sequential=(), outlier_z=7.0, outlier_memory=2048)
    base.update(kw)
    return AlertEngine(AlertSettings(**base), CAL, "v7", window=W, hop=H)


def feed(eng, streams: dict, cuts):
    return raw_feed.feed(eng, streams, cuts, "outlier", W, H)


def test_record_features_are_the_moments_of_each_windows_new_samples():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(5, 2, W)).astype(np.float32)
    f = record_features(x, H)
    assert set(f) == set(FEATURES)
    tail = x[:, :, W - H:].reshape(5, -1).astype(np.float64)
    np.testing.assert_array_equal(f["outlier_n"], np.full(5, H))
    np.testing.assert_allclose(f["outlier_mean"], tail.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(f["outlier_var"], tail.var(axis=1), rtol=1e-10)
    np.testing.assert_array_equal(f["outlier_max"], tail.max(axis=1))
    np.testing.assert_array_equal(f["outlier_min"], tail.min(axis=1))


def test_the_estimate_is_the_plain_mean_and_variance_until_the_memory_is_full():
    x = np.random.default_rng(1).normal(50.0, 4.0, 1600)
    eng = engine(outlier_memory=4096)
    feed(eng, {"s": x}, [7, 20])
    slot = eng._tab.get("s")
    # the new samples (the first window's head never) of the windows of closed blocks, as float32 holds them
    closed = ((x.size - W) // H + 1) // BLOCK * BLOCK
    seen = x[W - H : (closed - 1) * H + W].astype(np.float32).astype(np.float64)
    row = eng._tab.out[slot]
    assert row[NS] == seen.size
    assert row[MEAN] == pytest.approx(seen.mean(), rel=1e-12)
    assert row[VAR] == pytest.approx(seen.var(), rel=1e-9)


def test_a_jump_far_outside_the_memory_raises_once_and_resolves():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(12_000)
    x[8000:8010] += 12.0  # 12 std: past 7 wherever the noise is
    ev = feed(engine(), {"s": x}, range(0, 400, 9))["s"]
    assert [e[0] for e in ev] == ["raised", "resolved"]
    assert ev[0][1] <= 8000 < ev[0][2] and ev[0][3] >= 7.0
    assert ev[1][1] <= 8000 and ev[1][2] >= 8010


def test_a_new_level_is_learnt_within_about_one_memory():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(40_000)
    x[10_000:] += 15.0  # a lasting step: one alert, which resolves as the memory takes the new level in
    ev = feed(engine(), {"s": x}, range(0, 1300, 50))["s"]
    assert [e[0] for e in ev] == ["raised", "resolved"]
    assert ev[1][2] - 10_000 < 3 * 2048


def test_gaussian_noise_raises_nothing():
    # P(|z| >= 7) is 2.6e-12 per sample: none in 300 k samples of 4 streams
    rng = np.random.default_rng(4)
    streams = {f"s{i}": rng.normal(i, 1 + i, 75_000) for i in range(4)}
    assert feed(engine(), streams, range(0, 2400, 64)) == {k: [] for k in streams}


def test_off_by_default_or_when_outlier_z_is_0_and_before_the_warm_up():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(6000)
    x[5000] = 50.0
    assert feed(engine(outlier_z=0), {"s": x}, [])["s"] == []
    assert AlertSettings().outlier_z == 0 and AlertEngine(AlertSettings(), CAL, "v7")._raw.out is None
    assert [e[0] for e in feed(engine(), {"s": x}, [])["s"]] == ["raised", "resolved"]
    y = rng.standard_normal(6000)
    y[200] = 50.0  # min_windows (8) windows of hop 32: 256 samples before the test votes
    assert feed(engine(), {"s": y}, [])["s"] == []


def test_forget_drops_a_raised_outlier_alert():
    x = np.random.default_rng(6).standard_normal(4000)
    x[3900:] += 40.0
    eng = engine(resolve_windows=50)
    ev = feed(eng, {"s": x}, [])["s"]
    assert [e[0] for e in ev] == ["raised"] and eng.is_active("s") and eng.active() >= 1
    eng.forget("s")
    assert not eng.is_active("s")


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 180), max_size=12), seed=st.integers(0, 2**16),
       jumps=st.lists(st.tuples(st.integers(1000, 5900), st.floats(-30, 30)), max_size=4))
def test_the_decisions_do_not_depend_on_how_the_calls_cut_the_streams(cuts, seed, jumps):
    rng = np.random.default_rng(seed)
    streams = {k: rng.normal(0, 1, 6000 - 500 * j) for j, k in enumerate("abc")}
    for at, amp in jumps:
        for x in streams.values():
            x[at % x.size : at % x.size + 5] += amp
    one = feed(engine(), streams, [])
    cut = engine()
    assert feed(cut, streams, cuts) == one


def test_a_stream_with_knocks_calibrates_its_threshold_above_them_a_gaussian_one_does_not():
    rng = np.random.default_rng(7)
    n = 60_000
    knocks = rng.normal(0, 1, n)
    at = np.arange(300, n, 150)
    knocks[at] += rng.uniform(4.0, 9.0, at.size) * rng.choice([-1, 1], at.size)  # up to 9 std, every 150
    gauss = rng.normal(0, 1, n)
    gauss[[20_000, 40_000]] += 9.0  # the same size, twice, on a stream that never had such values
    ev = feed(engine(), {"knocks": knocks, "gauss": gauss}, range(0, n // H, 40))
    assert ev["knocks"] == []
    raised = [e for e in ev["gauss"] if e[0] == "raised"]
    assert len(raised) == 2 and all(r[1] <= at_ < r[2] for r, at_ in zip(raised, (20_000, 40_000)))
