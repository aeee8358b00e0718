"""The reference step of the alert engine: one stream's windows one at a time, every rule (pure Python;
the engine runs it compiled, :mod:`pipeline.monitor.alerts.steppass`, held to this one bit for bit).

:class:`Cursor` loads a stream's slot (:mod:`pipeline.monitor.alerts.slots`) into Python values, runs
:meth:`Cursor.step` per window and writes the slot back. It is the path of every window the
quiet runs (:mod:`pipeline.monitor.alerts.runpass`, :mod:`pipeline.monitor.alerts.runs`) do not take:
warm-up (statistics refreshed after every admitted value), hot windows, open alerts, rewinds and
non-finite inputs; a stream goes back to the runs as soon as they can take it
(:meth:`Cursor.runnable`). The engine steps the streams of a call in lockstep with ``Cursor.defer``
set, and :func:`refresh_many` takes their due refreshes together (one
:func:`~pipeline.monitor.alerts.terms.robust_stats` call per number of values).
``tests/test_alerts_reference.py`` checks it, and the engine as a whole, against the engine before
the slots (a copy kept in the tests).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.slots import SlotTable
from pipeline.monitor.alerts.terms import TINY, robust_stats, stored_one

_RES, _ERR = 0, 1  # residual and error are the first two columns (scoring.Scoring.build)
_STATE = ("below", "cooldown", "in_alert", "quiet", "fast_below", "alert_start", "alert_end")


class Cursor:
    """One stream's state as Python values while its windows go through :meth:`step` in order."""

    def __init__(self, p: Scoring, tab: SlotTable, slot: int, stream: str, window: int, ts: float):
        self.p, self.tab, self.slot, self.stream, self.window, self.ts = p, tab, slot, stream, window, ts
        self.scale, self.level = p.col("scale"), p.col("level")
        self.count = tab.count[slot].tolist()
        self.pending = tab.pending[slot].tolist()
        self.med, self.hi, self.lo = tab.med[slot].tolist(), tab.hi[slot].tolist(), tab.lo[slot].tolist()
        self.ring = tab.ring[slot]
        sw = p.slow_windows
        self.slow_n = tab.slow_n[slot].tolist()
        self.slow = []
        for q, n in enumerate(self.slow_n[: len(p.slow)]):
            k = min(n, sw)
            self.slow.append(deque(tab.slow[slot, (np.arange(n - k, n) % sw), q].tolist(), maxlen=sw))
        self.has_last, self.last_start = bool(tab.has_last[slot]), int(tab.last_start[slot])
        # the raise threshold: the setting, or the stream's calibrated one above it (sequential.py)
        self.thr = max(p.raise_threshold, float(tab.seq_thr[slot]))
        k = int(tab.rec_len[slot])
        self.recent = deque(zip(tab.rec_start[slot, p.n - k :].tolist(), tab.rec_score[slot, p.n - k :].tolist(),
                                tab.rec_hot[slot, p.n - k :].tolist()))
        self.active, self.range_done = bool(tab.active[slot]), bool(tab.range_done[slot])
        self.alert_peak = float(tab.alert_peak[slot])
        for name in _STATE:
            setattr(self, name, int(getattr(tab, name)[slot]))
        # defer: the columns due for a refresh are left in ``due`` for refresh_many (several streams' refreshes
        # in one robust_stats call) instead of being refreshed at the end of the step
        self.defer, self.due = False, []

    def store(self) -> None:
        """Write the state back into the slot."""
        tab, s, p = self.tab, self.slot, self.p
        tab.count[s], tab.pending[s] = self.count, self.pending
        tab.med[s], tab.hi[s], tab.lo[s] = self.med, self.hi, self.lo
        sw = p.slow_windows
        for q, d in enumerate(self.slow):
            n = self.slow_n[q]
            if d:
                tab.slow[s, np.arange(n - len(d), n) % sw, q] = list(d)
        tab.slow_n[s] = self.slow_n
        tab.has_last[s], tab.last_start[s] = self.has_last, self.last_start
        k = len(self.recent)
        tab.rec_len[s] = k
        if k:
            st, sc, hot = zip(*self.recent)
            tab.rec_start[s, p.n - k :], tab.rec_score[s, p.n - k :], tab.rec_hot[s, p.n - k :] = st, sc, hot
        tab.active[s], tab.range_done[s], tab.alert_peak[s] = self.active, self.range_done, self.alert_peak
        for name in _STATE:
            getattr(tab, name)[s] = getattr(self, name)

    # ---------------------------------------------------------------------------------- step
    def step(self, start: int, finite: bool, values: list[float], cols: list[int], log_err: float,
             z: list[float]) -> tuple[float, AlertEvent | None]:
        """Score one window (``values`` of columns ``cols``; its z values into ``z``, one per column) and
        advance the state machine and the statistics by it; returns ``(score, event or None)``."""
        if self.has_last and start <= self.last_start:
            self.recent.clear()  # rewind: a new segment, a new debounce history
        self.has_last, self.last_start = True, start
        ready = self.count[_RES] >= self.p.min_windows
        if finite:
            admit, fast, score = self._score(values, cols, log_err, ready, z)
        else:
            admit, fast, score = [], 0.0, 0.0
        hot = ready and score >= self.thr
        event = self._advance(start, score, fast, hot)
        if finite:
            self._adapt(admit, hot)
        return score, event

    def _score(self, values: list[float], cols: list[int], log_err: float, ready: bool,
               z: list[float]) -> tuple[list[tuple[int, float]], float, float]:
        """The window's z values into ``z``; returns ``(values to admit, fast, score)``: ``fast`` the
        largest |z| of the per-window voters, ``score`` that of all voters (residual gated by error)."""
        p, count, med, hi, lo = self.p, self.count, self.med, self.hi, self.lo
        cap, min_w, prior = p.cap, p.min_windows, p.prior
        prior_z = max(0.0, (log_err - prior[0]) / prior[1]) if prior is not None else 0.0
        admit = []
        for c, x in zip(cols, values):
            if c == self.level:  # in units of the stream's median scale
                if count[self.scale] < min_w:
                    continue
                x = stored_one(x / max(math.exp(med[self.scale]), TINY))
            admit.append((c, x))
            if count[c] < min_w:
                if c != _RES:
                    continue
                zc = prior_z
            else:
                d = x - med[c]
                zc = d / hi[c] if d >= 0 else d / lo[c]
                if c == _RES and count[c] < p.warmup_windows and zc > 0 and prior is not None:
                    zc = min(zc, prior_z)
            z[c] = min(max(zc, -cap), cap)
        if p.slow:
            have = dict(admit)
            for q, (f, t) in enumerate(p.slow):
                if f not in have:
                    continue
                d = self.slow[q]
                d.append(have[f])
                self.slow_n[q] += 1
                if len(d) == p.slow_windows:
                    x = stored_one(sum(d) / len(d))
                    admit.append((t, x))
                    if count[t] >= p.slow_min:
                        dd = x - med[t]
                        z[t] = min(max(dd / hi[t] if dd >= 0 else dd / lo[t], -cap), cap)
        zr = z[_RES]
        if ready and zr > 0:
            zr = min(zr, max(z[_ERR], 0.0))
        fast = abs(zr)
        for t in p.votes:
            fast = max(fast, abs(z[t]))
        score = fast
        for t in p.slow_votes:
            score = max(score, abs(z[t]))
        return admit, fast, min(score, cap)

    def _advance(self, s: int, sc: float, fast: float, hot: bool) -> AlertEvent | None:
        """The alert state machine on one window: raise (k of n hot), resolve (hysteresis), cooldown."""
        p, recent = self.p, self.recent
        recent.append((s, sc, hot))
        if len(recent) > p.n:
            recent.popleft()
        if self.active:
            self.in_alert += 1
            # The range follows the per-window evidence until it has resolved by the same rule
            # (resolve_windows windows below the resolve threshold); a slow term's mean lags the
            # anomaly by up to slow_windows and only keeps the alert up.
            self.fast_below = 0 if fast >= p.resolve_threshold else self.fast_below + 1
            if self.fast_below == 0 and not self.range_done:
                self.alert_end = max(self.alert_end, s + self.window)
            elif self.fast_below >= p.resolve_windows:
                self.range_done = True
            if sc >= p.resolve_threshold:
                self.below = 0
                self.alert_peak = max(self.alert_peak, sc)
                return None
            self.below += 1
            if self.below < p.resolve_windows:
                return None
            self.active = False
            self.cooldown = p.cooldown_windows
            recent.clear()
            return AlertEvent("resolved", self.stream, self.alert_start, self.alert_end, float(self.alert_peak),
                              p.resolve_threshold, p.model_version, self.ts)
        if self.cooldown > 0:
            self.cooldown -= 1
            return None
        if not hot:
            return None
        trig = [r for r in recent if r[2]]
        if len(trig) < p.k:
            return None
        self.active, self.range_done = True, False
        self.alert_start, self.alert_end = trig[0][0], trig[-1][0] + self.window
        self.alert_peak = max(r[1] for r in trig)
        self.below = self.in_alert = self.fast_below = 0
        return AlertEvent("raised", self.stream, self.alert_start, self.alert_end, float(self.alert_peak),
                          self.thr, p.model_version, self.ts)

    def _adapt(self, admit: list[tuple[int, float]], hot: bool) -> None:
        """Admit a finite window's values: outside alerts when it is not hot, and a trickle during alerts."""
        p = self.p
        if self.active:
            ok = bool(p.alert_admit_every) and self.in_alert > 0 and self.in_alert % p.alert_admit_every == 0
        else:
            ok = not hot
        self.quiet = 0 if (self.active or hot) else self.quiet + 1
        if not ok:
            return
        # A slow value averages the last slow_windows windows: admit it only when none of them was
        # anomalous (else the tail of each anomaly teaches the statistics that the anomaly is normal),
        # or once an alert has outlasted two slow windows (a new regime).
        slow_ok = self.quiet >= p.slow_windows or (self.active and self.in_alert >= 2 * p.slow_windows)
        count, pending, med, hi, lo, ring = self.count, self.pending, self.med, self.hi, self.lo, self.ring
        size, thr, every, warm = p.stats_windows, p.raise_threshold, p.refresh_every, p.warmup_windows
        due = []
        for c, x in admit:
            if c >= p.features and not slow_ok:
                continue
            n = count[c]
            if n >= p.min_windows:  # winsorise at the raise threshold: one extreme value cannot stretch the tails
                x = min(max(x, med[c] - thr * lo[c]), med[c] + thr * hi[c])
            ring[n % size, c] = x
            count[c] = n + 1
            pending[c] += 1
            if n + 1 <= warm or pending[c] >= every:
                due.append(c)
        if due:
            if self.defer:
                self.due = due
            else:
                self._refresh(due)

    def runnable(self, cols: list[int], start: int, finite: bool) -> bool:
        """Whether the quiet runs (:func:`~pipeline.monitor.alerts.runs.quiet_runs`) can take the stream from
        its next window (``start``, ``finite``) on: the conditions of the engine's ``_runs``."""
        p, count = self.p, self.count
        if self.active or not finite or (self.has_last and start <= self.last_start):
            return False
        if any(count[c] < p.warmup_windows for c in cols):
            return False
        return all(self.slow_n[q] >= p.slow_windows and count[t] >= p.slow_min
                   for q, (f, t) in enumerate(p.slow) if f in cols)

    def _refresh(self, cols: list[int]) -> None:
        """Recompute the median and spreads of columns ``cols`` from their values (one call per length)."""
        p, size = self.p, self.p.stats_windows
        groups: dict[int, list[int]] = {}
        for c in cols:
            groups.setdefault(min(self.count[c], size), []).append(c)
        for n, cs in groups.items():
            v = np.ascontiguousarray(self.ring[:n, cs].T)
            med, hi, lo = robust_stats(v, p.tail_quantile, p.floors[cs], p.margins[cs], p.raise_threshold)
            for c, m, h, l in zip(cs, med.tolist(), hi.tolist(), lo.tolist()):
                self.med[c], self.hi[c], self.lo[c], self.pending[c] = m, h, l, 0


