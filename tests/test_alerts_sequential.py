"""Sequential tests beside the window score (pipeline.monitor.alerts.sequential): CUSUMs on small lasting
shifts, the spike matched test, the per-stream calibration of the raise threshold, and their
false-alarm models. Pure logic: no Kafka, no torch; every outcome is fixed by the seeds."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.monitor.alerts.engine import AlertEngine, window_features
from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.cusum import cusum_threshold, exact, lindley, siegmund_arl
from pipeline.monitor.alerts.sequential import SeqPlan
from pipeline.settings import AlertSettings

W, H = 64, 32
CAL = {"q50": 0.01, "q90": 0.02, "q99": 0.05, "q999": 0.1}


def engine(**kw):
    # the sequential tests alone: the record outlier test (test_alerts_outliers.py) off, so each test's
    # share of the false-alarm budget is as the figures below assume
    base = dict(min_windows=8, warmup_windows=16, stats_windows=128, refresh_every=4, slow_terms=(),
                cooldown_windows=0, resolve_windows=3, sequential_warmup=64, outlier_z=0, isolated_z=0)
    base.update(kw)
    return AlertEngine(AlertSettings(**base), CAL, "v7", window=W)


def healthy(n, rng, jitter=0.1):
    return 0.1 * np.exp(jitter * rng.standard_normal(n)), np.exp(0.5 * jitter * rng.standard_normal(n))


def feed(eng, stream, level, rng, chunk=16):
    """``level`` window by window in chunks (like a worker's micro-batches); returns the events."""
    out = []
    for a in range(0, level.size, chunk):
        lv = level[a : a + chunk]
        e, s = healthy(lv.size, rng)
        out += eng.update_scored(stream, H * np.arange(a, a + lv.size), W, e, s, now=float(a),
                                 features={"level": lv})[0]
    return out


def test_siegmund_arl_matches_the_textbook_value_and_the_threshold_inverts_it():
    # k = 0.5, h = 4: Siegmund's approximation gives ~338 (the exact ARL0 is ~336)
    assert siegmund_arl(4.0, 0.5) == pytest.approx(338, rel=0.01)
    for arl in (100.0, 1e4, 1e6):
        h = cusum_threshold(arl, 1.0)
        assert siegmund_arl(h, 1.0) == pytest.approx(arl, rel=1e-6)


def test_thresholds_follow_the_false_alarm_budget():
    def plan(rate, **kw):
        kw = {"sequential": ("level", "scale", "noise", "freq", "spike", "runs"), "isolated_z": 0, **kw}
        cfg = AlertSettings(false_alarms_per_hour=rate, **kw)
        return SeqPlan.build(cfg, Scoring.build(cfg, CAL, "v"), 256, None)

    loose, strict = plan(2.0), plan(0.02)
    assert strict.h > loose.h and strict.spike_t > loose.spike_t and strict.gumbel_c > loose.gumbel_c
    # level±, scale±, noise+, freq±, run_scale-, run_noise+, spike; and the record outlier test's share
    assert plan(0.2).per_test_rate == pytest.approx(0.2 / 10)
    # the defaults add the window score's calibration, the floor CUSUM and the isolated-sample test
    default = AlertSettings()
    assert SeqPlan.build(default, Scoring.build(default, CAL, "v"), 256, None).per_test_rate == pytest.approx(0.2 / 13)
    assert plan(0.2, outlier_z=7).per_test_rate == pytest.approx(0.2 / 11)
    assert sorted(plan(0.2).names) == sorted(("cusum_level+", "cusum_level-", "cusum_scale+", "cusum_scale-",
                                              "cusum_noise+", "cusum_freq+", "cusum_freq-", "run_scale-",
                                              "run_noise+", "spike"))
    assert plan(0.2, sequential=("score", "level")).per_test_rate == pytest.approx(0.2 / 3)
    assert plan(0.2, sequential=()) is None


@pytest.mark.parametrize("sign", [1, -1])
def test_a_small_lasting_level_shift_raises_a_cusum_alert_the_window_score_misses(sign):
    rng = np.random.default_rng(3 if sign > 0 else 4)
    sd = 0.2  # the level's window-to-window sigma (above level_floor, so the robust z is in these units)
    level = sd * rng.standard_normal(700)
    a, b = 400, 440
    level[a:b] += sign * 3 * sd  # 3 sigma for 40 windows: |z| ~ 3, half the raise threshold

    window_only = feed(engine(terms=("residual", "level"), sequential=()), "s", level, np.random.default_rng(9))
    assert window_only == []

    ev = feed(engine(terms=("residual", "level"), sequential=("level",)), "s", level, np.random.default_rng(9))
    assert [(e.kind, e.detector) for e in ev] == [("raised", f"cusum_level{'+' if sign > 0 else '-'}"),
                                                  ("resolved", f"cusum_level{'+' if sign > 0 else '-'}")]
    raised, resolved = ev
    assert H * (a - 8) <= raised.start <= H * a + W  # the change-point estimate: where the CUSUM left 0
    assert raised.end <= H * (a + 10) + W  # raised within ten windows of the shift
    assert resolved.end >= H * (b - 1) and resolved.end <= H * (b + 30) + W


@pytest.mark.parametrize("sign", [1, -1])
def test_a_process_that_runs_faster_or_slower_for_seconds_raises_the_frequency_cusum(sign):
    # the freq feature (log mean-square frequency of the output) moves by 2 ln 1.2 = 0.36 when the
    # process runs 20 % faster: 3 of its window-to-window sigmas here, for 40 windows (5 s at hop 128)
    rng = np.random.default_rng(13 if sign > 0 else 14)
    n, a, b, sd = 700, 400, 440, 0.12
    freq = -2.0 + sd * rng.standard_normal(n)
    freq[a:b] += sign * 2 * math.log(1.2)
    kw = dict(terms=("residual",), slow_terms=("freq",), slow_windows=64)

    def run(seq):
        eng, ev = engine(sequential=seq, **kw), []
        for c in range(0, n, 16):
            k = min(c + 16, n) - c
            e, sc = healthy(k, rng)
            ev += eng.update_scored("s", H * np.arange(c, c + k), W, e, sc, now=0.0,
                                    features={"freq": freq[c : c + k]})[0]
        return [(v.detector, v.start) for v in ev if v.kind == "raised"]

    assert run(()) == []  # neither the window score nor the slow freq term sees it
    raised = run(("freq",))
    assert [d for d, _ in raised] == [f"cusum_freq{'+' if sign > 0 else '-'}"]
    assert H * (a - 8) <= raised[0][1] <= H * a + W


def test_a_stationary_stream_raises_nothing():
    # 20 streams x 2,000 windows (1.4 stream-hours at 1 kHz, hop 128) of stationary level, error and scale
    eng = engine(terms=("residual", "scale", "level"), sequential=("score", "level", "scale"), stats_windows=512)
    rng = np.random.default_rng(11)
    events = []
    for i in range(20):
        events += feed(eng, f"s{i}", 0.2 * rng.standard_normal(2000), rng, chunk=64)
    assert events == []


def test_one_wild_sample_raises_the_spike_test_in_its_window():
    rng = np.random.default_rng(5)
    n = 400
    x = rng.standard_normal((n, 1, W)).astype(np.float32)
    x[300, 0, 20] += 20.0  # one sample at 20 noise sigmas, in one window
    y = np.zeros_like(x)  # an output that removed everything: the residual is the window
    e, s = x.var(axis=(1, 2)).astype(np.float64), x.std(axis=(1, 2)).astype(np.float64)
    f = window_features(x, y)
    assert f["spike"][300] > f["spike"][:300].max() + 1.0
    # the window score without the peak term: the residual's power moves less than the raise threshold
    eng = engine(terms=("residual",), sequential=("spike",), k=2, n=3)
    ev = []
    for a in range(0, n, 16):
        sl = slice(a, a + 16)
        ev += eng.update_scored("s", H * np.arange(a, min(a + 16, n)), W, e[sl], s[sl], now=0.0,
                                features={k: v[sl] for k, v in f.items()})[0]
    assert [(v.kind, v.detector) for v in ev] == [("raised", "spike"), ("resolved", "spike")]
    assert ev[0].start == H * 300 and ev[0].end == H * 300 + W


@pytest.mark.parametrize("tail", ["pot", "gumbel"])
def test_the_raise_threshold_is_calibrated_per_stream_and_cuts_false_alarms(tail):
    rng = np.random.default_rng(7)
    n = 3200
    # a stream whose error has heavy tails (Student t, 3 degrees of freedom): ordinary for it
    heavy = 0.1 * np.exp(0.1 * rng.standard_t(3, n))
    scales = np.ones(n)

    def run(seq):
        eng = engine(terms=("residual",), sequential=seq, k=1, n=1, score_tail=tail)
        ev, thr_at = [], []
        for a in range(0, n, 32):  # calls of 32 windows never span the end of a block of 64
            slot = eng._tab.get("s")
            thr = 0.0 if slot is None else float(eng._tab.seq_thr[slot])
            new = eng.update("s", H * np.arange(a, a + 32), W, heavy[a : a + 32], scales[a : a + 32], now=0.0)
            ev += new
            thr_at += [max(thr, eng.cfg.raise_threshold)] * len(new)
        return eng, [(v, t) for v, t in zip(ev, thr_at) if v.kind == "raised"]

    fixed_eng, fixed = run(())
    cal_eng, cal = run(("score",))
    thr = float(cal_eng._tab.seq_thr[cal_eng._tab.get("s")])
    assert thr > cal_eng.cfg.raise_threshold  # the heavy tail earned a higher threshold
    assert len(fixed) >= 3 and len(cal) < len(fixed)
    assert all(v.threshold == t > cal_eng.cfg.raise_threshold for v, t in cal)  # each event says the stream's
    # a gross fault still raises on the calibrated stream
    e = np.full(8, 0.1 * math.exp(3.0))
    ev = cal_eng.update("s", H * np.arange(n, n + 8), W, e, np.ones(8), now=0.0)
    assert [v.kind for v in ev] == ["raised"] and ev[0].detector == "score"


def test_a_forgotten_stream_starts_its_sequential_state_afresh():
    eng = engine(terms=("residual", "level"), sequential=("level",))
    rng = np.random.default_rng(8)
    feed(eng, "s", 0.2 * rng.standard_normal(300), rng)
    slot = eng._tab.get("s")
    assert eng._tab.seq_n[slot, 0] > 0
    eng.forget("s")
    feed(eng, "t", 0.2 * rng.standard_normal(4), rng)  # reuses the freed slot
    assert eng._tab.get("t") == slot and eng._tab.seq_n[slot, 0] == 0


@pytest.mark.parametrize("error_agrees", [True, False])
def test_the_noise_cusum_counts_a_rise_only_as_far_as_the_error_agrees(error_agrees):
    # a louder stretch the model fits as well as ever (noise feature up, standardised error not) is
    # not a noise fault; noise power that rises with the error is
    rng = np.random.default_rng(12)
    n, a, b = 700, 400, 440
    noise = 0.1 * rng.standard_normal(n)
    log_err = np.log(0.1) + 0.1 * rng.standard_normal(n)
    noise[a:b] += 0.4  # 4 sigmas of the noise feature: under the raise threshold per window
    if error_agrees:
        log_err[a:b] += 0.4
    eng = engine(terms=("residual", "noise"), sequential=("noise",))
    ev = []
    for c in range(0, n, 16):
        sl = slice(c, c + 16)
        k = min(c + 16, n) - c
        ev += eng.update_scored("s", H * np.arange(c, c + k), W, np.exp(log_err[sl]), np.ones(k), now=0.0,
                                features={"noise": noise[sl]})[0]
    raised = [(v.detector, v.start) for v in ev if v.kind == "raised"]
    if error_agrees:
        assert [d for d, _ in raised] == ["cusum_noise+"] and H * (a - 8) <= raised[0][1] <= H * a + W
    else:
        assert raised == []


def test_the_closed_form_decides_as_the_window_by_window_step():
    # many streams, several calls, shifts, spikes and window-score alerts: the closed-form CUSUMs of
    # the streams with nothing to decide and the lockstep for all give the same events and state
    rng = np.random.default_rng(21)
    n, streams = 640, 6
    level = 0.2 * rng.standard_normal((streams, n))
    level[1, 300:340] += 0.6
    level[2, 200:260] -= 0.8
    log_err = np.log(0.1) + 0.1 * rng.standard_normal((streams, n))
    log_err[3, 400:404] += 4.0  # a window-score alert: the CUSUMs stay at 0 under it ...
    level[3, 396:460] += 0.6  # ... while a level shift goes on
    spike = 1.1 + 0.1 * rng.standard_normal((streams, n))
    spike[4, 500] = 4.0
    engines = []
    for closed in (True, False):
        eng = engine(terms=("residual", "level"), sequential=("level", "spike"))
        eng._seq.closed = closed
        engines.append(eng)
    out = [[], []]
    for a in range(0, n, 32):
        for k, eng in enumerate(engines):
            ids = [f"s{i}" for i in range(streams)]
            sl = slice(a, a + 32)
            r = eng.update_batch(ids, [32] * streams, np.tile(H * np.arange(a, a + 32), streams), W,
                                 np.exp(log_err[:, sl]).ravel(), np.ones(32 * streams), now=0.0,
                                 features={"level": level[:, sl].ravel(), "spike": spike[:, sl].ravel()})
            out[k] += [(e.to_dict(), w) for e, w in zip(r.events, r.event_windows)]
    # the same events; a peak score may differ in its last bits (the closed form sums in another order)
    assert [({**e, "peak_score": None}, w) for e, w in out[0]] == [({**e, "peak_score": None}, w) for e, w in out[1]]
    np.testing.assert_allclose([e["peak_score"] for e, _ in out[0]], [e["peak_score"] for e, _ in out[1]], rtol=1e-12)
    assert {e["detector"] for e, _ in out[0]} >= {"cusum_level+", "cusum_level-", "spike", "score"}
    for f in ("seq_S", "seq_zero", "seq_mu", "seq_m2", "seq_c1", "seq_n", "seq_active", "seq_cool"):
        np.testing.assert_allclose(getattr(engines[0]._tab, f), getattr(engines[1]._tab, f), atol=1e-9, err_msg=f)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-3.5, 3.5), st.booleans()), min_size=1, max_size=60),
       st.floats(0, 12))
