"""The sequential tests' step of one stream over a call, compiled (numba): :func:`_stream`, called by
:func:`pipeline.monitor.alerts.quietpass.sequential_pass` for each stream of the call.

A stream's windows in the call are taken a *portion* at a time: its windows that lie in one block
(``sequential_block`` windows of the stream, counted from its first), as the rounds of the numpy form
take them (:meth:`~pipeline.monitor.alerts.sequential.SequentialTests._block`). Within a portion every
window reads the estimates as they stood at the block's start. A portion with nothing to decide is taken
as the numpy form's closed form takes it (the CUSUMs uncapped, summed window by window, values below
1e-9 taken as 0 where the closed form's rounding leaves them). A *busy* one (an alert of these tests up
at its start, or a window whose CUSUM reaches ``h`` or whose spike ratio reaches 1) as
:class:`~pipeline.monitor.alerts.lockstep.Lockstep` steps it: the CUSUMs capped at ``2h``, the alerts
raised, extended and resolved, their events written as records. Each window's learning follows: the
quiet windows (less, in a busy portion, the hot ones by either sum and those with an alert up) into the
open blocks, the score tail's own quiet windows into its; where the block ends the estimates move.

The CUSUMs are the rounds' within their rounding (1e-9; so is a CUSUM alert's peak score); everything
else is theirs to the last bit (``tests/test_alerts_span.py``).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.monitor.alerts.cusum import U_MAX, ew_weight_one
from pipeline.monitor.alerts.jit import kernel
from pipeline.monitor.alerts.seqcall import ERR_COL, SIG_FLOOR
from pipeline.monitor.alerts.signruns import RUN_L0, RUN_MIN, RUN_PRIOR_EXCESS, RUN_PRIOR_RUNS, L_MAX

# Event records (:func:`_stream`'s ``EI`` columns): kind (0 raised, 1 resolved), stream, range start, range
# end, detector, window; ``EF``: peak score.
RAISED, RESOLVED = 0, 1


@kernel
def _exact(x, g):
    """:func:`~pipeline.monitor.alerts.cusum.exact` of one value on the grid ``g`` (:func:`grid`)."""
    b = g[0]
    if x > b:
        x = b
    elif x < -b:
        x = -b
    return np.rint(x * g[1]) * g[2]


@kernel
def _run_limit(c, e, n, p):
    """:func:`~pipeline.monitor.alerts.signruns.run_limit` of one estimate."""
    n = max(float(n), 1.0)
    mean_excess = (e * n + RUN_PRIOR_RUNS * RUN_PRIOR_EXCESS) / (c * n + RUN_PRIOR_RUNS)
    c = max(c, 1.0 / n)
    r = mean_excess / (1.0 + mean_excess)
    span = math.log(max(c, p) / p) / max(-math.log(r), 1e-300)
    return min(max(RUN_L0 + span, RUN_MIN), L_MAX)


@kernel
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


@kernel
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


@kernel(inline="always")
def _alert(u, i, st_i, end, sc, hot, calm, eng, S, zero, h, al, pk, resolve, cooldown, spike_det, EI, EF, ne):
    """:class:`~pipeline.monitor.alerts.lockstep.Lockstep`'s alert rules at window ``i`` of stream ``u``
    (``st_i``: its start; ``end``: one past its last sample; ``sc``: its score; ``hot``: a CUSUM at ``h``
    or the spike ratio at 1; ``calm``: every CUSUM below ``h / 2`` and no spike; ``eng``: a window-score
    alert up). ``al``: the stream's alert up, range start, range end, detector, calm windows, cooldown;
    ``pk[u]``: its peak. Events into ``EI``/``EF`` at ``ne[0]``. Returns whether an alert is up after it."""
    was = al[0] != 0
    rise = hot and not was and al[5] == 0 and not eng
    al[5] = max(al[5] - 1, 0)
    al[4] = al[4] + 1 if was and calm else 0
    if was and hot:
        al[2] = end
    if was:
        pk[u] = max(pk[u], sc)
    done = was and al[4] >= resolve
    if rise:
        best, a0 = -1, st_i
        for d in range(S.size):  # the highest hot CUSUM (first of equals) names it; the hot ones' earliest zero starts it
            if S[d] >= h:
                if best < 0:
                    best, a0 = d, zero[d]
                else:
                    if S[d] > S[best]:
                        best = d
                    a0 = min(a0, zero[d])
        al[3] = best if best >= 0 else spike_det
        al[1], al[2], pk[u] = a0, end, sc
        _event(EI, EF, ne, RAISED, u, a0, end, al[3], i, sc)
    elif done:
        _event(EI, EF, ne, RESOLVED, u, al[1], al[2], al[3], i, pk[u])
        al[5] = cooldown
    up = (was and not done) or rise
    al[0] = 1 if up else 0
    if rise or done:
        al[4] = 0
    return up


@kernel(inline="always")
def _event(EI, EF, ne, kind, u, a0, a1, det, i, peak):
    n = ne[0]
    EI[n, 0], EI[n, 1], EI[n, 2], EI[n, 3], EI[n, 4], EI[n, 5] = kind, u, a0, a1, det, i
    EF[n] = peak
    ne[0] = n + 1


@kernel
def _stream(u, i0, nw, p0, starts, window, z, finite, quiet, tq, hi, active, v, spike_ok, score, cols, side_term,
            side_sign, run_cols, run_signs, levels, fp, ip, st, out, EI, EF, ne):
    """Stream ``u``'s windows ``i0`` to ``i0 + nw`` (its ``p0``-th first) through the tests, a portion at a
    time (module doc), its state in ``st`` (:func:`~pipeline.monitor.alerts.quietpass._load`). ``quiet``:
    the windows the estimates may learn from (no window-score alert, below ``raise_threshold``); ``tq``:
    the score tail's (finite, no window-score alert, below the stream's threshold as it stood at the
    call's start); ``hi``: finite, no window-score alert, at ``raise_threshold`` or more. Returns False
    (the caller drops what was written) where a ``hi`` window follows a block end in the call: the
    tail's threshold moved there, and ``tq`` does not know how.

    A portion is first taken as one with nothing to decide; at its first hot window it is taken again
    from its start, busy, from a copy of the state as it stood there. One loop for both (a helper called
    per window with the state's arrays cost ~3x the loop: numba counts references of every array passed)."""
    k, clip, h, raise_t, cap, spike_t, gumbel_c, p_win = fp[0], fp[1], fp[2], fp[3], fp[4], fp[5], fp[6], fp[7]
    gz, gz2, gu, gu2 = fp[8:11], fp[11:14], fp[14:17], fp[17:20]
    B, warmup, memory, rmemory, gate, use_spike, use_tail, pot = ip[0], ip[1], ip[2], ip[3], ip[4], ip[5], ip[6], ip[7]
    resolve, cooldown, spike_det = ip[8], ip[9], ip[10]
    TI, TF, TP, RI, RF, RL, UI, UF, XI, XF, LF, TL, SS, ZZ, AL, PK = st
    TI, TF, lastz, RI, RF, run, UI, UF, XI, XF, LF, al = (TI[u], TF[u], TP[u], RI[u], RF[u], RL[u], UI[u], UF[u], XI[u],
                                                          XF[u], LF[u], AL[u])
    S, zero = SS[u], ZZ[u]
    T, R, L, Dt = cols.size, run_cols.size, levels.size, side_term.size
    D = Dt + R
    x, zt, zprev, have, on = np.empty(T), np.zeros(T), np.empty(T), np.empty(T, np.bool_), np.empty(R, np.bool_)
    Su = np.empty(D)
    pcnt = np.empty((2, L), np.int64)
    sig, rinc = np.empty(T), np.empty(R)
    # the state as a portion found it (counts, sums, histories, CUSUMs, zeros, alert state)
    kTI, kTF, klz, kRI, kRF, krun = TI.copy(), TF.copy(), lastz.copy(), RI.copy(), RF.copy(), run.copy()
    kUI, kUF, kXI, kXF, kLF = UI.copy(), UF.copy(), XI.copy(), XF.copy(), LF.copy()
    kS, kz, kal = S.copy(), zero.copy(), al.copy()
    sthr = _block_start(TF, RF, RI, UF, h, p_win, rmemory, spike_t, gumbel_c, sig, rinc)
    sc_prev = TL[u]
    moved = False  # a block of the stream ended in the call
    j0 = 0
    while j0 < nw:
        j1 = min(nw, j0 + B - (p0 + j0) % B)  # the portion: the windows up to the block's end
        busy = al[0] != 0
        sc0 = sc_prev
        if not busy:
            kTI[:], kTF[:], klz[:], kRI[:], kRF[:], krun[:] = TI, TF, lastz, RI, RF, run
            kUI[:], kUF[:], kXI[:], kXF[:], kLF[:], kS[:], kz[:], kal[:] = UI, UF, XI, XF, LF, S, zero, al
        Su[:] = S
        j = j0
        while j < j1:
            i, pos = i0 + j, p0 + j
            if moved and hi[i]:
                return False
            fin, eng = finite[i], active[i]
            for t in range(T):  # the terms' z (noise gated by the error's), whether they have one, the inputs
                zz = z[cols[t], i]
                have[t] = zz != 0.0 and fin
                if t == gate and zz > 0:
                    zz = min(zz, max(z[ERR_COL, i], 0.0))
                zprev[t] = lastz[t] if j == j0 else zt[t]  # a block's first window: its partner is the last z before
                zt[t] = zz
                x[t] = min(max((zz - TF[0, t]) / sig[t], -clip), clip)
            peak_u = peak = 0.0
            for d in range(D):  # the CUSUMs: the terms' sides, then the run tests'
                if d < Dt:
                    t = side_term[d]
                    live = have[t] and TI[0, t] >= warmup and not eng
                    inc = x[t] * side_sign[d] - k
                else:
                    r = d - Dt
                    on[r] = z[run_cols[r], i] * run_signs[r] > 0.0 and fin
                    live = on[r] and RI[0, r] >= warmup and not eng
                    inc = rinc[r]
                if busy:  # Lockstep's CUSUMs, capped; beside them the closed form's, for the learning
                    nxt = Su[d] + inc if live else 0.0
                    Su[d] = nxt if nxt >= 1e-9 else 0.0
                    peak_u = max(peak_u, Su[d])
                    S[d] = min(2.0 * h, max(0.0, S[d] + inc)) if live else 0.0
                else:
                    nxt = S[d] + inc if live else 0.0
                    S[d] = nxt if nxt >= 1e-9 else 0.0
                if S[d] == 0.0:
                    zero[d] = starts[i]
                peak = max(peak, S[d])
            sp = 0.0
            if use_spike and UI[0, 0] >= warmup and fin and spike_ok[i]:
                sp = v[i] / sthr
            if not busy and (peak >= h or sp >= 1.0):  # the portion is busy: again from its start
                TI[:], TF[:], lastz[:], RI[:], RF[:], run[:] = kTI, kTF, klz, kRI, kRF, krun
                UI[:], UF[:], XI[:], XF[:], LF[:], S[:], zero[:], al[:] = kUI, kUF, kXI, kXF, kLF, kS, kz, kal
                sc_prev = sc0
                busy = True
                Su[:] = S
                j = j0
                continue
            sc = min(max(peak / h, sp) * raise_t, cap)
            out[i] = sc
            q = quiet[i] and fin
            if busy:
                hot = peak >= h or sp >= 1.0
                calm = sp < 1.0
                for d in range(D):
                    calm = calm and S[d] < h / 2
                up = _alert(u, i, starts[i], starts[i] + window, sc, hot, calm, eng, S, zero, h, al, PK, resolve,
                            cooldown, spike_det, EI, EF, ne)
                q = q and not hot and not up and peak_u < h
            else:
                al[5] = max(al[5] - 1, 0)
            for t in range(T):  # the learning windows into the open blocks
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
                sct = _exact(min(score[i], U_MAX) if fin else 0.0, gu)
                if tq[i]:  # the tail's own quiet windows
                    XI[1, 0] += 1
                    XF[2, 0] += sct
                    XF[3, 0] += _exact(sct * sct, gu2)
                    if pot:  # the levels below the score: exceeded; of those, the ones the window before was not above
                        for lv in range(L):
                            if levels[lv] >= sct:
                                break
                            LF[3, lv] += 1.0
                            LF[5, lv] += sct - levels[lv]
                            if levels[lv] >= sc_prev:
                                LF[4, lv] += 1.0
                sc_prev = sct
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
                moved = True
            j += 1
        j0 = j1
    if pot:  # the POT's upcrossings read the window before
        TL[u] = sc_prev
    return True
