"""The common path of the alert engine: quiet runs of many streams at once, in array operations.

A stream past warm-up with no alert up, whose windows are finite and increasing, is in a *run*: while
none of its windows is hot, every window is admitted (winsorised at the raise threshold), slow
values from the window the stream has been quiet for ``slow_windows`` on, and each term's statistics
change only at its own refreshes (every ``refresh_every`` admissions). So every term evolves on its
own: its admitted values are its own winsorised values. :func:`quiet_runs` takes the runs of all
eligible streams of a call together: each (stream, term) pair is a *row* of ``(rows, windows)``
arrays. The refreshes are computed in rounds: round ``k`` holds the ``k``-th refresh of every row,
stacked into one :func:`~pipeline.monitor.alerts.terms.robust_stats` call, and each row's statistics
in effect at each window are kept as matrices. Only ``level`` (in units of the median scale) and its
slow mean depend on another term: their refreshes wait for the scale refreshes before them. From
three rounds on, the refreshes are first taken all at once as if no admitted value were winsorised
(two stacked calls), which is exact up to a row's first refresh that saw a value winsorising would
have changed; a run committed beyond that is redone in rounds. Then every window is scored at once
and each stream's run is committed up to its first hot window (refreshes after it are dropped
unused); the rest of its windows go to the scalar path (:mod:`pipeline.monitor.alerts.scalar`),
which applies the same rules one window at a time.
"""

from __future__ import annotations

import numpy as np

from pipeline.monitor.alerts.scoring import Scoring, window_scores, winsorise, zscore
from pipeline.monitor.alerts.slots import SlotTable
from pipeline.monitor.alerts.terms import TINY, robust_stats, stored


def quiet_runs(p: Scoring, tab: SlotTable, slots: np.ndarray, first: np.ndarray, length: np.ndarray,
               vals: np.ndarray, cols: list[int], starts: np.ndarray, score: np.ndarray, z: np.ndarray,
               below_raise: bool = False) -> np.ndarray:
    """Score and commit the runs of ``slots`` (windows ``first[e] .. first[e] + length[e] - 1`` of the
    call: ``vals[:, i]`` the values of columns ``cols``, ``starts[i]`` the start); scores into ``score``
    and per-column z into ``z`` ``(columns, windows)``. Returns the windows committed per stream.
    ``below_raise``: a run ends at the first window scoring ``raise_threshold`` or more, whatever
    threshold the stream calibrated above it (such windows are quiet under any calibration)."""
    run = _Run(p, tab, slots, first, length, vals, cols)
    exact = run.refresh()
    # calibrated per stream (sequential.py), never below the setting
    thr = p.raise_threshold if below_raise else np.maximum(p.raise_threshold, tab.seq_thr[slots])[:, None]
    while True:
        zz, sc = run.scores()
        hot = (sc >= thr) & run.valid
        done = np.where(hot.any(axis=1), hot.argmax(axis=1), length)
        if exact is None or (done <= exact).all():
            break
        exact = run.redo()  # a refresh that a committed window depends on saw a winsorised value
    run.commit(done, starts, zz, sc, score, z)
    return done


