"""The steady-state path of the alert engine: a whole run of ordinary windows in a few array passes.

:func:`~pipeline.monitor.alerts.steps.fast_run` stops at every refresh of any statistic, and with ten terms
on different refresh phases that is a few windows per stop. :func:`batch_run` takes the whole run
(up to the next non-finite or rewound window) at once, for a stream past warm-up (every statistic
refreshes only every ``refresh_every`` values, the slow ones vote) that has no alert up.
Assuming no window of the run is hot, every term evolves on its own: its admitted values are its own
winsorised values, and its statistics change only at its own refreshes. So the refreshes are computed
in rounds — round ``k`` holds the ``k``-th refresh of every term, stacked into one
:func:`~pipeline.monitor.alerts.terms.robust_stats` call — and each term's median and spreads in
effect at each window are kept as ``(terms, windows)`` matrices. Only ``level`` (in units of the
median scale) and its slow mean depend on another term; their refreshes wait for the scale refreshes
before them. Then the scores follow in one pass, and the run is committed up to its first hot window
(its refreshes after that are dropped unused). The arithmetic is that of
:func:`~pipeline.monitor.alerts.steps.scalar_step`, value for value.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.monitor.alerts.scoring import Scoring, first_hot, slow_means, window_scores, winsorise, zscore
from pipeline.monitor.alerts.state import Batch, StreamState, record_quiet_run, run_length
from pipeline.monitor.alerts.terms import TINY, robust_stats

# A refresh in a run: (term row, admissions into the run before it, window it follows).
Refresh = tuple[int, int, int]


def batch_run(p: Scoring, st: StreamState, b: Batch, a: int) -> int:
    """Process windows ``a, a+1, ...`` as one run; returns how many (0: not applicable here)."""
    L = run_length(st, b, a)
    if L < 2:
        return 0
    if any(st.stats[t].count < p.warmup_windows for t in b.names):  # warm-up: refreshes after every value
        return 0
    slow_f = [f for f in p.slow_terms if f in b.values]
    for f in slow_f:
        q, r = st.slow.get(f), st.stats[f + "_slow"]
        if q is None or len(q) < p.slow_windows or r.count < p.slow_min:
            return 0
    run = _Run(p, st, b, a, L, slow_f)
    run.refresh()
    sc, zt = run.scores()
    n = first_hot(sc, p.raise_threshold)
    if n == 0:
        return 0
    run.commit(st, b, a, n, sc, zt)
    return n


def _refreshes(pending: int, every: int, n_adm: int, first: int) -> list[tuple[int, int]]:
    """(admissions so far, window) of each refresh among ``n_adm`` admissions from window ``first``."""
    return [(i, first + i - 1) for i in range(every - pending, n_adm + 1, every)]


class _Run:
    """One run of ``L`` windows: its values ``xm`` and the statistics ``stat`` (median, upper and
    lower spread) in effect at each window, as ``(terms, windows)`` matrices. Rows: the per-window
    terms (``names``), then the slow means of ``slow_f``."""

    def __init__(self, p: Scoring, st: StreamState, b: Batch, a: int, L: int, slow_f: list[str]):
        self.p, self.L, self.slow_f = p, L, slow_f
        self.names = names = list(b.names)
        self.P = P = len(names)
        self.robs = [st.stats[t] for t in names] + [st.stats[f + "_slow"] for f in slow_f]
        self.rows = names + [f + "_slow" for f in slow_f]
        self.j0 = max(0, p.slow_windows - st.quiet - 1)  # slow values are admitted from this window on
        self.xm = xm = np.empty((len(self.robs), L))
        xm[:P] = b.rows()[:, a : a + L]
        self.lv = names.index("level") if "level" in names else -1
        self.si = names.index("scale")
        self.raw_level = xm[self.lv].copy() if self.lv >= 0 else None
        self.hists = [np.fromiter(st.slow[f], float, p.slow_windows) for f in slow_f]
        self.scale_segs = [(0, self.robs[self.si].med)]  # (first window, scale median in effect from it)
        if self.lv >= 0:
            self._level_values()
        for j, f in enumerate(slow_f):
            if f != "level":
                self._slow_means(j)
        cur = np.array([[r.med for r in self.robs], [r.hi for r in self.robs], [r.lo for r in self.robs]])
        self.stat = np.repeat(cur[:, :, None], L, axis=2)
        self.floors = np.array([r.floor for r in self.robs])
        self.margins = np.array([r.margin for r in self.robs])
        # per term: (admissions before it, window it follows, med, hi, lo) of each refresh computed
        self.done: list[list[tuple[int, int, float, float, float]]] = [[] for _ in self.robs]

    def _slow_means(self, j: int, first: int = 0) -> None:
        row = self.xm[self.names.index(self.slow_f[j])]
        self.xm[self.P + j, first:] = slow_means(self.hists[j], row, first)

    def _level_values(self) -> None:
        """``level`` and its slow mean from the latest scale segment on (the earlier ones are done)."""
        s0, m = self.scale_segs[-1]
        if s0 < self.L:
            self.xm[self.lv, s0:] = self.raw_level[s0:] / max(math.exp(m), TINY)
            for j, f in enumerate(self.slow_f):
                if f == "level":
                    self._slow_means(j, s0)

    def _schedule(self) -> dict[int, list[Refresh]]:
        """Refresh rounds: round ``k`` holds each term's ``k``-th refresh; level's wait for scale's."""
        every, L, j0, P = self.p.refresh_every, self.L, self.j0, self.P
        evs = [_refreshes(r.pending, every, L, 0) if t < P else _refreshes(r.pending, every, L - j0, j0)
               for t, r in enumerate(self.robs)]
        scale_ws = [w for _, w in evs[self.si]]
        rounds: dict[int, list[Refresh]] = {}
        for t, ev in enumerate(evs):
            dep = t == self.lv or (t >= P and self.slow_f[t - P] == "level")
            rnd = -1
            for k, (i, w) in enumerate(ev):
                rnd = max(rnd + 1, sum(1 for ws in scale_ws if ws < w)) if dep else k
                rounds.setdefault(rnd, []).append((t, i, w))
        return rounds

    def refresh(self) -> None:
        """Every refresh of the run, round by round, into ``stat`` from the window after it on."""
        rounds = self._schedule()
        if not rounds:
            return
        size, thr, robs = self.p.stats_windows, self.p.raise_threshold, self.robs
        T, P, L, j0 = len(robs), self.P, self.L, self.j0
        held = [min(r.count, size) for r in robs]
        bufs = np.stack([r.buf for r in robs])
        # each term's values in admission order, right-aligned: the newest at column size - 1
        order = (np.array([r.pos for r in robs])[:, None] + np.arange(size)[None, :]) % size
        ring = np.take_along_axis(bufs, order, axis=1)
        for rnd in sorted(rounds):
            ev = rounds[rnd]
            wins = winsorise(self.xm, self.stat[0], self.stat[1], self.stat[2], thr)
            if 0 < j0 < L and T > P:  # slow rows: admitted values from window j0 on, as admission order
                wins[P:, : L - j0] = wins[P:, j0:]
            ext = np.concatenate((ring, wins), axis=1)
            groups: dict[int, list[Refresh]] = {}
            for t, i, w in ev:  # the last min(held + i, size) admitted values end at column size + i
                groups.setdefault(min(held[t] + i, size), []).append((t, i, w))
            for nv, gev in groups.items():
                self._refresh_group(ext, nv, gev)
            if self.lv >= 0 and any(e[0] == self.si for e in ev):
                self._level_values()

    def _refresh_group(self, ext: np.ndarray, nv: int, gev: list[Refresh]) -> None:
        """The refreshes ``gev`` over ``nv`` values each, from ``ext`` (each term's admitted values
        before the run, then its winsorised values in the run), in one stacked call."""
        size, L = self.p.stats_windows, self.L
        ts = np.array([e[0] for e in gev])
        view = np.ndarray((len(self.robs), size + L - nv + 1, nv), ext.dtype, ext, 0, (ext.strides[0], 8, 8))
        v = view[ts, np.array([size + e[1] - nv for e in gev])]
        p = self.p
        new = np.stack(robust_stats(v, p.tail_quantile, self.floors[ts], self.margins[ts], p.raise_threshold))
        later = np.arange(L)[None, :] > np.array([e[2] for e in gev])[:, None]
        self.stat[:, ts] = np.where(later[None], new[:, :, None], self.stat[:, ts])
        for (t, i, w), mm, hh, ll in zip(gev, *new.tolist()):
            self.done[t].append((i, w, mm, hh, ll))
            if t == self.si:
                self.scale_segs.append((w + 1, mm))

    def scores(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(score, term -> z) of each window of the run."""
        med, hi, lo = self.stat
        zt = dict(zip(self.rows, zscore(self.xm - med, hi, lo, self.p.cap)))
        return window_scores(zt, self.p)[1], zt

    def commit(self, st: StreamState, b: Batch, a: int, n: int, sc: np.ndarray, zt: dict[str, np.ndarray]) -> None:
        """Commit windows ``[a, a + n)``: outputs, slow deques, admissions and the refreshes among them."""
        record_quiet_run(st, b, a, n, sc, zt, self.p.n)
        for f in self.slow_f:
            st.slow[f].extend(self.xm[self.names.index(f), :n].tolist())
        med, hi, lo = self.stat[:, :, :n]
        wins = winsorise(self.xm[:, :n], med, hi, lo, self.p.raise_threshold)
        for t, r in enumerate(self.robs):
            first = 0 if t < self.P else self.j0
            if n <= first:
                continue
            r.extend(wins[t, first:n])
            used = [e for e in self.done[t] if e[1] < n]
            if used:
                i, _, r.med, r.hi, r.lo = used[-1]
                r.pending = n - first - i
