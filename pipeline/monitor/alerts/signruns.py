"""Sign-run tests: a term that stays on one side of the stream's own median for longer than the
stream's history makes credible (``runs`` in ``alerts.sequential``; pure numpy, state in the engine's
slots, fields ``seq_r*``).

Why. The CUSUMs (:mod:`pipeline.monitor.alerts.sequential`) sum a term's z against its mean and
long-run variance. On a signal of bursts over silence (knocks on a structure, the held-out
``impacts`` family) a window's scale and residual noise are bimodal, burst or silence, and they
alternate quickly: the long-run variance is large, so five seconds of a lost signal (every window
silent) or of doubled noise (every silent window louder) barely move a CUSUM, although the
*pattern* is unmistakable. Measured on the four seeds' 16 clean ``impacts`` streams (8 stream-hours):
windows below the median scale never come more than 13 in a row; a lost signal makes 40.

What. Per stream and test, the window is *on its side* when the term's robust z (the engine's,
against the stream's median) has the test's sign: ``scale`` below its median (a lost signal, a
gain that fell, a dead sensor) and ``noise`` above it (the noise floor rose; not gated by the
error as the noise CUSUM is: in silence a louder floor is still pure noise, so the standardised
error cannot agree). A run is a stretch of consecutive such windows; the test raises when the
current run reaches ``L*`` windows.

False-alarm model. A run is one cluster, so its rate is the test's share of the false alarms
directly (no declustering needed). Each stream counts, over its quiet windows (the estimates'
blocks, an exponential memory ``RUN_MEMORY`` times the CUSUMs'), the runs of at least ``RUN_L0``
windows per window ``c`` and their mean excess over ``RUN_L0``, ``E`` (shrunk towards a prior of
``RUN_PRIOR_RUNS`` runs of excess ``RUN_PRIOR_EXCESS``); above ``RUN_L0`` run lengths are taken as geometric (the discrete
exponential tail of peaks over threshold) with ratio ``r = E / (1 + E)``, its maximum-likelihood
estimate, so runs of ``RUN_L0 + y`` windows or more start at ``c r^y`` per window, and ``L*`` is where
that is the test's per-window share ``p``: ``L* = RUN_L0 + ln(c / p) / ln(1 / r)``, never below
``RUN_MIN`` windows. In the engine the test is one more CUSUM side: each window on its side adds
``h / L*`` (so it reaches ``h`` after ``L*`` windows), any other window resets it to 0, so the raised
range starts where the run did and the alert resolves once the run breaks.
"""

from __future__ import annotations

import numpy as np

from pipeline.monitor.alerts.cusum import ew_block, lindley

# Terms with a run test and the side of the median tested: scale below it, noise above it.
RUN_TERMS = (("scale", -1), ("noise", 1))
MAX_RUNS = len(RUN_TERMS)  # slot record size (slots.record_dtype)
RUN_L0 = 4  # run lengths are modelled as geometric from this many windows up
RUN_MIN = 8  # no run test raises on fewer windows (1 s at 1 kHz, hop 128)
# The runs' estimates remember this many times as many windows as the CUSUMs' (sequential_memory):
# runs of RUN_L0 windows or more are ~1 in 20 windows, so 1,024 windows hold only ~50 of them.
RUN_MEMORY = 8
# A young stream's history holds a handful of runs: its mean excess is shrunk towards a prior of
# RUN_PRIOR_RUNS runs with mean excess RUN_PRIOR_EXCESS windows (ratio 0.75: runs more persistent than
# any family measured, 0.5-0.62), which weighs little once hundreds of runs are in.
RUN_PRIOR_RUNS, RUN_PRIOR_EXCESS = 10.0, 3.0
L_MAX = 1e6  # the limit where the history has no tail to extrapolate (a run never ends)


