"""The quiet runs of a call compiled (numba): each stream's run window by window, in one loop instead of
~200 numpy calls per call (:mod:`pipeline.monitor.alerts.runs` is the same in numpy array operations, and
the reference the tests hold this one to).

What a window does is :meth:`~pipeline.monitor.alerts.scalar.Cursor.step`'s on a quiet stream past
warm-up: its values (``level`` in units of the scale median in effect, each slow term the mean of its
feature's last ``slow_windows`` values), their z against the statistics in effect, the window score; a
window scoring the stream's raise threshold or more ends the run unwritten (the scalar step takes it);
else it is committed: the debounce history, the counters, and each column's winsorised value into its
ring, the column's statistics refreshed from the ring at every ``refresh_every``-th admission.

The refresh's order statistics come from a sorted copy of each ring kept beside it for the call: the
caller sorts the rings once (numpy's SIMD sort; numba's own sort of 512 values costs ~50 µs here, 25x
numpy's), and each refresh merges the values admitted since (and takes out those they overwrote in
the ring) in one pass. The statistics are then :func:`~pipeline.monitor.alerts.terms.robust_stats`' arithmetic on
the same sorted values, bit for bit. ``level``'s scale is ``math.exp`` (libm) where the numpy form
takes numpy's ``exp``: the two may differ in the last bit of a float64, which the float32 rounding of
the value hides but in ~1 of 2^29 values.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.monitor.alerts.jit import kernel
from pipeline.monitor.alerts.runs import quiet_runs
from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.slots import SlotTable
from pipeline.monitor.alerts.terms import _F32_MAX, _MAD_TO_SIGMA, TINY, _lerp_plan


@kernel
def _stored(x):
    """:func:`~pipeline.monitor.alerts.terms.stored` of one value."""
    return np.float64(np.float32(min(max(x, -_F32_MAX), _F32_MAX)))


@kernel
def _kth(v, n, m, k):
    """The ``k``-th smallest ``|v[i] - m|`` of the sorted float32 ``v[:n]`` (float32 ``m``): the least over
    windows of ``k`` consecutive values of the larger end deviation (robust_stats' ``kth``, the same
    float32 values). From the middle window outwards, each way until its growing end deviation reaches
    the least so far: the windows left out cannot be less, so the least is the full scan's."""
    best = np.float32(np.inf)
    j0 = (n - k) // 2
    j = j0
    while j >= 0:  # m - v[j] grows as j falls
        a = m - v[j]
        if a >= best:
            break
        b = v[j + k - 1] - m
        d = a if a > b else b
        if d < best:
            best = d
        j -= 1
    j = j0 + 1
    while j <= n - k:  # v[j + k - 1] - m grows with j
        b = v[j + k - 1] - m
        if b >= best:
            break
        a = m - v[j]
        d = a if a > b else b
        if d < best:
            best = d
        j += 1
    return np.float64(best)


@kernel
def _stats(v, n, plan, floor, margin, thr, out):
    """``out[:] = (med, hi, lo)`` of the sorted float32 ``v[:n]``: robust_stats' arithmetic. ``plan``
    ``(3, 4)``: per quantile (lower, median, upper) :func:`_lerp_plan`'s ``k``, ``kb``, ``t``, ``up``."""
    q = np.empty(3)
    for i in range(3):
        a = np.float64(v[int(plan[i, 0])])
        b = np.float64(v[int(plan[i, 1])])
        d = b - a
        t = plan[i, 2]
        q[i] = b - d * (1.0 - t) if plan[i, 3] > 0 else a + d * t
    med = q[1]
    h = n // 2
    m = np.float32(med)
    if n == 1:
        mad = 0.0
    elif n % 2:
        mad = _kth(v, n, m, h + 1)
    else:
        mad = (_kth(v, n, m, h) + _kth(v, n, m, h + 1)) / 2.0
    sigma = max(_MAD_TO_SIGMA * mad, floor)
    out[0] = med
    out[1] = max(sigma, (q[2] - med + margin * sigma) / thr)
    out[2] = max(sigma, (med - q[0] + margin * sigma) / thr)


@kernel
def _insort(a, n):
    """``a[:n]`` sorted in place (insertion sort: ``n`` is at most ``refresh_every``)."""
    for i in range(1, n):
        v = a[i]
        j = i
        while j > 0 and a[j - 1] > v:
            a[j] = a[j - 1]
            j -= 1
        a[j] = v


