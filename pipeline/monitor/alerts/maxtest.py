"""A per-window maximum against the stream's own calibrated extreme-value threshold, with its alert
(numpy; the calibration compiled): the part the raw-sample tests share (the record outlier test,
``outliers.py``, and the isolated-sample test, ``isolated.py``).

Each window brings one statistic ``z``, a maximum over its new samples. Its upper tail is taken as a
Gumbel law fitted per stream to the running mean and std of its quiet windows' ``z`` (those below the
threshold; plain averages over the first ``calib_memory`` windows, then that memory; moved once per
block of the plan's ``block`` windows of the stream, counted from its first window, so the decisions do not
depend on how the worker's micro-batches cut the stream): the threshold is its quantile at the test's
share of ``false_alarms_per_hour``, per window, never below the test's floor, and infinite until
``calib_after`` quiet windows have calibrated it.

Decision. The first hot window (``z >= threshold``) raises (the test's detector name; its range: the
window's new samples), unless the test's alert is up or in cooldown; the alert extends while windows
are hot and resolves after ``resolve_windows`` windows that are not, then ``cooldown_windows``
windows raise nothing.

State: one float64 row per stream in the engine's slots; columns ``POS`` to ``COOL`` below (counts and
sample indices exact in float64), the first ``OWN`` columns left to the statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.monitor.alerts.cusum import U_MAX, ew_weight, ew_weight_one, exact
from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.jit import kernel
from pipeline.monitor.alerts.tail import gumbel_c

# The record outlier test's calibration moves once per block of this many windows of a stream (1 s at
# 1 kHz, hop 128); the isolated-sample test's per sequential block (its per-block work is a Python
# loop over the blocks of a call: 8 times fewer at 64).
BLOCK = 8
# Columns of a stream's row: the statistic's own (OWN of them), then windows seen; the calibration's
# count and moments of quiet windows' z, and the current block's sums of them; the alert (up, range,
# peak, windows below, cooldown).
OWN = 3
POS, ZN, ZM, Z2, ZQN, ZQ1, ZQ2, ACT, A0, A1, PEAK, BELOW, COOL = range(OWN, OWN + 13)
FIELDS = COOL + 1


@dataclass(frozen=True)
class MaxPlan:
    floor: float  # the threshold's floor
    calib_after: int  # quiet windows before the stream's own tail calibrates the threshold
    calib_memory: int  # windows in the exponential memory of that calibration
    gumbel_c: float  # sds above the mean of a Gumbel fit at the test's per-window share
    resolve_windows: int
    cooldown_windows: int
    block: int = BLOCK  # windows of a stream per move of the calibration

    @classmethod
    def build(cls, cfg, floor: float, p_win: float, block: int = BLOCK) -> MaxPlan:
        """``p_win``: the test's share of ``false_alarms_per_hour``, per window."""
        return cls(float(floor), int(cfg.warmup_windows), int(cfg.sequential_memory), gumbel_c(p_win),
                   int(cfg.resolve_windows), int(cfg.cooldown_windows), int(block))


