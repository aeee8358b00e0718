"""NAB's windowed Gaussian baseline, re-implemented, scored by our NAB scorer (``nab.py``).

Why: our NAB figures come from a scorer re-implemented from NAB's documented rules; the published
scores beside them come from NAB's own code. Running NAB's simplest published detector through our
scorer checks the two against each other on the whole corpus: if ours gives it about its published
39.6, the gap between our engine and that baseline is the detector's, not the scoring's.

The detector, as NAB's ``windowedGaussian_detector.py`` (its final version, 2016) has it: per record,
``1 - Q(|z|)``, z the value's distance from the mean of a window of earlier values in population
stds (1e-6 where the std is 0), Q the normal tail probability; 0 for the first record. The window
holds every earlier value until it has ``WINDOW`` (6400), then moves on by ``STEP`` (100) values at
a time. Every record whose score reaches the threshold is a detection (NAB's scorer counts the
earliest in each label window and every one outside them); NAB's optimiser picks the threshold that
maximises the corpus score, and :func:`sweep` does the same over ``THRESHOLDS``. The scores are
used unrounded: rounded to 0.001 (as NAB's results files once stored them) every z past ~3.3 reads
1.000 and the best corpus score is -64 (measured), while the published 39.6 needs thresholds near
1 - 1e-12 (z ~ 7).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.special import erfc

WINDOW, STEP = 6400, 100
# 1 - 10**-k for k = 1, 1.25, .., 15: the score is 1 - Q(|z|), so these are z from 1.6 to 7.9
THRESHOLDS = tuple(1.0 - 10.0 ** -(1.0 + 0.25 * k) for k in range(57))


def windowed_gaussian_scores(x: np.ndarray, window: int = WINDOW, step: int = STEP) -> np.ndarray:
    """Per record: NAB's windowed Gaussian anomaly score (module docstring)."""
    if not 1 <= step <= window:
        raise ValueError(f"step {step} must be 1 .. window {window} (NAB's window would grow to the step)")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n = x.size
    mean, std = np.zeros(n), np.ones(n)
    # Records 1 .. window: the window is every earlier record (cumulative sums, shifted by the first
    # value so that a large offset does not cost the variance its precision).
    m = min(n, window + 1)
    d = x[: m - 1] - x[0]
    cnt = np.arange(1, m)
    s1, s2 = np.cumsum(d), np.cumsum(d * d)
    mean[1:m] = x[0] + s1 / cnt
    std[1:m] = np.sqrt(np.maximum(s2 / cnt - (s1 / cnt) ** 2, 0.0))
    # Later records: the window of the last slide before them. Slides end at records e = window - 1
    # + k * step; records e + 1 .. e + step are scored against x[e - window + 1 .. e].
    for e in range(window - 1, n - 1, step):
        a, b = max(e + 1, window + 1), min(e + 1 + step, n)
        if a < b:
            w = x[e - window + 1 : e + 1]
            mean[a:b], std[a:b] = w.mean(), w.std()
    std = np.where(std == 0.0, 1e-6, std)
    z = np.abs(x - mean) / std
    score = 1.0 - 0.5 * erfc(z / math.sqrt(2.0))
    score[0] = 0.0
    return score


def sweep(data: Sequence[tuple[str, np.ndarray, list]], score_file, thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """The corpus score of the detector at each threshold, and the best. ``data``: (name, values,
    label windows) per file; ``score_file(n, detections, windows)`` our scorer's per-file dict."""
    scores = [windowed_gaussian_scores(x) for _, x, _ in data]
    empty = [score_file(x.size, [], w) for _, x, w in data]  # no detection: the null score
    null = sum(r["raw"] for r in empty)
    perfect = float(sum(r["windows"] for r in empty))
    rows = []
    for t in thresholds:
        raw, hit, dets = 0.0, 0, 0
        for (_, x, w), s in zip(data, scores):
            r = score_file(x.size, np.flatnonzero(s >= t).tolist(), w)
            raw, hit, dets = raw + r["raw"], hit + r["tp_windows"], dets + r["tp_detections"] + r["fp_detections"]
        rows.append({"threshold": t, "nab_score_standard": 100.0 * (raw - null) / (perfect - null),
                     "windows_hit": hit, "detections": dets})
    best = max(rows, key=lambda r: r["nab_score_standard"])
    return {"window": WINDOW, "step": STEP, "sweep": rows, "best_threshold": best["threshold"],
            "best_nab_score_standard": best["nab_score_standard"]}
