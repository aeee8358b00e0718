"""The arithmetic every path of the alert engine shares (pure numpy), and what it reads.

:class:`Scoring` is the engine's settings as the steps need them, built once per model. The
functions turn values into scores the same way for one window (the scalar reference step) and for a
run of windows (the vectorised paths): :func:`window_scores` combines per-term z values into the
window score (residual gated by error, voting, capping), :func:`zscore` and :func:`winsorise`
apply a statistic to values, :func:`slow_means` forms the slow terms' means. Sharing them keeps
the paths bit for bit equal (``tests/test_alerts_fastpath.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.monitor.alerts.terms import calibration_prior
from pipeline.settings import AlertSettings


@dataclass(frozen=True)
class Scoring:
    """What the steps read: the settings they use, the voting terms, the model's warm-up prior and
    the model version the events carry. Fixed until the engine's next ``set_model``."""

    cap: float  # max_score
    raise_threshold: float
    resolve_threshold: float
    k: int
    n: int
    resolve_windows: int
    cooldown_windows: int
    alert_admit_every: int
    min_windows: int
    warmup_windows: int
    refresh_every: int
    stats_windows: int
    tail_quantile: float
    slow_windows: int
    slow_min: int  # admitted values before a slow term votes
    slow_terms: tuple[str, ...]  # features with a slow mean
    votes: tuple[str, ...]  # per-window terms voting beside residual (noise shares its vote)
    slow_votes: tuple[str, ...]  # the voting slow terms
    scored: tuple[str, ...]  # every term window_scores reads
    prior: tuple[float, float] | None  # (centre, spread) of log(error) from the calibration
    model_version: str

    @classmethod
    def build(cls, cfg: AlertSettings, calibration: dict[str, float], model_version: str) -> Scoring:
        votes = (("noise",) if "noise" in cfg.terms else ()) + tuple(
            t for t in cfg.terms if t not in ("residual", "noise"))
        slow_votes = tuple(f + "_slow" for f in cfg.slow_terms)
        return cls(
            cap=cfg.max_score, raise_threshold=cfg.raise_threshold, resolve_threshold=cfg.resolve_threshold,
            k=cfg.k, n=cfg.n, resolve_windows=cfg.resolve_windows, cooldown_windows=cfg.cooldown_windows,
            alert_admit_every=cfg.alert_admit_every, min_windows=cfg.min_windows,
            warmup_windows=cfg.warmup_windows, refresh_every=cfg.refresh_every, stats_windows=cfg.stats_windows,
            tail_quantile=cfg.tail_quantile, slow_windows=cfg.slow_windows,
            slow_min=max(cfg.warmup_windows, 2 * cfg.slow_windows), slow_terms=tuple(cfg.slow_terms),
            votes=votes, slow_votes=slow_votes, scored=("residual", "error") + votes + slow_votes,
            prior=calibration_prior(calibration, cfg.residual_floor), model_version=model_version)


class FloatOps:
    """The element-wise operations of :func:`window_scores` on Python floats: one window, without
    numpy's per-call cost (the same values: min, max and abs are exact)."""

    abs = staticmethod(abs)
    maximum = staticmethod(max)
    minimum = staticmethod(min)

    @staticmethod
    def where(cond, a, b):
        return a if cond else b


def window_scores(z: Mapping[str, np.ndarray], p: Scoring, gate: bool = True, ops=np) -> tuple[np.ndarray, np.ndarray]:
    """``(fast, score)`` of windows from their per-term z values (terms missing from ``z`` do not
    vote): ``fast`` is the largest ``|z|`` of the per-window voters, ``score`` that of all voters
    (slow terms too), capped at ``p.cap``. With ``gate`` the residual's high side counts only as far
    as the standardised error's z: a loud window's larger misfit is not an anomaly unless the relative
    error agrees (off while the residual's own statistics warm up: its z is then the calibration's).
    ``ops``: numpy for arrays of windows, :class:`FloatOps` for one window's floats."""
    zr = z["residual"]
    if gate:
        zr = ops.where(zr > 0, ops.minimum(zr, ops.maximum(z["error"], 0.0)), zr)
    fast = ops.abs(zr)
    for t in p.votes:
        if t in z:
            fast = ops.maximum(fast, ops.abs(z[t]))
    score = fast
    for t in p.slow_votes:
        if t in z:
            score = ops.maximum(score, ops.abs(z[t]))
    return fast, ops.minimum(score, p.cap)


def zscore(d: np.ndarray, hi, lo, cap: float) -> np.ndarray:
    """Robust z of deviations ``d`` from the median (upper spread ``hi``, lower ``lo``), within ±cap."""
    z = np.where(d >= 0, d / hi, d / lo)
    return np.clip(z, -cap, cap, out=z)


def winsorise(x, med, hi, lo, thr: float):
    """``x`` limited to ``thr`` spreads either side of the median, the form values are admitted in."""
    return np.minimum(np.maximum(x, med - thr * lo), med + thr * hi)


def first_hot(score: np.ndarray, thr: float) -> int:
    """Index of the first window scoring at least ``thr`` (the run's length when none does)."""
    hot = score >= thr
    return int(np.argmax(hot)) if hot.any() else score.size


def slow_means(last: np.ndarray, x: np.ndarray, first: int = 0) -> np.ndarray:
    """Slow means of windows ``first, first+1, ...`` of a run with values ``x``, ``last`` being the
    stream's ``sw = last.size`` values before the run: each the mean of the last ``sw`` values at its
    window, with the additions of ``sum(deque) / len(deque)``, left to right (a column per window)."""
    sw = last.size
    hist = np.concatenate((last, x))
    idx = np.arange(sw)[:, None] + np.arange(first + 1, x.size + 1)[None, :]
    return np.add.accumulate(hist[idx], axis=0)[-1] / sw
