"""The alert engine against its reference: the engine as it was before the struct-of-arrays slots and the
batch entry point (one window at a time, float64 statistics in one object per stream and term), kept
here as the oracle. Same events, same active states, scores and terms equal within float32 rounding
(the slots hold admitted values in float32, the features are computed in float32 passes)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pytest

from pipeline.monitor.alerts import engine as alerts
from pipeline.monitor.alerts.engine import AlertEngine, window_features
from pipeline.monitor.alerts.events import TERMS, AlertEvent
from pipeline.monitor.alerts.runpass import quiet_runs_compiled
from pipeline.monitor.alerts.runs import quiet_runs
from pipeline.monitor.alerts.terms import TINY, calibration_prior, robust_stats
from pipeline.settings import ALERT_FEATURES, ALERT_SLOWABLE, AlertSettings

W, H = 64, 32
CAL = {"q50": 0.01, "q999": 0.1}
_MODEL = ("residual", "error", "noise", "peak", "freq")


# --------------------------------------------------------------------------------- the oracle
class Robust:
    """Median and tail-aware spreads of the last ``size`` admitted values of one feature (float64)."""

    def __init__(self, size: int, floor: float, p: float, margin: float, thr: float):
        self.buf = np.empty(size)
        self.count = self.pos = self.pending = 0
        self.med, self.hi, self.lo = 0.0, floor, floor
        self.floor, self.p, self.margin, self.thr = floor, p, margin, thr

    def push(self, x: float, refresh_every: int, warm: int, clip: bool) -> bool:
        if clip:
            x = min(max(x, self.med - self.thr * self.lo), self.med + self.thr * self.hi)
        self.buf[self.pos] = x
        self.pos = (self.pos + 1) % self.buf.size
        self.count += 1
        self.pending += 1
        return self.count <= warm or self.pending >= refresh_every

    def refresh(self) -> None:
        v = self.buf[None, : min(self.count, self.buf.size)].copy()
        med, hi, lo = robust_stats(v, self.p, self.floor, self.margin, self.thr)
        self.med, self.hi, self.lo, self.pending = float(med[0]), float(hi[0]), float(lo[0]), 0

    def z(self, x: float) -> float:
        d = x - self.med
        return d / self.hi if d >= 0 else d / self.lo


@dataclass
class _Stream:
    stats: dict[str, Robust]
    slow: dict[str, deque] = field(default_factory=dict)
    last_start: int | None = None
    recent: deque = field(default_factory=deque)
    active: bool = False
    alert_start: int = 0
    alert_end: int = 0
    alert_peak: float = 0.0
    below: int = 0
    cooldown: int = 0
    in_alert: int = 0
    quiet: int = 0
    fast_below: int = 0
    range_done: bool = False


class ReferenceEngine:
    """The engine before issue 13, its scalar step only (the paths it had were equal to it, tested)."""

    def __init__(self, cfg: AlertSettings, calibration, model_version: str):
        self.cfg, self.streams = cfg, {}
        floors = {f: getattr(cfg, f"{f}_floor") for f in ALERT_FEATURES}
        self.floors = {**floors, **{f + "_slow": 0.5 * floors[f] for f in ALERT_SLOWABLE}}
        self.set_model(calibration, model_version)

    def set_model(self, calibration, model_version: str) -> None:
        self.model_version = model_version
        self.prior = calibration_prior(calibration, self.cfg.residual_floor)
        for st in self.streams.values():
            for f in _MODEL:
                st.slow.pop(f, None)
                for t in (f, f + "_slow"):
                    if t in st.stats:
                        st.stats[t] = self._robust(t)

    def _robust(self, t: str) -> Robust:
        c = self.cfg
        margin = c.model_tail_margin if t in ("residual", "noise") else c.tail_margin
        return Robust(c.stats_windows, self.floors[t], c.tail_quantile, margin, c.raise_threshold)

    def update_scored(self, stream, starts, window, errors, scales, now, features):
        cfg = self.cfg
        n = len(starts)
        wanted = set(cfg.terms) | set(cfg.slow_terms)
        extra = {t: np.asarray(v, float) for t, v in features.items() if t in wanted}
        finite = np.isfinite(errors) & np.isfinite(scales) & (errors >= 0) & (scales >= 0)
        for v in extra.values():
            finite &= np.isfinite(v)
        log_err = np.log(np.maximum(np.where(finite, errors, 1.0), TINY))
        log_scale = np.log(np.maximum(np.where(finite, scales, 1.0), TINY))
        values = {"residual": log_err + 2.0 * log_scale, "error": log_err, "scale": log_scale, **extra}
        st = self.streams.setdefault(stream, _Stream(stats={t: self._robust(t) for t in TERMS}))
        score, act, zs, events = np.zeros(n), np.zeros(n, bool), {t: np.zeros(n) for t in TERMS}, []
        for i in range(n):
            s = int(starts[i])
            if st.last_start is not None and s <= st.last_start:
                st.recent.clear()
            st.last_start = s
            ready = st.stats["residual"].count >= cfg.min_windows
            x_now, fast, sc = self._score(st, values, i, log_err[i], ready, zs) if finite[i] else ({}, 0.0, 0.0)
            score[i] = sc
            hot = ready and sc >= cfg.raise_threshold
            ev = self._advance(st, stream, s, sc, fast, hot, window, now)
            events += ev
            act[i] = st.active
            if finite[i]:
                self._adapt(st, x_now, hot)
        return events, score, act, zs

    def _score(self, st, values, i, log_err, ready, zs):
        cfg, stats = self.cfg, st.stats
        cap, min_w = cfg.max_score, cfg.min_windows
        prior_z = max(0.0, (log_err - self.prior[0]) / self.prior[1]) if self.prior else 0.0
        x_now = {}
        for t, arr in values.items():
            x = float(arr[i])
            if t == "level":
                if stats["scale"].count < min_w:
                    continue
                x /= max(math.exp(stats["scale"].med), TINY)
            x_now[t] = x
            r = stats[t]
            if t == "residual" and r.count < min_w:
                z = prior_z
            elif r.count < min_w:
                continue
            else:
                z = r.z(x)
                if t == "residual" and r.count < cfg.warmup_windows and z > 0 and self.prior:
                    z = min(z, prior_z)
            zs[t][i] = min(max(z, -cap), cap)
        for f in cfg.slow_terms:
            if f not in x_now:
                continue
            q = st.slow.setdefault(f, deque(maxlen=cfg.slow_windows))
            q.append(x_now[f])
            if len(q) == cfg.slow_windows:
                t = f + "_slow"
                x_now[t] = x = sum(q) / len(q)
                if stats[t].count >= max(cfg.warmup_windows, 2 * cfg.slow_windows):
                    zs[t][i] = min(max(stats[t].z(x), -cap), cap)
        z = {t: float(zs[t][i]) for t in TERMS}
        zr = z["residual"]
        if ready and zr > 0:
            zr = min(zr, max(z["error"], 0.0))
        votes = [t for t in cfg.terms if t != "residual"]
        fast = max([abs(zr)] + [abs(z[t]) for t in votes])
        score = max([fast] + [abs(z[f + "_slow"]) for f in cfg.slow_terms])
        return x_now, fast, min(score, cap)

    def _advance(self, st, stream, s, sc, fast, hot, window, now):
        cfg = self.cfg
        st.recent.append((s, sc, hot))
        if len(st.recent) > cfg.n:
            st.recent.popleft()
        if st.active:
            st.in_alert += 1
            st.fast_below = 0 if fast >= cfg.resolve_threshold else st.fast_below + 1
            if st.fast_below == 0 and not st.range_done:
                st.alert_end = max(st.alert_end, s + window)
            elif st.fast_below >= cfg.resolve_windows:
                st.range_done = True
            if sc >= cfg.resolve_threshold:
                st.below = 0
                st.alert_peak = max(st.alert_peak, sc)
            else:
                st.below += 1
                if st.below >= cfg.resolve_windows:
                    st.active = False
                    st.cooldown = cfg.cooldown_windows
                    st.recent.clear()
                    return [AlertEvent("resolved", stream, st.alert_start, st.alert_end, float(st.alert_peak),
                                       cfg.resolve_threshold, self.model_version, now)]
        elif st.cooldown > 0:
            st.cooldown -= 1
        elif hot:
            trig = [r for r in st.recent if r[2]]
            if len(trig) >= cfg.k:
                st.active, st.range_done = True, False
                st.alert_start, st.alert_end = trig[0][0], trig[-1][0] + window
                st.alert_peak = max(r[1] for r in trig)
                st.below = st.in_alert = st.fast_below = 0
                return [AlertEvent("raised", stream, st.alert_start, st.alert_end, float(st.alert_peak),
                                   cfg.raise_threshold, self.model_version, now)]
        return []

    def _adapt(self, st, x_now, hot):
        cfg = self.cfg
        if st.active:
            admit = bool(cfg.alert_admit_every) and st.in_alert > 0 and st.in_alert % cfg.alert_admit_every == 0
        else:
            admit = not hot
        st.quiet = 0 if (st.active or hot) else st.quiet + 1
        if not admit:
            return
        slow_ok = st.quiet >= cfg.slow_windows or (st.active and st.in_alert >= 2 * cfg.slow_windows)
        for t, x in x_now.items():
            if not slow_ok and t.endswith("_slow"):
                continue
            r = st.stats[t]
            if r.push(x, cfg.refresh_every, cfg.warmup_windows, r.count >= cfg.min_windows):
                r.refresh()


# ------------------------------------------------------------------------------------ inputs
def stream_inputs(rng, n, offset=0.0):
    """Windows/outputs of a noisy sine with injected anomalies of every kind the features see."""
    t = np.arange(n * H + W)
    sig = offset + np.sin(2 * np.pi * t / 50.0) + 0.1 * rng.standard_normal(t.size)
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
            sig[a : a + 300] = np.clip(sig[a : a + 300], offset - 0.3, offset + 0.3)
    idx = H * np.arange(n)[:, None] + np.arange(W)[None, :]
    x = sig[idx][:, None, :].astype(np.float32)
    y = (offset + np.sin(2 * np.pi * t / 50.0)[idx][:, None, :] * rng.uniform(0.9, 1.0)).astype(np.float32)
    r = (x - y).reshape(n, -1).astype(np.float64)
    errors = np.mean(r * r, axis=1) / np.maximum(x.reshape(n, -1).var(axis=1), 1e-12)
    scales = x.reshape(n, -1).std(axis=1).astype(np.float64)
    return H * np.arange(n), errors, scales, window_features(x, y)


def _settings(seed: int, rng) -> AlertSettings:
    if seed % 2:
        return AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=int(rng.integers(1, 9)),
                             slow_windows=16, cooldown_windows=int(rng.integers(0, 10)), resolve_windows=3,
                             sequential=())
    # the reference is the window score; the sequential tests (off here) have tests of their own
    return AlertSettings(cooldown_windows=int(rng.integers(0, 10)), sequential=())


def _calls(rng, streams, n):
    """Random micro-batches over the streams: per call, a random piece of each of a few streams (a
    stream sometimes in two segments), the features sometimes left out, a model swap half-way."""
    pos = {k: 0 for k in streams}
    calls = []
    while any(pos[k] < n for k in streams):
        segs = []
        for k in streams:
            if pos[k] >= n or rng.random() < 0.3:
                continue
            for _ in range(2 if rng.random() < 0.1 else 1):
                m = int(rng.integers(1, 120))
                segs.append((k, pos[k], min(n, pos[k] + m)))
                pos[k] = min(n, pos[k] + m)
        if segs:
            calls.append((segs, rng.random() < 0.15 and max(pos.values()) > 0.6 * n))
        if calls and max(pos.values()) >= n // 2 and not any(c == "model" for c in calls):
            calls.append("model")
    return calls


def _inputs(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    streams = {}
    for j, k in enumerate(("a", "b", "c")):
        s, e, sc, f = stream_inputs(rng, n, offset=3.0 * j)
        e[rng.integers(0, n, 5)] = np.nan  # non-finite inputs
        e[rng.integers(0, n, 20)] *= 300.0  # lone hot windows
        if k == "b":
            s = s.copy()
            s[2000:] -= 40 * H  # a rewound producer
        streams[k] = (s, e, sc, f)
    return rng, streams, n


def _feed_reference(cfg, streams, calls):
    ref = ReferenceEngine(cfg, CAL, "v1")
    out = {k: [] for k in streams}
    events = []
    for call in calls:
        if call == "model":
            ref.set_model({"q50": 0.02, "q999": 0.2}, "v2")
            continue
        segs, bare = call
        for k, a, b in segs:
            s, e, sc, f = streams[k]
            feats = {} if bare else {t: v[a:b] for t, v in f.items()}
            ev, score, act, zs = ref.update_scored(k, s[a:b], W, e[a:b], sc[a:b], 1.0, feats)
            events += ev
            out[k].append((score, act, zs))
    return events, out


def _feed(eng, streams, calls):
    out = {k: [] for k in streams}
    events = []
    for call in calls:
        if call == "model":
            eng.set_model({"q50": 0.02, "q999": 0.2}, "v2")
            continue
        segs, bare = call
        ids = [k for k, _, _ in segs]
        cat = [np.concatenate([streams[k][j][a:b] for k, a, b in segs]) for j in range(3)]
        feats = {} if bare else {t: np.concatenate([streams[k][3][t][a:b] for k, a, b in segs])
                                 for t in streams[segs[0][0]][3]}
        r = eng.update_batch(ids, [b - a for _, a, b in segs], cat[0], W, cat[1], cat[2], now=1.0, features=feats)
        events += r.events
        i = 0
        for k, a, b in segs:
            sl = slice(i, i + b - a)
            out[k].append((r.scores.score[sl], r.scores.active[sl], {t: v[sl] for t, v in r.scores.terms.items()}))
            i += b - a
    return events, out


def _same(events, out, ref_events, ref_out):
    key = lambda e: (e.stream, e.kind, e.start, e.end, e.threshold, e.model_version, e.time)  # noqa: E731
    assert sorted(map(key, events)) == sorted(map(key, ref_events))
    peak = {key(e): e.peak_score for e in ref_events}
    for e in events:
        assert e.peak_score == pytest.approx(peak[key(e)], rel=1e-5)
    for k in out:
        got = [np.concatenate(x) for x in zip(*[(s, a) for s, a, _ in out[k]])]
        want = [np.concatenate(x) for x in zip(*[(s, a) for s, a, _ in ref_out[k]])]
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got[1], want[1])
        for t in TERMS:
            g = np.concatenate([zs[t] for _, _, zs in out[k]])
            w = np.concatenate([zs[t] for _, _, zs in ref_out[k]])
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=f"{k} {t}")


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("seed", range(4))
def test_the_engine_makes_the_decisions_of_its_reference(seed, compiled, monkeypatch):
    rng, streams, n = _inputs(seed)
    cfg = _settings(seed, rng)
    calls = _calls(rng, streams, n)
    ref_events, ref_out = _feed_reference(cfg, streams, calls)
    assert any(e.kind == "resolved" for e in ref_events)  # alerts, resolves and cooldowns were exercised
    taken = []

    runs = quiet_runs_compiled if compiled else quiet_runs

    def counted(*a):
        done = runs(*a)
        taken.append(int(done.sum()))
        return done

    monkeypatch.setattr(AlertEngine, "compiled_runs", compiled)
    monkeypatch.setattr(alerts, "quiet_runs_compiled" if compiled else "quiet_runs", counted)
    for fast in (True, False):
        events, out = _feed(AlertEngine(cfg, CAL, "v1", fast_path=fast), streams, calls)
        _same(events, out, ref_events, ref_out)
    assert sum(taken) > 500  # the vectorised runs carried real work (the scalar step the many anomalies)


def test_window_features_equal_the_float64_ones_within_float32_rounding():
    rng = np.random.default_rng(1)
    for shape in [(64, 1, 256), (50, 3, 64), (7, 1, 3000), (3, 2, 1), (1, 1, 2), (5, 1, 3)]:
        x = (3 * rng.standard_normal(shape) + 5).astype(np.float32)
        x[:, :, :1] = x.max()  # pinned samples for the clip feature
        y = (0.9 * x + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        got = window_features(x, y)
        xd, yd = x.astype(np.float64), y.astype(np.float64)
        n = shape[0]
        r = (xd - yd).reshape(n, -1)
        d2 = np.diff(r, n=2, axis=1) if r.shape[1] > 2 else np.zeros((n, 1))
        dy = np.diff(yd, axis=2) if shape[2] > 1 else np.zeros_like(yd)
        yc = yd - yd.mean(axis=2, keepdims=True)
        pinned = (xd == xd.max(axis=2, keepdims=True)).sum(axis=2) + (xd == xd.min(axis=2, keepdims=True)).sum(axis=2)
        want = {
            "level": xd.mean(axis=(1, 2)),
            "clip": (pinned / shape[2]).mean(axis=1),
            "peak": np.log(np.maximum(np.abs(r).max(axis=1), TINY) / np.maximum(np.sqrt((r * r).mean(axis=1)), TINY)),
            "noise": np.log(np.maximum(np.mean(d2 * d2, axis=1) / 6.0, TINY)),
            "freq": np.log(np.maximum((dy * dy).mean(axis=(1, 2)), TINY) / np.maximum((yc * yc).mean(axis=(1, 2)), TINY)),
        }
        ad = np.sort(np.abs(np.diff(xd.reshape(n, -1), n=2, axis=1)), axis=1) if r.shape[1] > 2 else None
        want["spike"] = (np.log(np.maximum(ad[:, -1], TINY) / np.maximum(1.4826 * ad[:, ad.shape[1] // 2], TINY))
                         if ad is not None else np.zeros(n))
        if shape[2] >= 4:  # the newer half's second differences, per channel, pooled
            half = np.abs(np.diff(xd[:, :, shape[2] - shape[2] // 2 - 2 :], n=2, axis=2)).reshape(n, -1)
            med = np.sort(half, axis=1)[:, half.shape[1] // 2]
            want["floor"] = np.log(np.maximum(1.4826 * med / np.sqrt(6.0), TINY))
        else:
            want["floor"] = np.zeros(n)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=f"{shape} {k}")
        assert window_features(x, None).keys() == {"level", "clip", "spike", "floor"}
