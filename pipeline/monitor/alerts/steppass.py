"""The scalar step compiled (numba): :meth:`~pipeline.monitor.alerts.scalar.Cursor.step` for the windows of
each span, every rule, in one loop (:mod:`pipeline.monitor.alerts.scalar` stays as the reference the
tests hold this one to, bit for bit: scores, z, events, every slot field).

It is the path of warm-up (statistics refreshed after every admitted value), hot windows, open alerts,
rewinds and non-finite inputs. The refreshes' order statistics come from a sorted copy of each ring as
in :mod:`pipeline.monitor.alerts.runpass` (sorted once per call by numpy, merged at each refresh).
Events are written as records and made :class:`~pipeline.monitor.alerts.events.AlertEvent` after the pass.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.jit import kernel
from pipeline.monitor.alerts.runpass import _layout, _merge, _rings, _stats, _stored, quiet_runs_compiled
from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.slots import SlotTable
from pipeline.monitor.alerts.terms import TINY, window_features



@kernel
def _span(e, s, a, b, thr, vals, vrow, starts, finite, log_err, P, lv, sc, sq, sf, vote, rowcol, floors, margins,
          plans, iv, fv, srt, st, rec, slow, slow_n, ring, score, act, z, ev_i, ev_f, nev):
    """Stream ``e`` (slot ``s``), windows ``a .. b - 1``; returns the windows stepped. ``iv``, ``fv``: the
    int and float parameters, in the order unpacked below; ``st``: the slot's statistics, then its int64
    state fields and flags as tuples of views (:func:`step_spans_compiled`)."""
    every, S, sw, min_w, warm, slow_min, features, k, n, resolve_windows, cooldown_windows, admit_every, \
        window, until_runnable, has_prior = iv
    cap, raise_thr, resolve_thr, prior0, prior1 = fv
    count, pending, med, hi, lo, ints, flts, flags = st
    C, T = rowcol.size, z.shape[0]
    Q = C - P
    # per row: its column's held values in the sorted copy, and the changes since the copy was merged
    held = np.empty(C, np.int64)
    for r in range(C):
        held[r] = min(count[s, rowcol[r]], S)
    adds = np.empty((C, every + 1), np.float32)  # at most every admissions between two refreshes
    dels = np.empty((C, every + 1), np.float32)
    na = np.zeros(C, np.int64)
    nd = np.zeros(C, np.int64)
    tmp = np.empty(S, np.float32)
    out = np.empty(3)
    x = np.empty(C)
    zz = np.zeros(C)
    have = np.zeros(C, np.bool_)  # admitted this window (in the admit list)
    zset = np.zeros(C, np.bool_)
    due = np.zeros(C, np.bool_)
    # the state machine's scalars: ints (last_start, alert_start, alert_end, below, cooldown, in_alert,
    # quiet, fast_below, rec_len), floats (alert_peak), flags (has_last, active, range_done)
    last_start, alert_start, alert_end, below, cooldown = ints[0][s], ints[1][s], ints[2][s], ints[3][s], ints[4][s]
    in_alert, quiet, fast_below, rlen = ints[5][s], ints[6][s], ints[7][s], ints[8][s]
    alert_peak = flts[s]
    has_last, active, range_done = flags[0][s], flags[1][s], flags[2][s]
    rs, rsc, rh = rec  # (slots, n) each: the last n windows' starts, scores and hotness, right-aligned
    # the recent windows as a left-aligned list of rlen
    r_start = np.empty(n + 1, np.int64)
    r_score = np.empty(n + 1)
    r_hot = np.empty(n + 1, np.bool_)
    for t in range(rlen):
        r_start[t], r_score[t], r_hot[t] = rs[s, n - rlen + t], rsc[s, n - rlen + t], rh[s, n - rlen + t]
    stepped = b - a
    for i in range(a, b):
        start = starts[i]
        if has_last and start <= last_start:
            rlen = 0  # a rewind: a new debounce history
        has_last, last_start = True, start
        ready = count[s, 0] >= min_w
        fin = finite[i]
        sco, fast = 0.0, 0.0
        for r in range(C):
            have[r] = False
            zset[r] = False
        if fin:
            prior_z = max(0.0, (log_err[i] - prior0) / prior1) if has_prior else 0.0
            for r in range(P):
                c = rowcol[r]
                xv = vals[vrow[r], i]
                if r == lv:
                    if count[s, rowcol[sc]] < min_w:
                        continue
                    xv = _stored(xv / max(math.exp(med[s, rowcol[sc]]), TINY))
                x[r] = xv
                have[r] = True
                if count[s, c] < min_w:
                    if c != 0:
                        continue
                    zc = prior_z
                else:
                    d = xv - med[s, c]
                    zc = d / hi[s, c] if d >= 0 else d / lo[s, c]
                    if c == 0 and count[s, c] < warm and zc > 0 and has_prior:
                        zc = min(zc, prior_z)
                zz[r] = min(max(zc, -cap), cap)
                zset[r] = True
            for j in range(Q):
                q, fr = sq[j], sf[j]
                if not have[fr]:
                    continue
                slow[s, slow_n[s, q] % sw, q] = np.float32(x[fr])
                slow_n[s, q] += 1
                if slow_n[s, q] >= sw:  # the deque is full: the mean of its sw values, oldest first
                    acc = 0.0
                    for t in range(sw):
                        acc += np.float64(slow[s, (slow_n[s, q] + t) % sw, q])
                    r = P + j
                    x[r] = _stored(acc / sw)
                    have[r] = True
                    c = rowcol[r]
                    if count[s, c] >= slow_min:
                        d = x[r] - med[s, c]
                        zz[r] = min(max(d / hi[s, c] if d >= 0 else d / lo[s, c], -cap), cap)
                        zset[r] = True
            zr = zz[0] if zset[0] else 0.0
            if ready and zr > 0:
                ze = zz[1] if zset[1] else 0.0
                zr = min(zr, max(ze, 0.0))
            fast = abs(zr)
            for r in range(C):
                if vote[r] and rowcol[r] < features and zset[r]:
                    fast = max(fast, abs(zz[r]))
            sco = fast
            for r in range(C):
                if vote[r] and rowcol[r] >= features and zset[r]:
                    sco = max(sco, abs(zz[r]))
            sco = min(sco, cap)
        hot = ready and sco >= thr
        # the state machine (Cursor._advance)
        r_start[rlen], r_score[rlen], r_hot[rlen] = start, sco, hot
        rlen += 1
        if rlen > n:
            for t in range(n):
                r_start[t], r_score[t], r_hot[t] = r_start[t + 1], r_score[t + 1], r_hot[t + 1]
            rlen = n
        kind = -1
        if active:
            in_alert += 1
            fast_below = 0 if fast >= resolve_thr else fast_below + 1
            if fast_below == 0 and not range_done:
                alert_end = max(alert_end, start + window)
            elif fast_below >= resolve_windows:
                range_done = True
            if sco >= resolve_thr:
                below = 0
                alert_peak = max(alert_peak, sco)
            else:
                below += 1
                if below >= resolve_windows:
                    active = False
                    cooldown = cooldown_windows
                    rlen = 0
                    kind = 1
        elif cooldown > 0:
            cooldown -= 1
        elif hot:
            ntrig = 0
            for t in range(rlen):
                ntrig += r_hot[t]
            if ntrig >= k:
                first_t, last_t, peak = -1, -1, -np.inf
                for t in range(rlen):
                    if r_hot[t]:
                        if first_t < 0:
                            first_t = t
                        last_t = t
                        peak = max(peak, r_score[t])
                active, range_done = True, False
                alert_start, alert_end = r_start[first_t], r_start[last_t] + window
                alert_peak = peak
                below = in_alert = fast_below = 0
                kind = 0
        if kind >= 0:
            m = nev[0]
            ev_i[m, 0], ev_i[m, 1], ev_i[m, 2], ev_i[m, 3], ev_i[m, 4] = e, i, kind, alert_start, alert_end
            ev_f[m, 0], ev_f[m, 1] = alert_peak, (thr if kind == 0 else resolve_thr)
            nev[0] = m + 1
        score[i] = sco
        act[i] = active
        for c in range(T):
            z[c, i] = 0.0
        for r in range(C):
            if zset[r]:
                z[rowcol[r], i] = zz[r]
        # admissions (Cursor._adapt)
        if fin:
            if active:
                ok = admit_every > 0 and in_alert > 0 and in_alert % admit_every == 0
            else:
                ok = not hot
            quiet = 0 if (active or hot) else quiet + 1
            if ok:
                slow_ok = quiet >= sw or (active and in_alert >= 2 * sw)
                for r in range(C):
                    due[r] = False
                    if not have[r]:
                        continue
                    c = rowcol[r]
                    if c >= features and not slow_ok:
                        continue
                    nn = count[s, c]
                    xv = x[r]
                    if nn >= min_w:
                        xv = min(max(xv, med[s, c] - raise_thr * lo[s, c]), med[s, c] + raise_thr * hi[s, c])
                    w = np.float32(xv)
                    pos = nn % S
                    if nn >= S:
                        dels[r, nd[r]] = ring[s, pos, c]
                        nd[r] += 1
                    adds[r, na[r]] = w
                    na[r] += 1
                    ring[s, pos, c] = w
                    count[s, c] = nn + 1
                    pending[s, c] += 1
                    due[r] = nn + 1 <= warm or pending[s, c] >= every
                for r in range(C):
                    if due[r]:
                        c = rowcol[r]
                        held[r] = _merge(srt[e, r], held[r], adds[r], na[r], dels[r], nd[r], tmp)
                        na[r] = nd[r] = 0
                        _stats(srt[e, r], held[r], plans[held[r]], floors[r], margins[r], raise_thr, out)
                        med[s, c], hi[s, c], lo[s, c] = out[0], out[1], out[2]
                        pending[s, c] = 0
        if until_runnable and i + 1 < b:
            nxt = i + 1
            if not active and finite[nxt] and starts[nxt] > last_start and _warmed(count, s, rowcol, P, Q, sq, sf,
                                                                                  slow_n, warm, sw, slow_min):
                stepped = nxt - a
                break
    ints[0][s], ints[1][s], ints[2][s], ints[3][s], ints[4][s] = last_start, alert_start, alert_end, below, cooldown
    ints[5][s], ints[6][s], ints[7][s], ints[8][s] = in_alert, quiet, fast_below, rlen
    flts[s] = alert_peak
    flags[0][s], flags[1][s], flags[2][s] = has_last, active, range_done
    for t in range(rlen):
        rs[s, n - rlen + t], rsc[s, n - rlen + t], rh[s, n - rlen + t] = r_start[t], r_score[t], r_hot[t]
    return stepped


@kernel
def _warmed(count, s, rowcol, P, Q, sq, sf, slow_n, warm, sw, slow_min):
    """The runs' conditions on the counts (:meth:`~pipeline.monitor.alerts.scalar.Cursor.runnable`)."""
    for r in range(P):
        if count[s, rowcol[r]] < warm:
            return False
    for j in range(Q):
        if slow_n[s, sq[j]] < sw or count[s, rowcol[P + j]] < slow_min:
            return False
    return True


