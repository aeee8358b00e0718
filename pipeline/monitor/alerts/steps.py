"""The per-window steps of ``AlertEngine.update_scored`` (pure numpy).

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

from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.scoring import FloatOps, Scoring, first_hot, slow_means, window_scores, winsorise, zscore
from pipeline.monitor.alerts.state import Batch, StreamState, record_quiet_run, run_length
from pipeline.monitor.alerts.terms import TINY, Robust, refresh_many


# ------------------------------------------------------------------------------ scalar step
def scalar_step(p: Scoring, st: StreamState, b: Batch, i: int) -> None:
    """Score window ``i`` and advance the stream's alert state and statistics by it."""
    s = int(b.starts[i])
    if st.last_start is not None and s <= st.last_start:
        st.recent.clear()  # rewind: a new segment, a new debounce history
    st.last_start = s
    ready = st.stats["residual"].count >= p.min_windows
    finite = bool(b.finite[i])
    x_now, fast, sc = _score_window(p, st, b, i, ready) if finite else ({}, 0.0, 0.0)
    b.score[i] = sc
    hot = ready and sc >= p.raise_threshold
    _advance(p, st, b, s, sc, fast, hot)
    b.act[i] = st.active
    if finite:
        _adapt(p, st, x_now, hot)


def _score_window(p: Scoring, st: StreamState, b: Batch, i: int, ready: bool) -> tuple[dict[str, float], float, float]:
    """Window ``i``'s terms into ``b.zs`` and its slow values into the stream's deques; returns
    ``(values to admit, fast, score)`` (see :func:`window_scores`)."""
    stats, zs, cap, min_w, prior = st.stats, b.zs, p.cap, p.min_windows, p.prior
    prior_z = max(0.0, (b.log_err[i] - prior[0]) / prior[1]) if prior is not None else 0.0
    x_now: dict[str, float] = {}
    for t, arr in b.values.items():
        x = float(arr[i])
        if t == "level":  # in units of the stream's median scale
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
            if t == "residual" and r.count < p.warmup_windows and z > 0 and prior is not None:
                z = min(z, prior_z)
        zs[t][i] = min(max(z, -cap), cap)
    for f in p.slow_terms:
        if f not in x_now:
            continue
        q = st.slow.setdefault(f, deque(maxlen=p.slow_windows))
        q.append(x_now[f])
        if len(q) == p.slow_windows:
            t = f + "_slow"
            x_now[t] = x = sum(q) / len(q)
            if stats[t].count >= p.slow_min:
                zs[t][i] = min(max(stats[t].z(x), -cap), cap)
    fast, score = window_scores({t: float(zs[t][i]) for t in p.scored}, p, gate=ready, ops=FloatOps)
    return x_now, fast, score


def _advance(p: Scoring, st: StreamState, b: Batch, s: int, sc: float, fast: float, hot: bool) -> None:
    """The alert state machine on one window: raise (k of n hot), resolve (hysteresis), cooldown."""
    st.recent.append((s, sc, hot))
    if len(st.recent) > p.n:
        st.recent.popleft()
    if st.active:
        st.in_alert += 1
        # The range follows the per-window evidence until it has resolved by the same rule
        # (resolve_windows windows below the resolve threshold); a slow term's mean lags the
        # anomaly by up to slow_windows and only keeps the alert up.
        st.fast_below = 0 if fast >= p.resolve_threshold else st.fast_below + 1
        if st.fast_below == 0 and not st.range_done:
            st.alert_end = max(st.alert_end, s + b.window)
        elif st.fast_below >= p.resolve_windows:
            st.range_done = True
        if sc >= p.resolve_threshold:
            st.below = 0
            st.alert_peak = max(st.alert_peak, sc)
        else:
            st.below += 1
            if st.below >= p.resolve_windows:
                b.events.append(AlertEvent("resolved", b.stream, st.alert_start, st.alert_end, float(st.alert_peak),
                                           p.resolve_threshold, p.model_version, b.ts))
                st.active = False
                st.cooldown = p.cooldown_windows
                st.recent.clear()
    elif st.cooldown > 0:
        st.cooldown -= 1
    elif hot:
        trig = [r for r in st.recent if r[2]]
        if len(trig) >= p.k:
            st.active = True
            st.alert_start = trig[0][0]
            st.alert_end = trig[-1][0] + b.window
            st.alert_peak = max(r[1] for r in trig)
            st.below = st.in_alert = st.fast_below = 0
            st.range_done = False
            b.events.append(AlertEvent("raised", b.stream, st.alert_start, st.alert_end, float(st.alert_peak),
                                       p.raise_threshold, p.model_version, b.ts))


