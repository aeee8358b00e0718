"""The steady-state path of the alert engine: a whole run of ordinary windows in a few array passes.

:func:`~pipeline.monitor.alerts.steps.fast_run` stops at every refresh of any statistic, and with ten terms
on different refresh phases that is a few windows per stop. :func:`batch_run` takes the whole run
(up to the next non-finite or rewound window) at once, for a stream past warm-up (every statistic
refreshes only every ``refresh_every`` values, the slow ones vote) that has no alert up.
Assuming no window of the run is hot, every term evolves on its own: its admitted values are its own winsorised values, and its statistics
change only at its own refreshes. So the refreshes are computed in rounds — round ``k`` holds the
``k``-th refresh of every term, stacked into one :func:`~pipeline.monitor.alerts.terms.robust_stats` call —
and each term's median and spreads in effect at each window are kept as ``(terms, windows)``
matrices. Only ``level`` (in units of the median scale) and its slow mean depend on another term;
their refreshes wait for the scale refreshes before them. Then the scores follow in one pass, and
the run is committed up to its first hot window (its refreshes after that are dropped unused).
The arithmetic is that of :func:`~pipeline.monitor.alerts.steps.scalar_step`, value for value.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.monitor.alerts.steps import Batch, _push, record_quiet_run
from pipeline.monitor.alerts.terms import TINY, robust_stats


def _events(pending: int, every: int, n_adm: int, first: int) -> list[tuple[int, int]]:
    """(admissions so far, window) of each refresh among ``n_adm`` admissions from window ``first``."""
    return [(i, first + i - 1) for i in range(every - pending, n_adm + 1, every)]


def batch_run(eng, st, b: Batch, a: int) -> int:
    """Process windows ``a, a+1, ...`` as one run; returns how many (0: not applicable here)."""
    cfg, stats = eng.cfg, st.stats
    if st.active or not b.finite[a] or (st.last_start is not None and int(b.starts[a]) <= st.last_start):
        return 0
    size, every, sw = cfg.stats_windows, cfg.refresh_every, cfg.slow_windows
    slow_min = max(cfg.warmup_windows, 2 * sw)
    k = int(np.searchsorted(b.bad, a, side="right"))
    L = (int(b.bad[k]) if k < b.bad.size else b.starts.size) - a
    if L < 2:
        return 0
    names = list(b.names)
    P = len(names)
    robs = [stats[t] for t in names]
    warm_n = cfg.warmup_windows
    if any(r.count < warm_n for r in robs):  # warm-up: statistics refresh after every value
        return 0
    slow_f = [f for f in cfg.slow_terms if f in b.values]
    for f in slow_f:
        q, r = st.slow.get(f), stats[f + "_slow"]
        if q is None or len(q) < sw or r.count < slow_min:
            return 0
        robs.append(r)
    T = len(robs)
    rows = names + [f + "_slow" for f in slow_f]
    j0 = max(0, sw - st.quiet - 1)  # slow values are admitted from this window on
    thr, cap = cfg.raise_threshold, cfg.max_score

    # ---- values (per-window rows, then slow means) and the statistics in effect at each window
    if b.stacked is None:
        b.stacked = np.stack([b.values[t] for t in b.names])
    xm = np.empty((T, L))
    xm[:P] = b.stacked[:, a : a + L]
    lv = names.index("level") if "level" in names else -1
    si = names.index("scale")
    raw_level = xm[lv].copy() if lv >= 0 else None
    idx = np.arange(1, L + 1)[:, None] + np.arange(sw)[None, :]  # window j's deque: hist[j + 1 : j + 1 + sw]
    hists = [np.fromiter(st.slow[f], float, sw) for f in slow_f]

    def slow_means(j: int, first: int = 0) -> None:
        hist = np.concatenate((hists[j], xm[names.index(slow_f[j])]))
        # sum(q) / len(q) of each window's deque: the same left-to-right additions, one row each
        xm[P + j, first:] = np.add.accumulate(hist[idx[first:]], axis=1)[:, -1] / sw

    scale_segs = [(0, robs[si].med)]  # (first window, scale median in effect from it)

    def level_values() -> None:  # from the latest scale segment on (the earlier ones are done)
        s0, m = scale_segs[-1]
        if s0 < L:
            xm[lv, s0:] = raw_level[s0:] / max(math.exp(m), TINY)
            for j, f in enumerate(slow_f):
                if f == "level":
                    slow_means(j, s0)

    if lv >= 0:
        level_values()
    for j, f in enumerate(slow_f):
        if f != "level":
            slow_means(j)
    med = np.repeat(np.array([r.med for r in robs])[:, None], L, axis=1)
    hi = np.repeat(np.array([r.hi for r in robs])[:, None], L, axis=1)
    lo = np.repeat(np.array([r.lo for r in robs])[:, None], L, axis=1)

    # ---- refresh schedule: round k holds each term's k-th refresh; level's wait for scale's
    evs = [_events(r.pending, every, L, 0) if t < P else _events(r.pending, every, L - j0, j0)
           for t, r in enumerate(robs)]
    scale_ws = [w for _, w in evs[si]]
    rounds: dict[int, list[tuple[int, int, int]]] = {}
    for t, ev in enumerate(evs):
        dep = t == lv or (t >= P and slow_f[t - P] == "level")
        rnd = -1
        for k, (i, w) in enumerate(ev):
            rnd = max(rnd + 1, sum(1 for ws in scale_ws if ws < w)) if dep else k
            rounds.setdefault(rnd, []).append((t, i, w))
    done: list[list[tuple[int, int, float, float, float]]] = [[] for _ in range(T)]
    stat = np.stack((med, hi, lo))  # (3, terms, windows): median, upper and lower spread in effect
    if rounds:
        bufs = np.stack([r.buf for r in robs])
        held = [min(r.count, size) for r in robs]
        ar = np.arange(size)
        # each term's values in admission order, right-aligned: the newest at column size - 1
        ring = np.take_along_axis(bufs, (np.array([r.pos for r in robs])[:, None] + ar[None, :]) % size, axis=1)
        floors = np.array([r.floor for r in robs])
        margins = np.array([r.margin for r in robs])
        cols = np.arange(L)
        for rnd in sorted(rounds):
            ev = rounds[rnd]
            wins = np.minimum(np.maximum(xm, stat[0] - thr * stat[2]), stat[0] + thr * stat[1])
            if 0 < j0 < L and T > P:  # slow rows: admitted values from window j0 on, as admission order
                wins[P:, : L - j0] = wins[P:, j0:]
            ext = np.concatenate((ring, wins), axis=1)
            groups: dict[int, list[tuple[int, int, int]]] = {}
            for t, i, w in ev:  # the last min(held + i, size) admitted values end at column size + i
                groups.setdefault(min(held[t] + i, size), []).append((t, i, w))
            for nv, gev in groups.items():
                ts = np.array([e[0] for e in gev])
                view = np.ndarray((T, size + L - nv + 1, nv), ext.dtype, ext, 0, (ext.strides[0], 8, 8))
                v = view[ts, np.array([size + e[1] - nv for e in gev])]
                new = np.stack(robust_stats(v, cfg.tail_quantile, floors[ts], margins[ts], thr))
                later = cols[None, :] > np.array([e[2] for e in gev])[:, None]
                stat[:, ts] = np.where(later[None], new[:, :, None], stat[:, ts])
                for (t, i, w), mm, hh, ll in zip(gev, *new.tolist()):
                    done[t].append((i, w, mm, hh, ll))
                    if t == si:
                        scale_segs.append((w + 1, mm))
            if lv >= 0 and any(e[0] == si for e in ev):
                level_values()
    med, hi, lo = stat

    # ---- scores
    d = xm - med
    z = np.where(d >= 0, d / hi, d / lo)
    np.clip(z, -cap, cap, out=z)
    zt = dict(zip(rows, z))
    zr = zt["residual"]
    zr = np.where(zr > 0, np.minimum(zr, np.maximum(zt["error"], 0.0)), zr)
    sc = np.abs(zr)
    for t in eng._votes:
        if t in zt:
            sc = np.maximum(sc, np.abs(zt[t]))
    for f in slow_f:
        sc = np.maximum(sc, np.abs(zt[f + "_slow"]))
    sc = np.minimum(sc, cap)
    hot = sc >= thr
    n = int(np.argmax(hot)) if hot.any() else L
    if n == 0:
        return 0

    # ---- commit windows [a, a + n)
    record_quiet_run(st, b, a, n, sc, zt, cfg.n)
    for f in slow_f:
        st.slow[f].extend(xm[names.index(f), :n].tolist())
    wins = np.clip(xm[:, :n], med[:, :n] - thr * lo[:, :n], med[:, :n] + thr * hi[:, :n])
    for t, r in enumerate(robs):
        first = 0 if t < P else j0
        if n <= first:
            continue
        _push(r, wins[t, first:n])
        used = [e for e in done[t] if e[1] < n]
        if used:
            i, _, r.med, r.hi, r.lo = used[-1]
            r.pending = n - first - i
    return n
