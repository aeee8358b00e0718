"""Per-window features and the robust statistics behind the alert scores (pure numpy).

:mod:`pipeline.monitor.alerts.engine` turns each feature into a robust z-score against the stream's own history
and runs the alert state machine on the largest one. What each feature sees:

* ``residual`` — ``log(error * scale**2)``: the reconstruction error put back into input units, the
  power of what the model removed (noise floor + model misfit). Its high side is *gated* by
  ``error`` (below): a loud window of a signal the model fits only roughly has a proportionately
  larger misfit, which the residual sees and the standardised error does not.
* ``error`` — ``log(error)``, the standardised reconstruction error the checkpoint's calibration
  quantiles describe. Votes only through the gate and as the warm-up prior.
* ``noise`` (windows+outputs) — ``log(mean(diff2(r)**2) / 6)`` of the residual ``r = window -
  output``: second differences pass white noise and suppress smooth misfit, so this follows the
  sensor's noise floor (noise bursts, a changed noise level).
* ``scale`` — ``log(window std)``: windows are standardised before the model, so gain changes and
  flat lines are invisible to the error; a flat window (std 0) has ``log 0``, capped by the caller.
* ``level`` (windows) — the window mean in units of the stream's median scale (level shifts).
* ``peak`` (windows+outputs) — ``log(max|r| / rms(r))``: ~3 for a noise-like residual, far more for
  a spike the model refused to reproduce.
* ``clip`` (windows) — share of samples pinned at the window's max or min: ~2/W for a continuous
  signal, far more when a sensor saturates at a rail.
* ``spike`` (windows) — ``log(max|d2| / (1.4826 median|d2|))`` of the window's second differences
  ``d2`` (per channel, across channels of a window): the isolated-spike statistic of the sequential
  spike test (:mod:`pipeline.monitor.alerts.sequential`); not a voting term. On the raw window, not
  the residual: measured, the default conv model reproduces a lone spike, so its residual has none.
* ``floor`` (windows) — ``log(1.4826 median|d2| / sqrt(6))`` of the second differences of the raw
  window's newer half: its white-noise floor (std), robust to what fills less than half of it
  (knocks, clicks, spikes) as the residual's ``noise`` is not; no window-score vote, a CUSUM of the
  sequential tests.
* ``freq`` (outputs) — ``log(mean(diff(y)**2) / var(y))`` of the model's output: the mean-square
  frequency of the denoised signal. Too noisy per window to vote; its slow version (below) sees a
  process that runs faster or slower for seconds.

Slow terms (``AlertSettings.slow_terms``) are the mean of a feature over the last ``slow_windows``
windows, with statistics of their own: small but lasting shifts (a drifting sensor's level step, a
faster ECG) that no single window shows.

Statistics. :func:`robust_stats` is one refresh of a term's median and tail-aware spreads from its
last admitted values, for many (stream, term) rows at once.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from pipeline.monitor.alerts import featpass

# log() of values at or below this are taken at this value: log(0) for a flat window stays finite.
TINY = 1e-30
# 1.4826 * MAD estimates the standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
# z of the 99.9th percentile of a normal distribution: turns (q999 - q50) into a spread.
_Z999 = 3.0902
# Values are limited to this magnitude before they are rounded to float32 (a flat window's level in
# units of its median scale, 0, would otherwise overflow).
_F32_MAX = float(np.finfo(np.float32).max) / 2


def stored(x):
    """``x`` as the statistics hold it: rounded to float32 (within its range), as float64. Every value
    is scored and admitted in this form, so a value equals the median it made (a constant stream
    scores 0 even where its values are huge)."""
    # np.minimum/np.maximum: the same values as np.clip (NaN stays NaN) at half its call overhead
    return np.minimum(np.maximum(x, -_F32_MAX), _F32_MAX).astype(np.float32).astype(np.float64)


def stored_one(x: float) -> float:
    """:func:`stored` of one value."""
    return float(np.float32(min(max(x, -_F32_MAX), _F32_MAX)))


class FeatureWork:
    """Reused float32 scratch buffers for :func:`window_features`: a fresh temporary of 128 KiB and more
    goes to mmap and costs a page fault per 4 KiB each time (3x slower than the maths)."""

    def __init__(self):
        self._buf = np.empty(0, np.float32)

    def take(self, k: int, size: int) -> list[np.ndarray]:
        """``k`` flat float32 buffers of ``size`` values (valid until the next call)."""
        if self._buf.size < k * size:
            self._buf = np.empty(k * size, np.float32)
        return [self._buf[i * size : (i + 1) * size] for i in range(k)]


def window_features(windows: np.ndarray | None, outputs: np.ndarray | None,
                    work: FeatureWork | None = None) -> dict[str, np.ndarray]:
    """Per-window features from raw windows and model outputs, ``(N, C, W)`` each, input units.

    Compiled, one pass per window (:mod:`pipeline.monitor.alerts.featpass`): differences in float32 (the
    inputs' precision), sums and the logs in float64. A call holding a non-finite sample takes the numpy
    form (:func:`_features_numpy`; element-wise passes in float32, reductions of squares in float64).
    """
    if windows is None:
        return {}
    x = np.ascontiguousarray(windows, dtype=np.float32)
    n, c, w = x.shape
    names = ("level", "clip", "spike", "floor") + (() if outputs is None else ("peak", "noise", "freq"))
    if n == 0:
        return {k: np.zeros(0) for k in names}
    y = x if outputs is None else np.ascontiguousarray(outputs, dtype=np.float32).reshape(x.shape)
    if not (np.isfinite(x).all() and (outputs is None or np.isfinite(y).all())):
        return _features_numpy(x, outputs, work)
    m, L = c * w, (w // 2 if w >= 4 else 0)  # L: the floor's second differences per channel
    got = np.empty((7, n))
    s1, s2 = n * max(m - 2, 0), n * c * L
    buf = (work or FeatureWork()).take(1, s1 + s2)[0]
    d2, fl = buf[:s1].reshape(n, -1), buf[s1 : s1 + s2].reshape(n, -1)
    featpass.second_diffs(x, d2, fl)  # compiled, a window at a time
    featpass.features(x, y, outputs is not None, got, d2)
    got[2] = _robust_log_ratio(got[2], d2, 1.0) if m > 2 else 0.0  # spike: the medians, numpy's (SIMD)
    got[3] = _robust_log_ratio(math.sqrt(6.0), fl, -1.0) if w >= 4 else 0.0  # floor
    return dict(zip(names, got))


def _robust_log_ratio(num, v: np.ndarray, sign: float) -> np.ndarray:
    """``log(num / (1.4826 * median))`` (``sign`` 1) or ``log(1.4826 * median / num)`` (-1) per row of ``v``
    (the upper median, reordered in place), as :func:`_spike` and :func:`_floor` take them."""
    k = v.shape[1] // 2
    mid = _MAD_TO_SIGMA * np.partition(v, k, axis=1)[:, k].astype(np.float64)
    if sign > 0:
        return np.log(np.maximum(num, TINY) / np.maximum(mid, TINY))
    return np.log(np.maximum(mid / num, TINY))


def _features_numpy(x: np.ndarray, outputs: np.ndarray | None, work: FeatureWork | None) -> dict[str, np.ndarray]:
    """:func:`window_features` in numpy array operations (a call with a non-finite sample: NaN as numpy
    propagates it)."""
    n, c, w = x.shape
    m = c * w
    out: dict[str, np.ndarray] = {}
    rows = x.reshape(n * c, w)
    flat = x.reshape(n, m)
    out["level"] = (flat @ np.ones(m, np.float32)).astype(np.float64) / m
    pinned = (rows == np.fmax.reduce(rows, axis=1, keepdims=True)).view(np.uint8).sum(axis=1, dtype=np.int32)
    pinned += (rows == np.fmin.reduce(rows, axis=1, keepdims=True)).view(np.uint8).sum(axis=1, dtype=np.int32)
    out["clip"] = (pinned.reshape(n, c) / w).mean(axis=1)
    out["spike"] = _spike(np.diff(flat, n=2, axis=1)) if m > 2 else np.zeros(n)
    out["floor"] = _floor(x)
    if outputs is None:
        return out
    y = np.ascontiguousarray(outputs, dtype=np.float32).reshape(n, m)
    r, d, e = (b.reshape(n, m) for b in (work or FeatureWork()).take(3, n * m))
    np.subtract(flat, y, out=r)
    ss = np.einsum("ij,ij->i", r, r).astype(np.float64)
    rms = np.sqrt(ss / m)
    np.abs(r, out=d)
    out["peak"] = np.log(np.maximum(np.fmax.reduce(d, axis=1).astype(np.float64), TINY) / np.maximum(rms, TINY))
    noise = _sum_sq_diff(r, d, e, 2) / (6.0 * (m - 2)) if m > 2 else np.zeros(n)
    out["noise"] = np.log(np.maximum(noise, TINY))
    out["freq"] = _freq(y.reshape(n, c, w), d.reshape(n, c, w), e.reshape(n, c, w))
    return out


def _sum_sq_diff(a: np.ndarray, d: np.ndarray, e: np.ndarray, order: int) -> np.ndarray:
    """Per row of ``a`` ``(N, M)``: the sum of squares of its ``order``-th differences (1 or 2; those
    of ``np.diff(a, order)``). The differences are taken over the flat buffers ``d`` then ``e``
    (scratch of ``a``'s size), so each row's last ``order`` columns straddle two rows and are left out."""
    n, m = a.shape
    src = a.reshape(-1)
    for dst in (d, e)[:order]:
        dst = dst.reshape(-1)
        np.subtract(src[1:], src[:-1], out=dst[:-1])
        src = dst
    v = src.reshape(n, m)[:, : m - order]
    return np.einsum("ij,ij->i", v, v).astype(np.float64)


def _spike(d2: np.ndarray) -> np.ndarray:
    """``log(max|d2| / (1.4826 * median|d2|))`` per row: the largest second difference of the window
    against the row's own robust scale. An isolated spike of ``A`` leaves ``(A, -2A, A)`` in the second
    differences of white noise of std ``s`` (std ``sqrt(6) s``); a smooth signal hardly shows there."""
    scratch = np.abs(d2, out=d2)
    top = np.fmax.reduce(scratch, axis=1).astype(np.float64)
    k = scratch.shape[1] // 2
    mid = np.partition(scratch, k, axis=1)[:, k].astype(np.float64)  # the median (upper, for even rows)
    return np.log(np.maximum(top, TINY) / np.maximum(_MAD_TO_SIGMA * mid, TINY))


def _floor(x: np.ndarray) -> np.ndarray:
    """``log(1.4826 median|d2| / sqrt 6)`` per window ``(N, C, W)`` over the second differences of its
    newer half (per channel, pooled): the white-noise std, robust to what fills less than half of it.
    The newer half only: at the default hop (W / 2) consecutive windows share none of these samples, so
    the values are nearly independent where noise rules (lag-1 correlation 0.07 on knocks, against 0.50
    over whole windows), which a CUSUM's long-run variance rewards."""
    n, c, w = x.shape
    h = w - w // 2 - 2  # from the last w // 2 + 2 samples: w // 2 second differences
    if w < 4 or n == 0:
        return np.zeros(n)
    tail = x[:, :, max(h, 0) :]
    d2 = np.abs(tail[:, :, 2:] - 2.0 * tail[:, :, 1:-1] + tail[:, :, :-2]).reshape(n, -1)
    k = d2.shape[1] // 2
    mid = np.partition(d2, k, axis=1)[:, k].astype(np.float64)
    return np.log(np.maximum(_MAD_TO_SIGMA * mid / math.sqrt(6.0), TINY))


def _freq(y: np.ndarray, d: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``log(mean(diff(y)**2) / var(y))`` per window over its channels (``y``: ``(N, C, W)``)."""
    n, c, w = y.shape
    rows, dr = y.reshape(n * c, w), d.reshape(n * c, w)
    if w > 1:
        dd = _sum_sq_diff(rows, dr, e.reshape(n * c, w), 1).reshape(n, c).sum(axis=1) / (c * (w - 1))
    else:
        dd = np.zeros(n)
    mean = (rows @ np.ones(w, np.float32)) / np.float32(w)
    np.subtract(rows, mean[:, None], out=dr)
    var = np.einsum("ij,ij->i", dr, dr).astype(np.float64).reshape(n, c).sum(axis=1) / (c * w)
    return np.log(np.maximum(dd, TINY) / np.maximum(var, TINY))


@functools.lru_cache(maxsize=64)
def _lerp_plan(n: int, qs: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Neighbours, weights and side of each quantile of :func:`_quantiles` for ``n`` values."""
    ka, kb, ts, up = [], [], [], []
    for q in qs:
        v = (n - 1) * q
        k = n - 1 if v >= n - 1 else math.floor(v)
        t = 0.0 if v >= n - 1 else v - k
        ka.append(k)
        kb.append(min(k + 1, n - 1))
        ts.append(t)
        up.append(t >= 0.5)
    return np.array(ka + kb), np.array(ts), np.array([1 - t for t in ts]), np.array(up)


def _quantiles(srt: np.ndarray, n: int, qs: tuple[float, ...]) -> np.ndarray:
    """``np.quantile(v, q)`` (method "linear") of each row of the row-sorted ``srt``: the same virtual
    index, neighbours and two-sided lerp as numpy's ``_quantile``/``_lerp`` (a past-the-end index
    reads the last value). Returns ``(len(qs), rows)`` in float64."""
    k, t, t1, up = _lerp_plan(n, qs)
    ab = srt[:, k].astype(np.float64)
    a, b = ab[:, : len(qs)], ab[:, len(qs) :]
    d = b - a
    return np.where(up, b - d * t1, a + d * t).T


def robust_stats(v: np.ndarray, p: float, floor, margin, thr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(med, hi, lo) of each row of ``v`` (the values of one statistic per row; sorted in place): ``med``
    and the ``p``/``1 - p`` quantiles as ``np.quantile``, the MAD as ``np.median(|v - med|)``; the
    spreads are the MAD sigma (at least ``floor``), widened per side so that the raise threshold
    ``thr`` lies at least ``margin`` sigmas beyond the quantile. ``floor``, ``margin``: scalars or per row."""
    n = v.shape[1]
    v.sort(axis=1)  # one (vectorised, branch-free) sort beats two partitions on fresh data
    q_lo, med, q_hi = _quantiles(v, n, (p, 0.5, 1.0 - p))
    # median of |v - med|: the k values nearest med are k consecutive sorted values, so the k-th
    # smallest deviation is the least over windows of k of the larger of its two end deviations
    # (med - v[j] and v[j + k - 1] - med), in the values' precision. For k = h or h + 1 (h = n // 2)
    # the windows start at j <= n - h and end at j + k - 1 >= h - 1.
    h = n // 2
    m = med.astype(v.dtype)[:, None]
    below, above = m - v[:, : n - h + 1], v[:, max(h - 1, 0) :] - m

    def kth(k: int) -> np.ndarray:  # window j ends at above[:, j + k - h] (v[j + k - 1])
        return np.fmin.reduce(np.fmax(below[:, : n - k + 1], above[:, k - h :]), axis=1).astype(np.float64)

    if n == 1:
        mad = np.zeros(v.shape[0])
    else:
        mad = kth(h + 1) if n % 2 else (kth(h) + kth(h + 1)) / 2.0
    sigma = np.maximum(_MAD_TO_SIGMA * mad, floor)
    hi = np.maximum(sigma, (q_hi - med + margin * sigma) / thr)
    lo = np.maximum(sigma, (med - q_lo + margin * sigma) / thr)
    return med, hi, lo


def calibration_prior(calibration: dict[str, float] | None, floor: float) -> tuple[float, float] | None:
    """(centre, spread) of ``log(error)`` from the checkpoint's error quantiles, or None if unusable:
    ``log q50`` as centre, ``(log q999 - log q50) / 3.09`` as spread."""
    if not calibration:
        return None
    try:
        q50, q999 = float(calibration["q50"]), float(calibration["q999"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(q50) and math.isfinite(q999) and q50 > 0 and q999 > 0):
        return None
    centre = math.log(q50)
    return centre, max((math.log(q999) - centre) / _Z999, floor)