def refresh_many(p: Scoring, cursors: list[Cursor]) -> None:
    """The deferred refreshes (``Cursor.due``) of several cursors, one :func:`robust_stats` call per number
    of values: the same statistics as each cursor's own :meth:`Cursor._refresh` (every row is its own),
    in fewer calls when streams step together (streams that started together warm up together)."""
    size = p.stats_windows
    groups: dict[int, list[tuple[Cursor, list[int]]]] = {}
    for cur in cursors:
        if not cur.due:
            continue
        per: dict[int, list[int]] = {}
        for c in cur.due:
            per.setdefault(min(cur.count[c], size), []).append(c)
        for n, cs in per.items():
            groups.setdefault(n, []).append((cur, cs))
        cur.due = []
    for n, items in groups.items():
        if len(items) == 1:
            cur, cs = items[0]
            v = np.ascontiguousarray(cur.ring[:n, cs].T)
            fc = cs
        else:
            v = np.concatenate([cur.ring[:n, cs].T for cur, cs in items])
            fc = [c for _, cs in items for c in cs]
        med, hi, lo = robust_stats(v, p.tail_quantile, p.floors[fc], p.margins[fc], p.raise_threshold)
        med, hi, lo = med.tolist(), hi.tolist(), lo.tolist()
        r = 0
        for cur, cs in items:
            for c in cs:
                cur.med[c], cur.hi[c], cur.lo[c], cur.pending[c] = med[r], hi[r], lo[r], 0
                r += 1


