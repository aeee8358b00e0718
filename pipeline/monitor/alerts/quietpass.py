"""The sequential tests' one pass over a call where nothing is hot, compiled (numba): each stream's
windows in order, its estimates moving at its block ends, in one loop instead of ~250 numpy calls
per call (:mod:`pipeline.monitor.alerts.span` is the same pass in numpy array operations, and the
reference the tests hold this one to).

What it computes is :meth:`~pipeline.monitor.alerts.sequential.SequentialTests._span`'s, window by
window: the CUSUM increments, run-test increments and spike ratio from the stream's estimates at the
start of the window's block (:class:`~pipeline.monitor.alerts.seqcall.Call`), the CUSUMs, and the
quiet windows into the blocks' accumulators (:func:`~pipeline.monitor.alerts.cusum.ew_block`,
:class:`~pipeline.monitor.alerts.signruns.SignRuns`, :class:`~pipeline.monitor.alerts.tail.ScoreTail`).
Every value summed lies on the grid of :func:`~pipeline.monitor.alerts.cusum.exact`, so the sums do not
depend on their order and the estimates, accumulators and thresholds are the rounds' to the last bit;
the CUSUMs are summed window by window (the rounds' closed form rounds them otherwise, within 1e-9).
If a window is hot (a CUSUM reaches ``h`` or a spike ratio 1) nothing is written and the caller takes
the call block by block. The calibrated threshold is left to :func:`~pipeline.monitor.alerts.span.threshold`
(numpy's logarithm, as the rounds).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from pipeline.monitor.alerts.cusum import U_MAX, ew_weight_one, grid
from pipeline.monitor.alerts.seqcall import ERR_COL, SIG_FLOOR, V_MAX, Z_MAX
from pipeline.monitor.alerts.signruns import RUN_L0, RUN_MIN, RUN_PRIOR_EXCESS, RUN_PRIOR_RUNS, L_MAX

# The slot fields the pass reads and writes, in the kernel's argument order.
FIELDS = ("seq_n", "seq_mu", "seq_m2", "seq_c1", "seq_prev", "seq_qn", "seq_q1", "seq_q2", "seq_qc",
          "seq_un", "seq_umu", "seq_um2", "seq_uqn", "seq_uq1", "seq_uq2",
          "seq_rlen", "seq_rn", "seq_rc", "seq_re", "seq_rqn", "seq_rq1", "seq_rq2",
          "seq_sn", "seq_smu", "seq_sm2", "seq_sqn", "seq_sq1", "seq_sq2",
          "seq_tx", "seq_tc", "seq_te", "seq_tqx", "seq_tqc", "seq_tqe", "seq_tlast", "seq_S", "seq_zero")


@njit(cache=True)
def _exact(x, g):
    """:func:`~pipeline.monitor.alerts.cusum.exact` of one value on the grid ``g`` (:func:`grid`)."""
    b = g[0]
    if x > b:
        x = b
    elif x < -b:
        x = -b
    return np.rint(x * g[1]) * g[2]


@njit(cache=True)
def _run_limit(c, e, n, p):
    """:func:`~pipeline.monitor.alerts.signruns.run_limit` of one estimate."""
    n = max(float(n), 1.0)
    mean_excess = (e * n + RUN_PRIOR_RUNS * RUN_PRIOR_EXCESS) / (c * n + RUN_PRIOR_RUNS)
    c = max(c, 1.0 / n)
    r = mean_excess / (1.0 + mean_excess)
    span = math.log(max(c, p) / p) / max(-math.log(r), 1e-300)
    return min(max(RUN_L0 + span, RUN_MIN), L_MAX)


@njit(cache=True)
def _close(I, F, memory):
    """One exponential-memory step of a group's estimates from its open block, per column: counts ``I``
    ``(2, W)`` (estimate, block), ``F`` ``(2 * m, W)``: ``m`` running means, then the block's sums; the
    block then starts empty."""
    m = F.shape[0] // 2
    for t in range(I.shape[1]):
        cnt = I[1, t]
        grown = I[0, t] + cnt
        if cnt > 0:
            w = ew_weight_one(cnt, grown, memory)
            for k in range(m):
                F[k, t] = F[k, t] + w * (F[m + k, t] / max(cnt, 1) - F[k, t])
        I[0, t] = grown
        I[1, t] = 0
        for k in range(m):
            F[m + k, t] = 0.0


@njit(cache=True)
def _load(slots, f, T, R, L, D):
    """The streams' state, from the slot fields ``f`` (:data:`FIELDS`) into arrays per stream: the
    groups' counts ``(U, 2, W)`` (estimate, open block) and means then sums ``(U, 2m, W)``."""
    (n, mu, m2, c1, prev, qn, q1, q2, qc, un, umu, um2, uqn, uq1, uq2, rlen, rn, rc, re, rqn, rq1, rq2,
     sn, smu, sm2, sqn, sq1, sq2, tx, tc, te, tqx, tqc, tqe, tlast, S, _zero) = f
    U = slots.size
    TI, TF, TP = np.empty((U, 2, T), np.int64), np.empty((U, 6, T)), np.empty((U, T))
    RI, RF, RL = np.empty((U, 2, R), np.int64), np.empty((U, 4, R)), np.empty((U, R))
    UI, UF, XI, XF = np.empty((U, 2, 1), np.int64), np.empty((U, 4, 1)), np.empty((U, 2, 1), np.int64), np.empty((U, 4, 1))
    LF, TL, SS, ZZ = np.empty((U, 6, L)), np.empty(U), np.empty((U, D)), np.full((U, D), -1, np.int64)
    for u in range(U):
        s = slots[u]
        for t in range(T):
            TI[u, 0, t], TI[u, 1, t] = n[s, t], qn[s, t]
            TF[u, 0, t], TF[u, 1, t], TF[u, 2, t] = mu[s, t], m2[s, t], c1[s, t]
            TF[u, 3, t], TF[u, 4, t], TF[u, 5, t] = q1[s, t], q2[s, t], qc[s, t]
            TP[u, t] = prev[s, t]
        for r in range(R):
            RI[u, 0, r], RI[u, 1, r] = rn[s, r], rqn[s, r]
            RF[u, 0, r], RF[u, 1, r], RF[u, 2, r], RF[u, 3, r] = rc[s, r], re[s, r], rq1[s, r], rq2[s, r]
            RL[u, r] = float(rlen[s, r])
        UI[u, 0, 0], UI[u, 1, 0] = un[s], uqn[s]
        UF[u, 0, 0], UF[u, 1, 0], UF[u, 2, 0], UF[u, 3, 0] = umu[s], um2[s], uq1[s], uq2[s]
        XI[u, 0, 0], XI[u, 1, 0] = sn[s], sqn[s]
        XF[u, 0, 0], XF[u, 1, 0], XF[u, 2, 0], XF[u, 3, 0] = smu[s], sm2[s], sq1[s], sq2[s]
        for j in range(L):
            LF[u, 0, j], LF[u, 1, j], LF[u, 2, j] = tx[s, j], tc[s, j], te[s, j]
            LF[u, 3, j], LF[u, 4, j], LF[u, 5, j] = tqx[s, j], tqc[s, j], tqe[s, j]
        TL[u] = tlast[s]
        for d in range(D):
            SS[u, d] = S[s, d]
    return TI, TF, TP, RI, RF, RL, UI, UF, XI, XF, LF, TL, SS, ZZ