def test_lindley_closed_form_equals_the_recursion(steps, s0):
    inc = np.array([a for a, _ in steps])
    reset = np.array([r for _, r in steps])
    want, s = [], s0
    for a, r in steps:
        s = 0.0 if r else max(0.0, s + a)
        want.append(s)
    got = lindley(inc[None, :], reset[None, :], np.array([s0]))[0]
    np.testing.assert_allclose(got, want, atol=1e-8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-100.0, 100.0), min_size=1, max_size=64), st.randoms(use_true_random=False))
def test_a_blocks_sums_are_exact_in_any_order_and_any_cut(values, rnd):
    # the estimates take a block's values in as exact sums: cut and ordered anyhow, the same bits
    x = exact(np.array(values), 64.0, 64)
    assert np.all(np.abs(x) <= 64.0)
    assert np.all(np.abs(x - np.clip(values, -64, 64)) <= 2.0**-30)
    perm = list(range(len(values)))
    rnd.shuffle(perm)
    cuts = sorted(rnd.sample(range(len(values) + 1), min(3, len(values) + 1)))
    parts = np.split(x[perm], cuts)
    total = 0.0
    for p in parts:
        total += float(np.sum(p))
    assert total == float(np.sum(x))


def _knocking(n, rng, noise_at=None):
    """``n`` samples of decaying resonances (10 to 30 noise std, every 300 samples) over unit white
    noise, whose power is 4x over ``noise_at`` (a slice)."""
    x = rng.standard_normal(n)
    if noise_at is not None:
        x[noise_at] += 3 ** 0.5 * rng.standard_normal(x[noise_at].size)  # independent noise: power x 4
    t = np.arange(600)
    for at in range(50, n - 600, 300):
        f, tau = rng.uniform(1 / 60, 0.15), rng.uniform(10, 60)
        x[at : at + 600] += rng.uniform(10, 30) * np.exp(-t / tau) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
    return x