def run_limit(c: np.ndarray, e: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """Per stream: the run length ``L*`` where runs that long start at rate ``p`` per window, from ``c``,
    the runs of at least ``RUN_L0`` windows per window, ``e``, their summed excess per window, and ``n``,
    the windows behind them (the mean excess is shrunk towards the prior by the runs counted)."""
    n = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
    e = np.asarray(e, dtype=np.float64)
    mean_excess = (e * n + RUN_PRIOR_RUNS * RUN_PRIOR_EXCESS) / (np.asarray(c) * n + RUN_PRIOR_RUNS)
    c = np.maximum(c, 1.0 / n)  # no run that long in n windows: about one in n, not none
    r = mean_excess / (1.0 + mean_excess)  # in (0, 1): the prior keeps the mean excess above 0
    span = np.log(np.maximum(c, p) / p) / np.maximum(-np.log(r), 1e-300)
    return np.clip(RUN_L0 + span, RUN_MIN, L_MAX)


class SignRuns:
    """The run tests of one engine: which engine columns they read, and their bookkeeping."""

    def __init__(self, cols: tuple[int, ...], signs: tuple[int, ...], p_win: float, warmup: int, memory: int):
        self.cols, self.signs = cols, np.array(signs, dtype=np.float64)
        self.p, self.warmup, self.memory = p_win, warmup, RUN_MEMORY * memory

    def __len__(self) -> int:
        return len(self.cols)

    def sides(self, z, finite) -> np.ndarray:
        """``(R, N)``: each window on each test's side (a term without statistics yet has z 0: not)."""
        return (z[list(self.cols)] * self.signs[:, None] > 0.0) & finite[None, :]

    def increments(self, n, c, e, on, h: float) -> tuple[np.ndarray, np.ndarray]:
        """Each window's increment ``h / L*`` and readiness ``(R, N)`` from its stream's estimates at the
        start of its block (``n``, ``c``, ``e``: fields ``seq_rn``, ``seq_rc``, ``seq_re``, ``(R, N)``): ready
        where on its side and the stream's run history holds ``warmup`` windows."""
        lim = run_limit(c, e, np.minimum(n, self.memory), self.p)
        return h / lim, on & (n >= self.warmup)

    def learn(self, tab, slots, seg, first, n_u, on, counted, closes) -> None:
        """Runs of the ``counted`` (quiet, finite) windows into the blocks' accumulators: a run is
        counted where a counted window off its side ends it (a run broken by an uncounted window,
        an alert, is censored); the current run's length carries over to the next call."""
        R, U = len(self.cols), slots.size
        if R == 0:
            return
        L = int(n_u.max())
        pos = np.arange(seg.size) - first[seg]
        run_on = on & counted[None, :]
        ones, rst = np.zeros((R, U, L)), np.ones((R, U, L), dtype=bool)
        ones[:, seg, pos] = 1.0
        rst[:, seg, pos] = ~run_on
        r0 = tab.seq_rlen[slots, :R].T.astype(np.float64)
        run = lindley(ones, rst, r0)  # (R, U, L): the run length at each window
        before = np.concatenate((r0[:, :, None], run[:, :, :-1]), axis=2)[:, seg, pos]  # (R, N)
        ends = counted[None, :] & ~on & (before >= RUN_L0)
        excess = np.where(ends, before - RUN_L0, 0.0)
        last = first + n_u - 1
        tab.seq_rlen[slots, :R] = np.rint(run[:, seg[last], pos[last]]).T.astype(np.int64)
        ew_block(tab, slots, closes, seg, np.broadcast_to(counted, ends.shape), (ends.astype(np.float64), excess),
                 ("seq_rn", "seq_rc", "seq_re"), ("seq_rqn", "seq_rq1", "seq_rq2"), memory=self.memory)


def run_cols(p_cols: tuple[str, ...], sequential: tuple[str, ...]):
    """The engine columns, signs and detector names of the run tests ``sequential`` asks for (a term the
    engine keeps no statistics of has none)."""
    if "runs" not in sequential:
        return (), (), ()
    got = [(p_cols.index(t), s, f"run_{t}{'+' if s > 0 else '-'}") for t, s in RUN_TERMS if t in p_cols]
    return tuple(tuple(g[i] for g in got) for i in range(3))