@njit(cache=True)
def _store(slots, f, st):
    """:func:`_load`'s arrays back into the slot fields (a side's last zero only where it has one)."""
    (n, mu, m2, c1, prev, qn, q1, q2, qc, un, umu, um2, uqn, uq1, uq2, rlen, rn, rc, re, rqn, rq1, rq2,
     sn, smu, sm2, sqn, sq1, sq2, tx, tc, te, tqx, tqc, tqe, tlast, S, zero) = f
    TI, TF, TP, RI, RF, RL, UI, UF, XI, XF, LF, TL, SS, ZZ = st
    T, R, L, D = TI.shape[2], RI.shape[2], LF.shape[2], SS.shape[1]
    for u in range(slots.size):
        s = slots[u]
        for t in range(T):
            n[s, t], qn[s, t] = TI[u, 0, t], TI[u, 1, t]
            mu[s, t], m2[s, t], c1[s, t] = TF[u, 0, t], TF[u, 1, t], TF[u, 2, t]
            q1[s, t], q2[s, t], qc[s, t] = TF[u, 3, t], TF[u, 4, t], TF[u, 5, t]
            prev[s, t] = TP[u, t]
        for r in range(R):
            rn[s, r], rqn[s, r] = RI[u, 0, r], RI[u, 1, r]
            rc[s, r], re[s, r], rq1[s, r], rq2[s, r] = RF[u, 0, r], RF[u, 1, r], RF[u, 2, r], RF[u, 3, r]
            rlen[s, r] = np.int64(np.rint(RL[u, r]))
        un[s], uqn[s] = UI[u, 0, 0], UI[u, 1, 0]
        umu[s], um2[s], uq1[s], uq2[s] = UF[u, 0, 0], UF[u, 1, 0], UF[u, 2, 0], UF[u, 3, 0]
        sn[s], sqn[s] = XI[u, 0, 0], XI[u, 1, 0]
        smu[s], sm2[s], sq1[s], sq2[s] = XF[u, 0, 0], XF[u, 1, 0], XF[u, 2, 0], XF[u, 3, 0]
        for j in range(L):
            tx[s, j], tc[s, j], te[s, j] = LF[u, 0, j], LF[u, 1, j], LF[u, 2, j]
            tqx[s, j], tqc[s, j], tqe[s, j] = np.int32(LF[u, 3, j]), np.int32(LF[u, 4, j]), LF[u, 5, j]
        tlast[s] = TL[u]
        for d in range(D):
            S[s, d] = SS[u, d]
            if ZZ[u, d] >= 0:
                zero[s, d] = ZZ[u, d]