@pytest.mark.parametrize("risen", [True, False])
def test_the_floor_cusum_sees_the_noise_power_rise_under_knocks(risen):
    # 4x the noise power (the hard set's noise fault at its strongest) for 62 windows on a knocking
    # stream: the raw window's robust floor rises by ln 2 = 0.69 where the knocks leave the median alone
    rng = np.random.default_rng(21)
    n, a, b = 64_000, 40_000, 42_000
    x = _knocking(n, rng, slice(a, b) if risen else None)
    idx = H * np.arange((n - W) // H + 1)[:, None] + np.arange(W)[None, :]
    win = x[idx][:, None, :].astype(np.float32)
    f = window_features(win, None)
    quiet = (idx[:, 0] % 300 > 250) & ((idx[:, 0] < a - W) | (idx[:, 0] > b))  # knocks died down
    assert np.median(f["floor"][quiet]) == pytest.approx(0.0, abs=0.15)  # log of the unit noise std
    eng = engine(terms=("residual",), sequential=("floor",))
    ev = []
    for c in range(0, win.shape[0], 64):
        sl = slice(c, c + 64)
        k = win[sl].shape[0]
        e, s = healthy(k, rng)
        ev += eng.update_scored("s", idx[sl, 0], W, e, s, now=0.0, features={k_: v[sl] for k_, v in f.items()})[0]
    raised = [(v.detector, v.start) for v in ev if v.kind == "raised"]
    if risen:
        assert [d for d, _ in raised] == ["cusum_floor+"] and a - 20 * H <= raised[0][1] <= b
    else:
        assert raised == []
