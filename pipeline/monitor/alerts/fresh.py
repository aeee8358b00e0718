"""A new stream's first window, for many new streams at once (pure numpy).

A stream's first window is simple: nothing is ready, so its score is the calibration z of its error
(the residual's warm-up prior), it raises nothing, and its values become the first of their
statistics (median = the value, spreads = the floor, as :func:`~pipeline.monitor.alerts.terms.robust_stats`
gives for one value). Many short-lived streams (a chunk each) make this the only window most of
them ever have: :func:`first_windows` takes it for all of them in a few array operations, with the
result of :class:`~pipeline.monitor.alerts.scalar.Cursor` stepping through it.
"""

from __future__ import annotations

import numpy as np

from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.slots import SlotTable


def first_windows(p: Scoring, tab: SlotTable, slots: np.ndarray, idx: np.ndarray, vals: np.ndarray, cols: list[int],
                  starts: np.ndarray, finite: np.ndarray, log_err: np.ndarray, score: np.ndarray, z: np.ndarray) -> None:
    """Window ``idx[e]`` of the call (values ``vals[:, idx[e]]`` of columns ``cols``) as the first window of
    the new stream in slot ``slots[e]``; its score into ``score`` and its z values into ``z``."""
    ok = finite[idx]
    sc = np.zeros(idx.size)
    if p.prior is not None:
        sc = np.where(ok, np.minimum(np.maximum(0.0, (log_err[idx] - p.prior[0]) / p.prior[1]), p.cap), 0.0)
    score[idx] = sc
    z[0, idx] = sc  # the residual's z is the prior's (the first column is the residual)
    tab.last_start[slots], tab.has_last[slots] = starts[idx], True
    n = p.n
    tab.rec_start[slots, n - 1], tab.rec_score[slots, n - 1], tab.rec_len[slots] = starts[idx], sc, 1
    s, w = slots[ok], idx[ok]
    if s.size == 0:
        return
    tab.quiet[s] = 1
    # every value present is admitted (level waits for the scale statistics) and refreshed at once
    adm = [j for j, c in enumerate(cols) if c != p.col("level")]
    c = np.asarray([cols[j] for j in adm])
    v = vals[np.asarray(adm)][:, w].T  # (streams, admitted columns)
    ix = (s[:, None], c[None, :])
    tab.ring[s[:, None], 0, c[None, :]] = v
    tab.count[ix], tab.pending[ix] = 1, 0
    tab.med[ix] = v  # (values are float32 already: terms.stored)
    spread = np.maximum(p.floors[c], p.margins[c] * p.floors[c] / p.raise_threshold)
    tab.hi[ix] = tab.lo[ix] = spread[None, :]
    for q, (f, _) in enumerate(p.slow):  # each slow term's feature history starts
        if f in c:
            tab.slow[s, 0, q] = v[:, int(np.flatnonzero(c == f)[0])]
            tab.slow_n[s, q] = 1
