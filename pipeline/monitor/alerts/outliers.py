"""The record outlier test: every new raw sample against the stream's long memory (pure numpy).

Off by default (``alerts.outlier_z`` 0): on the 1 kHz sensor sets it found nothing the other tests
miss and cost ~11 % of the worker's throughput; on for slow metrics (``outlier_z`` 7, the NAB
profile: NAB 27.6 -> 42.9). docs/alerts.md, "Record outlier test".

The window score and the sequential tests judge windows, each standardised by its own mean and
std before the model, against the spread of the stream's recent windows. A value far outside
everything the stream has shown for thousands of samples (a level jump on a slow business metric,
a sensor that leaps to a value it never had) can pass them: standardised, a window that jumped as
a whole looks like any other. This test looks at the raw values instead, the way NAB's windowed
Gaussian baseline does (``pipeline/tools/alert_eval/nab_baseline.py``; docs/alerts.md, "NAB").

Statistic. Per window, its last ``hop`` samples (the ones new since the window before; all channels
pooled; the first window's head is never tested) are tested against an exponential estimate of the
stream's mean and variance: ``z = max |x - mean| / std`` over those samples. The estimate moves once
per block of ``BLOCK`` windows of the stream (counted from its first window, so the decisions do not
depend on how the worker's micro-batches cut the stream), merging the block's samples exactly (the
pooled mean and variance of the old estimate, weight ``1 - b``, and the block, weight ``b``):
``b = n_block / n_seen`` while fewer than ``outlier_memory`` samples (time steps) have been seen (a
plain average), ``n_block / outlier_memory`` after. Every finite window is merged, hot or not: a new
level is learnt within about one memory (merging only quiet windows keeps a lasting shift alarming
for ever, and measured worse on NAB).

Threshold and false-alarm model. ``z`` is a maximum, so its upper tail is taken as a Gumbel law
fitted per stream to the running mean and std of its quiet windows' ``z`` (those below the
threshold; plain averages over the first ``sequential_memory`` windows, then that memory; moved
once per block): the threshold is its quantile at this test's share of ``false_alarms_per_hour``
(one test's equal share with the sequential tests, per window), never below ``outlier_z``. A
heavy-tailed stream (knocks, R peaks) gets a threshold above its own extremes; a Gaussian one
stays at ``outlier_z`` (7: probability 2.6e-12 per sample; NAB's optimiser picks ~7.2 for the
windowed Gaussian). The test votes once ``min_windows`` windows' worth of samples are merged and
``warmup_windows`` quiet windows calibrate the threshold (young statistics raised the false alarms
measured on knocking signals).

Decision. The first hot window (``z >= threshold``) raises (detector ``"outlier"``; its range: the
window's new samples), unless this test's alert is up or in cooldown; the alert extends while
windows are hot and resolves after ``resolve_windows`` windows that are not, then
``cooldown_windows`` windows raise nothing. Independent of the window score's alert and of the
sequential tests'.

Cost: one pass over each window's new samples for their moments and extremes
(:func:`record_features`, with the other window features); per call one gather and one write of the
streams' state rows, every window's ``z`` in one pass, and a loop over the blocks a call spans per
stream (most calls: one or two), each a few array operations over the streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.monitor.alerts.cusum import U_MAX, ew_weight, exact
from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.tail import gumbel_c

# The features record_features adds to the window features.
FEATURES = ("outlier_n", "outlier_mean", "outlier_var", "outlier_max", "outlier_min")
DETECTOR = "outlier"
# The estimates and the calibration move once per block of this many windows of a stream, counted
# from its first (so a stream's decisions do not depend on how its windows are cut into calls): 1 s at
# 1 kHz, hop 128; 256 rows on NAB (hop 32).
BLOCK = 8
# The columns of a stream's state row: samples merged, their exponential mean and variance, windows
# seen; the calibration's count and moments of quiet windows' z, and the current block's sums of
# them; the alert (up, range, peak, windows below, cooldown); the current block's per-window sample
# counts, means and variances.
NS, MEAN, VAR, POS, ZN, ZM, Z2, ZQN, ZQ1, ZQ2, ACT, A0, A1, PEAK, BELOW, COOL = range(16)
RING = 16
BN, BM, BV = (slice(RING + k * BLOCK, RING + (k + 1) * BLOCK) for k in range(3))
STATE_FIELDS = RING + 3 * BLOCK
# A stream whose samples have all been equal has std 0: any change is infinitely far; z is taken
# against this much instead (NAB's baseline uses 1e-6 too), relative to the level where it is large.
_STD_FLOOR = 1e-6


def record_features(windows: np.ndarray, tail: int) -> dict[str, np.ndarray]:
    """Per window ``(N, C, W)``: the number of its last ``tail`` samples (time steps) and their mean,
    variance, largest and smallest value over all channels (float64)."""
    x = np.asarray(windows)
    n, c, w = x.shape
    t = max(1, min(int(tail), w))
    blk = x[:, :, w - t:].reshape(n, c * t).astype(np.float64)
    if n == 0:
        return {k: np.zeros(0) for k in FEATURES}
    mean = blk.mean(axis=1)
    d = blk - mean[:, None]
    return {"outlier_n": np.full(n, float(t)), "outlier_mean": mean,
            "outlier_var": np.einsum("ij,ij->i", d, d) / (c * t),
            "outlier_max": blk.max(axis=1), "outlier_min": blk.min(axis=1)}


def outlier_tests(cfg) -> int:
    """1 when the settings turn the test on: its share of ``false_alarms_per_hour`` is one test's."""
    return 1 if cfg.enabled and cfg.outlier_z else 0


