"""The per-window steps of :meth:`pipeline.monitor.alerts.engine.AlertEngine.update_scored` (pure numpy).

:func:`scalar_step` is the reference: one window, every rule of the state machine. :func:`fast_run`
is the common path, bit for bit the same arithmetic on a run of windows at once. Between two
refreshes a stream's statistics are constant, so while the stream is past warm-up, has no alert up,
and its windows are finite, increasing and not hot, a run can be scored (z, gate, score), recorded
(recent, quiet, cooldown, slow means) and admitted (winsorised ring-buffer writes) with array
operations. A run stops at the first hot window and at the first window whose admission refreshes a
statistic; everything else (hot windows, alerts, warm-up, rewinds, non-finite inputs) is left to
:func:`scalar_step`. ``tests/test_alerts_fastpath.py`` checks both give identical scores and events.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from pipeline.monitor.alerts.terms import TINY, refresh_many


class Batch:
    """One update call's inputs (per window) and outputs, shared by both steps."""

    __slots__ = ("stream", "starts", "window", "finite", "values", "log_err", "score", "zs", "act", "events",
                 "ts", "names", "stacked", "bad")

    def __init__(self, stream, starts, window, finite, values, log_err, score, zs, act, events, ts):
        self.stream, self.starts, self.window, self.finite = stream, starts, window, finite
        self.values, self.log_err, self.score, self.zs, self.act = values, log_err, score, zs, act
        self.events, self.ts = events, ts
        self.names = tuple(values)
        self.stacked = None  # (terms, N) values, built on the first fast run
        # Windows the fast path never takes: non-finite, or not after the previous window (rewind).
        bad = ~finite
        bad[1:] |= starts[1:] <= starts[:-1]
        self.bad = np.flatnonzero(bad)


