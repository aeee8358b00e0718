"""Anomaly alerts from per-window reconstruction error and window statistics. Pure logic: no Kafka, no torch.

Inputs per window (from :class:`pipeline.engine.Inference`): ``errors`` — the mean squared error
between the *standardised* window and the model's output — and ``scales`` — the window's standard
deviation in input units. Optionally the raw ``windows`` and the model's ``outputs`` (``(N, C, W)``,
input units) enable the noise, level, peak, clip and freq features. The features and the robust
statistics are in :mod:`pipeline.alert_terms`; ``dae evaluate-alerts`` (docs/alerts.md) measures them.

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

Cost. :func:`pipeline.alert_steps.scalar_step` is the reference, one window at a time. Ordinary
windows (finite, increasing, stream past warm-up, no alert up, not hot) take the vectorised paths:
whole runs at once (:mod:`pipeline.alert_batch`) or runs up to the next refresh
(:func:`pipeline.alert_steps.fast_run`), with the same arithmetic value for value
(``tests/test_alerts_fastpath.py``).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.alert_batch import batch_run
from pipeline.alert_steps import Batch, fast_run, scalar_step
from pipeline.alert_terms import FEATURES, TINY, Robust, calibration_prior, window_features

EVENT_TYPE = "dae.alert"
# Per-window terms that may vote (``error`` only gates the residual; ``freq`` only votes slow).
VOTING = ("residual", "noise", "scale", "level", "peak", "clip")
SLOWABLE = tuple(f for f in FEATURES if f != "error")
TERMS = FEATURES + tuple(f + "_slow" for f in SLOWABLE)
# Terms whose statistics depend on the model (restarted by set_model).
_MODEL = ("residual", "error", "noise", "peak", "freq")
# Slow terms' floors are this share of their feature's: a mean over many windows varies less.
_SLOW_FLOOR = 0.5


class AlertSettings(BaseModel):
    """Alerting on reconstruction error (mounted as ``Settings.alerts``, env ``DAE_ALERTS__...``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Compute scores and emit alert events at all.
    enabled: bool = True
    # A window is "hot" when its score (largest robust |z| over the terms) reaches this.
    raise_threshold: float = Field(6.0, gt=0)
    # Hysteresis: an active alert continues while windows score at or above this (< raise_threshold).
    resolve_threshold: float = Field(3.0, gt=0)
    # Raise after k hot windows among the last n. 2 of 3: every sample lies in two windows at hop
    # W/2, so a one-sample spike still raises, while one-window flukes (x7 fewer measured) do not.
    k: int = Field(2, ge=1)
    n: int = Field(3, ge=1)
    # Consecutive windows below resolve_threshold that resolve an alert.
    resolve_windows: int = Field(4, ge=1)
    # Windows after a resolve during which no new alert is raised on that stream.
    cooldown_windows: int = Field(8, ge=0)
    # Running statistics over the last this many admitted windows per stream and term.
    stats_windows: int = Field(512, ge=8)
    # After warm-up, recompute the statistics every this many admitted windows (cost vs. lag).
    refresh_every: int = Field(16, ge=1)
    # Admitted windows before a stream may raise (32 windows = 4 s at 1 kHz, hop 128): younger
    # statistics raised most of the measured false alarms.
    min_windows: int = Field(32, ge=2)
    # Admitted windows until the stream's statistics are trusted alone.
    warmup_windows: int = Field(64, ge=2)
    # During an alert admit every this-many-th window anyway, so a lasting new regime is learnt (0: never).
    alert_admit_every: int = Field(4, ge=0)
    # Tail probability whose quantile the raise threshold must clear (per side, per term).
    tail_quantile: float = Field(0.01, gt=0, lt=0.5)
    # How many sigmas beyond that quantile the raise threshold must lie at least.
    tail_margin: float = Field(3.0, ge=0)
    # The same for residual and noise, the terms that carry the model's misfit (heavier tails).
    model_tail_margin: float = Field(4.0, ge=0)
    # Smallest sigmas (log units unless noted): a noise-free stream would otherwise alarm on rounding.
    residual_floor: float = Field(0.1, gt=0)
    error_floor: float = Field(0.1, gt=0)
    noise_floor: float = Field(0.1, gt=0)
    scale_floor: float = Field(0.05, gt=0)
    # Level is in units of the stream's median scale: shifts below ~1/10 of it are not worth an alert.
    level_floor: float = Field(0.1, gt=0)
    peak_floor: float = Field(0.05, gt=0)
    # Share of samples at the window's extremes (0.01 = 2.6 of 256).
    clip_floor: float = Field(0.01, gt=0)
    freq_floor: float = Field(0.05, gt=0)
    # Per-window terms that vote (those needing windows/outputs only when the caller passes them).
    terms: tuple[str, ...] = VOTING
    # Features whose mean over the last slow_windows windows also votes, with statistics of its own.
    slow_terms: tuple[str, ...] = ("level", "freq")
    # 64 windows = 8 s at 1 kHz, hop 128: lasting shifts (a level step on a drifting sensor, a faster
    # process) too small for any single window.
    slow_windows: int = Field(64, ge=2)
    # Scores are capped here (a flat window has log scale = -inf; JSON has no infinity).
    max_score: float = Field(1000.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "AlertSettings":
        if self.resolve_threshold >= self.raise_threshold:
            raise ValueError(f"resolve_threshold ({self.resolve_threshold}) must be below raise_threshold "
                             f"({self.raise_threshold})")
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        if self.warmup_windows < self.min_windows:
            raise ValueError(f"warmup_windows ({self.warmup_windows}) must be >= min_windows ({self.min_windows})")
        if self.warmup_windows > self.stats_windows:
            raise ValueError(f"warmup_windows ({self.warmup_windows}) must be <= stats_windows ({self.stats_windows})")
        if any(t not in VOTING for t in self.terms) or "residual" not in self.terms:
            raise ValueError(f"terms must include 'residual' and be among {VOTING}, got {self.terms}")
        if any(t not in SLOWABLE for t in self.slow_terms):
            raise ValueError(f"slow_terms must be among {SLOWABLE}, got {self.slow_terms}")
        return self


@dataclass
class AlertEvent:
    kind: str  # "raised" | "resolved"
    stream: str
    start: int  # first sample index of the anomalous range
    end: int  # one past its last sample index
    peak_score: float
    threshold: float  # the threshold crossed: raise_threshold (raised), resolve_threshold (resolved)
    model_version: str
    time: float  # unix seconds

    def to_dict(self) -> dict:
        return {"type": EVENT_TYPE, **asdict(self)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class WindowScores:
    """Per-window diagnostics of one :meth:`AlertEngine.update_scored` call."""

    starts: np.ndarray  # (N,) int64
    score: np.ndarray  # (N,) float64: the voting max |z|, capped; compare with the thresholds
    terms: dict[str, np.ndarray]  # term name -> (N,) signed z (0 where unavailable); see TERMS
    active: np.ndarray  # (N,) bool: the stream has a raised alert after this window
    raise_threshold: float
    resolve_threshold: float


@dataclass
class _Stream:
    stats: dict[str, Robust]
    slow: dict[str, deque] = field(default_factory=dict)  # feature -> its last slow_windows values
    last_start: int | None = None
    recent: deque = field(default_factory=deque)  # (start, score, hot) of the last n windows
    active: bool = False
    alert_start: int = 0
    alert_end: int = 0
    alert_peak: float = 0.0
    below: int = 0  # consecutive windows below resolve_threshold while active
    cooldown: int = 0  # windows left in which no alert may be raised
    in_alert: int = 0  # windows seen during the current alert (for alert_admit_every)
    quiet: int = 0  # consecutive windows neither hot nor in an alert
    fast_below: int = 0  # consecutive windows whose per-window score is below resolve_threshold
    range_done: bool = False  # the per-window evidence of the current alert has resolved


class AlertEngine:
    """Per-stream scores and alert state for many streams (one instance per worker process)."""

    # Runs of ordinary windows take the vectorised paths (pipeline.alert_batch, pipeline.alert_steps);
    # tests turn them off to compare with the scalar reference step.
    _fastpath = True
    _batchpath = True

    def __init__(self, cfg: AlertSettings, calibration: dict[str, float] | None, model_version: str):
        self.cfg = cfg
        self._streams: dict[str, _Stream] = {}
        floors = {f: getattr(cfg, f"{f}_floor") for f in FEATURES}
        self._floors = {**floors, **{f + "_slow": _SLOW_FLOOR * floors[f] for f in SLOWABLE}}
        self._fast = tuple(t for t in cfg.terms if t not in ("residual", "noise"))
        self._slow = tuple(f + "_slow" for f in cfg.slow_terms)
        self._votes = (("noise",) if "noise" in cfg.terms else ()) + self._fast
        self.set_model(calibration, model_version)

    # ----------------------------------------------------------------------------- lifecycle
    def set_model(self, calibration: dict[str, float] | None, model_version: str) -> None:
        """Switch to a new model: its calibration becomes the warm-up prior and the model-dependent
        statistics restart; scale, level and clip statistics are kept."""
        self.model_version = str(model_version)
        self.calibration = dict(calibration or {})
        self._prior = calibration_prior(self.calibration, self.cfg.residual_floor)
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

    def _stream(self, stream: str) -> _Stream:
        st = self._streams.get(stream)
        if st is None:
            st = _Stream(stats={t: self._robust(t) for t in TERMS})
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

        ``features`` passes :func:`~pipeline.alert_terms.window_features` precomputed instead of
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
        window = int(window)
        finite = np.isfinite(errors) & np.isfinite(scales) & (errors >= 0) & (scales >= 0)
        for v in extra.values():
            finite &= np.isfinite(v)
        log_err = np.log(np.maximum(np.where(finite, errors, 1.0), TINY))
        log_scale = np.log(np.maximum(np.where(finite, scales, 1.0), TINY))
        values = {"residual": log_err + 2.0 * log_scale, "error": log_err, "scale": log_scale, **extra}
        st = self._stream(stream)
        b = Batch(stream, starts, window, finite, values, log_err, score, zs, act, events, ts)
        i = 0
        while i < m:
            n = ((self._batchpath and batch_run(self, st, b, i)) or fast_run(self, st, b, i)) if self._fastpath else 0
            if n:
                i += n
            else:
                scalar_step(self, st, b, i)
                i += 1
        return events, WindowScores(starts, score, zs, act, cfg.raise_threshold, cfg.resolve_threshold)


__all__ = ["AlertEngine", "AlertEvent", "AlertSettings", "WindowScores", "TERMS", "EVENT_TYPE", "window_features"]
