"""Anomaly alerts from per-window reconstruction error and window statistics. Pure logic: no Kafka, no torch.

Inputs per window (from :class:`pipeline.inference.engine.Inference`): ``errors`` — the mean squared error
between the *standardised* window and the model's output — and ``scales`` — the window's standard
deviation in input units. Optionally the raw ``windows`` and the model's ``outputs`` (``(N, C, W)``,
input units) enable the noise, level, peak, clip and freq features. The features and the robust
statistics are in :mod:`pipeline.monitor.alerts.terms`; ``dae evaluate-alerts`` (docs/alerts.md) measures them.

Score. Each feature becomes a robust z against the stream's own running statistics (median and a
tail-aware MAD spread over the last ``stats_windows`` admitted windows, in logs where noted), so a
stream that is merely noisier than others has a higher median, not more alerts. The window score is
the largest ``|z|`` over the voting terms (``terms`` plus the slow versions of ``slow_terms``),
capped at ``max_score``; ``residual`` and ``noise`` measure the same residual and share one vote,
and the residual's high side counts only as far as the standardised ``error`` is high too.

Adaptation. Windows are admitted into the statistics while the stream has no alert up and the
window is not hot (winsorised at the raise threshold); during an alert every
``alert_admit_every``-th window is, so a lasting new regime is learnt and its alert resolves.

Warm-up. A stream raises nothing until ``min_windows`` windows are admitted; until then its residual
z is the calibration z of ``log(error)`` (the checkpoint's q50/q999), and until ``warmup_windows``
the residual's high side is the smaller of the calibration z and its own. Slow terms vote once they
have ``max(warmup_windows, 2 * slow_windows)`` admitted values; a slow value is admitted only when
the ``slow_windows`` windows it averages were all quiet (no alert, not hot), or once an alert has
outlasted two slow windows (a new regime to learn). :meth:`AlertEngine.set_model` restarts the model-dependent
statistics (residual, error, noise, peak, freq) and keeps the signal's own (scale, level, clip).

Alert state machine (per stream). ``hot`` = score >= ``raise_threshold``. Raise when at least ``k``
of the last ``n`` windows are hot, unless the stream is in cooldown; the raised event's range covers
the hot windows. While raised, windows scoring >= ``resolve_threshold`` extend the alert; after
``resolve_windows`` consecutive windows below it the alert resolves (hysteresis) with the whole
alert's range, and for ``cooldown_windows`` windows no new alert may be raised. A slow term keeps
an alert up, but only per-window terms extend its range: the slow mean still holds the anomaly for
up to ``slow_windows`` windows after it ended, so the resolve comes that much later than the range. Ranges are
``[start, end)`` sample indices: first sample of the first window to one past the last window's last.

Cost. :func:`pipeline.monitor.alerts.steps.scalar_step` is the reference, one window at a time. Ordinary
windows (finite, increasing, stream past warm-up, no alert up, not hot) take the vectorised paths:
whole runs at once (:mod:`pipeline.monitor.alerts.batch`) or runs up to the next refresh
(:func:`pipeline.monitor.alerts.steps.fast_run`), with the same arithmetic value for value
(``tests/test_alerts_fastpath.py``): the combination of terms into a score and the other shared
arithmetic is in :mod:`pipeline.monitor.alerts.scoring`, once for all paths.

Modules: ``events`` (what is emitted; a leaf), ``terms`` (features, robust statistics), ``scoring``
(shared arithmetic and the :class:`~pipeline.monitor.alerts.scoring.Scoring` parameters the steps
read), ``state`` (per-stream state, one call's windows), ``steps`` and ``batch`` (the paths), and
this module, which owns the streams and dispatches windows to the paths.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.monitor.alerts.batch import batch_run
from pipeline.monitor.alerts.events import EVENT_TYPE, TERMS, AlertEvent, WindowScores
from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.state import Batch, StreamState
from pipeline.monitor.alerts.steps import fast_run, scalar_step
from pipeline.monitor.alerts.terms import TINY, Robust, window_features
from pipeline.settings import ALERT_FEATURES as FEATURES, ALERT_SLOWABLE as SLOWABLE, AlertSettings

# Terms whose statistics depend on the model (restarted by set_model).
_MODEL = ("residual", "error", "noise", "peak", "freq")
# Slow terms' floors are this share of their feature's: a mean over many windows varies less.
_SLOW_FLOOR = 0.5


class AlertEngine:
    """Per-stream scores and alert state for many streams (one instance per worker process).

    ``fast_path=False`` sends every window through the scalar reference step and ``batch_path=False``
    stops the vectorised runs at each refresh (:func:`~pipeline.monitor.alerts.steps.fast_run` only);
    the results are the same, tests compare them.
    """

    def __init__(self, cfg: AlertSettings, calibration: dict[str, float] | None, model_version: str, *,
                 fast_path: bool = True, batch_path: bool = True):
        self.cfg = cfg
        self._streams: dict[str, StreamState] = {}
        floors = {f: getattr(cfg, f"{f}_floor") for f in FEATURES}
        self._floors = {**floors, **{f + "_slow": _SLOW_FLOOR * floors[f] for f in SLOWABLE}}
        # The vectorised paths a window tries, in order, before the scalar step.
        self._runs = (((batch_run,) if batch_path else ()) + (fast_run,)) if fast_path else ()
        self.set_model(calibration, model_version)

    # ----------------------------------------------------------------------------- lifecycle
    def set_model(self, calibration: dict[str, float] | None, model_version: str) -> None:
        """Switch to a new model: its calibration becomes the warm-up prior and the model-dependent
        statistics restart; scale, level and clip statistics are kept."""
        self.model_version = str(model_version)
        self.calibration = dict(calibration or {})
        self._scoring = Scoring.build(self.cfg, self.calibration, self.model_version)
        for st in self._streams.values():
            for f in _MODEL:
                st.slow.pop(f, None)
                for t in (f, f + "_slow"):
                    if t in st.stats:
                        st.stats[t] = self._robust(t)

    def _robust(self, term: str) -> Robust:
        c = self.cfg
        margin = c.model_tail_margin if term in ("residual", "noise") else c.tail_margin
        return Robust(c.stats_windows, self._floors[term], c.tail_quantile, margin, c.raise_threshold)

    def forget(self, stream: str) -> None:
        """Drop a stream's state (partition revoked, stream closed). An active alert is dropped silently."""
        self._streams.pop(stream, None)

    def active(self) -> int:
        """Number of streams with a raised (not yet resolved) alert."""
        return sum(1 for st in self._streams.values() if st.active)

    def is_active(self, stream: str) -> bool:
        st = self._streams.get(stream)
        return st is not None and st.active

    def streams(self) -> int:
        return len(self._streams)

    def _stream(self, stream: str) -> StreamState:
        st = self._streams.get(stream)
        if st is None:
            st = StreamState(stats={t: self._robust(t) for t in TERMS})
            self._streams[stream] = st
        return st

    # -------------------------------------------------------------------------------- update
    def update(self, stream: str, starts: np.ndarray, window: int, errors: np.ndarray, scales: np.ndarray,
               now: float | None = None, windows: np.ndarray | None = None,
               outputs: np.ndarray | None = None) -> list[AlertEvent]:
        """Score the windows of one stream (increasing start order) and advance its alert state."""
        return self.update_scored(stream, starts, window, errors, scales, now, windows, outputs)[0]

    def update_scored(self, stream: str, starts: np.ndarray, window: int, errors: np.ndarray,
                      scales: np.ndarray, now: float | None = None, windows: np.ndarray | None = None,
                      outputs: np.ndarray | None = None,
                      features: dict[str, np.ndarray] | None = None) -> tuple[list[AlertEvent], WindowScores]:
        """:meth:`update` plus each window's score, terms and alert state (evaluation, metrics).

        ``features`` passes :func:`~pipeline.monitor.alerts.terms.window_features` precomputed instead of
        ``windows``/``outputs``. A window whose start is not after the previous one's (a rewound
        producer) starts a new debounce history; an alert already raised stays raised. Non-finite
        inputs score 0 and are not admitted.
        """
        cfg = self.cfg
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        errors = np.asarray(errors, dtype=np.float64).reshape(-1)
        scales = np.asarray(scales, dtype=np.float64).reshape(-1)
        m = starts.size
        if not (starts.shape == errors.shape == scales.shape):
            raise ValueError(f"starts {starts.shape}, errors {errors.shape} and scales {scales.shape} must match")
        if features is None:
            features = window_features(windows, outputs)
        wanted = set(cfg.terms) | set(cfg.slow_terms)
        extra = {t: np.asarray(v, dtype=np.float64).reshape(-1) for t, v in features.items() if t in wanted}
        for t, v in extra.items():
            if v.shape != starts.shape:
                raise ValueError(f"{t} features {v.shape} must match starts {starts.shape}")
        score = np.zeros(m)
        zs = {t: np.zeros(m) for t in TERMS}
        act = np.zeros(m, dtype=bool)
        events: list[AlertEvent] = []
        if not cfg.enabled or m == 0:
            return events, WindowScores(starts, score, zs, act, cfg.raise_threshold, cfg.resolve_threshold)
        ts = time.time() if now is None else float(now)
        finite = np.isfinite(errors) & np.isfinite(scales) & (errors >= 0) & (scales >= 0)
        for v in extra.values():
            finite &= np.isfinite(v)
        log_err = np.log(np.maximum(np.where(finite, errors, 1.0), TINY))
        log_scale = np.log(np.maximum(np.where(finite, scales, 1.0), TINY))
        values = {"residual": log_err + 2.0 * log_scale, "error": log_err, "scale": log_scale, **extra}
        self._process(self._stream(stream), Batch(stream, starts, int(window), finite, values, log_err, score, zs,
                                                  act, events, ts))
        return events, WindowScores(starts, score, zs, act, cfg.raise_threshold, cfg.resolve_threshold)

    def _process(self, st: StreamState, b: Batch) -> None:
        """Every window of ``b`` in order: runs of ordinary windows through the first vectorised path
        that takes them, any other window through the scalar step."""
        p, runs, i, m = self._scoring, self._runs, 0, b.starts.size
        while i < m:
            for run in runs:
                n = run(p, st, b, i)
                if n:
                    break
            else:
                scalar_step(p, st, b, i)
                n = 1
            i += n


__all__ = ["AlertEngine", "AlertEvent", "WindowScores", "TERMS", "EVENT_TYPE", "window_features"]
