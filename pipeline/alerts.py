"""Anomaly alerts from per-window reconstruction error and window statistics. Pure logic: no Kafka, no torch.

Inputs per window (from :class:`pipeline.engine.Inference`): ``errors`` — the mean squared error
between the *standardised* window and the model's output — and ``scales`` — the window's true
standard deviation in input units (0 for a flat window). Optionally the raw ``windows`` and the
model's ``outputs`` (both ``(N, C, W)``, input units) enable three more terms; the worker has both at
hand when it applies a batch. ``dae evaluate-alerts`` (``pipeline/evaluate_alerts.py``, results in
docs/alerts.md) measures what each buys.

Terms (robust z-scores, each against the stream's own running statistics)
--------------------------------------------------------------------------
* ``residual`` — ``log(error * scale**2)``: the reconstruction error put back into input units,
  i.e. the power of what the model removed. For a healthy sensor that is its noise floor plus some
  model misfit, far steadier from window to window than the standardised error, which swings with
  the window's own signal power (an ECG window holding a QRS complex and one of baseline only differ
  ~30x in standardised error but not in noise power). It rises when a window holds what the model
  cannot reproduce (spike, step, off-manifold frequencies, extra noise) and falls when the noise
  floor vanishes (flat line, clipped tops): both sides count.
* ``noise`` (needs ``windows`` and ``outputs``) — ``log(mean(diff2(r)**2) / 6)`` of the residual
  ``r = window - output``: second differences pass white noise (divided by 6 it estimates its power)
  but suppress the smooth misfit of a model that reproduces a hard window badly, so this is the
  sensor's noise floor even where the residual term swings with the signal (noise bursts, a
  changed noise level).
* ``scale`` — ``log(scale)``: each window is standardised before the model, so a pure gain change is
  invisible to the error; this term sees noise bursts, gain changes and dropouts (a flat window has
  scale 0: its score is capped at ``max_score``).
* ``level`` (needs ``windows``) — the window mean in units of the stream's median scale: a level
  shift moves the mean, which standardisation hides from the model unless the step is mid-window.
* ``peak`` (needs ``windows`` and ``outputs``) — ``log(max|r| / rms(r))`` of the residual
  ``r = window - output``: ~3 for a noise-like residual whatever its size, far more for a spike or a
  glitch that the model refused to reproduce. It separates a spike from a window the model merely
  fits badly (a loud, harmonic-rich window has a large but spread-out residual).
* ``clip`` (needs ``windows``) — the share of the window's samples pinned at its own maximum or
  minimum: ~2/W for a continuous signal, far more when a sensor saturates at a rail (and 2 for a
  flat window). A noisy signal's clipped tops are flat, which no sensor noise produces.

Each term is ``(x - median) / spread`` over the last ``stats_windows`` *admitted* windows of the
stream (in logs where noted, so a stream with 4x the noise of another simply has a higher median,
not more alerts). ``spread`` is the MAD sigma (``1.4826 * MAD``, floored), widened on each side when
the stream's own tail is heavier than a normal one's: the raise threshold must also lie
``tail_margin`` sigmas beyond the stream's ``tail_quantile`` quantile on that side,
``spread_hi = max(sigma, (q_hi - median + tail_margin * sigma) / raise_threshold)`` (likewise below).
A normal tail (q99 at 2.3 sigma) leaves the MAD sigma in charge; a stream whose residual regularly
swings (a weak model on a hard signal) gets a proportionately higher bar instead of an alert a
minute. The window score is ``max(|z|)`` over the terms, capped at ``max_score``.

Adaptation. Windows are admitted into the statistics while the stream has no alert up and the
window is not hot, winsorised at the raise threshold; during an alert only every
``alert_admit_every``-th window is, so a lasting change of regime (a sensor that is merely noisier
from now on) is learnt in about ``stats_windows / 2 * alert_admit_every`` windows and its alert then
resolves instead of staying up forever. Statistics are recomputed exactly (median/MAD/quantiles of
a ring buffer) after every admitted window during warm-up and every ``refresh_every`` admitted
windows afterwards, so the scores do not depend on how windows were split into ``update`` calls.

Warm-up. A stream raises nothing until ``min_windows`` windows are admitted (its statistics do not
exist before; the scores reported then are the calibration z of ``log(error)``: ``q50`` as centre,
``(log q999 - log q50) / 3.09`` as spread). From then until ``warmup_windows`` the high side of the
residual term is ``min(calibration z, stream z)``: both must call a window anomalous while the
stream's own statistics are young. The calibration describes *clean* validation windows, so on a
noisy sensor it reads high and the stream's own statistics decide; on a clean one it guards the
first seconds. :meth:`AlertEngine.set_model` restarts the model-dependent statistics (residual,
noise, peak) and keeps the signal's own (scale, level, clip).

Alert state machine (per stream)
--------------------------------
``hot`` = score >= ``raise_threshold``; ``warm`` = score >= ``sustained_threshold``. Raise when at
least ``k`` of the last ``n`` windows are hot, or at least ``sustained_k`` of the last
``sustained_n`` are warm (a long, moderate anomaly: clipping, a frequency change), unless the
stream is in cooldown. The raised event's range covers the windows that met the rule. While
raised, windows with score >= ``resolve_threshold`` extend the alert; after ``resolve_windows``
consecutive windows below it the alert resolves (hysteresis), carrying the whole alert's range,
and ``cooldown_windows`` windows may not raise a new alert. Ranges are ``[start, end)`` sample
indices: from the first anomalous window's first sample to one past the last one's last sample.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

EVENT_TYPE = "dae.alert"
TERMS = ("residual", "noise", "scale", "level", "peak", "clip")
# Terms whose statistics depend on the model (restarted by set_model).
_MODEL_TERMS = ("residual", "noise", "peak")
# log() of values at or below this are taken at this value: log(0) for a flat window stays finite.
_TINY = 1e-30
# 1.4826 * MAD estimates the standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
# z of the 99.9th percentile of a normal distribution: turns (q999 - q50) into a spread.
_Z999 = 3.0902


class AlertSettings(BaseModel):
    """Alerting on reconstruction error (mounted as ``Settings.alerts``, env ``DAE_ALERTS__...``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Compute scores and emit alert events at all.
    enabled: bool = True
    # A window is "hot" when its score (max robust z over the terms, see pipeline.alerts) reaches this.
    raise_threshold: float = Field(6.0, gt=0)
    # Hysteresis: an active alert continues while windows score at or above this (< raise_threshold).
    resolve_threshold: float = Field(3.0, gt=0)
    # Raise after k hot windows among the last n (debounce of short events).
    k: int = Field(1, ge=1)
    # Length of the k-of-n history, in windows.
    n: int = Field(1, ge=1)
    # A window is "warm" at this score: resolve_threshold <= sustained_threshold <= raise_threshold.
    sustained_threshold: float = Field(3.5, gt=0)
    # Also raise after sustained_k warm windows among the last sustained_n (0 disables this rule).
    sustained_k: int = Field(10, ge=0)
    # Length of the sustained history, in windows.
    sustained_n: int = Field(16, ge=1)
    # Consecutive windows below resolve_threshold that resolve an alert.
    resolve_windows: int = Field(4, ge=1)
    # Windows after a resolve during which no new alert is raised on that stream.
    cooldown_windows: int = Field(8, ge=0)
    # Running statistics: median/MAD/tail quantiles over the last this many admitted windows per stream.
    stats_windows: int = Field(512, ge=8)
    # After warm-up, recompute the statistics every this many admitted windows (cost vs. lag).
    refresh_every: int = Field(16, ge=1)
    # Admitted windows before a stream may raise (its own statistics exist from then on).
    min_windows: int = Field(8, ge=2)
    # Admitted windows until the stream's statistics are trusted alone (before: min with calibration).
    warmup_windows: int = Field(64, ge=2)
    # During an alert admit every this-many-th window anyway, so a lasting new regime is learnt (0: never).
    alert_admit_every: int = Field(4, ge=0)
    # Tail probability whose quantile the raise threshold must clear (per side, per term).
    tail_quantile: float = Field(0.01, gt=0, lt=0.5)
    # How many sigmas beyond that quantile the raise threshold must lie at least.
    tail_margin: float = Field(3.0, ge=0)
    # The same for the residual term, the least stable one (it carries the model's misfit).
    residual_tail_margin: float = Field(3.0, ge=0)
    # Smallest sigma (log units) of the residual term: a noise-free stream would otherwise alarm on rounding.
    residual_floor: float = Field(0.1, gt=0)
    # Smallest sigma (log units) of the noise term (high-pass residual power).
    noise_floor: float = Field(0.1, gt=0)
    # Smallest sigma (log units) of the scale term.
    scale_floor: float = Field(0.05, gt=0)
    # Smallest sigma of the level term (window mean in units of the stream's median scale): shifts
    # below ~1/10 of the signal's typical std are not worth an alert.
    level_floor: float = Field(0.1, gt=0)
    # Smallest sigma (log units) of the peak term (residual crest factor).
    peak_floor: float = Field(0.05, gt=0)
    # Smallest sigma of the clip term (share of samples at the window's extremes; 0.01 = 2.6 of 256).
    clip_floor: float = Field(0.01, gt=0)
    # Two terms both at or above this also make a window hot (0 disables): the score is then at
    # least raise_threshold * (second-largest |z|) / pair_threshold.
    pair_threshold: float = Field(0.0, ge=0)
    # Terms in use (those needing windows/outputs only when the caller passes them).
    terms: tuple[str, ...] = TERMS
    # Scores are capped here (a flat window has log scale = -inf; JSON has no infinity).
    max_score: float = Field(1000.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "AlertSettings":
        if self.resolve_threshold >= self.raise_threshold:
            raise ValueError(
                f"resolve_threshold ({self.resolve_threshold}) must be below raise_threshold ({self.raise_threshold})"
            )
        if not self.resolve_threshold <= self.sustained_threshold <= self.raise_threshold:
            raise ValueError(
                f"sustained_threshold ({self.sustained_threshold}) must lie between resolve_threshold "
                f"({self.resolve_threshold}) and raise_threshold ({self.raise_threshold})"
            )
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        if self.sustained_k > self.sustained_n:
            raise ValueError(f"sustained_k ({self.sustained_k}) must not exceed sustained_n ({self.sustained_n})")
        if self.warmup_windows < self.min_windows:
            raise ValueError(f"warmup_windows ({self.warmup_windows}) must be >= min_windows ({self.min_windows})")
        if self.warmup_windows > self.stats_windows:
            raise ValueError(f"warmup_windows ({self.warmup_windows}) must be <= stats_windows ({self.stats_windows})")
        unknown = [t for t in self.terms if t not in TERMS]
        if unknown or "residual" not in self.terms:
            raise ValueError(f"terms must include 'residual' and be among {TERMS}, got {self.terms}")
        return self


@dataclass
class AlertEvent:
    kind: str  # "raised" | "resolved"
    stream: str
    start: int  # first sample index of the anomalous range
    end: int  # one past its last sample index
    peak_score: float
    threshold: float  # the threshold crossed: raise or sustained threshold (raised), resolve threshold (resolved)
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
    score: np.ndarray  # (N,) float64: max |z| over the terms, capped; compare with the thresholds
    terms: dict[str, np.ndarray]  # term name -> (N,) signed z (0 where the term is unavailable)
    active: np.ndarray  # (N,) bool: the stream has a raised alert after this window
    raise_threshold: float
    resolve_threshold: float

    @property
    def error_z(self) -> np.ndarray:
        return self.terms["residual"]


def window_features(windows: np.ndarray | None, outputs: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-window inputs of the optional terms from raw windows and model outputs, (N, C, W) each."""
    out: dict[str, np.ndarray] = {}
    if windows is not None:
        x = np.asarray(windows, dtype=np.float64)
        out["level"] = x.mean(axis=(1, 2))
        pinned = (x == x.max(axis=2, keepdims=True)).sum(axis=2) + (x == x.min(axis=2, keepdims=True)).sum(axis=2)
        out["clip"] = (pinned / x.shape[2]).mean(axis=1)
        if outputs is not None:
            r = x - np.asarray(outputs, dtype=np.float64)
            n = r.shape[0]
            r = r.reshape(n, -1)
            peak = np.abs(r).max(axis=1)
            rms = np.sqrt(np.mean(r * r, axis=1))
            out["peak"] = np.log(np.maximum(peak, _TINY) / np.maximum(rms, _TINY))
            d2 = np.diff(r, n=2, axis=1) if r.shape[1] > 2 else np.zeros((n, 1))
            out["noise"] = np.log(np.maximum(np.mean(d2 * d2, axis=1) / 6.0, _TINY))
    return out


class _Robust:
    """Median, MAD sigma and tail-widened spreads of the last ``size`` admitted values."""

    __slots__ = ("buf", "count", "pos", "med", "hi", "lo", "pending", "floor", "p", "margin", "thr")

    def __init__(self, size: int, floor: float, cfg: AlertSettings, margin: float):
        self.buf = np.empty(size, dtype=np.float64)
        self.count = 0  # values admitted so far (not capped at size)
        self.pos = 0
        self.med = 0.0
        self.hi = self.lo = floor  # spreads above / below the median
        self.pending = 0  # admitted since the last refresh
        self.floor = floor
        self.p, self.margin, self.thr = cfg.tail_quantile, margin, cfg.raise_threshold

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


@dataclass
class _Stream:
    stats: dict[str, _Robust]
    last_start: int | None = None
    recent: deque = field(default_factory=deque)  # (start, score, hot) of the last n windows
    sustained: deque = field(default_factory=deque)  # (start, score, warm) of the last sustained_n
    active: bool = False
    alert_start: int = 0
    alert_end: int = 0
    alert_peak: float = 0.0
    below: int = 0  # consecutive windows below resolve_threshold while active
    cooldown: int = 0  # windows left in which no alert may be raised
    in_alert: int = 0  # windows seen during the current alert (for alert_admit_every)


def _calibration_prior(calibration: dict[str, float] | None, floor: float) -> tuple[float, float] | None:
    """(centre, spread) in log(error) from the checkpoint's error quantiles, or None if unusable."""
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


class AlertEngine:
    """Per-stream scores and alert state for many streams (one instance per worker process)."""

    def __init__(self, cfg: AlertSettings, calibration: dict[str, float] | None, model_version: str):
        self.cfg = cfg
        self._streams: dict[str, _Stream] = {}
        self._floors = {t: getattr(cfg, f"{t}_floor") for t in TERMS}
        self.set_model(calibration, model_version)

    # ----------------------------------------------------------------------------- lifecycle
    def set_model(self, calibration: dict[str, float] | None, model_version: str) -> None:
        """Switch to a new model: its calibration becomes the warm-up prior and the model-dependent
        statistics (residual, noise, peak) restart; scale, level and clip statistics are kept."""
        self.model_version = str(model_version)
        self.calibration = dict(calibration or {})
        self._prior = _calibration_prior(self.calibration, self.cfg.residual_floor)
        for st in self._streams.values():
            for t in _MODEL_TERMS:
                st.stats[t] = self._robust(t)

    def _robust(self, term: str) -> _Robust:
        c = self.cfg
        return _Robust(c.stats_windows, self._floors[term], c, c.residual_tail_margin if term == "residual" else c.tail_margin)

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
    def update(
        self,
        stream: str,
        starts: np.ndarray,
        window: int,
        errors: np.ndarray,
        scales: np.ndarray,
        now: float | None = None,
        windows: np.ndarray | None = None,
        outputs: np.ndarray | None = None,
    ) -> list[AlertEvent]:
        """Score the windows of one stream (increasing start order) and advance its alert state."""
        return self.update_scored(stream, starts, window, errors, scales, now, windows, outputs)[0]

    def update_scored(
        self,
        stream: str,
        starts: np.ndarray,
        window: int,
        errors: np.ndarray,
        scales: np.ndarray,
        now: float | None = None,
        windows: np.ndarray | None = None,
        outputs: np.ndarray | None = None,
        features: dict[str, np.ndarray] | None = None,
    ) -> tuple[list[AlertEvent], WindowScores]:
        """:meth:`update` plus each window's score, terms and alert state (for evaluation and metrics).

        ``windows``/``outputs`` (optional, ``(N, C, W)``) enable the noise, level, peak and clip terms;
        ``features`` passes :func:`window_features` precomputed instead. A window whose start is not
        after the previous one's (a rewound producer) starts a new debounce history; an alert
        already raised stays raised. Non-finite inputs score 0 and are not admitted.
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
        extra = {t: np.asarray(v, dtype=np.float64).reshape(-1) for t, v in features.items() if t in cfg.terms}
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
        log_err = np.log(np.maximum(np.where(finite, errors, 1.0), _TINY))
        log_scale = np.log(np.maximum(np.where(finite, scales, 1.0), _TINY))
        values = {"residual": log_err + 2.0 * log_scale}
        if "scale" in cfg.terms:
            values["scale"] = log_scale
        values.update(extra)  # "level" is normalised below, per window, by the running median scale
        st = self._stream(stream)
        stats = st.stats
        prior = self._prior
        cap, thr_raise, thr_resolve, thr_warm = cfg.max_score, cfg.raise_threshold, cfg.resolve_threshold, cfg.sustained_threshold
        min_w, warm_n, every = cfg.min_windows, cfg.warmup_windows, cfg.refresh_every
        pair = thr_raise / cfg.pair_threshold if cfg.pair_threshold else 0.0
        resid = stats["residual"]

        for i in range(m):
            s = int(starts[i])
            if st.last_start is not None and s <= st.last_start:
                st.recent.clear()  # rewind: a new segment, a new debounce history
                st.sustained.clear()
            st.last_start = s
            ready = resid.count >= min_w
            x_now: dict[str, float] = {}
            sc = sc2 = a_model = 0.0
            if finite[i]:
                for t, arr in values.items():
                    x = float(arr[i])
                    r = stats[t]
                    if t == "level":
                        if stats["scale"].count < min_w:
                            continue
                        x /= max(math.exp(stats["scale"].med), _TINY)
                    x_now[t] = x
                    if t == "residual" and not ready:
                        z = max(0.0, (log_err[i] - prior[0]) / prior[1]) if prior is not None else 0.0
                    elif r.count < min_w:
                        continue
                    else:
                        z = r.z(x)
                        if t == "residual" and r.count < warm_n and z > 0 and prior is not None:
                            z = min(z, max(0.0, (log_err[i] - prior[0]) / prior[1]))
                    z = min(max(z, -cap), cap)
                    zs[t][i] = z
                    a = abs(z)
                    if t == "noise":  # residual and noise measure the same residual: one vote
                        a_model = max(a_model, a)
                        continue
                    if t == "residual":
                        a_model = max(a_model, a)
                        continue
                    if a > sc:
                        sc, sc2 = a, sc
                    elif a > sc2:
                        sc2 = a
                if a_model > sc:
                    sc, sc2 = a_model, sc
                elif a_model > sc2:
                    sc2 = a_model
            if pair and sc2 * pair > sc:
                sc = sc2 * pair
            sc = min(sc, cap)
            score[i] = sc
            hot = ready and sc >= thr_raise
            warm = ready and sc >= thr_warm

            # ---- raise (k of n hot, or sustained_k of sustained_n warm) / resolve / cooldown
            st.recent.append((s, sc, hot))
            if len(st.recent) > cfg.n:
                st.recent.popleft()
            st.sustained.append((s, sc, warm))
            if len(st.sustained) > cfg.sustained_n:
                st.sustained.popleft()
            if st.active:
                st.in_alert += 1
                if sc >= thr_resolve:
                    st.below = 0
                    st.alert_end = max(st.alert_end, s + window)
                    st.alert_peak = max(st.alert_peak, sc)
                else:
                    st.below += 1
                    if st.below >= cfg.resolve_windows:
                        events.append(AlertEvent(
                            "resolved", stream, st.alert_start, st.alert_end, st.alert_peak,
                            thr_resolve, self.model_version, ts,
                        ))
                        st.active = False
                        st.cooldown = cfg.cooldown_windows
                        st.recent.clear()
                        st.sustained.clear()
            elif st.cooldown > 0:
                st.cooldown -= 1
            elif warm:
                trig, thr = None, thr_raise
                if hot and sum(1 for r in st.recent if r[2]) >= cfg.k:
                    trig = [r for r in st.recent if r[2]]
                elif cfg.sustained_k and sum(1 for r in st.sustained if r[2]) >= cfg.sustained_k:
                    trig, thr = [r for r in st.sustained if r[2]], thr_warm
                if trig:
                    st.active = True
                    st.alert_start = min(r[0] for r in trig)
                    st.alert_end = max(r[0] for r in trig) + window
                    st.alert_peak = max(r[1] for r in trig)
                    st.below = 0
                    st.in_alert = 0
                    events.append(AlertEvent(
                        "raised", stream, st.alert_start, st.alert_end, st.alert_peak,
                        thr, self.model_version, ts,
                    ))
            act[i] = st.active

            # ---- adaptation: windows outside alerts that are not hot, and a trickle during alerts
            if finite[i]:
                if st.active:
                    admit = bool(cfg.alert_admit_every) and st.in_alert > 0 and st.in_alert % cfg.alert_admit_every == 0
                else:
                    admit = not hot
                if admit:
                    for t, x in x_now.items():
                        r = stats[t]
                        r.add(x, every, warm_n, r.count >= min_w)

        return events, WindowScores(starts, score, zs, act, thr_raise, thr_resolve)


__all__ = ["AlertEngine", "AlertEvent", "AlertSettings", "WindowScores", "TERMS", "EVENT_TYPE", "window_features"]
