"""The vectorised paths of the alert engine (pipeline.monitor.alerts.batch.batch_run, whole runs, and
pipeline.monitor.alerts.steps.fast_run, runs up to a refresh) against the scalar reference step:
identical scores, terms, alert states and events, bit for bit."""

import numpy as np
import pytest

from pipeline.monitor.alerts.terms import Robust, refresh_many
from pipeline.monitor.alerts import engine as alerts
from pipeline.monitor.alerts.batch import batch_run
from pipeline.monitor.alerts.engine import AlertEngine, window_features
from pipeline.monitor.alerts.steps import fast_run
from pipeline.settings import AlertSettings

W, H = 64, 32
CAL = {"q50": 0.01, "q999": 0.1}


def _stream(rng, n):
    """Windows/outputs of a noisy sine with injected anomalies of every kind the features see."""
    t = np.arange(n * H + W)
    sig = np.sin(2 * np.pi * t / 50.0) + 0.1 * rng.standard_normal(t.size)
    for _ in range(n // 150):
        a = int(rng.integers(0, t.size - 400))
        kind = rng.integers(5)
        if kind == 0:
            sig[a] += 20.0
        elif kind == 1:
            sig[a:] += rng.choice([-1, 1]) * rng.uniform(0.2, 3.0)
        elif kind == 2:
            sig[a : a + 300] += rng.uniform(0.5, 2.0) * rng.standard_normal(300)
        elif kind == 3:
            sig[a : a + 200] = sig[a]
        else:
            sig[a : a + 300] = np.clip(sig[a : a + 300], -0.3, 0.3)
    idx = H * np.arange(n)[:, None] + np.arange(W)[None, :]
    x = sig[idx][:, None, :]
    y = np.sin(2 * np.pi * t / 50.0)[idx][:, None, :] * rng.uniform(0.9, 1.0)
    r = (x - y).reshape(n, -1)
    errors = np.mean(r * r, axis=1) / np.maximum(x.reshape(n, -1).var(axis=1), 1e-12)
    scales = x.reshape(n, -1).std(axis=1)
    return H * np.arange(n), errors, scales, x, y


def _run(eng, parts):
    events, scores = [], []
    for kind, args in parts:
        if kind == "model":
            eng.set_model(*args)
            continue
        ev, sc = eng.update_scored(*args)
        events += [e.to_dict() for e in ev]
        scores.append(sc)
    return events, scores


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_and_scalar_path_give_identical_scores_and_events(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    small = dict(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=int(rng.integers(1, 9)),
                 slow_windows=16, cooldown_windows=int(rng.integers(0, 10)), resolve_windows=3)
    cfg = AlertSettings(**small) if seed % 2 else AlertSettings(cooldown_windows=int(rng.integers(0, 10)))
    n = 4000
    s, e, sc, x, y = _stream(rng, n)
    e[rng.integers(0, n, 5)] = np.nan  # non-finite inputs
    e[rng.integers(0, n, 20)] *= 300.0  # lone hot windows
    s = s.copy()
    s[2500:] -= 40 * H  # a rewound producer
    feats = window_features(x, y)
    parts, i = [], 0
    while i < n:
        k = int(rng.integers(1, 200))
        sl = slice(i, i + k)
        stream = "a" if rng.random() < 0.8 else "b"
        f = {t: v[sl] for t, v in feats.items()} if i < 3000 or rng.random() < 0.5 else {}
        parts.append(("call", (stream, s[sl], W, e[sl], sc[sl], 1.0, None, None, f)))
        if i < 2000 <= i + k:
            parts.append(("model", ({"q50": 0.02, "q999": 0.2}, "v2")))
        i += k
    used: dict[tuple[str, str], int] = {}

    def build(name, **paths):  # an engine whose vectorised paths count the windows they take
        def counted(path, fn):
            def run(*a):
                n = fn(*a)
                used[name, path] = used.get((name, path), 0) + n
                return n
            return run

        monkeypatch.setattr(alerts, "batch_run", counted("batch", batch_run))
        monkeypatch.setattr(alerts, "fast_run", counted("fast", fast_run))
        return AlertEngine(cfg, CAL, "v1", **paths)

    full, segments, scalar = build("full"), build("segments", batch_path=False), build("scalar", fast_path=False)
    ev0, sc0 = _run(scalar, parts)
    assert any(ev["kind"] == "resolved" for ev in ev0)  # alerts, resolves and cooldowns were exercised
    for eng in (full, segments):
        ev1, sc1 = _run(eng, parts)
        assert ev1 == ev0
        for a, b in zip(sc1, sc0):
            np.testing.assert_array_equal(a.score, b.score)
            np.testing.assert_array_equal(a.active, b.active)
            for t in a.terms:
                np.testing.assert_array_equal(a.terms[t], b.terms[t], err_msg=t)
    # both vectorised paths carried real work; without the batch path, fast_run carries the runs
    assert used["full", "batch"] > 300 and used["full", "fast"] > 100, used
    assert used["segments", "fast"] > used["full", "batch"] and ("segments", "batch") not in used, used
    assert not any(name == "scalar" for name, _ in used), used


def test_refresh_matches_numpy_quantile_and_median_bit_for_bit():
    rng = np.random.default_rng(0)
    for size in (8, 37, 64, 512):
        for count in (1, 2, 3, size - 1, size, 3 * size):
            rs = []
            for j in range(3):
                r = Robust(size, 0.01, float(rng.choice([0.01, 0.2, 0.5 - 1e-9])), 3.0, 6.0)
                r.count = count
                r.buf[:] = np.round(rng.standard_normal(size), int(rng.integers(0, 4)))
                rs.append(r)
            refresh_many(rs)
            for r in rs:
                v = r.buf[: min(r.count, size)]
                q_lo, med, q_hi = (float(q) for q in np.quantile(v, (r.p, 0.5, 1.0 - r.p)))
                sigma = max(1.4826 * float(np.median(np.abs(v - med))), r.floor)
                assert r.med == med
                assert r.hi == max(sigma, (q_hi - med + r.margin * sigma) / r.thr)
                assert r.lo == max(sigma, (med - q_lo + r.margin * sigma) / r.thr)


@pytest.mark.parametrize("shape", [(64, 1, 256), (50, 3, 64), (7, 1, 3000), (3, 2, 1), (1, 1, 2)])
def test_window_features_in_chunks_equal_the_whole_batch_at_once(shape, monkeypatch):
    from pipeline.monitor.alerts import terms as alert_terms

    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, :, :1] = x.max()  # pinned samples for the clip feature
    y = (0.9 * x).astype(np.float32)
    chunked = [window_features(x, y), window_features(x, None)]
    monkeypatch.setattr(alert_terms, "_CHUNK_SAMPLES", 10**12)
    whole = [window_features(x, y), window_features(x, None)]
    for a, b in zip(chunked, whole):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