def blocks(S: np.ndarray, seg: np.ndarray, first: np.ndarray, n_u: np.ndarray,
           block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per window of the call (windows ``first[u] .. first[u] + n_u[u]`` are stream ``u``'s): the
    stream's windows before it, and its block counted from the stream's first block in the call."""
    pos0 = S[:, POS].astype(np.int64)
    pos = pos0[seg] + (np.arange(seg.size) - np.repeat(first, n_u))
    return pos, pos // block - (pos0 // block)[seg]


class MaxTest:
    """Calibration and alert of one test over the windows of an engine call."""

    def __init__(self, plan: MaxPlan, detector: str):
        self.plan, self.detector = plan, detector
        self.compiled = True  # False: :meth:`calibrate` in numpy array operations (tests compare the two)

    def decide(self, S, ids, first, n_u, seg, pos, blk, starts, window, bn, z, warm, ts, model_version, events,
               ev_win) -> None:
        """:meth:`calibrate`, count the call's windows into ``POS``, then :meth:`alerts` (``S`` updated)."""
        thr = self._compiled(S, first, n_u, pos, z, warm) if self.compiled else self.calibrate(S, seg, pos, blk, z, warm)
        S[:, POS] += n_u
        self.alerts(S, ids, first, n_u, seg, starts, window, bn, z, thr, ts, model_version, events, ev_win)

    def warm(self) -> None:
        """Compile (or load from numba's cache) :func:`_calibrate` with a call of no windows."""
        e = np.zeros(0, dtype=np.int64)
        self._compiled(np.zeros((0, FIELDS)), e, e, e, np.zeros(0), np.zeros(0, dtype=bool))

    def _compiled(self, S, first, n_u, pos, z, warm) -> np.ndarray:
        """:meth:`calibrate` by :func:`_calibrate` (``S`` updated in place)."""
        P, B = self.plan, self.plan.block
        zc = exact(z, U_MAX, B)
        thr = np.empty(z.size)

        def c(a, dtype):  # one signature for every call
            return np.ascontiguousarray(a, dtype=dtype)

        _calibrate(S, c(first, np.int64), c(n_u, np.int64), c(pos, np.int64), zc, exact(zc * zc, U_MAX * U_MAX, B),
                   c(z, np.float64), c(warm, np.bool_), int(B), int(P.calib_after), int(P.calib_memory),
                   float(P.floor), float(P.gumbel_c), thr)
        return thr

    def calibrate(self, S, seg, pos, blk, z, warm) -> np.ndarray:
        """Per window its threshold (inf until the stream is calibrated): the Gumbel quantile of the
        quiet windows' z as it stood at the start of the window's block, never below the floor; the
        quiet windows of each block move it when the block closes (``S`` updated)."""
        P, U = self.plan, S.shape[0]
        R = int(blk.max()) + 1
        B = P.block
        zc = exact(z, U_MAX, B)  # on a grid: the block's sums exact in any order
        zc2 = exact(zc * zc, U_MAX * U_MAX, B)
        zn, zm, z2 = S[:, ZN].copy(), S[:, ZM].copy(), S[:, Z2].copy()
        qn, q1, q2 = S[:, ZQN].copy(), S[:, ZQ1].copy(), S[:, ZQ2].copy()
        thr = np.empty(z.size)
        order = np.argsort(blk, kind="stable") if R > 1 else None
        bounds = np.searchsorted(blk[order], np.arange(R + 1)) if R > 1 else (0, z.size)
        closes = (pos % B == B - 1)
        for k in range(R):
            w = slice(None) if order is None else order[bounds[k] : bounds[k + 1]]
            t = np.where(zn >= P.calib_after,
                         np.maximum(P.floor, zm + P.gumbel_c * np.sqrt(np.maximum(z2 - zm * zm, 0.0))), np.inf)
            sw = seg[w]
            tw = np.where(warm[w], t[sw], np.inf)
            thr[w] = tw
            quiet = warm[w] & (z[w] < tw)
            qn = qn + np.bincount(sw, weights=quiet, minlength=U)
            q1 = q1 + np.bincount(sw, weights=np.where(quiet, zc[w], 0.0), minlength=U)
            q2 = q2 + np.bincount(sw, weights=np.where(quiet, zc2[w], 0.0), minlength=U)
            c = np.zeros(U, dtype=bool)
            c[sw[closes[w]]] = True
            if c.any():
                n1 = zn + qn
                g = np.where(c & (qn > 0), ew_weight(qn, n1, P.calib_memory), 0.0)
                qs = np.maximum(qn, 1.0)
                zm, z2, zn = zm + g * (q1 / qs - zm), z2 + g * (q2 / qs - z2), np.where(c, n1, zn)
                qn, q1, q2 = np.where(c, 0.0, qn), np.where(c, 0.0, q1), np.where(c, 0.0, q2)
        S[:, ZN], S[:, ZM], S[:, Z2], S[:, ZQN], S[:, ZQ1], S[:, ZQ2] = zn, zm, z2, qn, q1, q2
        return thr

    def alerts(self, S, ids, first, n_u, seg, starts, window, bn, z, thr, ts, model_version, events,
               ev_win) -> None:
        """The alert state machine: window by window, but only for streams with a hot window in the
        call or an alert up; the others only count their cooldown down. ``bn``: each window's new
        samples (the raised range)."""
        P, hot = self.plan, z >= thr
        busy = (np.bincount(seg, weights=hot, minlength=S.shape[0]) > 0) | (S[:, ACT] > 0)
        if S[:, COOL].any():
            S[~busy, COOL] = np.maximum(S[~busy, COOL] - n_u[~busy], 0.0)
        for u in np.flatnonzero(busy).tolist():
            act, a0, a1, peak, below, cool = (bool(S[u, ACT] > 0), int(S[u, A0]), int(S[u, A1]), float(S[u, PEAK]),
                                              int(S[u, BELOW]), int(S[u, COOL]))
            for i in range(int(first[u]), int(first[u] + n_u[u])):
                end = int(starts[i]) + window
                if act:
                    if hot[i]:
                        a1, peak, below = end, max(peak, float(z[i])), 0
                        continue
                    below += 1
                    if below < P.resolve_windows:
                        continue
                    ev = AlertEvent("resolved", ids[u], a0, a1, peak, float(thr[i]), model_version, ts, self.detector)
                    act, cool, below = False, P.cooldown_windows, 0
                elif cool > 0:
                    cool -= 1
                    continue
                elif hot[i]:
                    a0, a1, peak, below, act = end - int(bn[i]), end, float(z[i]), 0, True
                    ev = AlertEvent("raised", ids[u], a0, a1, peak, float(thr[i]), model_version, ts, self.detector)
                else:
                    continue
                events.append(ev)
                ev_win.append(i)
            S[u, ACT : COOL + 1] = (float(act), a0, a1, peak, below, cool)


@kernel
def _calibrate(S, first, n_u, pos, zc, zc2, z, warm, B, calib_after, memory, floor, gc, thr) -> None:
    """:meth:`MaxTest.calibrate` compiled, each stream's windows in order (the same arithmetic: the
    block sums exact on :func:`~pipeline.monitor.alerts.cusum.exact`'s grid ``zc``, ``zc2``, so bit for
    bit): ``thr`` per window, ``S`` updated."""
    for u in range(first.size):
        zn, zm, z2, qn, q1, q2 = S[u, ZN], S[u, ZM], S[u, Z2], S[u, ZQN], S[u, ZQ1], S[u, ZQ2]
        t = max(floor, zm + gc * math.sqrt(max(z2 - zm * zm, 0.0))) if zn >= calib_after else np.inf
        for i in range(first[u], first[u] + n_u[u]):
            tw = t if warm[i] else np.inf
            thr[i] = tw
            if warm[i] and z[i] < tw:
                qn += 1.0
                q1 += zc[i]
                q2 += zc2[i]
            if pos[i] % B == B - 1:  # the block closes: the calibration moves
                n1 = zn + qn
                if qn > 0:
                    g = ew_weight_one(qn, n1, memory)
                    qs = max(qn, 1.0)
                    zm, z2 = zm + g * (q1 / qs - zm), z2 + g * (q2 / qs - z2)
                zn, qn, q1, q2 = n1, 0.0, 0.0, 0.0
                t = max(floor, zm + gc * math.sqrt(max(z2 - zm * zm, 0.0))) if zn >= calib_after else np.inf
        S[u, ZN], S[u, ZM], S[u, Z2], S[u, ZQN], S[u, ZQ1], S[u, ZQ2] = zn, zm, z2, qn, q1, q2
