"""Per-window features and robust running statistics behind the alert scores (pure numpy).

:mod:`pipeline.alerts` turns each feature into a robust z-score against the stream's own history
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

import math

import numpy as np

# Features a caller can supply; "residual", "error" and "scale" come from errors/scales.
FEATURES = ("residual", "error", "noise", "scale", "level", "peak", "clip", "freq")
# log() of values at or below this are taken at this value: log(0) for a flat window stays finite.
TINY = 1e-30
# 1.4826 * MAD estimates the standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
# z of the 99.9th percentile of a normal distribution: turns (q999 - q50) into a spread.
_Z999 = 3.0902


def window_features(windows: np.ndarray | None, outputs: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-window features from raw windows and model outputs, ``(N, C, W)`` each, input units."""
    out: dict[str, np.ndarray] = {}
    if windows is None:
        return out
    x = np.asarray(windows, dtype=np.float64)
    out["level"] = x.mean(axis=(1, 2))
    pinned = (x == x.max(axis=2, keepdims=True)).sum(axis=2) + (x == x.min(axis=2, keepdims=True)).sum(axis=2)
    out["clip"] = (pinned / x.shape[2]).mean(axis=1)
    if outputs is None:
        return out
    y = np.asarray(outputs, dtype=np.float64)
    n = x.shape[0]
    r = (x - y).reshape(n, -1)
    rms = np.sqrt(np.mean(r * r, axis=1))
    out["peak"] = np.log(np.maximum(np.abs(r).max(axis=1), TINY) / np.maximum(rms, TINY))
    d2 = np.diff(r, n=2, axis=1) if r.shape[1] > 2 else np.zeros((n, 1))
    out["noise"] = np.log(np.maximum(np.mean(d2 * d2, axis=1) / 6.0, TINY))
    yc = y - y.mean(axis=2, keepdims=True)
    dy = np.diff(y, axis=2) if y.shape[2] > 1 else np.zeros_like(y)
    out["freq"] = np.log(np.maximum((dy * dy).mean(axis=(1, 2)), TINY) / np.maximum((yc * yc).mean(axis=(1, 2)), TINY))
    return out


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

    def add(self, x: float, refresh_every: int, warm: int, clip: bool) -> None:
        if clip:  # winsorise at the raise threshold: one extreme value cannot stretch the tails
            x = min(max(x, self.med - self.thr * self.lo), self.med + self.thr * self.hi)
        self.buf[self.pos] = x
        self.pos = (self.pos + 1) % self.buf.size
        self.count += 1
        self.pending += 1
        if self.count <= warm or self.pending >= refresh_every:
            self.refresh()

    def refresh(self) -> None:
        v = self.buf[: min(self.count, self.buf.size)]
        q_lo, med, q_hi = (float(q) for q in np.quantile(v, (self.p, 0.5, 1.0 - self.p)))
        sigma = max(_MAD_TO_SIGMA * float(np.median(np.abs(v - med))), self.floor)
        self.med = med
        self.hi = max(sigma, (q_hi - med + self.margin * sigma) / self.thr)
        self.lo = max(sigma, (med - q_lo + self.margin * sigma) / self.thr)
        self.pending = 0

    def z(self, x: float) -> float:
        d = x - self.med
        return d / self.hi if d >= 0 else d / self.lo


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