@kernel
def _merge(srt, n, adds, na, dels, nd, tmp):
    """``srt[:n]`` (sorted) without the values ``dels[:nd]`` (each one of them) and with ``adds[:na]``,
    sorted, back into ``srt``; returns the new length. The few changes since the last refresh in order,
    the sorted values between them copied by tight loops: one pass, instead of one shift of the sorted
    values per admission (~0.3 µs each here; slice copies cost ~40 ns each, more than these)."""
    _insort(adds, na)
    _insort(dels, nd)
    i = m = ja = kd = 0
    while ja < na or kd < nd:
        if kd < nd and (ja >= na or dels[kd] <= adds[ja]):  # a deletion first on a tie: it is in srt[i:]
            x = dels[kd]
            while srt[i] < x:
                tmp[m] = srt[i]
                m += 1
                i += 1
            i += 1
            kd += 1
        else:
            x = adds[ja]
            while i < n and srt[i] <= x:
                tmp[m] = srt[i]
                m += 1
                i += 1
            tmp[m] = x
            m += 1
            ja += 1
    while i < n:
        tmp[m] = srt[i]
        m += 1
        i += 1
    srt[:m] = tmp[:m]
    return m


@kernel
def _run(e, s, f0, L, thr, vals, vrow, starts, P, lv, sc, sq, sf, vote, rowcol, floors, margins, plans, cap,
         raise_thr, every, S, sw, quiet0, srt, count, pending, med, hi, lo, ring, slow, slow_n, score, z):
    """Stream ``e`` (slot ``s``): its run of windows ``f0 .. f0 + L - 1``; returns the windows committed.
    Statistics, counters and rings are written as it goes; the debounce history and slow histories are
    the caller's (:func:`quiet_pass`)."""
    C = rowcol.size
    cnt = np.empty(C, np.int64)
    pend = np.empty(C, np.int64)
    st = np.empty((3, C))
    for r in range(C):
        c = rowcol[r]
        cnt[r], pend[r] = count[s, c], pending[s, c]
        st[0, r], st[1, r], st[2, r] = med[s, c], hi[s, c], lo[s, c]
    Q = C - P
    # each slow term's feature history then the run's values, and their running sums (np.cumsum's order)
    allv = np.empty((max(Q, 1), sw + L))
    cs = np.empty((max(Q, 1), sw + L))
    for j in range(Q):
        n = slow_n[s, sq[j]]
        acc = 0.0
        for k in range(sw):
            allv[j, k] = np.float64(slow[s, (n + k) % sw, sq[j]])
            acc += allv[j, k]
            cs[j, k] = acc
    x = np.empty(C)
    zr = np.empty(C)
    out = np.empty(3)
    held = np.empty(C, np.int64)  # values in each row's sorted copy
    for r in range(C):
        held[r] = min(cnt[r], S)
    adds = np.empty((C, every + 1), np.float32)  # admitted / overwritten since the copy was merged
    dels = np.empty((C, every + 1), np.float32)
    na = np.zeros(C, np.int64)
    nd = np.zeros(C, np.int64)
    tmp = np.empty(S, np.float32)
    done = L
    for jw in range(L):
        i = f0 + jw
        for r in range(P):
            x[r] = vals[vrow[r], i]
        if lv >= 0:
            x[lv] = _stored(x[lv] / max(math.exp(st[0, sc]), TINY))
        for j in range(Q):
            allv[j, sw + jw] = x[sf[j]]
            cs[j, sw + jw] = cs[j, sw + jw - 1] + x[sf[j]]
            x[P + j] = _stored((cs[j, sw + jw] - cs[j, jw]) / sw)
        for r in range(C):
            d = x[r] - st[0, r]
            v = d / st[1, r] if d >= 0 else d / st[2, r]
            zr[r] = min(max(v, -cap), cap)
        g = zr[0]  # the residual, its high side gated by the error (rows 0 and 1)
        if g > 0:
            g = min(g, max(zr[1], 0.0))
        sco = abs(g)
        for r in range(C):
            if vote[r]:
                sco = max(sco, abs(zr[r]))
        sco = min(sco, cap)
        if sco >= thr:
            done = jw
            break
        score[i] = sco
        for r in range(C):
            z[rowcol[r], i] = zr[r]
        quiet = quiet0 + jw + 1
        for r in range(C):
            if r >= P and quiet < sw:  # a slow value averages a window that was not quiet
                continue
            c = rowcol[r]
            w = np.float32(min(max(x[r], st[0, r] - raise_thr * st[2, r]), st[0, r] + raise_thr * st[1, r]))
            pos = cnt[r] % S
            if cnt[r] >= S:
                dels[r, nd[r]] = ring[s, pos, c]
                nd[r] += 1
            adds[r, na[r]] = w
            na[r] += 1
            ring[s, pos, c] = w
            cnt[r] += 1
            pend[r] += 1
            if pend[r] >= every:
                held[r] = _merge(srt[e, r], held[r], adds[r], na[r], dels[r], nd[r], tmp)
                na[r] = nd[r] = 0
                _stats(srt[e, r], held[r], plans[held[r]], floors[r], margins[r], raise_thr, out)
                st[0, r], st[1, r], st[2, r] = out[0], out[1], out[2]
                pend[r] = 0
    for r in range(C):
        c = rowcol[r]
        count[s, c], pending[s, c] = cnt[r], pend[r]
        med[s, c], hi[s, c], lo[s, c] = st[0, r], st[1, r], st[2, r]
    for j in range(Q):  # the slow histories: the committed windows' feature values
        n = slow_n[s, sq[j]]
        for k in range(max(0, done - sw), done):
            slow[s, (n + k) % sw, sq[j]] = np.float32(allv[j, sw + k])
        slow_n[s, sq[j]] = n + done
    return done


