"""Alert logic (pipeline.monitor.alerts.engine): k-of-n raise, hysteresis, cooldown, adaptation, terms, events."""

import json

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.monitor.alerts.engine import EVENT_TYPE, AlertEngine, AlertEvent, window_features
from pipeline.settings import AlertSettings

W, H = 64, 32
CAL = {"q50": 0.01, "q90": 0.02, "q99": 0.05, "q999": 0.1}


def normal(n, rng, err=0.1, scale=1.0, jitter=0.1):
    """Per-window errors/scales of a healthy stream: a steady noise floor with small jitter."""
    errors = err * np.exp(jitter * rng.standard_normal(n))
    scales = scale * np.exp(0.5 * jitter * rng.standard_normal(n))
    return errors, scales


def starts(n, first=0):
    return first + H * np.arange(n)


def engine(**kw):
    # the window score alone: the sequential tests have tests of their own (tests/test_alerts_sequential.py)
    base = dict(min_windows=8, warmup_windows=16, stats_windows=128, refresh_every=4, slow_terms=(),
                cooldown_windows=0, resolve_windows=3, sequential=())
    base.update(kw)
    return AlertEngine(AlertSettings(**base), CAL, "v7")


def warm(eng, stream, rng, n=200, **kw):
    e, s = normal(n, rng, **kw)
    assert eng.update(stream, starts(n), W, e, s, now=1.0) == []
    return n


def test_single_hot_window_does_not_raise_with_k2_but_two_of_three_do():
    rng = np.random.default_rng(0)
    eng = engine(k=2, n=3)
    n0 = warm(eng, "a", rng)
    e, s = normal(10, rng)
    e[2] *= 1e3  # one hot window
    assert eng.update("a", starts(10, H * n0), W, e, s, now=2.0) == []
    e, s = normal(7, rng)
    e[3] *= 1e3
    e[5] *= 1e3  # two hot windows within three
    ev = eng.update("a", starts(7, H * (n0 + 10)), W, e, s, now=3.0)
    assert [x.kind for x in ev] == ["raised"]
    assert eng.active() == 1 and eng.is_active("a")


def test_raised_and_resolved_events_carry_the_sample_ranges():
    rng = np.random.default_rng(1)
    eng = engine(k=2, n=3, resolve_windows=3)
    n0 = warm(eng, "s", rng)
    e, s = normal(20, rng)
    e[4:6] *= 1e3  # windows 4 and 5 hot
    e[6] *= np.exp(5 * 0.1)  # between resolve (3) and raise (6): keeps the alert up
    ev, sc = eng.update_scored("s", starts(20, H * n0), W, e, s, now=5.0)
    kinds = [x.kind for x in ev]
    assert kinds == ["raised", "resolved"]
    first = H * n0
    raised, resolved = ev
    assert (raised.start, raised.end) == (first + 4 * H, first + 5 * H + W)
    assert resolved.start == raised.start
    last_anomalous = max(i for i in range(20) if sc.score[i] >= 3.0)
    assert last_anomalous >= 6
    assert resolved.end == first + last_anomalous * H + W
    assert raised.threshold == 6.0 and resolved.threshold == 3.0
    assert raised.peak_score >= 6.0 and resolved.peak_score >= raised.peak_score
    assert raised.model_version == "v7" and raised.time == 5.0 and raised.stream == "s"
    # resolved after 3 consecutive windows below the resolve threshold
    assert not sc.active[4] and sc.active[5]  # the second hot window completes k=2 of n=3
    i_res = int(np.argmax(~sc.active[5:])) + 5
    assert np.all(sc.score[i_res - 2 : i_res + 1] < 3.0) and sc.active[i_res - 1]


def test_hysteresis_keeps_the_alert_while_scores_stay_above_resolve():
    rng = np.random.default_rng(2)
    eng = engine(k=1, n=1, resolve_windows=2)
    n0 = warm(eng, "s", rng)
    e, s = normal(30, rng)
    e[0] *= 1e3  # raise
    # Residual sigma ~0.14 (log units): exp(0.65) is ~4.6 sigma, below raise (6), above resolve (3).
    e[1:20], s[1:20] = 0.1 * np.exp(0.65), 1.0
    ev, sc = eng.update_scored("s", starts(30, H * n0), W, e, s, now=0.0)
    assert [x.kind for x in ev] == ["raised", "resolved"]
    assert sc.active[:20].all() and not sc.active[-1]
    assert ev[1].end >= H * n0 + 15 * H + W