@njit(cache=True)
def kernel(slots, first, n_u, pos0, starts, z, finite, quiet, active, v, spike_ok, score,
           cols, side_term, side_sign, run_cols, run_signs, levels, fp, ip, f, out):
    """The pass (module doc) over streams ``slots`` (windows ``first[u]`` to ``first[u] + n_u[u]``; ``z``:
    the engine's z ``(C, N)``; ``quiet``: no window-score alert, below ``raise_threshold``). ``fp``: k,
    clip, h, raise_threshold, cap, spike_t, gumbel_c, p_win, then the exact grids of z, z^2, U and U^2
    (three each); ``ip``: block, warmup, memory, run memory, gate, spike on, tail on, pot. ``f``: the slot
    fields of :data:`FIELDS`. Returns False, having written nothing, where a window is hot; else writes
    the fields and each window's score into ``out``."""
    T, R, L, Dt = cols.size, run_cols.size, levels.size, side_term.size
    st = _load(slots, f, T, R, L, Dt + R)
    for u in range(slots.size):
        if not _stream(u, first[u], n_u[u], pos0[u], starts, z, finite, quiet, active, v, spike_ok, score, cols,
                       side_term, side_sign, run_cols, run_signs, levels, fp, ip, st, out):
            return False
    _store(slots, f, st)
    return True


@njit(cache=True)
def _block_start(TF, RF, RI, UF, h, p_win, rmemory, spike_t, gumbel_c, sig, rinc):
    """What a block's windows read from the estimates as they stand at its start (:meth:`Call.inputs
    <pipeline.monitor.alerts.seqcall.Call.inputs>`): each term's long-run sigma into ``sig``, each run
    test's increment ``h / L*`` into ``rinc``; returns the spike ratio's threshold."""
    for t in range(sig.size):
        m, m2, c1 = TF[0, t], TF[1, t], TF[2, t]
        var = max(m2 - m * m, 0.0)
        rho = min(max((c1 - m * m) / max(var, 1e-12), 0.0), 0.95)
        sig[t] = max(math.sqrt(var * (1 + rho) / (1 - rho)), SIG_FLOOR)
    for r in range(rinc.size):
        rinc[r] = h / _run_limit(RF[0, r], RF[1, r], min(RI[0, r], rmemory), p_win)
    return max(spike_t, UF[0, 0] + gumbel_c * math.sqrt(max(UF[1, 0] - UF[0, 0] * UF[0, 0], 0.0)))


