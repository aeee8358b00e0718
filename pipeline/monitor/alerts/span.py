"""The sequential tests over a call that spans block ends, in one pass when nothing in it is hot (pure
numpy; :class:`~pipeline.monitor.alerts.sequential.SequentialTests` falls back to its rounds otherwise).
The engine runs the sequential tests compiled (:mod:`pipeline.monitor.alerts.quietpass`, any call, alerts
included); this one is a reference in the tests.

Why. The tests' estimates move at the end of each block of ``sequential_block`` windows of a stream, so
a call holding several blocks of a stream is taken a block at a time (rounds), and each round costs the
tests' whole fixed work (~150 numpy calls), whatever its size. A worker that falls behind reads its
backlog in micro-batches of 512 windows from two streams: four to five rounds per call.

How. A round's inputs (each window's CUSUM increment, run-test increment, spike ratio) depend on the
estimates at the start of its block; those depend on which windows of the earlier blocks were quiet;
and a window is quiet unless a window-score alert is up, it scores ``raise_threshold`` or more, or it is
*hot* (a test reaches its threshold). The first two are known before the tests run. So the call is
taken *as if* no window were hot: every block's quiet windows are then known, the estimates at each
block start follow by the same exponential-memory steps (:func:`steps`: a few array operations per
block on ``(streams, fields)`` arrays, the sums exact as in :func:`~pipeline.monitor.alerts.cusum.exact`),
then every window's inputs and the CUSUMs over the whole call at once. If indeed no window is hot
(and no alert of these tests is up, and no window the tests would see as quiet scores at or above
``raise_threshold``, where a calibrated threshold would judge it), the assumption held and the result
is the rounds' own: the same estimates, accumulators and thresholds to the last bit, the same
decisions (none: nothing raises or resolves), the CUSUM values up to the rounding of their running
sums, which differs however a stream is cut into calls anyway. Otherwise nothing is written and the
rounds take the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.monitor.alerts.cusum import U_MAX, ew_weight, exact, lindley
from pipeline.monitor.alerts.seqcall import Z_MAX
from pipeline.monitor.alerts.signruns import RUN_L0
from pipeline.monitor.alerts.tail import TAIL_LEVELS, pot_sums, pot_threshold


@dataclass
class Group:
    """Estimates of one kind that move together (:func:`~pipeline.monitor.alerts.cusum.ew_block`'s
    fields): ``est`` (count, then 1-3 running means) and ``acc`` (the open block's count and sums) slot
    fields over ``cols`` columns (None: a scalar field), what each block adds (``cnt``, ``sums``:
    ``(R, U, F)``) and the memory."""

    est: tuple[str | None, ...]  # None: a count kept by another group
    acc: tuple[str | None, ...]
    cols: int | None
    n0: np.ndarray  # (U, F), and the rest likewise
    m0: list
    an0: np.ndarray
    a0: list
    cnt: np.ndarray
    sums: list
    memory: int


def group(sp, tab, est, acc, cols, q, values, memory) -> Group:
    """The :class:`Group` of slot fields ``est``/``acc`` (``cols`` columns, or scalar fields) whose blocks
    take the windows ``q`` (``(N,)`` or ``(F, N)``) and ``values`` (as ``q``)."""
    def read(f):
        a = getattr(tab, f)[sp.slots] if cols is None else getattr(tab, f)[sp.slots, :cols]
        return a.reshape(sp.U, -1)

    def per_cell(x):
        return x.reshape(sp.R, sp.U, -1)

    return Group(est, acc, cols, read(est[0]), [read(f) for f in est[1:]], read(acc[0]), [read(f) for f in acc[1:]],
                 per_cell(sp.total(q)), [per_cell(sp.total(q, v)) for v in values], memory)


def steps(groups: list[Group], closes: np.ndarray):
    """:func:`~pipeline.monitor.alerts.cusum.ew_block`'s steps over the ``R`` blocks of a call for every
    group at once (their columns side by side, up to three means each): each stream's estimates at the
    start of each block and the final estimates and accumulators, as the rounds would leave them, bit
    for bit. ``closes`` ``(R, U)``: where a stream's block ends. Returns per group
    ``(at_n, at_m, n, m, an, a)``: ``at_*`` ``(R, U, F)``."""
    widths = [g.n0.shape[1] for g in groups]
    k = max(len(g.m0) for g in groups)

    def cat(get):
        return np.concatenate([get(g) for g in groups], axis=-1)

    def means(g, which, i):
        xs = getattr(g, which)
        return xs[i] if i < len(xs) else np.zeros_like(xs[0], dtype=np.float64)

    n, an = cat(lambda g: g.n0).astype(np.int64), cat(lambda g: g.an0).astype(np.int64)
    m = [cat(lambda g, i=i: means(g, "m0", i)).astype(np.float64) for i in range(k)]
    acc = [cat(lambda g, i=i: means(g, "a0", i)).astype(np.float64) for i in range(k)]
    cnt = cat(lambda g: g.cnt)
    sums = [cat(lambda g, i=i: means(g, "sums", i)) for i in range(k)]
    memory = np.concatenate([np.full(w, g.memory) for g, w in zip(groups, widths)])
    R = cnt.shape[0]
    at_n, at_m = np.empty((R,) + n.shape, np.int64), [np.empty((R,) + n.shape) for _ in range(k)]
    for r in range(R):
        at_n[r] = n
        for a, x in zip(at_m, m):
            a[r] = x
        an = an + cnt[r]
        acc = [a + s[r] for a, s in zip(acc, sums)]
        c = closes[r][:, None]
        grown = n + an
        w = ew_weight(an, grown, memory)
        live = c & (an > 0)
        m = [np.where(live, x + w * (a / np.maximum(an, 1) - x), x) for x, a in zip(m, acc)]
        n = np.where(c, grown, n)
        an = np.where(c, 0, an)
        acc = [np.where(c, 0.0, a) for a in acc]
    out, j = [], 0
    for g, wd in zip(groups, widths):
        sl = slice(j, j + wd)
        j += wd
        km = len(g.m0)
        out.append((at_n[..., sl], [a[..., sl] for a in at_m[:km]], n[:, sl], [x[:, sl] for x in m[:km]], an[:, sl],
                    [x[:, sl] for x in acc[:km]]))
    return out


def writes(g: Group, result) -> dict:
    """The slot fields a :class:`Group`'s final estimates and accumulators go to."""
    _, _, n, m, an, a = result
    vals = [n, *m, an, *a]
    if g.cols is None:
        vals = [v[:, 0] for v in vals]
    return {f: v for f, v in zip(g.est + g.acc, vals) if f is not None}


def per_window(sp, g: Group, result) -> dict:
    """A group's estimates at each window's block start: ``(F, N)`` (``(N,)`` for scalar fields)."""
    at_n, at_m = result[0], result[1]
    vals = [sp.at(x) for x in [at_n, *at_m]]
    if g.cols is None:
        vals = [v[0] for v in vals]
    return dict(zip(g.est, vals))


class Span:
    """One call's windows (grouped by stream) and their blocks: window ``i`` is in round ``rnd[i]`` (the
    ``rnd``-th block of its stream in the call); cells ``(round, stream)``."""

    def __init__(self, P, slots, first, n_u, rnd, pos0):
        self.P, self.slots, self.first, self.n_u, self.rnd = P, slots, first, n_u, rnd
        U = slots.size
        self.U, self.R = U, int(rnd.max()) + 1
        self.seg = np.repeat(np.arange(U), n_u)
        self.cell = rnd * U + self.seg  # (R, U), row-major
        end = (pos0 // P.block + np.arange(self.R)[:, None] + 1) * P.block
        self.closes = (pos0 + n_u)[None, :] >= end  # (R, U): the stream's block of round r ends in the call

    def total(self, q, w=None) -> np.ndarray:
        """Per cell ``(R, U)`` (``q``: ``(N,)``) or ``(R, U, T)`` (``q``: ``(T, N)``): the sum of ``w`` over
        the windows ``q``, or their count (as :func:`~pipeline.monitor.alerts.cusum.ew_block` sums them)."""
        RU, q = self.R * self.U, np.asarray(q)
        shape = (self.R, self.U) + q.shape[:-1]
        if q.ndim == 1:
            key, size = self.cell, RU
        else:
            key, size = (self.cell[None, :] + RU * np.arange(q.shape[0])[:, None]).ravel(), RU * q.shape[0]
        if w is None:
            v = np.bincount(key, weights=q.ravel(), minlength=size).astype(np.int64)
        else:
            v = np.bincount(key, weights=np.where(q, w, 0.0).ravel(), minlength=size)
        return v.reshape(shape) if q.ndim == 1 else np.moveaxis(v.reshape((q.shape[0], self.R, self.U)), 0, -1)

    def at(self, per_cell: np.ndarray) -> np.ndarray:
        """``(R, U, F)`` per cell -> ``(F, N)`` per window."""
        return per_cell[self.rnd, self.seg].T


def terms(sp: Span, tab, c, quiet, finite) -> tuple[Group, dict]:
    """The CUSUM terms' group (their z, square and lag-1 product over each block's quiet windows) and
    ``seq_prev`` (the last z per term)."""
    P, slots = sp.P, sp.slots
    T, B = len(P.terms), P.block
    Z = c.z
    N = Z.shape[1]
    prev = np.concatenate((np.zeros((T, 1)), Z[:, :-1]), axis=1)
    # a block's first window takes the last window with a z before it (the rounds keep it in seq_prev)
    heads = np.flatnonzero(np.diff(sp.cell, prepend=-1) != 0)
    idx = np.maximum.accumulate(np.where(c.have, np.arange(N)[None, :], -1), axis=1)  # (T, N)
    before = idx[:, np.maximum(heads - 1, 0)]
    own = (heads > 0)[None, :] & (before >= sp.first[sp.seg[heads]][None, :])
    prev[:, heads] = np.where(own, Z[np.arange(T)[:, None], np.maximum(before, 0)],
                              tab.seq_prev[slots[sp.seg[heads]], :T].T)
    q = quiet[None, :] & finite[None, :] & c.have
    g = group(sp, tab, ("seq_n", "seq_mu", "seq_m2", "seq_c1"), ("seq_qn", "seq_q1", "seq_q2", "seq_qc"), T, q,
              (exact(Z, Z_MAX, B), exact(Z * Z, Z_MAX**2, B), exact(Z * prev, Z_MAX**2, B)), P.memory)
    lastz = np.full((T, sp.U), np.nan)
    t_, h = np.nonzero(c.have)
    lastz[t_, sp.seg[h]] = Z[t_, h]
    return g, {"seq_prev": np.where(np.isnan(lastz), tab.seq_prev[slots, :T].T, lastz).T}


def spike(sp: Span, tab, c, quiet, finite) -> Group:
    B = sp.P.block
    v = np.minimum(c.v, U_MAX)
    return group(sp, tab, ("seq_un", "seq_umu", "seq_um2"), ("seq_uqn", "seq_uq1", "seq_uq2"), None,
                 quiet & finite & (c.v > 0), (exact(v, U_MAX, B), exact(v * v, U_MAX**2, B)), sp.P.memory)


def runs(sp: Span, tab, tests, on, counted) -> tuple[Group, dict]:
    """The run tests' group (:meth:`~pipeline.monitor.alerts.signruns.SignRuns.learn` over the whole call)
    and ``seq_rlen``."""
    R, U, slots = len(tests.cols), sp.U, sp.slots
    first, n_u, seg = sp.first, sp.n_u, sp.seg
    L = int(n_u.max())
    pos = np.arange(seg.size) - first[seg]
    ones, rst = np.zeros((R, U, L)), np.ones((R, U, L), dtype=bool)
    ones[:, seg, pos] = 1.0
    rst[:, seg, pos] = ~(on & counted[None, :])
    r0 = tab.seq_rlen[slots, :R].T.astype(np.float64)
    run = lindley(ones, rst, r0)
    before = np.concatenate((r0[:, :, None], run[:, :, :-1]), axis=2)[:, seg, pos]
    ends = counted[None, :] & ~on & (before >= RUN_L0)
    excess = np.where(ends, before - RUN_L0, 0.0)
    last = first + n_u - 1
    g = group(sp, tab, ("seq_rn", "seq_rc", "seq_re"), ("seq_rqn", "seq_rq1", "seq_rq2"), R,
              np.broadcast_to(counted, ends.shape), (ends.astype(np.float64), excess), tests.memory)
    return g, {"seq_rlen": np.rint(run[:, seg[last], pos[last]]).T.astype(np.int64)}


def tail(sp: Span, tab, model, score, finite, q) -> tuple[list[Group], dict]:
    """The window score's tail (:meth:`~pipeline.monitor.alerts.tail.ScoreTail.update` over the whole
    call, its quiet windows ``q`` known): the mean and square's group and, for ``pot``, the levels'
    (their counts the tail's: the block's quiet windows) and ``seq_tlast``."""
    slots, U, R, L, B = sp.slots, sp.U, sp.R, TAIL_LEVELS, model.block
    sc = exact(np.where(finite, np.minimum(score, U_MAX), 0.0), U_MAX, B)
    g = group(sp, tab, ("seq_sn", "seq_smu", "seq_sm2"), ("seq_sqn", "seq_sq1", "seq_sq2"), None, q,
              (sc, exact(sc * sc, U_MAX**2, B)), model.memory)
    if model.kind != "pot":
        return [g], {}
    out = {"seq_tlast": sc[sp.first + sp.n_u - 1]}  # the POT's upcrossings read the window before
    prev = np.concatenate(([0.0], sc[:-1]))
    prev[sp.first] = tab.seq_tlast[slots]
    adds = pot_sums(model.levels, sc, prev, q, sp.cell, R * U)  # per cell, as ScoreTail._pot per stream
    levels = Group((None, "seq_tx", "seq_tc", "seq_te"), (None, "seq_tqx", "seq_tqc", "seq_tqe"), L,  # counts: g's
                   np.repeat(g.n0, L, axis=1), [getattr(tab, f)[slots] for f in ("seq_tx", "seq_tc", "seq_te")],
                   np.repeat(g.an0, L, axis=1), [getattr(tab, f)[slots] for f in ("seq_tqx", "seq_tqc", "seq_tqe")],
                   np.repeat(g.cnt, L, axis=2), [a.reshape(R, U, L).astype(np.float64) for a in adds], model.memory)
    return [g, levels], out


def threshold(slots, closed, tab, model, tail_writes: dict) -> np.ndarray:
    """Streams ``slots``' calibrated raise threshold after the call (``closed``: where a block of theirs
    ended in it; ``tail_writes``: their final tail estimates): twice the setting while young, else moved
    at the call's last block end from the final estimates (the one that counts: a block end moves it
    from the estimates as they then stand, and the estimates move only at block ends)."""
    sn = tail_writes["seq_sn"]
    young = sn < model.warmup
    move = closed & ~young
    thr = np.where(young, 2.0 * model.raise_threshold, tab.seq_thr[slots])
    if move.any():
        if model.kind == "pot":
            new = pot_threshold(model.levels, tail_writes["seq_tx"], tail_writes["seq_tc"], tail_writes["seq_te"],
                                model.tail_frac, model.p)
        else:
            mu, m2 = tail_writes["seq_smu"], tail_writes["seq_sm2"]
            new = mu + model.gumbel_c * np.sqrt(np.maximum(m2 - mu * mu, 0.0))
        thr = np.where(move, new, thr)
    return thr
