"""The isolated-sample test: one sample that leaves its neighbours (pure numpy).

On by default (``alerts.isolated_z`` 5; 0 turns it off). docs/alerts.md, "Isolated-sample test".

The window score and the residual spike test judge a sample against the model's reconstruction, and
where the model misfits the stream's own impulsive events (knocks on a structure, clicks) by more than
a one-sample fault departs from it, a spike of 16 noise-std passes unseen (issue 15's ``impacts``
family: 0 of 32). A physical signal sampled fast enough is smooth over a few samples even in its
sharpest event: a knock rings for tens of samples, a step stays. A sample that leaves *both* sides at
once, while its neighbours agree, is what a single-sample fault looks like.

Statistic. For every new sample ``x_t`` of a window (its last ``hop`` samples, shifted ``K`` back so
that each has ``K`` neighbours on either side inside the window; per channel):
``z_t = |x_t - m_t| / sqrt(v_t + f^2)``, where ``m_t`` and ``v_t`` are the mean and variance of the
``2K`` neighbours (``x_t`` excluded) and ``f`` the window's robust noise scale (median of the
absolute first differences of the tested stretch / 0.954, the median of ``|N(0, 2)|``). A channel
at rest in the window (``f`` 0: most of its steps are 0, a quantised or stuck sensor) is not tested:
against no noise, one count of flicker would be infinitely far (the stuck-sensor, spike and record
outlier tests judge such streams). On white
noise ``z`` is about a standard normal over ``sqrt(2)``; on a smooth event ``v_t`` grows with it; a
lone sample of ``s`` noise-std over noise gives ``z ≈ s / sqrt(2)``. The window's statistic is the
largest ``z_t`` over its new samples and channels. ``K`` = 4: on the held-out families at 10 dB the
largest clean-window ``z`` in 2 stream-hours was 4.7 (impacts), 3.9 (chirp) and 4.6 (square), the
median of a 5-sd spike's 10.8, 8.3 and 9.8, and the Gumbel fit of the clean windows' ``z`` was
conservative at their 1e-4 quantile (``K`` = 2's tail is heavier than that fit).

Threshold, false-alarm model and decision: :mod:`pipeline.monitor.alerts.maxtest` (the stream's own
quiet windows' Gumbel quantile at this test's share of ``false_alarms_per_hour``, never below
``isolated_z``, moved once per ``sequential_block`` windows of the stream; detector ``"isolated"``,
the raised range the tested samples). The test votes after
``min_windows`` windows of the stream.

Cost: the robust scales in numpy (a partition per window and channel), the rest one compiled pass over
each window's new samples (:func:`_z_max`: float32, in units of the stretch's robust scale and about
its middle sample, so neither the units nor a large offset cost the noise its digits; numpy and
float64 only where float32 squares could overflow): ~0.9 µs per window at 512 windows per call, the
numpy form's 1.7 (docs/bench.md, "Compiled passes").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.jit import kernel
from pipeline.monitor.alerts.maxtest import FIELDS, MaxPlan, MaxTest, blocks

FEATURE = "isolated_z"
DETECTOR = "isolated"
K = 4  # neighbours on each side (_neighbour_sums assumes 4)
STATE_FIELDS = FIELDS
_MED_ABS_DIFF = 0.6744897501960817 * 2 ** 0.5  # median of |N(0, 2)|: |first difference| of unit white noise
_F32_SAFE = 1e17  # |u| below which the float32 sums of (2K)^2 squares stay finite
_DEN_FLOOR = (2 * K / _MED_ABS_DIFF) ** 2  # the noise floor's share of z^2's denominator


def samples_tested(window: int, hop: int) -> int:
    """Samples each window tests: its last ``hop`` (shifted ``K`` back), fewer where the window is too
    short to give each ``K`` neighbours on either side; 0: the test cannot run."""
    return max(0, min(int(hop), int(window) - 2 * K))


def isolated_features(windows: np.ndarray, hop: int) -> dict[str, np.ndarray]:
    """Per window ``(N, C, W)``: the largest ``z_t`` over its tested samples and channels (float64;
    nan where the window holds a non-finite value among them). The robust scales in numpy, the rest
    compiled (:func:`_z_max`), bit for bit :func:`_features_numpy`, which takes calls with a non-finite
    sample or one whose float32 squares could overflow."""
    x = np.asarray(windows)
    n, c, w = x.shape
    t = samples_tested(w, hop)
    if n == 0 or t == 0:
        return {FEATURE: np.zeros(n)}
    s = np.ascontiguousarray(x[:, :, w - t - 2 * K :], dtype=np.float32)
    d = np.abs(s[:, :, 1:] - s[:, :, :-1])
    h = (d.shape[2] - 1) // 2
    f = np.ascontiguousarray(np.partition(d, h, axis=2)[:, :, h])
    out = np.empty(n)
    if not _z_max(s, f, t, out):
        out = _features_numpy(s, t)
    return {FEATURE: out}


@kernel
def _z_max(s, f, t, out) -> bool:
    """:func:`_features_numpy`'s float32 arithmetic, window by window and in the same order of operations
    (bit for bit): ``out`` per window of the stretches ``s`` ``(N, C, t + 2K)`` with robust scales ``f``
    ``(N, C)`` (times ``_MED_ABS_DIFF``). False, ``out`` unfinished, where a scaled sample is not finite
    or reaches ``_F32_SAFE`` (numpy's nans, or its float64)."""
    N, C, M = s.shape
    eight, floor, zero, safe = np.float32(2 * K), np.float32(_DEN_FLOOR), np.float32(0.0), np.float32(_F32_SAFE)
    u, uu = np.empty(M, np.float32), np.empty(M, np.float32)
    p1, p2 = np.empty(M - 1, np.float32), np.empty(M - 1, np.float32)
    q1, q2 = np.empty(M - 3, np.float32), np.empty(M - 3, np.float32)
    r = np.empty(t, np.float32)
    for n in range(N):
        best = zero
        for c in range(C):
            row = s[n, c]
            scale = np.float32(1.0) / f[n, c] if f[n, c] > 0 else zero  # a channel at rest: u 0, z 0
            mid = row[K + t // 2]
            bad = False
            for j in range(M):  # in units of f, about the stretch's middle sample
                u[j] = (row[j] - mid) * scale
                uu[j] = u[j] * u[j]
                bad |= not abs(u[j]) < safe
            if bad:
                return False
            for j in range(M - 1):  # _neighbour_sums: running sums of 2, then 4, then both sides
                p1[j], p2[j] = u[j] + u[j + 1], uu[j] + uu[j + 1]
            for j in range(M - 3):
                q1[j], q2[j] = p1[j] + p1[j + 2], p2[j] + p2[j + 2]
            for i in range(t):
                s1, s2 = q1[i] + q1[i + K + 1], q2[i] + q2[i + K + 1]
                a = u[K + i] * eight - s1
                r[i] = (a * a) / (max(s2 * eight - s1 * s1, zero) + floor)
            for i in range(t):
                best = max(best, r[i])
        out[n] = math.sqrt(np.float64(best))
    return True


def _features_numpy(s: np.ndarray, t: int) -> np.ndarray:
    """The features of the stretches ``s`` ``(N, C, t + 2K)`` (float32) in numpy array operations: float32,
    or float64 where float32 squares could overflow."""
    d = np.abs(s[:, :, 1:] - s[:, :, :-1])
    h = (d.shape[2] - 1) // 2
    f = np.partition(d, h, axis=2)[:, :, h]  # (N, C): the robust noise scale times _MED_ABS_DIFF
    # in units of f (z is scale-free), about the stretch's middle sample: a large offset (ADC counts,
    # pascals) would cost sums of squares about zero their noise-level digits; the difference of two
    # float32 samples is exact where they are within a factor 2 of each other (an offset over the noise)
    rest = f > 0  # a channel at rest (most steps 0) is not tested

    def scaled(dtype):
        dev = (s - s[:, :, K + t // 2, None]).astype(dtype, copy=False)
        return dev * np.where(rest, 1 / f.astype(dtype, copy=False), 0)[:, :, None]

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        u = scaled(np.float32)
        if (np.abs(u) >= _F32_SAFE).any():  # float32 squares would overflow (a nan compares false)
            u = scaled(np.float64)
        one = u.dtype.type
        s1 = _neighbour_sums(u, t)
        s2 = _neighbour_sums(u * u, t)
        # z_t^2 = (2K (u_t - m))^2 / ((2K)^2 v + (2K / _MED_ABS_DIFF)^2): no square root, absolute
        # value or 0 / 0 per sample
        a = u[:, :, K : K + t] * one(2 * K) - s1
        a *= a
        den = s2 * one(2 * K)
        den -= s1 * s1
        np.maximum(den, 0, out=den)
        den += one(_DEN_FLOOR)
        a /= den
        return np.sqrt(a.max(axis=(1, 2)).astype(np.float64))  # a channel at rest: u 0, z 0


def _neighbour_sums(a: np.ndarray, t: int) -> np.ndarray:
    """Per tested sample ``i`` (``a[..., K + i]``, ``i < t``): the sum of its ``K`` neighbours either side,
    from running sums of 2, then 4 (= K) consecutive values: three additions instead of 2K."""
    p = a[:, :, :-1] + a[:, :, 1:]
    q = p[:, :, :-2] + p[:, :, 2:]  # q[j] = a[j] + ... + a[j + 3]
    return q[:, :, :t] + q[:, :, K + 1 : K + 1 + t]


def isolated_tests(cfg) -> int:
    """1 when the settings turn the test on: its share of ``false_alarms_per_hour`` is one test's."""
    return 1 if cfg.enabled and cfg.isolated_z else 0


@dataclass(frozen=True)
class IsolatedPlan:
    warmup: int  # windows of the stream before the test votes (min_windows)
    tested: int  # samples each window tests
    max: MaxPlan  # the threshold (floor: isolated_z) and the alert

    @classmethod
    def build(cls, cfg, window: int, hop: int, p_win: float) -> IsolatedPlan | None:
        """``p_win``: the test's share of ``false_alarms_per_hour``, per window."""
        if not isolated_tests(cfg) or not samples_tested(window, hop):
            return None
        return cls(int(cfg.min_windows), samples_tested(window, hop),
                   MaxPlan.build(cfg, cfg.isolated_z, p_win, cfg.sequential_block))


class IsolatedTest:
    """The test over the windows of one engine call. Its state lives in the engine's slots, one row of
    floats per stream (``iso`` of :func:`pipeline.monitor.alerts.slots.record_dtype`: maxtest's
    columns), gathered once per call and written back once."""

    def __init__(self, plan: IsolatedPlan):
        self.plan = plan
        self._max = MaxTest(plan.max, DETECTOR)

    def warm(self, window: int, hop: int) -> None:
        """Compile (or load) the features' pass and the calibration now."""
        isolated_features(np.zeros((1, 1, window), np.float32), hop)
        self._max.warm()

    def update(self, tab, ids: list[str], slots: np.ndarray, first: np.ndarray, n_u: np.ndarray,
               starts: np.ndarray, window: int, feats: dict[str, np.ndarray], ts: float, model_version: str,
               events: list[AlertEvent], ev_win: list[int]) -> None:
        """Windows ``first[u] .. first[u] + n_u[u]`` (call order) are stream ``ids[u]``'s, in order;
        ``feats``: :func:`isolated_features` of the call's windows. Appends events (and the index of the
        window that caused each) in stream order."""
        N, U = starts.size, slots.size
        if N == 0 or U == 0:
            return
        S = tab.iso[slots]  # (streams, STATE_FIELDS), a copy
        seg = np.repeat(np.arange(U), n_u)
        pos, blk = blocks(S, seg, first, n_u, self.plan.max.block)
        z = np.asarray(feats[FEATURE], dtype=np.float64).reshape(-1)
        warm = np.isfinite(z) & (pos >= self.plan.warmup)
        z = np.where(warm, z, 0.0)
        # the tested samples end K before the window does
        self._max.decide(S, ids, first, n_u, seg, pos, blk, starts, window - K, np.full(N, self.plan.tested), z,
                         warm, ts, model_version, events, ev_win)
        tab.iso[slots] = S