def scalar_step(eng, st, b: Batch, i: int) -> None:
    """Score window ``i`` and advance the stream's alert state and statistics by it."""
    from pipeline.monitor.alerts.engine import AlertEvent  # circular at import time

    cfg, stats, prior, values, zs = eng.cfg, st.stats, eng._prior, b.values, b.zs
    cap, thr_raise, thr_resolve = cfg.max_score, cfg.raise_threshold, cfg.resolve_threshold
    min_w, warm_n, every = cfg.min_windows, cfg.warmup_windows, cfg.refresh_every
    window = b.window
    s = int(b.starts[i])
    if st.last_start is not None and s <= st.last_start:
        st.recent.clear()  # rewind: a new segment, a new debounce history
    st.last_start = s
    ready = stats["residual"].count >= min_w
    x_now: dict[str, float] = {}
    sc = fast = 0.0
    finite = bool(b.finite[i])
    if finite:
        le = b.log_err[i]
        prior_z = max(0.0, (le - prior[0]) / prior[1]) if prior is not None else 0.0
        for t, arr in values.items():
            x = float(arr[i])
            if t == "level":  # in units of the stream's median scale
                if stats["scale"].count < min_w:
                    continue
                x /= max(math.exp(stats["scale"].med), TINY)
            x_now[t] = x
            r = stats[t]
            if t == "residual" and not ready:
                z = prior_z
            elif r.count < min_w:
                continue
            else:
                z = r.z(x)
                if t == "residual" and r.count < warm_n and z > 0 and prior is not None:
                    z = min(z, prior_z)
            zs[t][i] = min(max(z, -cap), cap)
        slow_min = max(warm_n, 2 * cfg.slow_windows)
        for f in cfg.slow_terms:
            if f not in x_now:
                continue
            q = st.slow.setdefault(f, deque(maxlen=cfg.slow_windows))
            q.append(x_now[f])
            if len(q) == cfg.slow_windows:
                t = f + "_slow"
                x_now[t] = x = sum(q) / len(q)
                if stats[t].count >= slow_min:
                    zs[t][i] = min(max(stats[t].z(x), -cap), cap)
        zr = zs["residual"][i]
        if zr > 0:  # a loud window's larger misfit is not an anomaly: the relative error must agree
            zr = min(zr, max(zs["error"][i], 0.0)) if ready else zr
        fast = max([abs(zr)] + [abs(zs[t][i]) for t in eng._votes])
        sc = max([fast] + [abs(zs[t][i]) for t in eng._slow])
    sc = min(sc, cap)
    b.score[i] = sc
    hot = ready and sc >= thr_raise

    # ---- raise (k of n hot) / resolve (hysteresis) / cooldown
    st.recent.append((s, sc, hot))
    if len(st.recent) > cfg.n:
        st.recent.popleft()
    if st.active:
        st.in_alert += 1
        # The range follows the per-window evidence until it has resolved by the same rule
        # (resolve_windows windows below the resolve threshold); a slow term's mean lags the
        # anomaly by up to slow_windows and only keeps the alert up.
        st.fast_below = 0 if fast >= thr_resolve else st.fast_below + 1
        if st.fast_below == 0 and not st.range_done:
            st.alert_end = max(st.alert_end, s + window)
        elif st.fast_below >= cfg.resolve_windows:
            st.range_done = True
        if sc >= thr_resolve:
            st.below = 0
            st.alert_peak = max(st.alert_peak, sc)
        else:
            st.below += 1
            if st.below >= cfg.resolve_windows:
                b.events.append(AlertEvent("resolved", b.stream, st.alert_start, st.alert_end, float(st.alert_peak),
                                           thr_resolve, eng.model_version, b.ts))
                st.active = False
                st.cooldown = cfg.cooldown_windows
                st.recent.clear()
    elif st.cooldown > 0:
        st.cooldown -= 1
    elif hot:
        trig = [r for r in st.recent if r[2]]
        if len(trig) >= cfg.k:
            st.active = True
            st.alert_start = trig[0][0]
            st.alert_end = trig[-1][0] + window
            st.alert_peak = max(r[1] for r in trig)
            st.below = st.in_alert = st.fast_below = 0
            st.range_done = False
            b.events.append(AlertEvent("raised", b.stream, st.alert_start, st.alert_end, float(st.alert_peak),
                                       thr_raise, eng.model_version, b.ts))
    b.act[i] = st.active

    # ---- adaptation: windows outside alerts that are not hot, and a trickle during alerts
    if finite:
        if st.active:
            admit = bool(cfg.alert_admit_every) and st.in_alert > 0 and st.in_alert % cfg.alert_admit_every == 0
        else:
            admit = not hot
        st.quiet = 0 if (st.active or hot) else st.quiet + 1
        if admit:
            # A slow value averages the last slow_windows windows: admit it only when none of
            # them was anomalous (else the tail of each anomaly teaches the statistics that the
            # anomaly is normal), or once an alert has outlasted two slow windows (a new regime).
            slow_ok = st.quiet >= cfg.slow_windows or (st.active and st.in_alert >= 2 * cfg.slow_windows)
            due = []
            for t, x in x_now.items():
                if not slow_ok and t.endswith("_slow"):
                    continue
                r = stats[t]
                if r.push(x, every, warm_n, r.count >= min_w):
                    due.append(r)
            if due:  # each statistic refreshes from its own values: one stacked call for all
                refresh_many(due)


def _push(r, x: np.ndarray) -> None:
    """Write ``x`` into ``r``'s ring buffer as ``len(x)`` calls of ``Robust.add`` would (no refresh)."""
    buf, pos, i, n = r.buf, r.pos, 0, x.size
    while i < n:
        k = min(n - i, buf.size - pos)
        buf[pos : pos + k] = x[i : i + k]
        pos = (pos + k) % buf.size
        i += k
    r.pos = pos
    r.count += n
    r.pending += n


def _z(d: np.ndarray, hi, lo, cap: float) -> np.ndarray:
    z = np.where(d >= 0, d / hi, d / lo)
    return np.clip(z, -cap, cap, out=z)


def record_quiet_run(st, b: Batch, a: int, n: int, sc: np.ndarray, zs: dict, n_recent: int) -> None:
    """Record windows ``[a, a + n)`` of a run none of which is hot and no alert is up: scores and
    terms into the batch's outputs, the debounce history, last start, cooldown and quiet counters
    (what :func:`scalar_step` does window by window for such windows)."""
    end = a + n
    b.score[a:end] = sc[:n]
    for t, zz in zs.items():
        b.zs[t][a:end] = zz[:n]
    starts = b.starts
    for i in range(max(0, n - n_recent), n):
        st.recent.append((int(starts[a + i]), float(sc[i]), False))
    while len(st.recent) > n_recent:
        st.recent.popleft()
    st.last_start = int(starts[end - 1])
    st.cooldown = max(0, st.cooldown - n)
    st.quiet += n


