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

Threshold, false-alarm model and decision (:mod:`pipeline.monitor.alerts.maxtest`, shared with the
isolated-sample test). ``z`` is a maximum, so its upper tail is taken as a Gumbel law fitted per
stream to its quiet windows' ``z``: the threshold is its quantile at this test's share of
``false_alarms_per_hour`` (one test's equal share with the sequential tests, per window), never below
``outlier_z``. A heavy-tailed stream (knocks, R peaks) gets a threshold above its own extremes; a
Gaussian one stays at ``outlier_z`` (7: probability 2.6e-12 per sample; NAB's optimiser picks ~7.2
for the windowed Gaussian). The test votes once ``min_windows`` windows' worth of samples are merged
and ``warmup_windows`` quiet windows calibrate the threshold (young statistics raised the false alarms
measured on knocking signals). A hot window raises (detector ``"outlier"``; its range: the window's
new samples), independent of the window score's alert and of the sequential tests'.

Cost: one pass over each window's new samples for their moments and extremes
(:func:`record_features`, with the other window features); per call one gather and one write of the
streams' state rows, every window's ``z`` in one pass, and a loop over the blocks a call spans per
stream (most calls: one or two), each a few array operations over the streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.maxtest import BLOCK, FIELDS, MaxPlan, MaxTest, blocks

# The features record_features adds to the window features.
FEATURES = ("outlier_n", "outlier_mean", "outlier_var", "outlier_max", "outlier_min")
DETECTOR = "outlier"
# The estimates move once per block of maxtest.BLOCK windows of a stream (as its calibration does).
# The columns of a stream's state row: samples merged, their exponential mean and variance; the
# calibration and alert of maxtest (its columns POS to COOL); the current block's per-window sample
# counts, means and variances.
NS, MEAN, VAR = range(3)
RING = FIELDS
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
    memory: float  # samples (time steps) in the exponential memory of the mean and variance
    warmup: float  # samples seen before the test votes: min_windows windows' worth
    max: MaxPlan  # the threshold (floor: outlier_z) and the alert

    @classmethod
    def build(cls, cfg, hop: int, p_win: float) -> OutlierPlan | None:
        """``p_win``: the test's share of ``false_alarms_per_hour``, per window."""
        if not outlier_tests(cfg):
            return None
        return cls(float(cfg.outlier_memory), float(cfg.min_windows * hop), MaxPlan.build(cfg, cfg.outlier_z, p_win))


class OutlierTest:
    """The test over the windows of one engine call. Its state lives in the engine's slots, one row of
    floats per stream (``out`` of :func:`pipeline.monitor.alerts.slots.record_dtype`; the columns
    below, counts and sample indices exact in float64), gathered once per call and written back once."""

    def __init__(self, plan: OutlierPlan):
        self.plan = plan
        self._max = MaxTest(plan.max, DETECTOR)

    def warm(self, window: int, hop: int) -> None:
        """Compile (or load) the calibration now."""
        self._max.warm()

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
        pos, blk = blocks(S, seg, first, n_u)  # the stream's windows before each, and its block in the call
        F = [np.asarray(feats[k], dtype=np.float64).reshape(-1) for k in FEATURES]
        ok = np.isfinite(F[1] + F[2] + F[3] + F[4])  # inf - inf is nan: any non-finite makes the sum so
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mean, var, ns = self._moments(S, seg, pos, blk, first, n_u, F, ok)
            sd = np.maximum(np.sqrt(var), _STD_FLOOR * np.maximum(1.0, np.abs(mean)))
            warm = ok & (ns >= self.plan.warmup)
            z = np.where(warm, np.maximum(F[3] - mean, mean - F[4]) / sd, 0.0)
            self._max.decide(S, ids, first, n_u, seg, pos, blk, starts, window, F[0], z, warm, ts, model_version,
                             events, ev_win)
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