@dataclass(frozen=True)
class OutlierPlan:
    z: float  # the threshold's floor (outlier_z)
    memory: float  # samples (time steps) in the exponential memory of the mean and variance
    warmup: float  # samples seen before the test votes: min_windows windows' worth
    calib_after: int  # quiet windows before the stream's own tail calibrates the threshold
    calib_memory: int  # windows in the exponential memory of that calibration
    gumbel_c: float  # sds above the mean of a Gumbel fit at the test's per-window share
    resolve_windows: int
    cooldown_windows: int

    @classmethod
    def build(cls, cfg, hop: int, p_win: float) -> OutlierPlan | None:
        """``p_win``: the test's share of ``false_alarms_per_hour``, per window."""
        if not outlier_tests(cfg):
            return None
        return cls(float(cfg.outlier_z), float(cfg.outlier_memory), float(cfg.min_windows * hop),
                   int(cfg.warmup_windows), int(cfg.sequential_memory), gumbel_c(p_win),
                   int(cfg.resolve_windows), int(cfg.cooldown_windows))


class OutlierTest:
    """The test over the windows of one engine call. Its state lives in the engine's slots, one row of
    floats per stream (``out`` of :func:`pipeline.monitor.alerts.slots.record_dtype`; the columns
    below, counts and sample indices exact in float64), gathered once per call and written back once."""

    def __init__(self, plan: OutlierPlan):
        self.plan = plan

    def update(self, tab, ids: list[str], slots: np.ndarray, first: np.ndarray, n_u: np.ndarray,
               starts: np.ndarray, window: int, feats: dict[str, np.ndarray], ts: float, model_version: str,
               events: list[AlertEvent], ev_win: list[int]) -> None:
        """Windows ``first[u] .. first[u] + n_u[u]`` (call order) are stream ``ids[u]``'s, in order;
        ``feats``: :func:`record_features` of the call's windows. Appends events (and the index of the
        window that caused each) in stream order."""
        N, U = starts.size, slots.size
        if N == 0 or U == 0:
            return
        S = tab.out[slots]  # (streams, STATE_FIELDS), a copy
        seg = np.repeat(np.arange(U), n_u)
        pos0 = S[:, POS].astype(np.int64)
        pos = pos0[seg] + (np.arange(N) - np.repeat(first, n_u))  # the stream's windows before this one
        F = [np.asarray(feats[k], dtype=np.float64).reshape(-1) for k in FEATURES]
        ok = np.isfinite(F[1] + F[2] + F[3] + F[4])  # inf - inf is nan: any non-finite makes the sum so
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            blk = pos // BLOCK - (pos0 // BLOCK)[seg]  # the window's block, counted in this call
            mean, var, ns = self._moments(S, seg, pos, blk, first, n_u, F, ok)
            sd = np.maximum(np.sqrt(var), _STD_FLOOR * np.maximum(1.0, np.abs(mean)))
            warm = ok & (ns >= self.plan.warmup)
            z = np.where(warm, np.maximum(F[3] - mean, mean - F[4]) / sd, 0.0)
            thr = self._calibrate(S, seg, pos, blk, z, warm)
        S[:, POS] += n_u
        self._alerts(S, ids, first, n_u, seg, starts, window, F[0], z, thr, z >= thr, ts, model_version, events,
                     ev_win)
        tab.out[slots] = S

    def _moments(self, S, seg, pos, blk, first, n_u, F, ok) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per window: the mean, variance and samples merged as they stood at the start of its block; the
        blocks that close in the call move them (``S`` updated, with each stream's open block)."""
        P, U = self.plan, S.shape[0]
        R = int(blk.max()) + 1
        j = pos % BLOCK
        # every block of the call with its windows' sample counts, means and variances (the first block
        # of each stream with those of its earlier windows), pooled row by row: the same bits however
        # the block was cut into calls
        E = np.zeros((3, U, R, BLOCK))
        E[:, :, 0, :] = S[:, RING:].reshape(U, 3, BLOCK).transpose(1, 0, 2)
        for q in range(3):
            E[q, seg, blk, j] = np.where(ok, F[q], 0.0)
        end = j == BLOCK - 1
        closes = np.zeros((U, R), dtype=bool)
        closes[seg[end], blk[end]] = True
        n, m, v = E
        cnt = n.sum(axis=2)
        cs = np.maximum(cnt, 1.0)
        mu = (n * m).sum(axis=2) / cs
        vb = (n * (v + (m - mu[..., None]) ** 2)).sum(axis=2) / cs
        mean, var, ns = S[:, MEAN].copy(), S[:, VAR].copy(), S[:, NS].copy()
        at = np.empty((3, U, R))
        for k in range(R):
            at[0, :, k], at[1, :, k], at[2, :, k] = mean, var, ns
            c = closes[:, k] & (cnt[:, k] > 0)
            if c.any():  # the exact pooled moments of the estimate (weight 1 - b) and the block (b)
                tot = ns + cnt[:, k]
                b = np.where(c, cnt[:, k] / np.minimum(np.maximum(tot, 1.0), np.maximum(P.memory, cnt[:, k])), 0.0)
                d = mu[:, k] - mean
                mean, var, ns = mean + b * d, (1.0 - b) * (var + b * d * d) + b * vb[:, k], np.where(c, tot, ns)
        S[:, MEAN], S[:, VAR], S[:, NS] = mean, var, ns
        r = blk[first + n_u - 1]  # each stream's last block in the call: still open unless it closed
        u = np.arange(U)
        S[:, RING:] = np.where(closes[u, r][:, None], 0.0, E[:, u, r, :].transpose(1, 0, 2).reshape(U, 3 * BLOCK))
        return at[0, seg, blk], at[1, seg, blk], at[2, seg, blk]

    def _calibrate(self, S, seg, pos, blk, z, warm) -> np.ndarray:
        """Per window its threshold (inf until the stream is calibrated): the Gumbel quantile of the
        quiet windows' z as it stood at the start of the window's calibration block, never below
        ``outlier_z``; the quiet windows of each block move it when the block closes (``S`` updated)."""
        P, U = self.plan, S.shape[0]
        R = int(blk.max()) + 1
        zc = exact(z, U_MAX, BLOCK)  # on a grid: the block's sums exact in any order
        zc2 = exact(zc * zc, U_MAX * U_MAX, BLOCK)
        zn, zm, z2 = S[:, ZN].copy(), S[:, ZM].copy(), S[:, Z2].copy()
        qn, q1, q2 = S[:, ZQN].copy(), S[:, ZQ1].copy(), S[:, ZQ2].copy()
        thr = np.empty(z.size)
        order = np.argsort(blk, kind="stable") if R > 1 else None
        bounds = np.searchsorted(blk[order], np.arange(R + 1)) if R > 1 else (0, z.size)
        closes = (pos % BLOCK == BLOCK - 1)
        for k in range(R):
            w = slice(None) if order is None else order[bounds[k] : bounds[k + 1]]
            t = np.where(zn >= P.calib_after,
                         np.maximum(P.z, zm + P.gumbel_c * np.sqrt(np.maximum(z2 - zm * zm, 0.0))), np.inf)
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

    def _alerts(self, S, ids, first, n_u, seg, starts, window, bn, z, thr, hot, ts, model_version, events,
                ev_win) -> None:
        """The alert state machine: window by window, but only for streams with a hot window in the
        call or an alert up; the others only count their cooldown down."""
        P = self.plan
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
                    ev = AlertEvent("resolved", ids[u], a0, a1, peak, float(thr[i]), model_version, ts, DETECTOR)
                    act, cool, below = False, P.cooldown_windows, 0
                elif cool > 0:
                    cool -= 1
                    continue
                elif hot[i]:
                    a0, a1, peak, below, act = end - int(bn[i]), end, float(z[i]), 0, True
                    ev = AlertEvent("raised", ids[u], a0, a1, peak, float(thr[i]), model_version, ts, DETECTOR)
                else:
                    continue
                events.append(ev)
                ev_win.append(i)
            S[u, ACT : COOL + 1] = (float(act), a0, a1, peak, below, cool)
