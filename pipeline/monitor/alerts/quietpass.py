"""The sequential tests compiled (numba): each stream of a call through its windows in order, its
estimates moving at its block ends and its alerts raised and resolved, in one loop (:func:`sequential_pass`;
the step of one stream is :mod:`pipeline.monitor.alerts.seqstep`), instead of ~250 numpy calls per call
and a Python step per window where something is hot. The numpy form, which the tests hold this one to:
:meth:`~pipeline.monitor.alerts.sequential.SequentialTests._block` block by block
(:class:`~pipeline.monitor.alerts.seqcall.Call`, :class:`~pipeline.monitor.alerts.lockstep.Lockstep`), and
:mod:`pipeline.monitor.alerts.span` in one pass where nothing in a call is hot.

Every value summed lies on the grid of :func:`~pipeline.monitor.alerts.cusum.exact`, so the sums do not
depend on their order and the estimates, accumulators, alerts and events are the rounds' to the last bit;
the CUSUMs of a block with nothing to decide are summed window by window (the rounds' closed form rounds
them otherwise, within 1e-9). A stream is handed back to the numpy form (nothing of it written) in one
case: a window of it at ``raise_threshold`` or more after one of its blocks ended in the call, where the
score tail's threshold moved (a call of the engine with ``score`` on holds one block of a stream at most
where such a window is in it, see ``AlertEngine._rounds``). The calibrated threshold is left to
:func:`~pipeline.monitor.alerts.span.threshold` (numpy's logarithm, as the rounds).
"""

from __future__ import annotations

import numpy as np

from pipeline.monitor.alerts.cusum import U_MAX, grid
from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.jit import kernel
from pipeline.monitor.alerts.seqcall import V_MAX, Z_MAX
from pipeline.monitor.alerts.seqstep import RAISED, _stream

# The slot fields the pass reads and writes, in the kernel's argument order.
FIELDS = ("seq_n", "seq_mu", "seq_m2", "seq_c1", "seq_prev", "seq_qn", "seq_q1", "seq_q2", "seq_qc",
          "seq_un", "seq_umu", "seq_um2", "seq_uqn", "seq_uq1", "seq_uq2",
          "seq_rlen", "seq_rn", "seq_rc", "seq_re", "seq_rqn", "seq_rq1", "seq_rq2",
          "seq_sn", "seq_smu", "seq_sm2", "seq_sqn", "seq_sq1", "seq_sq2",
          "seq_tx", "seq_tc", "seq_te", "seq_tqx", "seq_tqc", "seq_tqe", "seq_tlast", "seq_S", "seq_zero",
          "seq_active", "seq_a_start", "seq_a_end", "seq_det", "seq_below", "seq_cool", "seq_peak")


@kernel
def _load(slots, f, T, R, L, D):
    """The streams' state, from the slot fields ``f`` (:data:`FIELDS`) into arrays per stream: the
    groups' counts ``(U, 2, W)`` (estimate, open block) and means then sums ``(U, 2m, W)``."""
    (n, mu, m2, c1, prev, qn, q1, q2, qc, un, umu, um2, uqn, uq1, uq2, rlen, rn, rc, re, rqn, rq1, rq2,
     sn, smu, sm2, sqn, sq1, sq2, tx, tc, te, tqx, tqc, tqe, tlast, S, zero, act, a0, a1, det, below, cool, peak) = f
    U = slots.size
    TI, TF, TP = np.empty((U, 2, T), np.int64), np.empty((U, 6, T)), np.empty((U, T))
    RI, RF, RL = np.empty((U, 2, R), np.int64), np.empty((U, 4, R)), np.empty((U, R))
    UI, UF, XI, XF = np.empty((U, 2, 1), np.int64), np.empty((U, 4, 1)), np.empty((U, 2, 1), np.int64), np.empty((U, 4, 1))
    LF, TL, SS, ZZ = np.empty((U, 6, L)), np.empty(U), np.empty((U, D)), np.empty((U, D), np.int64)
    AL, PK = np.empty((U, 6), np.int64), np.empty(U)
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
            SS[u, d], ZZ[u, d] = S[s, d], zero[s, d]
        AL[u, 0], AL[u, 1], AL[u, 2], AL[u, 3], AL[u, 4], AL[u, 5] = act[s], a0[s], a1[s], det[s], below[s], cool[s]
        PK[u] = peak[s]
    return TI, TF, TP, RI, RF, RL, UI, UF, XI, XF, LF, TL, SS, ZZ, AL, PK


@kernel
def _store(slots, f, st, ok):
    """:func:`_load`'s arrays back into the slot fields of the streams ``ok``."""
    (n, mu, m2, c1, prev, qn, q1, q2, qc, un, umu, um2, uqn, uq1, uq2, rlen, rn, rc, re, rqn, rq1, rq2,
     sn, smu, sm2, sqn, sq1, sq2, tx, tc, te, tqx, tqc, tqe, tlast, S, zero, act, a0, a1, det, below, cool, peak) = f
    TI, TF, TP, RI, RF, RL, UI, UF, XI, XF, LF, TL, SS, ZZ, AL, PK = st
    T, R, L, D = TI.shape[2], RI.shape[2], LF.shape[2], SS.shape[1]
    for u in range(slots.size):
        if not ok[u]:
            continue
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
            S[s, d], zero[s, d] = SS[u, d], ZZ[u, d]
        act[s], a0[s], a1[s] = AL[u, 0] != 0, AL[u, 1], AL[u, 2]
        det[s], below[s], cool[s] = AL[u, 3], AL[u, 4], AL[u, 5]
        peak[s] = PK[u]