def fast_run(eng, st, b: Batch, a: int) -> int:
    """Process windows ``a, a+1, ...`` on the common path; returns how many (0: take the scalar step)."""
    cfg, stats = eng.cfg, st.stats
    if st.active or not b.finite[a] or (st.last_start is not None and int(b.starts[a]) <= st.last_start):
        return 0
    warm_n, every, sw, min_w = cfg.warmup_windows, cfg.refresh_every, cfg.slow_windows, cfg.min_windows
    k = int(np.searchsorted(b.bad, a, side="right"))
    limit = (int(b.bad[k]) if k < b.bad.size else b.starts.size) - a
    rs = [stats[t] for t in b.names]
    for r in rs:
        if r.count < warm_n:
            return 0
        limit = min(limit, every - r.pending)
    # Slow values are admitted once the stream has been quiet for slow_windows (window j0 on).
    j0 = max(0, sw - st.quiet - 1)
    slow_min = max(warm_n, 2 * sw)
    slow = []
    for f in cfg.slow_terms:
        if f in b.values:
            q = st.slow.get(f)
            if q is None or len(q) < sw:
                return 0
            r = stats[f + "_slow"]
            k = 1 if r.count + 1 <= warm_n else every - r.pending
            if r.count < slow_min:  # it starts voting after this many more admissions
                k = min(k, slow_min - r.count)
            limit = min(limit, j0 + k)
            slow.append(f)
    if b.stacked is None:
        b.stacked = np.stack([b.values[t] for t in b.names])
    cap, L = cfg.max_score, limit
    x = b.stacked[:, a : a + L]
    if "level" in b.values:  # in units of the stream's median scale
        j = b.names.index("level")
        x = x.copy()
        x[j] = x[j] / max(math.exp(stats["scale"].med), TINY)
    med = np.array([r.med for r in rs])[:, None]
    z = _z(x - med, np.array([r.hi for r in rs])[:, None], np.array([r.lo for r in rs])[:, None], cap)
    zt = dict(zip(b.names, z))
    zr = zt["residual"]
    zr = np.where(zr > 0, np.minimum(zr, np.maximum(zt["error"], 0.0)), zr)
    sc = np.abs(zr)
    for t in eng._votes:
        if t in zt:
            sc = np.maximum(sc, np.abs(zt[t]))
    means, zslow = {}, {}
    if slow:
        idx = np.arange(sw)[:, None] + np.arange(1, L + 1)[None, :]
    for f in slow:
        t = f + "_slow"
        hist = np.concatenate((np.fromiter(st.slow[f], float, sw), x[b.names.index(f)]))
        # sum(q) / len(q) of each window's deque: the same left-to-right additions, one column each
        means[t] = np.add.accumulate(hist[idx], axis=0)[-1] / sw
        r = stats[t]
        if r.count >= slow_min:
            zslow[t] = _z(means[t] - r.med, r.hi, r.lo, cap)
            if t in eng._slow:
                sc = np.maximum(sc, np.abs(zslow[t]))
    sc = np.minimum(sc, cap)
    hot = sc >= cfg.raise_threshold
    n = int(np.argmax(hot)) if hot.any() else L
    if n == 0:
        return 0

    # ---- outputs
    record_quiet_run(st, b, a, n, sc, {**zt, **zslow}, cfg.n)

    # ---- adaptation: every window is admitted, winsorised at the raise threshold
    due = []
    for j, r in enumerate(rs):
        _push(r, np.minimum(np.maximum(x[j, :n], r.med - r.thr * r.lo), r.med + r.thr * r.hi))
        if r.pending >= every:
            due.append(r)
    for f in slow:
        st.slow[f].extend(x[b.names.index(f), :n].tolist())
        t = f + "_slow"
        if n > j0:
            r, v = stats[t], means[t][j0:n]
            if r.count >= min_w:
                v = np.minimum(np.maximum(v, r.med - r.thr * r.lo), r.med + r.thr * r.hi)
            _push(r, v)
            if r.count <= warm_n or r.pending >= every:
                due.append(r)
    if due:
        refresh_many(due)
    return n