def test_cooldown_suppresses_a_new_raise_then_allows_it():
    rng = np.random.default_rng(3)
    eng = engine(k=1, n=1, resolve_windows=1, cooldown_windows=5)
    n0 = warm(eng, "s", rng)
    e, s = normal(20, rng)
    e[0] *= 1e3  # raise at 0, resolve at 1
    e[3] *= 1e3  # inside the cooldown (windows 2-6): ignored
    e[10] *= 1e3  # after it: raises again
    ev, _ = eng.update_scored("s", starts(20, H * n0), W, e, s, now=0.0)
    raised = [x for x in ev if x.kind == "raised"]
    assert len(raised) == 2
    assert raised[1].start == H * n0 + 10 * H


def test_a_noisier_but_normal_stream_is_not_alarmed():
    rng = np.random.default_rng(4)
    eng = engine(k=1, n=1)
    # Calibration says errors ~0.01; this sensor sits at 20x that all the time, 10x the scale too.
    e, s = normal(600, rng, err=0.2, scale=10.0)
    assert eng.update("noisy", starts(600), W, e, s, now=0.0) == []
    e, s = normal(600, rng)
    assert eng.update("quiet", starts(600), W, e, s, now=0.0) == []


def test_a_lasting_change_of_noise_level_alarms_once_then_is_learnt():
    rng = np.random.default_rng(5)
    eng = engine(k=1, n=1, resolve_windows=4, alert_admit_every=2)
    n0 = warm(eng, "s", rng)
    e, s = normal(1000, rng, err=0.1 * 8)  # residual power x8 from now on, for good
    ev, sc = eng.update_scored("s", starts(1000, H * n0), W, e, s, now=0.0)
    assert [x.kind for x in ev] == ["raised", "resolved"]
    assert not sc.active[-300:].any()


def test_flat_line_raises_through_the_scale_term():
    rng = np.random.default_rng(6)
    eng = engine(k=2, n=3, terms=("residual", "scale"))
    n0 = warm(eng, "s", rng)
    e, s = normal(10, rng)
    s[4:8] = 0.0  # flat windows: std 0
    e[4:8] = 0.1  # the model's error on an all-zero standardised window is unremarkable
    ev, sc = eng.update_scored("s", starts(10, H * n0), W, e, s, now=0.0)
    assert [x.kind for x in ev] == ["raised"]
    assert (sc.terms["scale"][4:8] <= -6.0).all()
    assert (sc.score[4:8] == eng.cfg.max_score).all()  # capped, JSON-safe
    assert ev[0].start == H * n0 + 4 * H


