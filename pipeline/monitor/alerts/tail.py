"""The window score's raise threshold per stream (``score`` in ``alerts.sequential``): the upper tail of
its quiet windows' scores, modelled per stream and read at the score's share of the false-alarm rate
(pure numpy; state in the engine's slots, fields ``seq_s*`` and ``seq_t*``).

Two tail models (``alerts.score_tail``):

- ``pot`` (default), peaks over threshold with declustering. On a fixed grid of ``TAIL_LEVELS`` levels
  (``raise_threshold`` / 12 apart, so 0.5 to 12 at the default 6) each stream keeps, with the same
  exponential memory and blocks as the sequential tests' estimates, the fraction of its quiet windows
  above each level, the fraction that *cross* it upwards (the window before was not above: one per
  cluster of exceedances, since overlapping windows make exceedances come in runs), and the mean
  excess over it. The tail's level ``u`` is the highest on the grid that a fraction
  ``1 - score_tail_quantile`` (0.02) of the quiet windows still exceeds (the 98 % quantile, as SPOT:
  Siffer et al., KDD 2017). Above it the excesses are taken as exponential (a generalised Pareto law
  with shape 0) of scale ``beta`` = the mean excess over ``u``, so clusters start above ``u + y`` at the
  rate ``c(u) exp(-y / beta)`` per window, ``c(u)`` the upcrossing fraction. The threshold is where
  that rate is the score's per-window share ``p`` of ``false_alarms_per_hour``:
  ``u + beta ln(c(u) / p)``. Counting clusters, not windows, is the runs estimator of the extremal
  index: the share is spent on alerts, and an alert is a cluster.
- ``gumbel``: a Gumbel law fitted to the running mean and std of the quiet scores, read at ``p`` per
  window. Measured (docs/alerts.md): too conservative where the score's tail is light, too loose where
  it is heavy.

Either way the threshold is never below ``raise_threshold`` (the paths take the larger) and is twice
``raise_threshold`` until ``sequential_warmup`` quiet scores are in. Every value summed into a block's
accumulators lies on the grid of :func:`~pipeline.monitor.alerts.cusum.exact` (levels included), so
the thresholds do not depend on how the worker's micro-batches cut a stream, to the last bit.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.monitor.alerts.cusum import U_MAX, ew_block, ew_weight, exact

TAIL_LEVELS = 24  # levels of the POT grid (slot record size: slots.record_dtype)
_STEPS_PER_RAISE = 12  # grid levels per raise_threshold
_EULER = 0.5772156649
TAILS = ("pot", "gumbel")


def gumbel_c(p: float) -> float:
    """Standard deviations above the mean of a Gumbel law's quantile at upper-tail probability ``p``."""
    return (-math.log(p) - _EULER) * math.sqrt(6.0) / math.pi


def tail_levels(raise_threshold: float, block: int) -> np.ndarray:
    """The POT grid: ``raise_threshold * j / 12``, ``j = 1 .. TAIL_LEVELS``, on the grid of :func:`exact`."""
    lev = raise_threshold / _STEPS_PER_RAISE * np.arange(1, TAIL_LEVELS + 1)
    return exact(lev, U_MAX, block)


def pot_threshold(levels, above, cross, excess, tail_frac: float, p: float) -> np.ndarray:
    """Per stream (rows of ``above``, ``cross``, ``excess``: ``(U, L)``, per quiet window the fraction
    above each level, the fraction crossing it upwards, the mean excess over it) the score where clusters
    of exceedances start at the rate ``p`` per window, extrapolated exponentially from the highest level
    still exceeded by ``tail_frac`` of the windows (the lowest level where none is)."""
    U = above.shape[0]
    j = np.maximum((above >= tail_frac).sum(axis=1) - 1, 0)
    r = np.arange(U)
    a, c, e = above[r, j], cross[r, j], excess[r, j]
    beta = e / np.maximum(a, 1e-300)
    return levels[j] + np.where((a > 0) & (c > p), beta * np.log(np.maximum(c, p) / p), 0.0)


def pot_sums(levels, sc, prev, q, key, groups: int):
    """Per group (``key`` of each window, ``groups`` of them) and level ``(groups, L)``: the quiet windows
    ``q`` whose score ``sc`` exceeds the level, those that cross it upwards (``prev``: the window before
    was not above; both int32), and the sum of their excesses over it. Per quiet window the levels below
    its score (it exceeds levels 0 .. n - 1) and below the window before it (it crosses levels n_prev ..
    n - 1): per group histograms of those counts, summed from the top, give each level's sums in
    O(windows) instead of O(windows x levels); every sum exact on the grid, as summed level by level."""
    L = levels.size
    qi = np.flatnonzero(q)
    n = np.searchsorted(levels, sc[qi], side="left")  # levels strictly below the score
    n_prev = np.searchsorted(levels, prev[qi], side="left")
    base = key[qi] * (L + 1)

    def from_top(b, w=None):  # (groups, L): per level j, the sum of w over the windows with b > j
        h = np.bincount(base + b, weights=w, minlength=groups * (L + 1)).reshape(groups, L + 1)
        return np.cumsum(h[:, ::-1], axis=1)[:, ::-1][:, 1:]

    up = from_top(n)
    crossing = n > n_prev  # level j is crossed where n_prev <= j < n: +1 at n_prev, -1 at n, summed up
    c_hi = np.bincount(base[crossing] + n[crossing], minlength=groups * (L + 1)).reshape(groups, L + 1)
    c_lo = np.bincount(base[crossing] + n_prev[crossing], minlength=groups * (L + 1)).reshape(groups, L + 1)
    return (up.astype(np.int32), np.cumsum(c_lo - c_hi, axis=1)[:, :L].astype(np.int32),
            from_top(n, sc[qi]) - levels[None, :] * up)