@njit(cache=True)
def _stream(u, i0, nw, p0, starts, z, finite, quiet, active, v, spike_ok, score, cols, side_term, side_sign,
            run_cols, run_signs, levels, fp, ip, st, out):
    """Stream ``u``'s windows ``i0`` to ``i0 + nw`` (its ``p0``-th first) through the tests, in order, its
    state in ``st`` (:func:`_load`); False where one is hot."""
    k, clip, h, raise_t, cap, spike_t, gumbel_c, p_win = fp[0], fp[1], fp[2], fp[3], fp[4], fp[5], fp[6], fp[7]
    gz, gz2, gu, gu2 = fp[8:11], fp[11:14], fp[14:17], fp[17:20]
    B, warmup, memory, rmemory, gate, use_spike, use_tail, pot = ip[0], ip[1], ip[2], ip[3], ip[4], ip[5], ip[6], ip[7]
    TI, TF, TP, RI, RF, RL, UI, UF, XI, XF, LF, TL, SS, ZZ = st
    TI, TF, lastz, RI, RF, run, UI, UF, XI, XF, LF = TI[u], TF[u], TP[u], RI[u], RF[u], RL[u], UI[u], UF[u], XI[u], XF[u], LF[u]
    S, zero = SS[u], ZZ[u]
    T, R, L, Dt = cols.size, run_cols.size, levels.size, side_term.size
    D = Dt + R
    x, zt, zprev, have, on = np.empty(T), np.zeros(T), np.empty(T), np.empty(T, np.bool_), np.empty(R, np.bool_)
    pcnt = np.empty((2, L), np.int64)
    sig, rinc = np.empty(T), np.empty(R)
    sthr = _block_start(TF, RF, RI, UF, h, p_win, rmemory, spike_t, gumbel_c, sig, rinc)
    sc_prev = TL[u]
    for jw in range(nw):
        i, pos = i0 + jw, p0 + jw
        fin, act = finite[i], active[i]
        q = quiet[i] and fin
        head = jw == 0 or pos % B == 0  # a block's first window: its lag-1 partner is the last z before it
        for t in range(T):  # the terms' z (noise gated by the error's), whether they have one, the inputs
            zz = z[cols[t], i]
            have[t] = zz != 0.0 and fin
            if t == gate and zz > 0:
                zz = min(zz, max(z[ERR_COL, i], 0.0))
            zprev[t] = lastz[t] if head else zt[t]
            zt[t] = zz
            x[t] = min(max((zz - TF[0, t]) / sig[t], -clip), clip)
        peak = 0.0
        for d in range(D):  # the CUSUMs: the terms' sides, then the run tests'
            if d < Dt:
                t = side_term[d]
                ready = have[t] and TI[0, t] >= warmup
                inc = x[t] * side_sign[d] - k
            else:
                r = d - Dt
                on[r] = z[run_cols[r], i] * run_signs[r] > 0.0 and fin
                ready = on[r] and RI[0, r] >= warmup
                inc = rinc[r]
            nxt = S[d] + inc if ready and not act else 0.0
            S[d] = nxt if nxt >= 1e-9 else 0.0
            if S[d] == 0.0:
                zero[d] = starts[i]
            peak = max(peak, S[d])
        sp = 0.0
        if use_spike:
            if UI[0, 0] >= warmup and fin and spike_ok[i]:
                sp = v[i] / sthr
        if peak >= h or sp >= 1.0:
            return False
        out[i] = min(max(peak / h, sp) * raise_t, cap)
        for t in range(T):  # the quiet windows into the open blocks
            if have[t]:
                lastz[t] = zt[t]
                if q:
                    TI[1, t] += 1
                    TF[3, t] += _exact(zt[t], gz)
                    TF[4, t] += _exact(zt[t] * zt[t], gz2)
                    TF[5, t] += _exact(zt[t] * zprev[t], gz2)
        if use_spike and q and v[i] > 0:
            vv = min(v[i], U_MAX)
            UI[1, 0] += 1
            UF[2, 0] += _exact(vv, gu)
            UF[3, 0] += _exact(vv * vv, gu2)
        for r in range(R):  # runs: counted where quiet, ended by a quiet window off its side
            before = run[r]
            run[r] = before + 1.0 if on[r] and q else 0.0
            if q:
                RI[1, r] += 1
                if not on[r] and before >= RUN_L0:
                    RF[2, r] += 1.0
                    RF[3, r] += before - RUN_L0
        if use_tail:
            sc = _exact(min(score[i], U_MAX) if fin else 0.0, gu)
            if q:
                XI[1, 0] += 1
                XF[2, 0] += sc
                XF[3, 0] += _exact(sc * sc, gu2)
                if pot:  # the levels below the score: exceeded; of those, the ones the window before was not above
                    for j in range(L):
                        if levels[j] >= sc:
                            break
                        LF[3, j] += 1.0
                        LF[5, j] += sc - levels[j]
                        if levels[j] >= sc_prev:
                            LF[4, j] += 1.0
            sc_prev = sc
        if (pos + 1) % B == 0:  # the stream's block ends: its estimates move
            _close(TI, TF, memory)
            if use_spike:
                _close(UI, UF, memory)
            _close(RI, RF, rmemory)
            if use_tail:
                if pot:  # the levels' counts are the tail's
                    pcnt[0, :], pcnt[1, :] = XI[0, 0], XI[1, 0]
                    _close(pcnt, LF, memory)
                _close(XI, XF, memory)
            sthr = _block_start(TF, RF, RI, UF, h, p_win, rmemory, spike_t, gumbel_c, sig, rinc)
    if pot:  # the POT's upcrossings read the window before
        TL[u] = sc_prev
    return True