@kernel
def _pass(slots, a, b, thr, vals, vrow, starts, finite, log_err, P, lv, sc, sq, sf, vote, rowcol, floors, margins,
          plans, iv, fv, srt, st, rec, slow, slow_n, ring, score, act, z, ev_i, ev_f, nev, stepped):
    for e in range(slots.size):
        stepped[e] = _span(e, slots[e], a[e], b[e], thr[e], vals, vrow, starts, finite, log_err, P, lv, sc, sq, sf,
                           vote, rowcol, floors, margins, plans, iv, fv, srt, st, rec, slow, slow_n, ring, score,
                           act, z, ev_i, ev_f, nev)


# the slot's int64 state fields, in _span's order, then its flags
_INT_FIELDS = ("last_start", "alert_start", "alert_end", "below", "cooldown", "in_alert", "quiet", "fast_below",
               "rec_len")
_FLAGS = ("has_last", "active", "range_done")


def step_spans_compiled(p: Scoring, tab: SlotTable, spans, window: int, ts: float, starts, finite, vals, cols,
                        log_err, score, act, z, events: list, ev_win: list, until_runnable: bool = False) -> list[int]:
    """:func:`~pipeline.monitor.alerts.scalar.step_spans`, compiled: the same arguments, results and writes."""
    E = len(spans)
    lay = _layout(p, cols)
    slots = np.array([sp[1] for sp in spans], dtype=np.int64)
    a = np.array([sp[2] for sp in spans], dtype=np.int64)
    b = np.array([sp[3] for sp in spans], dtype=np.int64)
    thr = np.maximum(p.raise_threshold, tab.seq_thr[slots]).astype(np.float64)
    S = p.stats_windows
    srt = np.empty((E, lay.rowcol.size, S), np.float32)
    _rings(slots, lay.rowcol, tab.ring, tab.count, S, srt)
    srt.sort(axis=2)
    prior = p.prior
    iv = (int(p.refresh_every), S, int(p.slow_windows), int(p.min_windows), int(p.warmup_windows), int(p.slow_min),
          int(p.features), int(p.k), int(p.n), int(p.resolve_windows), int(p.cooldown_windows),
          int(p.alert_admit_every or 0), int(window), int(bool(until_runnable)), int(prior is not None))
    fv = (float(p.cap), float(p.raise_threshold), float(p.resolve_threshold),
          float(prior[0]) if prior else 0.0, float(prior[1]) if prior else 1.0)
    st = (tab.count, tab.pending, tab.med, tab.hi, tab.lo, tuple(getattr(tab, f) for f in _INT_FIELDS),
          tab.alert_peak, tuple(getattr(tab, f) for f in _FLAGS))
    total = int((b - a).sum())
    ev_i = np.empty((max(total, 1), 5), np.int64)
    ev_f = np.empty((max(total, 1), 2))
    nev = np.zeros(1, np.int64)
    stepped = np.zeros(E, np.int64)
    _pass(slots, a, b, thr, np.ascontiguousarray(vals), lay.vrow, np.asarray(starts, np.int64),
          np.asarray(finite, np.bool_), np.asarray(log_err, np.float64), lay.P, lay.lv, lay.sc, lay.slow_q, lay.sf,
          lay.vote, lay.rowcol, lay.floors, lay.margins, lay.plans, iv, fv, srt, st,
          (tab.rec_start, tab.rec_score, tab.rec_hot), tab.slow, tab.slow_n, tab.ring, score, act, z, ev_i, ev_f,
          nev, stepped)
    # events per span in span order, each span's in window order (step_spans' order)
    m = int(nev[0])
    order = sorted(range(m), key=lambda j: (ev_i[j, 0], ev_i[j, 1]))
    for j in order:
        e, i, kind, start, end = (int(v) for v in ev_i[j])
        events.append(AlertEvent("raised" if kind == 0 else "resolved", spans[e][0], start, end, float(ev_f[j, 0]),
                                 float(ev_f[j, 1]), p.model_version, ts))
        ev_win.append(i)
    return stepped.tolist()


def warm_paths(p: Scoring, tab: SlotTable, window: int, work, runs: bool = True) -> None:
    """The paths' kernels compiled, or loaded from numba's cache, by one call each on no stream (and the
    window features' on one window, with and without outputs): when the engine is built, not in its
    first micro-batch."""
    cols = sorted({0, 1, p.col("scale")} | set(range(p.features)))
    none, vals, z = np.zeros(0, np.int64), np.zeros((len(cols), 0)), np.zeros((len(p.cols), 0))
    if runs:
        quiet_runs_compiled(p, tab, none, none, none, vals, cols, none, np.zeros(0), z)
    step_spans_compiled(p, tab, [], window, 0.0, none, np.zeros(0, bool), vals, cols, np.zeros(0), np.zeros(0),
                        np.zeros(0, bool), z, [], [])
    x = np.zeros((1, 1, max(window, 4)), np.float32)
    window_features(x, x, work)
    window_features(x, None, work)