class ScoreTail:
    """Folds each call's quiet window scores into the streams' tail estimates and sets, where a
    stream's block closes, its calibrated raise threshold (``seq_thr``)."""

    def __init__(self, kind: str, p_win: float, tail_frac: float, raise_threshold: float, warmup: int,
                 memory: int, block: int):
        if kind not in TAILS:
            raise ValueError(f"score_tail must be one of {TAILS}, got {kind!r}")
        self.kind, self.p, self.tail_frac = kind, p_win, tail_frac
        self.raise_threshold, self.warmup, self.memory, self.block = raise_threshold, warmup, memory, block
        self.gumbel_c = gumbel_c(p_win)
        self.levels = tail_levels(raise_threshold, block)

    def young(self, tab, slots) -> np.ndarray:
        """Streams with fewer than ``warmup`` quiet scores in (a count that moves only at block ends)
        raise at twice the setting, from their first window on; returns which are young."""
        young = tab.seq_sn[slots] < self.warmup
        tab.seq_thr[slots[young]] = 2.0 * self.raise_threshold
        return young

    def update(self, tab, slots, seg, first, n_u, score, finite, engine_active, closes) -> None:
        """Windows ``first[u]`` to ``first[u] + n_u[u]`` are stream ``u``'s, in order; quiet: finite, below
        the stream's threshold, no alert up after the window."""
        B = self.block
        thr = np.maximum(self.raise_threshold, tab.seq_thr[slots])[seg]
        q = finite & ~engine_active & (score < thr)
        sc = exact(np.where(finite, np.minimum(score, U_MAX), 0.0), U_MAX, B)
        if self.kind == "pot":  # before ew_block: it reads the block's count of quiet windows as it stood
            self._pot(tab, slots, seg, first, n_u, q, sc, closes)
        ew_block(tab, slots, closes, seg, q, (sc, exact(sc * sc, U_MAX**2, B)),
                 ("seq_sn", "seq_smu", "seq_sm2"), ("seq_sqn", "seq_sq1", "seq_sq2"), memory=self.memory)
        young = self.young(tab, slots)
        sl = slots[closes & ~young]  # the estimates move only where a block closes
        if sl.size == 0:
            return
        if self.kind == "pot":
            tab.seq_thr[sl] = pot_threshold(self.levels, tab.seq_tx[sl], tab.seq_tc[sl], tab.seq_te[sl],
                                            self.tail_frac, self.p)
        else:
            mu, m2 = tab.seq_smu[sl], tab.seq_sm2[sl]
            tab.seq_thr[sl] = mu + self.gumbel_c * np.sqrt(np.maximum(m2 - mu * mu, 0.0))

    def _pot(self, tab, slots, seg, first, n_u, q, sc, closes) -> None:
        """The quiet windows' exceedances, upcrossings and excesses over each level into the block's
        accumulators; where a block closes, one exponential-memory step of the fractions and mean excess."""
        U, L = slots.size, TAIL_LEVELS
        prev = np.concatenate(([0.0], sc[:-1]))
        prev[first] = tab.seq_tlast[slots]
        tab.seq_tlast[slots] = sc[first + n_u - 1]
        above, cross, excess = pot_sums(self.levels, sc, prev, q, seg, U)
        tab.seq_tqx[slots] += above
        tab.seq_tqc[slots] += cross
        tab.seq_tqe[slots] += excess
        c = np.flatnonzero(closes)
        if c.size == 0:
            return
        sl = slots[c]
        cnt = tab.seq_sqn[sl] + np.bincount(seg, weights=q, minlength=U).astype(np.int64)[c]
        n = tab.seq_sn[sl] + cnt
        w = ew_weight(cnt, n, self.memory)[:, None]
        k = np.maximum(cnt, 1)[:, None]
        has = (cnt > 0)[:, None]
        for est, acc in (("seq_tx", "seq_tqx"), ("seq_tc", "seq_tqc"), ("seq_te", "seq_tqe")):
            e, a = getattr(tab, est), getattr(tab, acc)
            e[sl] = np.where(has, e[sl] + w * (a[sl] / k - e[sl]), e[sl])
            a[sl] = 0


def block_rounds(tab, block: int, streams, lengths) -> list:
    """The call's windows (segment ``j``: the next ``lengths[j]`` windows, of ``streams[j]``) in rounds
    (index arrays, call order) that each hold at most one block of ``block`` windows of every stream,
    counted from the stream's first window (``seq_pos``); ``[None]`` when one round holds them all."""
    seg = np.repeat(np.arange(len(streams)), lengths)
    uid: dict[str, int] = {}
    # a stream may fill several segments
    inv = np.array([uid.setdefault(x, len(uid)) for x in streams], dtype=np.int64)[seg]
    ids = tab.ids
    pos0 = np.array([tab.seq_pos[ids[x]] if x in ids else 0 for x in uid], dtype=np.int64)
    cnt = np.bincount(inv, minlength=len(uid))
    order = np.argsort(inv, kind="stable")
    rank = np.empty(seg.size, dtype=np.int64)
    rank[order] = np.arange(seg.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    rnd = (pos0[inv] + rank) // block - pos0[inv] // block
    if not rnd.any():
        return [None]
    return [np.flatnonzero(rnd == r) for r in range(int(rnd.max()) + 1) if (rnd == r).any()]
