"""Drift of the live reconstruction-error distribution (pure logic: no Kafka, no torch).

The worker feeds every window's reconstruction error of the model it serves into a
:class:`DriftMonitor`. The monitor keeps log-spaced histograms in time buckets, so the median over
the last ``window_s`` seconds costs one ``np.histogram`` per batch and a few hundred integers per
bucket, whatever the throughput.

Reference level. A checkpoint's error quantiles describe its *validation* windows (clean ones for a
model trained on clean targets), while live data carries the sensors' noise: a model serving noisy
streams sits above its checkpoint median from the first window on, which is not drift. So the
reference is the live median over the first ``reference_windows`` windows the model serves (its
live calibration; with fewer than ``min_windows`` in the window no decision is taken); the
checkpoint's ``q50`` is reported next to it. Drift is declared when the median over the last
``window_s`` seconds is more than ``ratio`` x the reference (or less than reference / ``ratio``:
a vanished noise floor is a change too), and is declared again at most every ``cooldown_s``.
Switching models (:meth:`DriftMonitor.set_model`) restarts everything: a retrained model gets a
new reference, which is how an early retrain "brings the error back" — the figures of that are in
docs/retrain.md.

A worker-wide median is a population statistic: it moves when many streams change (a new noise
floor on a fleet, a firmware update), not when one sensor among hundreds does — that is what the
per-stream alerts (:mod:`pipeline.monitor.alerts.engine`) are for.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.settings import DriftSettings

EVENT_TYPE = "dae.drift"
# Log-spaced bins of the error histogram: 1e-8 .. 1e4 in 1/16-decade steps (~15 % wide, so the
# median is known to ~7 %); errors outside fall in the end bins.
_EDGES = np.logspace(-8, 4, 12 * 16 + 1)


@dataclass
class DriftEvent:
    model_version: str
    median: float  # live median over the sliding window
    reference_median: float  # live median of the model's first reference_windows windows
    checkpoint_median: float | None  # the checkpoint's q50 (validation windows), for context
    ratio: float  # median / reference_median
    windows: int  # windows in the sliding window
    window_s: float
    time: float  # unix seconds

    def to_dict(self) -> dict:
        return {"type": EVENT_TYPE, **asdict(self)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")).encode("utf-8")


def _median(hist: np.ndarray) -> float:
    """Median of a histogram over ``_EDGES`` (geometric interpolation inside the median's bin)."""
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, total / 2.0))
    before = cum[i - 1] if i > 0 else 0
    frac = (total / 2.0 - before) / max(hist[i], 1)
    lo, hi = math.log(_EDGES[i]), math.log(_EDGES[i + 1])
    return float(math.exp(lo + frac * (hi - lo)))


class DriftMonitor:
    def __init__(self, cfg: DriftSettings, model_version: str, checkpoint_median: float | None = None):
        self.cfg = cfg
        self.set_model(model_version, checkpoint_median)

    def set_model(self, model_version: str, checkpoint_median: float | None = None) -> None:
        self.model_version = str(model_version)
        self.checkpoint_median = checkpoint_median
        self._ref_hist = np.zeros(_EDGES.size - 1, dtype=np.int64)
        self.reference_median: float | None = None
        self._buckets: deque[tuple[float, np.ndarray]] = deque()
        self._last_event = -math.inf
        self._ratio: float | None = None  # sliding median / reference, as of the last update

    @staticmethod
    def _hist(errors: np.ndarray) -> np.ndarray:
        e = np.clip(errors, _EDGES[0], _EDGES[-1])
        return np.histogram(e, bins=_EDGES)[0].astype(np.int64)

    def update(self, errors: np.ndarray, now: float | None = None) -> DriftEvent | None:
        """Add one batch's errors (of the current model); returns a drift event when one is due."""
        cfg = self.cfg
        if not cfg.enabled:
            return None
        e = np.asarray(errors, dtype=np.float64).reshape(-1)
        e = e[np.isfinite(e)]
        if e.size == 0:
            return None
        now = time.time() if now is None else float(now)
        if self.reference_median is None:
            need = cfg.reference_windows - int(self._ref_hist.sum())
            self._ref_hist += self._hist(e[:need])
            if self._ref_hist.sum() >= cfg.reference_windows:
                self.reference_median = _median(self._ref_hist)
            e = e[need:]
            if e.size == 0:
                return None
        key = math.floor(now / cfg.bucket_s) * cfg.bucket_s
        if self._buckets and self._buckets[-1][0] == key:
            self._buckets[-1][1][:] += self._hist(e)
        else:
            self._buckets.append((key, self._hist(e)))
        while self._buckets and self._buckets[0][0] <= now - cfg.window_s:
            self._buckets.popleft()
        if self.reference_median is None:
            return None
        hist = np.sum([h for _, h in self._buckets], axis=0)
        n = int(hist.sum())
        med = _median(hist)
        r = med / max(self.reference_median, _EDGES[0])
        self._ratio = r if n else None
        if now - self._last_event < cfg.cooldown_s or n < cfg.min_windows:
            return None
        if 1.0 / cfg.ratio <= r <= cfg.ratio:
            return None
        self._last_event = now
        return DriftEvent(self.model_version, med, self.reference_median, self.checkpoint_median, r, n,
                          cfg.window_s, now)

    def current_ratio(self) -> float | None:
        """Median of the sliding window over the reference (None before both exist)."""
        return self._ratio


__all__ = ["DriftEvent", "DriftMonitor", "DriftSettings", "EVENT_TYPE"]