def step_spans(p: Scoring, tab: SlotTable, spans, window: int, ts: float, starts, finite, vals, cols, log_err, score,
               act, z, events: list, ev_win: list, until_runnable: bool = False) -> list[int]:
    """Windows ``[a, b)`` of each ``(stream, slot, a, b)`` of ``spans`` through :meth:`Cursor.step`. The
    streams step together (window ``a + t`` of every stream, then ``a + t + 1``), so the refreshes due
    after a step are taken for all of them at once (:func:`refresh_many`); each stream's windows stay
    in order and its events are listed in the order of ``spans``. ``until_runnable``: a stream stops
    after a window from which the quiet runs could take it (:meth:`Cursor.runnable`). Returns the windows
    stepped per span."""
    T = len(p.cols)
    curs, todo = [], []
    for stream, slot, a, b in spans:
        cur = Cursor(p, tab, slot, stream, window, ts)
        cur.defer = True
        curs.append(cur)
        todo.append([cur, a, b, vals[:, a:b].T.tolist(), [], [], []])
    for t in range(max(b - a for _, _, a, b in spans)):
        for item in todo:
            cur, a, b, xs, rows, evs, evw = item
            i = a + t
            if i >= b:
                continue
            zi = [0.0] * T
            score[i], ev = cur.step(int(starts[i]), bool(finite[i]), xs[t], cols, float(log_err[i]), zi)
            act[i] = cur.active
            rows.append(zi)
            if ev is not None:
                evs.append(ev)
                evw.append(i)
            if until_runnable and i + 1 < b and cur.runnable(cols, int(starts[i + 1]), bool(finite[i + 1])):
                item[2] = i + 1  # the rest is the runs' again
        refresh_many(p, curs)
    for cur, a, b, xs, rows, evs, evw in todo:
        z[:, a:b] = np.array(rows).T
        cur.store()
        events.extend(evs)
        ev_win.extend(evw)
    return [b - a for _, a, b, *_ in todo]
