"""Drift trigger (pure logic): reference from the model's first windows, sliding median, ratio band,
cooldown, model switch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from pipeline.monitor.drift import DriftMonitor, _EDGES, _median
from pipeline.settings import DriftSettings

CFG = DriftSettings(window_s=600, bucket_s=10, ratio=3.0, reference_windows=2000, min_windows=500, cooldown_s=300)


def feed(mon, rng, level, seconds, t0, per_s=50):
    events = []
    for t in range(int(seconds)):
        ev = mon.update(rng.lognormal(np.log(level), 0.4, per_s), now=t0 + t)
        if ev is not None:
            events.append(ev)
    return events


@settings(max_examples=50, deadline=None)
@given(st.floats(-6, 2), st.floats(0.05, 2.0), st.integers(50, 5000), st.integers(0, 2**32 - 1))
def test_histogram_median_is_within_its_bin_width(log10_level, spread, n, seed):
    x = np.random.default_rng(seed).lognormal(log10_level * np.log(10), spread, n)
    hist = np.histogram(np.clip(x, _EDGES[0], _EDGES[-1]), bins=_EDGES)[0]
    # One bin is 1/16 decade wide (x1.155): the interpolated median lies in the bin of the sample at
    # rank ceil(n/2), so within one bin of it. (Not of np.median for even n: with few, spread-out
    # samples the two middle ones can lie bins apart, e.g. n=50, spread 2.)
    lower_middle = np.sort(x)[(n + 1) // 2 - 1]
    assert abs(np.log(_median(hist)) - np.log(lower_middle)) <= np.log(10) / 16 + 1e-9


def test_stable_errors_raise_nothing_and_a_shift_raises_one_event_per_cooldown():
    rng = np.random.default_rng(0)
    mon = DriftMonitor(CFG, "v1", checkpoint_median=0.002)
    assert feed(mon, rng, 0.01, 900, 0) == []
    assert mon.reference_median == pytest.approx(0.01, rel=0.1)
    assert mon.current_ratio() == pytest.approx(1.0, abs=0.15)
    events = feed(mon, rng, 0.05, 900, 900)  # a new noise floor: 5x the error
    assert len(events) == 2, [e.time for e in events]  # first crossing (~1230 s), again 300 s later
    first = events[0]
    # The sliding median crosses 3x once more than half of the last 600 s is shifted.
    assert 900 + 300 <= first.time <= 900 + 400
    assert first.ratio > 3.0 and first.model_version == "v1" and first.checkpoint_median == 0.002
    assert np.diff([e.time for e in events]).min() >= CFG.cooldown_s
    assert mon.current_ratio() == pytest.approx(5.0, rel=0.15)
    body = json.loads(events[0].to_json())
    assert body["type"] == "dae.drift" and body["windows"] >= CFG.min_windows


def test_a_drop_is_drift_too_and_old_buckets_slide_out():
    rng = np.random.default_rng(1)
    mon = DriftMonitor(CFG, "v1")
    feed(mon, rng, 0.01, 100, 0)
    events = feed(mon, rng, 0.002, 700, 100)
    assert events and events[0].ratio < 1 / 3
    # Back to the reference level: after one window length nothing of the shift is left.
    late = feed(mon, rng, 0.01, 1200, 800)
    assert all(e.time < 800 + CFG.window_s for e in late), [e.time for e in late]  # only while it slides out
    assert mon.current_ratio() == pytest.approx(1.0, abs=0.15)


def test_no_decision_before_the_reference_and_min_windows():
    rng = np.random.default_rng(2)
    mon = DriftMonitor(CFG, "v1")
    # 1000 windows: the reference (2000) is not complete, however high the errors.
    assert feed(mon, rng, 0.01, 10, 0, per_s=100) == []
    assert mon.reference_median is None and mon.current_ratio() is None
    assert feed(mon, rng, 1.0, 10, 10, per_s=100) == []  # completes the reference, still mixed
    assert mon.reference_median is not None


def test_switching_model_restarts_the_reference():
    rng = np.random.default_rng(3)
    mon = DriftMonitor(CFG, "v1")
    feed(mon, rng, 0.01, 400, 0)
    assert feed(mon, rng, 0.1, 600, 400)  # drifted
    mon.set_model("v2", 0.05)
    assert mon.reference_median is None and mon.model_version == "v2"
    assert feed(mon, rng, 0.1, 900, 1000) == []  # the new model's reference is the new level
    assert mon.reference_median == pytest.approx(0.1, rel=0.1)


def test_disabled_and_non_finite_errors():
    mon = DriftMonitor(DriftSettings(enabled=False), "v1")
    assert mon.update(np.full(10_000, 5.0), now=0) is None
    mon = DriftMonitor(CFG, "v1")
    assert mon.update(np.array([np.nan, np.inf]), now=0) is None
    assert mon.reference_median is None


def test_settings_name_what_is_wrong():
    with pytest.raises(ValidationError, match="ratio"):
        DriftSettings(ratio=1.0)
    with pytest.raises(ValidationError, match="window_s"):
        DriftSettings(window_s=0)