@kernel
def quiet_pass(slots, first, length, thr, vals, vrow, starts, P, lv, sc, sq, sf, vote, rowcol, floors, margins,
               plans, cap, raise_thr, every, S, sw, srt, count, pending, med, hi, lo, ring, slow, slow_n, quiet,
               last_start, has_last, cooldown, rec_start, rec_score, rec_hot, rec_len, score, z, done):
    """Every stream's run (:func:`_run`), then its counters and debounce history."""
    nrec = rec_start.shape[1]
    for e in range(slots.size):
        s = slots[e]
        d = _run(e, s, first[e], length[e], thr[e], vals, vrow, starts, P, lv, sc, sq, sf, vote, rowcol, floors,
                 margins, plans, cap, raise_thr, every, S, sw, quiet[s], srt, count, pending, med, hi, lo, ring,
                 slow, slow_n, score, z)
        done[e] = d
        if d == 0:
            continue
        f0 = first[e]
        last_start[s], has_last[s] = starts[f0 + d - 1], True
        cooldown[s] = max(0, cooldown[s] - d)
        quiet[s] += d
        k = rec_len[s]
        m = min(d, nrec)  # new entries, right-aligned; the older ones (held or not) shift left by m
        keep = nrec - m
        for t in range(keep):  # ascending: each source is read before it is written
            dst, src = nrec - m - keep + t, nrec - keep + t
            rec_start[s, dst], rec_score[s, dst] = rec_start[s, src], rec_score[s, src]
            rec_hot[s, dst] = rec_hot[s, src]
        for t in range(m):
            i = f0 + d - m + t
            j = nrec - m + t
            rec_start[s, j], rec_score[s, j], rec_hot[s, j] = starts[i], score[i], False
        rec_len[s] = min(nrec, k + d)


@kernel
def _rings(slots, rowcol, ring, count, S, out) -> None:
    """``out[e, r]``: row ``r``'s ring of stream ``e`` (column ``rowcol[r]`` of slot ``slots[e]``), its held
    values then +inf (numpy gathers it in three copies at ~3x the cost)."""
    for e in range(slots.size):
        s = slots[e]
        for r in range(rowcol.size):
            c = rowcol[r]
            n = min(count[s, c], S)
            for k in range(n):
                out[e, r, k] = ring[s, k, c]
            for k in range(n, S):
                out[e, r, k] = np.inf


