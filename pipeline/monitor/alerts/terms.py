"""Per-window features and robust running statistics behind the alert scores (pure numpy).

:mod:`pipeline.monitor.alerts.engine` turns each feature into a robust z-score against the stream's own history
(:class:`Robust`) and runs the alert state machine on the largest one. What each feature sees:

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
* ``freq`` (outputs) — ``log(mean(diff(y)**2) / var(y))`` of the model's output: the mean-square
  frequency of the denoised signal. Too noisy per window to vote; its slow version (below) sees a
  process that runs faster or slower for seconds.

Slow terms (``AlertSettings.slow_terms``) are the mean of a feature over the last ``slow_windows``
windows, with statistics of their own: small but lasting shifts (a drifting sensor's level step, a
faster ECG) that no single window shows.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# log() of values at or below this are taken at this value: log(0) for a flat window stays finite.
TINY = 1e-30
# 1.4826 * MAD estimates the standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
# z of the 99.9th percentile of a normal distribution: turns (q999 - q50) into a spread.
_Z999 = 3.0902


# window_features works through this many (window, channel) samples at a time: temporaries of
# 128 KiB and more go to mmap and cost a page fault per 4 KiB each time (3x slower than the maths).
_CHUNK_SAMPLES = 8192


def window_features(windows: np.ndarray | None, outputs: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-window features from raw windows and model outputs, ``(N, C, W)`` each, input units."""
    out: dict[str, np.ndarray] = {}
    if windows is None:
        return out
    x = np.asarray(windows)
    y = None if outputs is None else np.asarray(outputs)
    n = x.shape[0]
    names = ("level", "clip") if y is None else ("level", "clip", "peak", "noise", "freq")
    out = {k: np.empty(n) for k in names}
    step = max(1, _CHUNK_SAMPLES // max(1, x.shape[1] * x.shape[2]))
    for a in range(0, n, step):
        _features(x[a : a + step], None if y is None else y[a : a + step], out, a)
    return out


def _features(x: np.ndarray, y: np.ndarray | None, out: dict[str, np.ndarray], a: int) -> None:
    """:func:`window_features` of windows ``a, a+1, ...`` into ``out``; rows are independent."""
    x = np.asarray(x, dtype=np.float64)
    b = a + x.shape[0]
    out["level"][a:b] = x.mean(axis=(1, 2))
    pinned = (x == x.max(axis=2, keepdims=True)).sum(axis=2) + (x == x.min(axis=2, keepdims=True)).sum(axis=2)
    out["clip"][a:b] = (pinned / x.shape[2]).mean(axis=1)
    if y is None:
        return
    y = np.asarray(y, dtype=np.float64)
    n = x.shape[0]
    r = (x - y).reshape(n, -1)
    rms = np.sqrt(np.mean(r * r, axis=1))
    out["peak"][a:b] = np.log(np.maximum(np.abs(r).max(axis=1), TINY) / np.maximum(rms, TINY))
    d2 = np.diff(r, n=2, axis=1) if r.shape[1] > 2 else np.zeros((n, 1))
    out["noise"][a:b] = np.log(np.maximum(np.mean(d2 * d2, axis=1) / 6.0, TINY))
    yc = y - y.mean(axis=2, keepdims=True)
    dy = np.diff(y, axis=2) if y.shape[2] > 1 else np.zeros_like(y)
    out["freq"][a:b] = np.log(np.maximum((dy * dy).mean(axis=(1, 2)), TINY) / np.maximum((yc * yc).mean(axis=(1, 2)), TINY))


class Robust:
    """Median and tail-aware spreads of the last ``size`` admitted values of one feature.

    ``z(x) = (x - median) / spread``, one spread per side: the MAD sigma (floored), widened when the
    stream's own tail is heavier than a normal one's so that the raise threshold lies at least
    ``margin`` sigmas beyond the ``p`` / ``1 - p`` quantile. A normal tail leaves the MAD sigma in
    charge; a stream whose feature regularly swings gets a proportionately higher bar. Recomputed
    exactly from the ring buffer after every value during warm-up and every ``refresh_every``
    afterwards, so scores do not depend on how windows were split into calls.
    """

    __slots__ = ("buf", "count", "pos", "med", "hi", "lo", "pending", "floor", "p", "margin", "thr")

    def __init__(self, size: int, floor: float, p: float, margin: float, thr: float):
        self.buf = np.empty(size, dtype=np.float64)
        self.count = 0  # values admitted so far (not capped at size)
        self.pos = 0
        self.med = 0.0
        self.hi = self.lo = floor
        self.pending = 0
        self.floor, self.p, self.margin, self.thr = floor, p, margin, thr

    def push(self, x: float, refresh_every: int, warm: int, clip: bool) -> bool:
        """Admit one value; returns whether a refresh is due (refresh several at once with
        :func:`refresh_many`)."""
        if clip:  # winsorise at the raise threshold: one extreme value cannot stretch the tails
            x = min(max(x, self.med - self.thr * self.lo), self.med + self.thr * self.hi)
        self.buf[self.pos] = x
        self.pos = (self.pos + 1) % self.buf.size
        self.count += 1
        self.pending += 1
        return self.count <= warm or self.pending >= refresh_every

    def extend(self, x: np.ndarray) -> None:
        """Admit the values ``x`` as ``len(x)`` calls of :meth:`push` without clipping would, no refresh."""
        buf, pos, i, n = self.buf, self.pos, 0, x.size
        while i < n:
            k = min(n - i, buf.size - pos)
            buf[pos : pos + k] = x[i : i + k]
            pos = (pos + k) % buf.size
            i += k
        self.pos = pos
        self.count += n
        self.pending += n

    def z(self, x: float) -> float:
        d = x - self.med
        return d / self.hi if d >= 0 else d / self.lo


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
    return np.array(ka), np.array(kb), np.array(ts), np.array([1 - t for t in ts]), np.array(up)


def _quantiles(srt: np.ndarray, n: int, qs: tuple[float, ...]) -> np.ndarray:
    """``np.quantile(v, q)`` (method "linear") of each row of the row-sorted ``srt``, bit for bit:
    the same virtual index, neighbours and two-sided lerp as numpy's ``_quantile``/``_lerp``
    (a past-the-end index reads the last value: ``a + 0 * 0``). Returns ``(len(qs), rows)``."""
    ka, kb, t, t1, up = _lerp_plan(n, qs)
    a, b = srt[:, ka], srt[:, kb]
    d = b - a
    return np.where(up, b - d * t1, a + d * t).T


def robust_stats(v: np.ndarray, p: float, floor, margin, thr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(med, hi, lo) of a :class:`Robust`'s refresh for each row of ``v`` (all values of one statistic per
    row), with exactly the arithmetic of ``np.quantile(v, (p, 0.5, 1 - p))`` and
    ``np.median(|v - med|)``; ``floor`` and ``margin`` are scalars or one per row."""
    n = v.shape[1]
    qs = (p, 0.5, 1.0 - p)
    srt = np.sort(v, axis=1)  # one (vectorised, branch-free) sort beats two partitions on fresh data
    q_lo, med, q_hi = _quantiles(srt, n, qs)
    # median of |v - med|: the k values nearest med are k consecutive sorted values, so the k-th
    # smallest deviation is the least over windows of k of the larger of its two end deviations (the
    # same subtractions as |v - med|: x - m == -(m - x) exactly).
    m = med[:, None]

    def kth(k: int) -> np.ndarray:
        return np.maximum(m - srt[:, : n - k + 1], srt[:, k - 1 :] - m).min(axis=1)

    h = n // 2
    mad = kth(h + 1) if n % 2 else (kth(h) + kth(h + 1)) / 2.0
    sigma = np.maximum(_MAD_TO_SIGMA * mad, floor)
    hi = np.maximum(sigma, (q_hi - med + margin * sigma) / thr)
    lo = np.maximum(sigma, (med - q_lo + margin * sigma) / thr)
    return med, hi, lo


def refresh_many(robusts) -> None:
    """Recompute the median and spreads of each :class:`Robust` from its values (one stacked
    :func:`robust_stats` call per distinct length)."""
    groups: dict[tuple, list[Robust]] = {}
    for r in robusts:
        groups.setdefault((min(r.count, r.buf.size), r.p, r.thr), []).append(r)
    for (n, p, thr), rs in groups.items():
        v = np.stack([r.buf[:n] for r in rs]) if len(rs) > 1 else rs[0].buf[None, :n]
        floor = np.array([r.floor for r in rs])
        margin = np.array([r.margin for r in rs])
        for r, m, hi, lo in zip(rs, *(a.tolist() for a in robust_stats(v, p, floor, margin, thr))):
            r.med, r.hi, r.lo, r.pending = m, hi, lo, 0


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
