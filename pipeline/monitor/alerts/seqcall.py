"""One call's per-window inputs of the sequential tests (:mod:`pipeline.monitor.alerts.sequential`),
pure numpy: each window's CUSUM and run-test increments and spike ratio from its stream's estimates at
the start of its block, the CUSUMs in closed form, and the block-by-block learning of the estimates.
"""

from __future__ import annotations

import numpy as np

from pipeline.monitor.alerts.cusum import U_MAX, ew_block, exact, lindley
from pipeline.monitor.alerts.signruns import SignRuns

# Smallest long-run sigma of a z sequence (a constant stream has none).
SIG_FLOOR = 0.05
ERR_COL = 1  # the engine's column of the standardised error (scoring.Scoring.build)
# The spike ratio is taken at most at exp(this) (a flat window's is 0 / 0).
V_MAX = 20.0
# Bound of a term's z the estimates take in (a power of 2; :func:`exact`); the spike ratio's: cusum.U_MAX.
Z_MAX = 64.0


# The slot fields the tests' per-window inputs read: per term, per run test, the spike ratio's.
TERM_EST, RUN_EST, SPIKE_EST = ("seq_n", "seq_mu", "seq_m2", "seq_c1"), ("seq_rn", "seq_rc", "seq_re"), \
    ("seq_un", "seq_umu", "seq_um2")


def estimates(tab, slots, seg, T: int, R: int) -> dict[str, np.ndarray]:
    """The estimates of streams ``slots`` as they stand, per window of stream ``seg``: ``(T, N)`` for the
    terms' fields, ``(R, N)`` for the run tests', ``(N,)`` for the spike ratio's."""
    out = {f: getattr(tab, f)[slots, :T].T[:, seg] for f in TERM_EST}
    out.update({f: getattr(tab, f)[slots, :R].T[:, seg] for f in RUN_EST})
    out.update({f: getattr(tab, f)[slots][seg] for f in SPIKE_EST})
    return out


