"""What every path of the alert engine reads, and the arithmetic they share (pure numpy).

:class:`Scoring` is the engine's settings as the paths need them, with the term layout: every term
with statistics has a *column* (the features in ``ALERT_FEATURES`` order, then the slow terms), the
index the per-stream arrays of :mod:`pipeline.monitor.alerts.slots` use. It is built once per model.
:func:`window_scores` combines per-term z values into the window score (residual gated by error,
voting, capping) for a run of windows; the scalar path does the same per window in
:mod:`pipeline.monitor.alerts.scalar`; :func:`zscore` and :func:`winsorise` apply a statistic to values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.monitor.alerts.events import TERMS
from pipeline.monitor.alerts.terms import TINY, calibration_prior, stored
from pipeline.settings import ALERT_FEATURES, AlertSettings

# Terms whose statistics depend on the model (restarted by set_model); their slow means too.
MODEL_FEATURES = ("residual", "error", "noise", "peak", "freq")
# Slow terms' floors are this share of their feature's: a mean over many windows varies less.
SLOW_FLOOR = 0.5


@dataclass(frozen=True)
class Scoring:
    """What the paths read: the settings they use, the term columns, the voting columns, the model's
    warm-up prior and the model version the events carry. Fixed until the engine's next ``set_model``."""

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
    cols: tuple[str, ...]  # the terms with statistics: per-window features, then slow terms
    features: int  # cols[:features] are per-window features
    slow: tuple[tuple[int, int], ...]  # (feature column, slow column) of each slow term
    votes: tuple[int, ...]  # per-window columns voting beside residual (noise shares its vote)
    slow_votes: tuple[int, ...]  # the slow columns (all vote)
    floors: np.ndarray  # (cols,) smallest spread
    margins: np.ndarray  # (cols,) tail margin
    model_cols: tuple[int, ...]  # columns restarted by a model swap
    term_rows: np.ndarray  # (cols,) each column's row in events.TERMS
    prior: tuple[float, float] | None  # (centre, spread) of log(error) from the calibration
    model_version: str

    @classmethod
    def build(cls, cfg: AlertSettings, calibration: dict[str, float], model_version: str) -> Scoring:
        wanted = {"residual", "error", "scale"} | set(cfg.terms) | set(cfg.slow_terms) | set(cfg.sequential)
        feats = tuple(f for f in ALERT_FEATURES if f in wanted)
        cols = feats + tuple(f + "_slow" for f in cfg.slow_terms)
        col = {t: i for i, t in enumerate(cols)}
        votes = (("noise",) if "noise" in cfg.terms else ()) + tuple(
            t for t in cfg.terms if t not in ("residual", "noise"))
        floors = [getattr(cfg, f"{t}_floor") for t in feats] + [SLOW_FLOOR * getattr(cfg, f"{f}_floor")
                                                                 for f in cfg.slow_terms]
        margins = [cfg.model_tail_margin if t in ("residual", "noise") else cfg.tail_margin for t in feats]
        margins += [cfg.tail_margin] * len(cfg.slow_terms)
        return cls(
            cap=cfg.max_score, raise_threshold=cfg.raise_threshold, resolve_threshold=cfg.resolve_threshold,
            k=cfg.k, n=cfg.n, resolve_windows=cfg.resolve_windows, cooldown_windows=cfg.cooldown_windows,
            alert_admit_every=cfg.alert_admit_every, min_windows=cfg.min_windows,
            warmup_windows=cfg.warmup_windows, refresh_every=cfg.refresh_every, stats_windows=cfg.stats_windows,
            tail_quantile=cfg.tail_quantile, slow_windows=cfg.slow_windows,
            slow_min=max(cfg.warmup_windows, 2 * cfg.slow_windows), cols=cols, features=len(feats),
            slow=tuple((col[f], col[f + "_slow"]) for f in cfg.slow_terms),
            votes=tuple(col[t] for t in votes), slow_votes=tuple(col[f + "_slow"] for f in cfg.slow_terms),
            floors=np.array(floors, dtype=np.float64), margins=np.array(margins, dtype=np.float64),
            model_cols=tuple(i for i, t in enumerate(cols) if t.removesuffix("_slow") in MODEL_FEATURES),
            term_rows=np.array([TERMS.index(t) for t in cols]),
            prior=calibration_prior(calibration, cfg.residual_floor), model_version=model_version)

    def col(self, term: str) -> int:
        """The column of ``term``, or -1 when it has none."""
        return self.cols.index(term) if term in self.cols else -1


def window_scores(z: np.ndarray, p: Scoring) -> np.ndarray:
    """The score of windows from their z values ``z`` (columns first, 0 where a term has no z yet),
    with the residual gated by the standardised error: its high side counts only as far as the
    error's z (a loud window's larger misfit is not an anomaly unless the relative error agrees).
    The largest ``|z|`` of the voters (per-window and slow), capped at ``p.cap``."""
    zr, ze = z[0], z[1]  # residual and error are the first two columns
    score = np.abs(np.where(zr > 0, np.minimum(zr, np.maximum(ze, 0.0)), zr))
    for t in p.votes + p.slow_votes:
        score = np.maximum(score, np.abs(z[t]))
    return np.minimum(score, p.cap, out=score)


def zscore(d: np.ndarray, hi, lo, cap: float) -> np.ndarray:
    """Robust z of deviations ``d`` from the median (upper spread ``hi``, lower ``lo``), within ±cap."""
    z = np.where(d >= 0, d / hi, d / lo)
    return np.clip(z, -cap, cap, out=z)


def winsorise(x, med, hi, lo, thr: float):
    """``x`` limited to ``thr`` spreads either side of the median, the form values are admitted in."""
    return np.minimum(np.maximum(x, med - thr * lo), med + thr * hi)


def window_values(p: Scoring, errors, scales, features, n) -> tuple[np.ndarray, list[int], np.ndarray, np.ndarray]:
    """``(values (columns, N), their columns, finite (N,), log error (N,))`` of the call's windows."""
    extra = {}
    for t, v in features.items():
        c = p.col(t)
        if 0 <= c < p.features:
            extra[c] = np.asarray(v, dtype=np.float64).reshape(-1)
            if extra[c].shape != (n,):
                raise ValueError(f"{t} features {extra[c].shape} must match starts ({n},)")
    finite = np.isfinite(errors) & np.isfinite(scales) & (errors >= 0) & (scales >= 0)
    for v in extra.values():
        finite &= np.isfinite(v)
    log_err = np.log(np.maximum(np.where(finite, errors, 1.0), TINY))
    log_scale = np.log(np.maximum(np.where(finite, scales, 1.0), TINY))
    vals = {0: log_err + 2.0 * log_scale, 1: log_err, p.col("scale"): log_scale, **extra}
    cols = sorted(vals)
    return stored(np.stack([vals[c] for c in cols])), cols, finite, log_err