@kernel
def sequential_pass(slots, first, n_u, pos0, starts, window, z, finite, quiet, tq, hi, active, v, spike_ok, score,
                    cols, side_term, side_sign, run_cols, run_signs, levels, fp, ip, f, out, ok, EI, EF, ne):
    """Streams ``slots`` (windows ``first[u]`` to ``first[u] + n_u[u]``; ``z``: the engine's z ``(C, N)``;
    ``quiet``, ``tq``, ``hi``: :func:`~pipeline.monitor.alerts.seqstep._stream`'s) through the tests.
    ``fp``: k, clip, h, raise_threshold, cap, spike_t, gumbel_c, p_win, then the exact grids of z, z^2, U
    and U^2 (three each); ``ip``: block, warmup, memory, run memory, gate, spike on, tail on, pot, resolve
    windows, cooldown windows, the spike's detector. ``f``: the slot fields of :data:`FIELDS`. Per stream:
    ``ok[u]`` False where it is handed back (nothing of it written, its events dropped); else its fields
    written, each of its windows' score into ``out`` and its events into ``EI``/``EF`` (``ne[0]`` of them)."""
    T, R, L, Dt = cols.size, run_cols.size, levels.size, side_term.size
    st = _load(slots, f, T, R, L, Dt + R)
    for u in range(slots.size):
        n0 = ne[0]
        ok[u] = _stream(u, first[u], n_u[u], pos0[u], starts, window, z, finite, quiet, tq, hi, active, v, spike_ok,
                        score, cols, side_term, side_sign, run_cols, run_signs, levels, fp, ip, st, out, EI, EF, ne)
        if not ok[u]:
            ne[0] = n0
    _store(slots, f, st, ok)


class QuietPass:
    """:func:`sequential_pass`'s constant arguments for one plan
    (:class:`~pipeline.monitor.alerts.sequential.SeqPlan`), its run tests and score tail (or None)."""

    def __init__(self, P, runs, tail):
        B = P.block
        self.use_tail = tail is not None
        self.consts = (np.array(P.cols, dtype=np.int64), P.side_term.astype(np.int64), P.side_sign.astype(np.float64),
                       np.array(runs.cols, dtype=np.int64), np.asarray(runs.signs, dtype=np.float64),
                       tail.levels.astype(np.float64) if self.use_tail else np.zeros(0))
        self.fp = np.array((P.k, P.clip, P.h, P.raise_threshold, P.cap, P.spike_t, P.gumbel_c, P.p_win)
                           + grid(Z_MAX, B) + grid(Z_MAX**2, B) + grid(U_MAX, B) + grid(U_MAX**2, B))
        self.ip = np.array((B, P.warmup, P.memory, runs.memory, P.gate, P.spike, self.use_tail,
                            self.use_tail and tail.kind == "pot", P.resolve_windows, P.cooldown_windows,
                            len(P.names) - 1), dtype=np.int64)
        self.P = P

    def __call__(self, tab, slots, first, n_u, pos0, starts, window, z, spike, finite, quiet, tq, hi, active, score):
        """Each window's score; per stream, whether it was taken (else nothing of it is written); the events
        as ``(kind, stream index, range start, range end, detector, window)`` rows and their peak scores."""
        ok = np.isfinite(spike)
        v = np.exp(np.minimum(np.where(ok, spike, 0.0), V_MAX))
        ip = self.ip
        if score is None:  # no window score: no tail to learn
            score, ip = np.zeros(starts.size), ip.copy()
            ip[6] = ip[7] = 0
        out = np.zeros(starts.size)
        taken = np.zeros(slots.size, dtype=np.bool_)
        EI, EF, ne = np.empty((starts.size, 6), np.int64), np.empty(starts.size), np.zeros(1, np.int64)

        def c(a, dtype):  # one signature for every call (warm compiles it)
            return np.ascontiguousarray(a, dtype=dtype)

        i64, f64, b = np.int64, np.float64, np.bool_
        sequential_pass(c(slots, i64), c(first, i64), c(n_u, i64), c(pos0, i64), c(starts, i64), int(window),
                        c(z, f64), c(finite, b), c(quiet, b), c(tq, b), c(hi, b), c(active, b), c(v, f64), c(ok, b),
                        c(score, f64), *self.consts, self.fp, ip, tuple(getattr(tab, name) for name in FIELDS), out,
                        taken, EI, EF, ne)
        return out, taken, EI[: ne[0]], EF[: ne[0]]

    def events(self, EI, EF, ids, model_version, ts) -> list[AlertEvent]:
        """:meth:`__call__`'s event rows as events (``ids``: the call's streams)."""
        P = self.P
        return [AlertEvent("raised" if k == RAISED else "resolved", ids[u], int(a0), int(a1), float(pk),
                           P.raise_threshold if k == RAISED else P.raise_threshold / 2, model_version, ts,
                           detector=P.names[int(d)]) for (k, u, a0, a1, d, _), pk in zip(EI.tolist(), EF.tolist())]

    def warm(self, tab, columns: int) -> None:
        """Compile (or load from numba's cache) the kernel for ``tab``'s fields with a call of no windows,
        so that a worker's first micro-batch does not wait for it."""
        e, no = np.zeros(0, dtype=np.int64), np.zeros(0, bool)
        self(tab, e, e, e, e, e, 256, np.zeros((columns, 0)), np.zeros(0), no, no, no, no, no, np.zeros(0))