class Call:
    """One call's (one block's) per-window inputs of the tests, from the estimates at the start of each
    window's block: ``est`` (:func:`estimates`, per window), by default the slots' as they stand."""

    def __init__(self, P, tab, slots, first, n_u, z, spike, finite, runs: SignRuns, est=None,
                 later: bool = False):
        """``later``: the estimates come later (:meth:`inputs`)."""
        self.P, self.tab, self.slots, self.first, self.n_u = P, tab, slots, first, n_u
        U, N = slots.size, int(n_u.sum())
        self.seg = seg = np.repeat(np.arange(U), n_u)
        self.pos = np.arange(N) - first[seg]
        T = len(P.terms)
        self.z = z[list(P.cols)] if T else np.zeros((0, N))
        self.have = (self.z != 0.0) & finite[None, :]  # a term without statistics yet has z 0
        if P.gate >= 0:  # noise rises count only as far as the standardised error agrees (as the residual's)
            zn = self.z[P.gate]
            self.z[P.gate] = np.where(zn > 0, np.minimum(zn, np.maximum(z[ERR_COL], 0.0)), zn)
        self.runs, self.finite, self.spike = runs, finite, spike
        self.on = runs.sides(z, finite) if len(runs) else None
        self.v = np.exp(np.minimum(np.where(np.isfinite(spike), spike, 0.0), V_MAX))
        if not later:
            self.inputs(estimates(tab, slots, seg, T, len(runs)) if est is None else est)

    def inputs(self, est) -> None:
        """Each window's increments, readiness and spike ratio from ``est`` (:func:`estimates`)."""
        P, finite, spike, runs = self.P, self.finite, self.spike, self.runs
        mu = est["seq_mu"]
        var = np.maximum(est["seq_m2"] - mu * mu, 0.0)
        rho = np.clip((est["seq_c1"] - mu * mu) / np.maximum(var, 1e-12), 0.0, 0.95)
        sig = np.maximum(np.sqrt(var * (1 + rho) / (1 - rho)), SIG_FLOOR)
        x = np.clip((self.z - mu) / sig, -P.clip, P.clip)
        ready = self.have & (est["seq_n"] >= P.warmup)
        self.inc = x[P.side_term] * P.side_sign[:, None] - P.k  # (D, N)
        self.ready = ready[P.side_term]
        if len(runs):  # the run tests: more sides, reset off their side (signruns.py)
            r_inc, r_ready = runs.increments(est["seq_rn"], est["seq_rc"], est["seq_re"], self.on, P.h)
            self.inc, self.ready = np.concatenate((self.inc, r_inc)), np.concatenate((self.ready, r_ready))
        self.sp = np.zeros(self.seg.size)
        if P.spike:
            umu = est["seq_umu"]
            thr = np.maximum(P.spike_t, umu + P.gumbel_c * np.sqrt(np.maximum(est["seq_um2"] - umu * umu, 0.0)))
            ok = (est["seq_un"] >= P.warmup) & finite & np.isfinite(spike)
            self.sp = np.where(ok, self.v / thr, 0.0)

    def closed_form(self, engine_active) -> tuple[np.ndarray, np.ndarray]:
        """Every window's CUSUMs ``(D, N)`` without the cap (exact where none reaches ``h``) and spike
        ratio ``(N,)``. A window where a side is not ready or a window-score alert is up resets it
        to 0: it starts a new segment of the running minimum, whose segments are kept apart by
        offsets larger than any range of ``C`` (each later segment lies wholly below the earlier)."""
        D, N = self.inc.shape
        if D == 0:
            return np.zeros((0, N)), self.sp
        U, L = self.slots.size, int(self.n_u.max())
        live = self.ready & ~engine_active[None, :]
        inc, rst = np.zeros((D, U, L)), np.zeros((D, U, L))
        inc[:, self.seg, self.pos] = np.where(live, self.inc, 0.0)
        rst[:, self.seg, self.pos] = ~live
        S = lindley(inc, rst, self.tab.seq_S[self.slots, :D].T)[:, self.seg, self.pos]
        return S, self.sp

    def last_zero(self, S, streams, starts):
        """Per side and stream of ``streams``: the start of its last window in the call at 0, or -1."""
        if S.size == 0:
            return None
        idx = np.where(S == 0.0, np.arange(S.shape[1])[None, :], -1)
        best = np.maximum.reduceat(idx, self.first, axis=1)[:, streams]  # each stream's windows are contiguous
        return np.where(best >= 0, starts[np.maximum(best, 0)], -1).T

    def learn(self, quiet, closes, runs: SignRuns) -> None:
        """The call's quiet windows into the blocks' accumulators, and the estimates of the streams whose
        block closes: the terms' z (and lag-1 products) where they have one, the spike ratio, the runs."""
        P, tab, slots, seg = self.P, self.tab, self.slots, self.seg
        if len(runs):
            runs.learn(tab, slots, seg, self.first, self.n_u, self.on, quiet, closes)
        T, U = len(P.terms), slots.size
        B = P.block
        if T:  # every term at once: row t of the (T, N) arrays is column t of the slot fields
            Z = self.z
            prev = np.concatenate((np.zeros((T, 1)), Z[:, :-1]), axis=1)
            prev[:, self.first] = tab.seq_prev[slots, :T].T
            vals = exact(Z, Z_MAX, B), exact(Z * Z, Z_MAX**2, B), exact(Z * prev, Z_MAX**2, B)
            ew_block(tab, slots, closes, seg, quiet[None, :] & self.have, vals,
                     ("seq_n", "seq_mu", "seq_m2", "seq_c1"), ("seq_qn", "seq_q1", "seq_q2", "seq_qc"),
                     memory=P.memory)
            lastz = np.full((T, U), np.nan)
            t_, h = np.nonzero(self.have)
            lastz[t_, seg[h]] = Z[t_, h]  # the last window that has a z, per term and stream
            tab.seq_prev[slots, :T] = np.where(np.isnan(lastz), tab.seq_prev[slots, :T].T, lastz).T
        if P.spike:
            v = np.minimum(self.v, U_MAX)
            ew_block(tab, slots, closes, seg, quiet & (self.v > 0), (exact(v, U_MAX, B), exact(v * v, U_MAX**2, B)),
                      ("seq_un", "seq_umu", "seq_um2"), ("seq_uqn", "seq_uq1", "seq_uq2"), memory=P.memory)