def _adapt(p: Scoring, st: StreamState, x_now: dict[str, float], hot: bool) -> None:
    """Admit a finite window's values: outside alerts when it is not hot, and a trickle during alerts."""
    if st.active:
        admit = bool(p.alert_admit_every) and st.in_alert > 0 and st.in_alert % p.alert_admit_every == 0
    else:
        admit = not hot
    st.quiet = 0 if (st.active or hot) else st.quiet + 1
    if not admit:
        return
    # A slow value averages the last slow_windows windows: admit it only when none of them was
    # anomalous (else the tail of each anomaly teaches the statistics that the anomaly is normal),
    # or once an alert has outlasted two slow windows (a new regime).
    slow_ok = st.quiet >= p.slow_windows or (st.active and st.in_alert >= 2 * p.slow_windows)
    due = []
    for t, x in x_now.items():
        if not slow_ok and t.endswith("_slow"):
            continue
        r = st.stats[t]
        if r.push(x, p.refresh_every, p.warmup_windows, r.count >= p.min_windows):
            due.append(r)
    if due:  # each statistic refreshes from its own values: one stacked call for all
        refresh_many(due)


# ---------------------------------------------------------------------------- vectorised run
def fast_run(p: Scoring, st: StreamState, b: Batch, a: int) -> int:
    """Process windows ``a, a+1, ...`` on the common path; returns how many (0: take the scalar step)."""
    limit, slow, j0 = _segment(p, st, b, a)
    if not limit:
        return 0
    rs = [st.stats[t] for t in b.names]
    x, sc, zt, means = _segment_scores(p, st, b, a, limit, rs, slow)
    n = first_hot(sc, p.raise_threshold)
    if n == 0:
        return 0
    record_quiet_run(st, b, a, n, sc, zt, p.n)
    _admit_segment(p, st, b, x[:, :n], rs, slow, {t: m[j0:n] for t, m in means.items()})
    return n


def _segment(p: Scoring, st: StreamState, b: Batch, a: int) -> tuple[int, list[str], int]:
    """``(windows up to the next refresh, slow features, first window admitting slow values)`` of the
    run from ``a``; 0 windows when the stream is not past warm-up or the run is not ordinary."""
    limit = run_length(st, b, a)
    if not limit:
        return 0, [], 0
    warm_n, every, sw = p.warmup_windows, p.refresh_every, p.slow_windows
    for t in b.names:
        r = st.stats[t]
        if r.count < warm_n:
            return 0, [], 0
        limit = min(limit, every - r.pending)
    # Slow values are admitted once the stream has been quiet for slow_windows (window j0 on).
    j0 = max(0, sw - st.quiet - 1)
    slow = []
    for f in p.slow_terms:
        if f in b.values:
            q = st.slow.get(f)
            if q is None or len(q) < sw:
                return 0, [], 0
            r = st.stats[f + "_slow"]
            k = 1 if r.count + 1 <= warm_n else every - r.pending
            if r.count < p.slow_min:  # it starts voting after this many more admissions
                k = min(k, p.slow_min - r.count)
            limit = min(limit, j0 + k)
            slow.append(f)
    return limit, slow, j0


def _segment_scores(p: Scoring, st: StreamState, b: Batch, a: int, L: int, rs: list[Robust], slow: list[str]):
    """``(values, score, terms, slow means)`` of windows ``[a, a + L)`` under the current statistics."""
    stats, cap = st.stats, p.cap
    x = b.rows()[:, a : a + L]
    if "level" in b.values:  # in units of the stream's median scale
        j = b.names.index("level")
        x = x.copy()
        x[j] = x[j] / max(math.exp(stats["scale"].med), TINY)
    med = np.array([r.med for r in rs])[:, None]
    z = zscore(x - med, np.array([r.hi for r in rs])[:, None], np.array([r.lo for r in rs])[:, None], cap)
    zt = dict(zip(b.names, z))
    means = {}
    for f in slow:
        t = f + "_slow"
        means[t] = slow_means(np.fromiter(st.slow[f], float, p.slow_windows), x[b.names.index(f)])
        r = stats[t]
        if r.count >= p.slow_min:
            zt[t] = zscore(means[t] - r.med, r.hi, r.lo, cap)
    _, sc = window_scores(zt, p)
    return x, sc, zt, means


def _admit_segment(p: Scoring, st: StreamState, b: Batch, x: np.ndarray, rs: list[Robust], slow: list[str],
                   means: dict[str, np.ndarray]) -> None:
    """Admit the values ``x`` of a quiet run, winsorised at the raise threshold, and the slow means
    ``means`` (those from the first window admitting slow values on); refresh what is due."""
    every, warm_n = p.refresh_every, p.warmup_windows
    due = []
    for j, r in enumerate(rs):
        r.extend(winsorise(x[j], r.med, r.hi, r.lo, r.thr))
        if r.pending >= every:
            due.append(r)
    for f in slow:
        st.slow[f].extend(x[b.names.index(f)].tolist())
        t = f + "_slow"
        v, r = means[t], st.stats[t]
        if v.size:
            if r.count >= p.min_windows:
                v = winsorise(v, r.med, r.hi, r.lo, r.thr)
            r.extend(v)
            if r.count <= warm_n or r.pending >= every:
                due.append(r)
    if due:
        refresh_many(due)