def _slow_means(hist: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per row: the mean of the last ``hist.shape[1]`` values at each column of ``x``, ``hist`` holding
    the values before ``x`` (oldest first)."""
    sw = hist.shape[1]
    cs = np.cumsum(np.concatenate((hist, x), axis=1), axis=1)
    return (cs[:, sw:] - cs[:, : x.shape[1]]) / sw


class _Run:
    """The runs of one call. Rows ``e * C + c``: stream ``e``, term ``c`` (the per-window columns
    present, then the slow terms whose feature is present). ``x`` holds each row's values and ``m``
    the statistics (median, upper and lower spread) in effect at each window, ``(rows, windows)``."""

    # rounds from which the refreshes are first taken as if unclipped: two calls instead of one per
    # round are worth it from three rounds on (measured: 7 % less CPU at 32 windows per stream and
    # call, 13 % at 64; 5 % more at 8). Tests set it to compare both ways.
    unclipped_from = 3

    def __init__(self, p: Scoring, tab: SlotTable, slots, first, length, vals, cols):
        self.p, self.tab, self.slots, self.length = p, tab, slots, length
        E, L, P = slots.size, int(length.max()), len(cols)
        self.jj = jj = np.arange(L)
        self.valid = jj < length[:, None]
        self.widx = first[:, None] + np.minimum(jj, length[:, None] - 1)
        self.slow_q = [q for q, (f, _) in enumerate(p.slow) if f in cols]
        self.rowcol = rc = np.array(list(cols) + [p.slow[q][1] for q in self.slow_q], dtype=np.int64)
        self.E, self.P, self.C = E, P, rc.size
        self.x3 = np.empty((E, self.C, L))
        self.x3[:, :P] = vals[:, self.widx].transpose(1, 0, 2)
        self.x = self.x3.reshape(-1, L)
        self.lv = cols.index(p.col("level")) if p.col("level") in cols else -1
        self.sc = cols.index(p.col("scale"))
        self.raw_level = self.x3[:, self.lv].copy() if self.lv >= 0 else None
        self.cnt0 = tab.count[slots][:, rc].reshape(-1)
        self.pend0 = tab.pending[slots][:, rc].reshape(-1)
        self.m0 = np.stack([getattr(tab, name)[slots][:, rc].reshape(-1) for name in ("med", "hi", "lo")])
        # (3, rows, windows, or 1 while every row's statistics are its stored ones) after refresh
        self.m = self.m0[:, :, None]
        self.dep = np.zeros(self.C, dtype=bool)  # rows whose values depend on the scale median
        if self.lv >= 0:
            self.dep[self.lv] = True
            self.dep[[P + j for j, q in enumerate(self.slow_q) if p.slow[q][0] == p.col("level")]] = True
        self.scale_med = self._stored_scale_med()  # (streams, windows or 1)
        off = np.zeros((E, self.C), dtype=np.int64)  # first window admitted per row
        off[:, P:] = np.maximum(0, p.slow_windows - tab.quiet[slots] - 1)[:, None]
        self.off = off.reshape(-1)
        sw = p.slow_windows
        self.hist = []  # each slow term's feature history, oldest first
        for q in self.slow_q:
            n = tab.slow_n[slots, q]
            self.hist.append(tab.slow[slots[:, None], (n[:, None] + np.arange(sw)[None, :]) % sw, q])
        lev = p.col("level")
        self.slow_rows = [(j, self._row(p.slow[q][0]), p.slow[q][0] == lev) for j, q in enumerate(self.slow_q)]
        self._slow_values(levels=False)
        self._levels()

    def _slow_values(self, levels: bool) -> None:
        """Slow rows' values: of ``level`` only (``levels``, after its values changed) or of the others."""
        for j, f_row, is_level in self.slow_rows:
            if is_level == levels:
                self.x3[:, self.P + j] = stored(_slow_means(self.hist[j], self.x3[:, f_row]))

    def _row(self, col: int) -> int:
        return int(np.flatnonzero(self.rowcol[: self.P] == col)[0])

    def _stored_scale_med(self) -> np.ndarray:
        return self.m0[0].reshape(self.E, self.C)[:, self.sc, None]

    def _levels(self) -> None:
        """``level`` in units of the scale median in effect at each window, and its slow mean."""
        if self.lv >= 0:
            self.x3[:, self.lv] = stored(self.raw_level / np.maximum(np.exp(self.scale_med), TINY))
            self._slow_values(levels=True)

    def _schedule(self):
        """Per row and refresh ``k``: admissions before it (``ik``), its window (``wk``), its round (``rk``)
        and whether it happens within the run (``ok``). Round ``k`` is each row's ``k``-th refresh; a
        level row's refresh waits for the scale refreshes before its window."""
        every, C = self.p.refresh_every, self.C
        n_adm = np.maximum(0, np.repeat(self.length, C) - self.off)
        i0 = np.maximum(every - self.pend0, 1)
        n_ref = np.where(n_adm >= i0, (n_adm - i0) // every + 1, 0)
        kk = np.arange(int(n_ref.max()))
        ik = i0[:, None] + every * kk
        ok = kk < n_ref[:, None]
        wk = self.off[:, None] + ik - 1
        rk = np.broadcast_to(kk, ok.shape).copy()
        if self.lv >= 0 and kk.size:
            lev = self.p.col("level")
            deps = [self.lv] + [self.P + j for j, q in enumerate(self.slow_q) if self.p.slow[q][0] == lev]
            base = np.arange(self.E) * C
            ws, wsv = wk[base + self.sc], ok[base + self.sc]
            for c in deps:
                before = ((ws[:, None, :] < wk[base + c][:, :, None]) & wsv[:, None, :]).sum(axis=2)
                rk[base + c] = np.maximum.accumulate(before - kk, axis=1) + kk
        return ik, wk, rk, ok

    def refresh(self) -> np.ndarray | None:
        """Every refresh of the runs; then ``m``, each row's statistics in effect at each window (a
        refresh's from the window after it on). Returns None when they are exact, else per stream the
        window up to which they are: a run committed up to there needs no more; else :meth:`redo`.

        The refreshes depend on each other only through winsorising: a row's admissions are limited by
        the statistics of its refresh before them. :meth:`_rounds` takes them in that order, one stacked
        :func:`robust_stats` call per round (round ``k``: every row's ``k``-th refresh). From three rounds
        on, :meth:`_unclipped` first takes them as if no admitted value were winsorised: every refresh of
        a row then sees its ring plus the raw values admitted since, and all refreshes are two stacked
        calls (the rows that do not depend on the scale median, then level and its slow mean). Up to a
        row's first refresh with an admission that winsorising would have changed (under the statistics
        so found, exact up to there), each refresh is the rounds' exactly: the same values in the same
        ring give the same statistics."""
        S = self.p.stats_windows
        self.ik, self.wk, self.rk, self.ok = ik, wk, rk, ok = self._schedule()
        self.ref = np.zeros((3,) + ik.shape)
        if not ok.any():
            return None
        g = self.tab.ring[self.slots]
        if not np.array_equal(self.rowcol, np.arange(g.shape[2])):
            g = g[:, :, self.rowcol]
        self.ring = np.ascontiguousarray(g.transpose(0, 2, 1)).reshape(-1, S)  # (rows, positions)
        # at most S admissions per row in the run, so none overwrites another in a ring
        if self.jj.size <= S and rk.max(initial=0, where=ok) + 1 >= self.unclipped_from:
            return self._unclipped(self.ring)
        self._rounds(self.ring)
        return None

    def redo(self) -> None:
        """The refreshes in rounds (:meth:`_rounds`), from the stored statistics; exact (returns None)."""
        if self.lv >= 0:  # back to the stored scale median, and the level values it gives
            self.scale_med = self._stored_scale_med()
            self._levels()
        self._rounds(self.ring.copy())
        return None

    def _unclipped(self, ring: np.ndarray) -> np.ndarray:
        """Every refresh from its ring plus the raw admissions before it, into ``ref`` and ``m``. Returns
        per stream the window up to which they are exact: the least over its rows of the window of the
        row's first refresh with an admission that winsorising would have changed (under the statistics
        in effect at its window, exact up to there)."""
        p, S, thr, jj, C = self.p, self.p.stats_windows, self.p.raise_threshold, self.jj, self.C
        ik, wk, ok = self.ik, self.wk, self.ok
        pos0, held0 = self.cnt0 % S, np.minimum(self.cnt0, S)
        ro, ko = np.nonzero(ok)  # every refresh, row-major
        dep = self.dep[ro % C]
        for phase in (~dep, dep):
            if not phase.any():
                continue
            r, k = ro[phase], ko[phase]
            w = wk[r, k]
            # snapshot i: row r[i]'s ring with the values admitted at windows off .. w[i] written in
            si, jr = np.nonzero((jj >= self.off[r, None]) & (jj <= w[:, None]))
            rw = r[si]
            snap = ring[r]
            snap[si, (pos0[rw] + jr - self.off[rw]) % S] = self.x[rw, jr]
            self.ref[:, r, k] = self._stats(snap, np.minimum(held0[r] + ik[r, k], S), self.rowcol[r % C])
            if self.lv >= 0 and phase is not dep:  # the scale median at each window, then level's values
                sr = np.arange(self.E) * C + self.sc
                if ok[sr].any():
                    self.scale_med = self._build_m(sr, med_only=True)
                    self._levels()
        self.m = self._build_m()
        # the admissions up to each row's last refresh that winsorising would have changed
        R = ok.shape[0]
        last = np.where(ok.any(axis=1), wk[np.arange(R), ok.sum(axis=1) - 1], -1)
        m, x = self.m, self.x
        clipped = (x != winsorise(x, m[0], m[1], m[2], thr)) & (jj >= self.off[:, None]) & (jj <= last[:, None])
        bad = np.flatnonzero(clipped.any(axis=1))
        exact = np.full(R, np.iinfo(np.int64).max)
        if bad.size:  # the first refresh that saw one: exact up to its window
            j0 = clipped[bad].argmax(axis=1)
            exact[bad] = np.where(ok[bad] & (wk[bad] >= j0[:, None]), wk[bad], np.iinfo(np.int64).max).min(axis=1)
        return exact.reshape(self.E, C).min(axis=1)

    def _stats(self, v: np.ndarray, n: np.ndarray, fc: np.ndarray) -> np.ndarray:
        """(3, rows): :func:`robust_stats` of the first ``n[i]`` values of row ``i`` of ``v`` (column ``fc[i]``),
        one call per distinct ``n`` (one when every ring is full, the common case)."""
        p, thr = self.p, self.p.raise_threshold
        if n.min() == n.max():
            return np.stack(robust_stats(v[:, : n[0]], p.tail_quantile, p.floors[fc], p.margins[fc], thr))
        new = np.empty((3, n.size))
        for nv in np.unique(n):
            g = np.flatnonzero(n == nv)
            new[:, g] = robust_stats(v[g, :nv], p.tail_quantile, p.floors[fc[g]], p.margins[fc[g]], thr)
        return new

    def _build_m(self, rows: np.ndarray | None = None, med_only: bool = False) -> np.ndarray:
        """The statistics of ``rows`` (default all) in effect at each window from ``ref``: at window j the
        row's latest refresh before j (the k-th: k refreshes at windows < j), else its stored ones;
        ``(3, rows, windows)``, or the median only ``(rows, windows)``."""
        L, K = self.jj.size, self.ok.shape[1]
        ok, wk = (self.ok, self.wk) if rows is None else (self.ok[rows], self.wk[rows])
        R = ok.shape[0]
        step = np.zeros((R, L + 1), dtype=np.int64)  # +1 at the window after each refresh (one per window)
        ro, ko = np.nonzero(ok)
        step[ro, wk[ro, ko] + 1] = 1
        cnt = np.cumsum(step[:, :L], axis=1)
        idx = (np.arange(R) * K if rows is None else rows * K)[:, None] + np.maximum(cnt - 1, 0)
        m0 = self.m0 if rows is None else self.m0[:, rows]
        if med_only:
            return np.where(cnt > 0, self.ref[0].reshape(-1)[idx], m0[0, :, None])
        return np.where(cnt > 0, self.ref.reshape(3, -1)[:, idx], m0[:, :, None])

    def _rounds(self, ring: np.ndarray) -> None:
        """Every refresh in order, round by round, into ``ref`` and ``m``: round ``r`` holds each row's
        refresh of round ``rk``; it winsorises the row's admissions since its last refresh by the statistics
        in effect and takes all the round's refreshes in one stacked call. ``level`` follows the scale
        median (its refresh waits for the scale refreshes before its window: ``rk``)."""
        S, thr, jj = self.p.stats_windows, self.p.raise_threshold, self.jj
        ik, wk, ok = self.ik, self.wk, self.ok
        self.m = np.repeat(self.m0[:, :, None], jj.size, axis=2)
        pos0, held0 = self.cnt0 % S, np.minimum(self.cnt0, S)
        prev = self.off - 1  # window of each row's last refresh so far
        rk = np.where(ok, self.rk, -1)
        for r in range(int(rk.max()) + 1):
            hit = rk == r
            rows = np.flatnonzero(hit.any(axis=1))
            k = hit[rows].argmax(axis=1)
            w = wk[rows, k]
            # the admissions since the row's last refresh, winsorised by the statistics in effect
            mm = self.m[:, rows]
            win = winsorise(self.x[rows], mm[0], mm[1], mm[2], thr)
            rr, jr = np.nonzero((jj > prev[rows, None]) & (jj <= w[:, None]))
            rw = rows[rr]
            ring[rw, (pos0[rw] + jr - self.off[rw]) % S] = win[rr, jr]
            new = self._stats(ring[rows], np.minimum(held0[rows] + ik[rows, k], S), self.rowcol[rows % self.C])
            self.m[:, rows] = np.where(jj > w[:, None], new[:, :, None], mm)
            self.ref[:, rows, k] = new
            prev[rows] = w
            if self.lv >= 0 and (rows % self.C == self.sc).any():
                self.scale_med = self.m[0].reshape(self.E, self.C, -1)[:, self.sc]
                self._levels()

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(z of every column, ``(columns, streams, windows)``; score ``(streams, windows)``)."""
        m = self.m
        zr = zscore(self.x - m[0], m[1], m[2], self.p.cap).reshape(self.E, self.C, -1)
        zz = np.zeros((len(self.p.cols),) + self.valid.shape)
        zz[self.rowcol] = zr.transpose(1, 0, 2)
        return zz, window_scores(zz, self.p)

    def commit(self, done, starts, zz, sc, score, z) -> None:
        """Commit windows ``[0, done[e])`` of each run: outputs, debounce history, slow histories,
        admissions, statistics (the last refresh among them) and counters."""
        p, tab, slots, jj = self.p, self.tab, self.slots, self.jj
        take = jj < done[:, None]
        wi = self.widx[take]
        score[wi] = sc[take]
        z[:, wi] = zz[:, take]
        busy = done > 0
        s_b, d_b = slots[busy], done[busy]
        tab.last_start[s_b], tab.has_last[s_b] = starts[self.widx[busy, d_b - 1]], True
        tab.cooldown[s_b] = np.maximum(0, tab.cooldown[s_b] - d_b)
        tab.quiet[s_b] += d_b
        self._recent(done, starts, sc)
        sw = p.slow_windows
        for j, q in enumerate(self.slow_q):
            e, i = np.nonzero(take & (jj >= done[:, None] - sw))
            n = tab.slow_n[slots, q]
            tab.slow[slots[e], (n[e] + i) % sw, q] = self.x3[e, self._row(p.slow[q][0]), i]
            tab.slow_n[slots, q] = n + done
        self._admit(done)

    def _recent(self, done, starts, sc) -> None:
        """The last ``n`` windows of each stream (right-aligned), the run's windows appended (not hot)."""
        n, slots, tab = self.p.n, self.slots, self.tab
        if done.min() >= n:  # the common case: the run's own last n windows
            pick = done[:, None] - n + np.arange(n)[None, :]
            tab.rec_start[slots] = starts[np.take_along_axis(self.widx, pick, axis=1)]
            tab.rec_score[slots] = np.take_along_axis(sc, pick, axis=1)
            tab.rec_hot[slots] = False
            tab.rec_len[slots] = n
            return
        pick = done[:, None] + np.arange(n)[None, :]
        for name, new in (("rec_start", starts[self.widx]), ("rec_score", sc), ("rec_hot", np.zeros(sc.shape, bool))):
            arr = getattr(tab, name)
            arr[slots] = np.take_along_axis(np.concatenate((arr[slots], new), axis=1), pick, axis=1)
        tab.rec_len[slots] = np.minimum(n, tab.rec_len[slots] + done)

    def _admit(self, done) -> None:
        """Each row's admissions among the committed windows into the ring, its count, pending and stats."""
        p, tab, slots, S, m, C = self.p, self.tab, self.slots, self.p.stats_windows, self.m, self.C
        win = winsorise(self.x, m[0], m[1], m[2], p.raise_threshold)
        d = np.repeat(done, C)
        rows, j = np.nonzero((self.jj >= self.off[:, None]) & (self.jj < d[:, None]) & (self.jj >= d[:, None] - S))
        e = rows // C
        tab.ring[slots[e], (self.cnt0[rows] + j - self.off[rows]) % S, self.rowcol[rows % C]] = win[rows, j]
        n_adm = np.maximum(0, d - self.off)
        ix = (slots[:, None], self.rowcol[None, :])
        tab.count[ix] = (self.cnt0 + n_adm).reshape(self.E, C)
        used = (self.ok & (self.wk < d[:, None])).sum(axis=1)  # refreshes among the committed windows
        got = np.flatnonzero(used)
        pending = self.pend0 + n_adm
        if got.size:
            k = used[got] - 1
            pending[got] = n_adm[got] - self.ik[got, k]
            e, c = got // C, self.rowcol[got % C]
            for i, name in enumerate(("med", "hi", "lo")):
                getattr(tab, name)[slots[e], c] = self.ref[i, got, k]
        tab.pending[ix] = pending.reshape(self.E, C)
