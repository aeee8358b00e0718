"""NAB's windowed Gaussian re-implemented (pipeline/tools/alert_eval/nab_baseline.py): the same scores
as NAB's record-at-a-time loop, and detections scored by our NAB scorer as NAB's rules say."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tools.alert_eval.nab import nab_score_file
from pipeline.tools.alert_eval.nab_baseline import sweep, windowed_gaussian_scores


def _nab_loop(values, window: int, step: int) -> np.ndarray:
    """NAB's detector as its handleRecord describes it, one record at a time."""
    data, buf, mean, std, out = [], [], 0.0, 1.0, []
    for v in values:
        score = 0.0
        if data:
            x = v if v >= mean else 2 * mean - v  # the mirror for a value below the mean
            score = 1 - 0.5 * math.erfc(((x - mean) / std) / math.sqrt(2))
        if len(data) < window:
            data.append(v)
        else:
            buf.append(v)
            if len(buf) < step:
                out.append(score)
                continue
            data, buf = data[step:] + buf, []
        mean, std = float(np.mean(data)), float(np.std(data))
        std = std or 1e-6
        out.append(score)
    return np.array(out)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), window=st.integers(1, 80), step=st.integers(1, 30),
       offset=st.sampled_from([0.0, 1e4, -3e6]), seed=st.integers(0, 2**16))
def test_vectorised_scores_equal_the_record_loop(n, window, step, offset, seed):
    step = min(step, window)  # NAB's window would grow to the step otherwise (refused)
    rng = np.random.default_rng(seed)
    x = offset + rng.standard_normal(n).cumsum()
    if n > 3:
        x[n // 2] += 50.0 * (1.0 + abs(x).max() * 1e-9)
        x[: n // 4] = 0.0  # a constant stretch (exact zeros): std 0 at the start
    got, want = windowed_gaussian_scores(x, window, step), _nab_loop(x, window, step)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_a_step_longer_than_the_window_is_refused():
    with pytest.raises(ValueError, match="step 5 must be 1 .. window 4"):
        windowed_gaussian_scores(np.zeros(10), 4, 5)


def test_a_spike_inside_a_label_window_scores_and_one_outside_costs():
    rng = np.random.default_rng(0)
    n = 4000
    x = rng.standard_normal(n)
    x[2500] += 40.0  # inside the label window
    labelled = [(2400, 2700)]
    r = sweep([("a.csv", x, labelled)], nab_score_file)
    best = max(r["sweep"], key=lambda row: row["nab_score_standard"])
    assert best["windows_hit"] == 1 and best["nab_score_standard"] > 50.0  # early in its window
    x2 = x.copy()
    x2[1500] += 40.0  # and one far outside it: a false positive at every threshold that finds the first
    r2 = sweep([("a.csv", x2, labelled)], nab_score_file)
    assert r2["best_nab_score_standard"] < r["best_nab_score_standard"]