def test_the_optional_terms_see_level_shift_spike_and_clipping():
    rng = np.random.default_rng(7)
    eng = engine(k=1, n=1, resolve_windows=1)
    n = 300
    x = rng.standard_normal((n, 1, W))
    y = 0.0 * x  # an "output" that removed everything: the residual is the (white) window
    e, s = x.var(axis=(1, 2)), x.std(axis=(1, 2))
    x[200, 0, 10] += 40.0  # spike
    x[250:253] += 5.0  # level shift
    x[280, 0] = np.clip(x[280, 0], -0.3, 0.3)  # clipped
    f = window_features(x, y)
    assert set(f) == {"level", "clip", "peak", "noise", "spike", "freq", "floor"}
    ev, sc = eng.update_scored("s", starts(n), W, e, s, now=0.0, windows=x, outputs=y)
    raised = [v.start // H for v in ev if v.kind == "raised"]
    assert 200 in raised and 250 in raised and 280 in raised
    assert sc.terms["peak"][200] >= 6 and sc.terms["level"][250] >= 6 and sc.terms["clip"][280] >= 6


def test_scores_do_not_depend_on_how_windows_are_split_into_calls():
    rng = np.random.default_rng(8)
    e, s = normal(500, rng)
    e[300:305] *= 50
    a, b = engine(k=2, n=3), engine(k=2, n=3)
    ev1, sc1 = a.update_scored("s", starts(500), W, e, s, now=0.0)
    ev2, parts = [], []
    for lo in range(0, 500, 37):
        ev, sc = b.update_scored("s", starts(500)[lo : lo + 37], W, e[lo : lo + 37], s[lo : lo + 37], now=0.0)
        ev2 += ev
        parts.append(sc.score)
    np.testing.assert_array_equal(sc1.score, np.concatenate(parts))
    assert [x.to_dict() for x in ev1] == [x.to_dict() for x in ev2]


def test_set_model_restarts_error_statistics_but_keeps_scale_statistics():
    rng = np.random.default_rng(9)
    eng = engine()
    warm(eng, "s", rng)
    count = eng._tab.count[eng._tab.get("s")]
    res, scale = eng._scoring.col("residual"), eng._scoring.col("scale")
    scale_count = int(count[scale])
    assert count[res] > 0 and scale_count > 0
    eng.set_model({"q50": 0.5, "q999": 2.0}, "v8")
    assert count[res] == 0 and count[scale] == scale_count
    e, s = normal(3, rng)
    e[1] *= 1e3
    ev, sc = eng.update_scored("s", starts(3, 10_000), W, e, s, now=0.0)
    assert ev == []  # no alert before min_windows under the new model
    assert eng.model_version == "v8"


def test_no_alert_before_min_windows_and_disabled_engine_scores_nothing():
    rng = np.random.default_rng(10)
    e, s = normal(6, rng)
    e[:] *= 1e4
    assert engine(k=1, n=1).update("s", starts(6), W, e, s, now=0.0) == []
    off = AlertEngine(AlertSettings(enabled=False), CAL, "v")
    ev, sc = off.update_scored("s", starts(6), W, e, s)
    assert ev == [] and not sc.score.any()


def test_forget_drops_the_stream_state():
    rng = np.random.default_rng(11)
    eng = engine(k=1, n=1)
    n0 = warm(eng, "s", rng)
    e, s = normal(2, rng)
    e[0] *= 1e3
    eng.update("s", starts(2, H * n0), W, e, s, now=0.0)
    assert eng.active() == 1
    eng.forget("s")
    assert eng.active() == 0 and eng.streams() == 0


def test_event_json_has_exactly_the_contract_keys():
    ev = AlertEvent("raised", "pump-3", 1024, 1280, 12.5, 6.0, "v2", 1.7e9)
    raw = ev.to_json()
    assert isinstance(raw, bytes)
    d = json.loads(raw.decode("utf-8"))
    assert set(d) == {"type", "kind", "stream", "start", "end", "peak_score", "threshold", "model_version", "time",
                      "detector"}
    assert d["type"] == EVENT_TYPE == "dae.alert"
    assert (d["kind"], d["stream"], d["start"], d["end"]) == ("raised", "pump-3", 1024, 1280)
    assert json.loads(AlertEvent("resolved", "é", 0, 1, 1000.0, 3.0, "v", 0.0).to_json())["stream"] == "é"


def test_settings_validate_and_are_frozen():
    with pytest.raises(ValidationError):
        AlertSettings(raise_threshold=3.0, resolve_threshold=3.0)
    with pytest.raises(ValidationError):
        AlertSettings(k=3, n=2)
    with pytest.raises(ValidationError):
        AlertSettings(bogus=1)
    with pytest.raises(ValidationError):
        AlertSettings(terms=("scale",))
    s = AlertSettings()
    with pytest.raises(ValidationError):
        s.k = 5


def test_a_loud_window_is_not_an_anomaly_unless_the_relative_error_agrees():
    rng = np.random.default_rng(12)
    eng = engine(k=1, n=1, terms=("residual",))  # (the scale term would see the loud window: not tested here)
    n0 = warm(eng, "s", rng)
    e, s = normal(6, rng)
    # Window 1: 4x louder with the same standardised error -> residual power x16, relative error normal.
    s[1] *= 4.0
    # Window 4: the model's misfit: residual and standardised error both x30.
    e[4] *= 30.0
    ev, sc = eng.update_scored("s", starts(6, H * n0), W, e, s, now=0.0)
    assert sc.terms["residual"][1] >= 6.0 and sc.score[1] < 6.0  # residual alone does not vote
    assert [x.kind for x in ev] == ["raised"] and ev[0].start == H * n0 + 4 * H


def test_a_small_lasting_level_shift_raises_through_the_slow_term():
    rng = np.random.default_rng(13)
    eng = engine(k=1, n=1, slow_terms=("level",), slow_windows=16)
    n = 400
    x = rng.standard_normal((n, 1, W))
    e, s = np.full(n, 0.1), x.std(axis=(1, 2))
    x[300:] += 0.6  # ~4.8 sigma of one window's mean (std 1/8 over 64 samples): never hot alone
    ev, sc = eng.update_scored("s", starts(n), W, e, s, now=0.0, windows=x)
    assert np.abs(sc.terms["level"][300:]).max() < 6.0
    raised = [v for v in ev if v.kind == "raised"]
    assert len(raised) == 1 and 300 * H <= raised[0].start <= 316 * H
    assert sc.terms["level_slow"][316] >= 6.0


@pytest.mark.parametrize("kw, field", [
    (dict(raise_threshold=3.0, resolve_threshold=3.0), "resolve_threshold"),
    (dict(k=3, n=2), "k (3) must not exceed n"),
    (dict(min_windows=100, warmup_windows=50), "warmup_windows"),
    (dict(terms=("scale",)), "terms"),
    (dict(slow_terms=("bogus",)), "slow_terms"),
    (dict(k=0), "k"),
    (dict(stats_windows=4), "stats_windows"),
    (dict(bogus=1), "bogus"),
])
def test_settings_errors_name_the_field(kw, field):
    with pytest.raises(ValidationError) as exc:
        AlertSettings(**kw)
    assert field in str(exc.value)


def test_a_slow_term_keeps_the_alert_up_but_does_not_stretch_its_range():
    rng = np.random.default_rng(14)
    eng = engine(k=1, n=1, slow_terms=("level",), slow_windows=16, resolve_windows=2)
    n = 450
    x = rng.standard_normal((n, 1, W))
    e, s = np.full(n, 0.1), x.std(axis=(1, 2))
    x[300:350] += 0.6  # 50 windows of a small level shift, then back to normal
    ev, sc = eng.update_scored("s", starts(n), W, e, s, now=0.0, windows=x)
    assert [v.kind for v in ev] == ["raised", "resolved"]
    i_res = int(np.flatnonzero(sc.active)[-1]) + 1  # the window that resolved it
    assert i_res > 352  # held up past the shift by the lagging slow mean ...
    assert ev[1].end <= 352 * H + W  # ... but the range ends where the per-window evidence does
    assert ev[1].end >= 340 * H + W


def test_a_lasting_level_shift_is_learnt_by_the_slow_term_too():
    rng = np.random.default_rng(15)
    eng = engine(k=1, n=1, slow_terms=("level",), slow_windows=16, alert_admit_every=2)
    n = 1500
    x = rng.standard_normal((n, 1, W))
    e, s = np.full(n, 0.1), x.std(axis=(1, 2))
    x[300:] += 0.6  # for good: a new regime, not an anomaly to alarm about for ever
    ev, sc = eng.update_scored("s", starts(n), W, e, s, now=0.0, windows=x)
    assert [v.kind for v in ev][:2] == ["raised", "resolved"]
    assert not sc.active[-300:].any()


def test_a_constant_stream_scores_nothing_whatever_its_level():
    # A flat window's level in units of its median scale (0) is huge: it must still equal its median.
    eng = engine(k=1, n=1, slow_terms=("level",), slow_windows=16)
    n = 300
    x = np.full((n, 1, W), 45.0, np.float32)
    ev, sc = eng.update_scored("flat", starts(n), W, np.full(n, 6e-5), np.zeros(n), now=0.0, windows=x, outputs=x)
    assert ev == [] and sc.score.max() == 0.0