class QuietPass:
    """:func:`kernel`'s constant arguments for one plan (:class:`~pipeline.monitor.alerts.sequential.SeqPlan`),
    its run tests and score tail (or None)."""

    def __init__(self, P, runs, tail):
        B = P.block
        self.use_tail = tail is not None
        self.consts = (np.array(P.cols, dtype=np.int64), P.side_term.astype(np.int64), P.side_sign.astype(np.float64),
                       np.array(runs.cols, dtype=np.int64), np.asarray(runs.signs, dtype=np.float64),
                       tail.levels.astype(np.float64) if self.use_tail else np.zeros(0))
        self.fp = np.array((P.k, P.clip, P.h, P.raise_threshold, P.cap, P.spike_t, P.gumbel_c, P.p_win)
                           + grid(Z_MAX, B) + grid(Z_MAX**2, B) + grid(U_MAX, B) + grid(U_MAX**2, B))
        self.ip = np.array((B, P.warmup, P.memory, runs.memory, P.gate, P.spike, self.use_tail,
                            self.use_tail and tail.kind == "pot"), dtype=np.int64)

    def __call__(self, tab, slots, first, n_u, pos0, starts, z, spike, finite, quiet, active, score):
        """Each window's score, the slots written; or None, nothing written, where a window is hot."""
        ok = np.isfinite(spike)
        v = np.exp(np.minimum(np.where(ok, spike, 0.0), V_MAX))
        ip = self.ip
        if score is None:  # no window score: no tail to learn
            score, ip = np.zeros(starts.size), np.concatenate((ip[:6], [0, 0]))
        out = np.empty(starts.size)

        def c(a, dtype):  # one signature for every call (warm compiles it)
            return np.ascontiguousarray(a, dtype=dtype)

        i64, f64, b = np.int64, np.float64, np.bool_
        done = kernel(c(slots, i64), c(first, i64), c(n_u, i64), c(pos0, i64), c(starts, i64), c(z, f64),
                      c(finite, b), c(quiet, b), c(active, b), c(v, f64), c(ok, b), c(score, f64), *self.consts,
                      self.fp, ip, tuple(getattr(tab, name) for name in FIELDS), out)
        return out if done else None

    def warm(self, tab, columns: int) -> None:
        """Compile (or load from numba's cache) the kernel for ``tab``'s fields with a call of no windows,
        so that a worker's first micro-batch does not wait for it."""
        e = np.zeros(0, dtype=np.int64)
        self(tab, e, e, e, e, e, np.zeros((columns, 0)), np.zeros(0), np.zeros(0, bool), np.zeros(0, bool),
             np.zeros(0, bool), np.zeros(0))