class _Layout:
    """The rows of a call's runs for one Scoring and set of columns present (built once, kept)."""

    def __init__(self, p: Scoring, cols: tuple[int, ...]):
        self.p = p
        self.slow_q = np.array([q for q, (f, _) in enumerate(p.slow) if f in cols], dtype=np.int64)
        self.rowcol = np.array(list(cols) + [p.slow[q][1] for q in self.slow_q], dtype=np.int64)
        self.P = len(cols)
        lev = p.col("level")
        self.lv = cols.index(lev) if lev in cols else -1
        self.sc = cols.index(p.col("scale"))
        self.sf = np.array([cols.index(p.slow[q][0]) for q in self.slow_q], dtype=np.int64)
        voters = set(p.votes) | set(p.slow_votes)
        self.vote = np.array([c in voters for c in self.rowcol], dtype=np.bool_)
        self.vrow = np.arange(self.P, dtype=np.int64)
        self.floors, self.margins = p.floors[self.rowcol], p.margins[self.rowcol]
        self.plans = _plans(p.stats_windows, p.tail_quantile)


_LAYOUTS: dict[tuple[int, tuple[int, ...]], _Layout] = {}


def _layout(p: Scoring, cols: list[int]) -> _Layout:
    key = (id(p), tuple(cols))
    got = _LAYOUTS.get(key)
    if got is None or got.p is not p:  # (an id may be reused once its Scoring is gone)
        if len(_LAYOUTS) > 64:
            _LAYOUTS.clear()
        got = _LAYOUTS[key] = _Layout(p, tuple(cols))
    return got


def quiet_runs_compiled(p: Scoring, tab: SlotTable, slots: np.ndarray, first: np.ndarray, length: np.ndarray,
                        vals: np.ndarray, cols: list[int], starts: np.ndarray, score: np.ndarray, z: np.ndarray,
                        below_raise: bool = False) -> np.ndarray:
    """:func:`~pipeline.monitor.alerts.runs.quiet_runs`, compiled: the same arguments, results and writes."""
    E = slots.size  # 0: the kernel compiled (or loaded from numba's cache) and nothing else (a warm-up)
    done = np.zeros(E, dtype=np.int64)
    S, sw = p.stats_windows, p.slow_windows
    if p.refresh_every > S:  # a value could be admitted and overwritten between two merges: numpy's form
        return quiet_runs(p, tab, slots, first, length, vals, cols, starts, score, z, below_raise)
    lay = _layout(p, cols)
    thr = np.full(E, p.raise_threshold) if below_raise else np.maximum(p.raise_threshold, tab.seq_thr[slots])
    slots = slots.astype(np.int64)
    # each row's ring sorted (past its held values: +inf), kept in order by the pass
    srt = np.empty((E, lay.rowcol.size, S), np.float32)
    _rings(slots, lay.rowcol, tab.ring, tab.count, S, srt)
    srt.sort(axis=2)
    quiet_pass(slots, first.astype(np.int64), length.astype(np.int64), thr.astype(np.float64),
               np.ascontiguousarray(vals), lay.vrow, starts, lay.P, lay.lv, lay.sc, lay.slow_q, lay.sf, lay.vote,
               lay.rowcol, lay.floors, lay.margins, lay.plans, float(p.cap), float(p.raise_threshold),
               int(p.refresh_every), S, sw, srt, tab.count, tab.pending, tab.med, tab.hi, tab.lo, tab.ring, tab.slow,
               tab.slow_n, tab.quiet, tab.last_start, tab.has_last, tab.cooldown, tab.rec_start, tab.rec_score,
               tab.rec_hot, tab.rec_len, score, z, done)
    return done


_PLANS: dict[tuple[int, float], np.ndarray] = {}


def _plans(S: int, q: float) -> np.ndarray:
    """``(S + 1, 3, 4)``: for ``n`` values, :func:`_lerp_plan`'s ``k``, ``kb``, ``t``, ``up`` of the
    quantiles ``q``, 0.5 and ``1 - q`` (robust_stats' order)."""
    key = (S, q)
    if key not in _PLANS:
        out = np.zeros((S + 1, 3, 4))
        for n in range(1, S + 1):
            k, t, _, up = _lerp_plan(n, (q, 0.5, 1.0 - q))
            out[n, :, 0], out[n, :, 1], out[n, :, 2], out[n, :, 3] = k[:3], k[3:], t, up
        _PLANS[key] = out
    return _PLANS[key]
