"""The sequential tests' window-by-window step (pure numpy): the streams of a call with something to
decide (a test reaching its threshold, an alert of these tests up) advance one window at a time in
lockstep (:mod:`pipeline.monitor.alerts.sequential`)."""

from __future__ import annotations

import numpy as np

from pipeline.monitor.alerts.events import AlertEvent


class Lockstep:
    """The streams of a call with something to decide, one window index at a time: the capped CUSUMs
    (reset where a side is not ready or a window-score alert is up), the spike test and the alerts."""

    def __init__(self, P, tab, call, slots, ids, starts, window, ts, model_version):
        self.P, self.tab, self.c, self.slots, self.ids = P, tab, call, slots, ids
        self.starts, self.window, self.ts, self.mv = starts, window, ts, model_version

    def run(self, streams, first, n_u, engine_active, out, quiet, events, ev_win) -> None:
        P, tab, c = self.P, self.tab, self.c
        sl = self.slots[streams]
        D = c.inc.shape[0]
        S = tab.seq_S[sl, :D].T.copy()
        zero = tab.seq_zero[sl, :D].T.copy()
        act, cool, below = tab.seq_active[sl].copy(), tab.seq_cool[sl].copy(), tab.seq_below[sl].copy()
        a0, a1, peak, det = (tab.seq_a_start[sl].copy(), tab.seq_a_end[sl].copy(), tab.seq_peak[sl].copy(),
                             tab.seq_det[sl].copy())
        for t in range(int(n_u[streams].max())):
            live = np.flatnonzero(t < n_u[streams])
            i = first[streams[live]] + t
            st, eng = self.starts[i], engine_active[i]
            S[:, live] = np.where(c.ready[:, i] & ~eng[None, :],
                                  np.minimum(2 * P.h, np.maximum(0.0, S[:, live] + c.inc[:, i])), 0.0)
            Sl = S[:, live]
            zero[:, live] = np.where(Sl == 0.0, st[None, :], zero[:, live])
            cu_hot = Sl >= P.h
            sp_hot = c.sp[i] >= 1.0
            hot = cu_hot.any(axis=0) | sp_hot
            sc = np.minimum(np.maximum(Sl.max(axis=0, initial=0.0) / P.h, c.sp[i]) * P.raise_threshold, P.cap)
            out[i] = sc
            end = st + self.window
            was = act[live]
            rise = hot & ~was & (cool[live] == 0) & ~eng
            cool[live] = np.maximum(cool[live] - 1, 0)
            calm = (Sl < P.h / 2).all(axis=0) & ~sp_hot
            below[live] = np.where(was & calm, below[live] + 1, 0)
            a1[live] = np.where(was & hot, end, a1[live])
            peak[live] = np.where(was, np.maximum(peak[live], sc), peak[live])
            done = was & (below[live] >= P.resolve_windows)
            for j in np.flatnonzero(rise | done):
                u = live[j]
                sid = self.ids[streams[u]]
                if rise[j]:
                    hot_d = np.flatnonzero(cu_hot[:, j])
                    det[u] = hot_d[np.argmax(Sl[hot_d, j])] if hot_d.size else len(P.names) - 1
                    a0[u] = int(zero[hot_d, u].min()) if hot_d.size else int(st[j])
                    a1[u], peak[u] = end[j], sc[j]
                    events.append(AlertEvent("raised", sid, int(a0[u]), int(end[j]), float(sc[j]), P.raise_threshold,
                                             self.mv, self.ts, detector=P.names[int(det[u])]))
                else:
                    events.append(AlertEvent("resolved", sid, int(a0[u]), int(a1[u]), float(peak[u]),
                                             P.raise_threshold / 2, self.mv, self.ts, detector=P.names[int(det[u])]))
                    cool[u] = P.cooldown_windows
                ev_win.append(int(i[j]))
            act[live] = (was & ~done) | rise
            below[live] = np.where(rise | done, 0, below[live])
            quiet[i] &= ~hot & ~act[live]
        tab.seq_S[sl, :D], tab.seq_zero[sl, :D] = S.T, zero.T
        tab.seq_active[sl], tab.seq_cool[sl], tab.seq_below[sl] = act, cool, below
        tab.seq_a_start[sl], tab.seq_a_end[sl], tab.seq_peak[sl], tab.seq_det[sl] = a0, a1, peak, det
