"""The arithmetic of the sequential tests (:mod:`pipeline.monitor.alerts.sequential`), pure numpy:
Siegmund's in-control run length of a CUSUM and the threshold that inverts it, the CUSUM in closed
form over many streams at once (:func:`lindley`), and the per-stream estimates that move once per
block of windows, their sums exact in any order (:func:`exact`, :func:`ew_block`). One helper is
compiled for the compiled passes (:func:`ew_weight_one`)."""

from __future__ import annotations

import math

import numpy as np

from pipeline.monitor.alerts.jit import kernel

# Bound of the positive statistics the block estimates take in (the spike ratio, the window score):
# a power of 2 for :func:`exact`; quiet windows lie far below it.
U_MAX = 1024.0


def siegmund_arl(h: float, k: float) -> float:
    """Siegmund's approximation of the in-control average run length of a one-sided CUSUM with
    reference ``k`` and threshold ``h`` on independent standard normal increments."""
    a = 2.0 * k * (h + 1.166)
    return (math.expm1(a) - a) / (2.0 * k * k)


def cusum_threshold(arl: float, k: float) -> float:
    """The ``h`` whose :func:`siegmund_arl` is ``arl`` (bisection)."""
    lo, hi = 0.0, 1.0
    while siegmund_arl(hi, k) < arl:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if siegmund_arl(mid, k) < arl else (lo, mid)
    return hi


def lindley(inc: np.ndarray, reset: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """``S_t = 0 if reset_t else max(0, S_{t-1} + inc_t)`` along the last axis, from ``S_{-1} = s0``
    (``inc``, ``reset``: ``(..., L)``; ``s0``: ``(...)``), without a loop: ``S_t = C_t - min(-s0,
    min_{j<=t} C_j)`` of the cumulative increments ``C`` (``inc`` taken as 0 at resets), where a reset
    starts a new segment of the running minimum. Segments are kept apart by offsets larger than any
    range of ``C``, so each later segment lies wholly below the earlier ones."""
    C = np.cumsum(np.where(reset, 0.0, inc), axis=-1)
    big = 2.0 * (np.abs(C).max(initial=0.0) + np.max(s0, initial=0.0)) + 1.0
    A = C - np.cumsum(reset, axis=-1) * big
    M = np.minimum(np.minimum.accumulate(A, axis=-1), -np.asarray(s0)[..., None])
    S = A - M
    return np.where(S < 1e-9, 0.0, S)


def exact(x: np.ndarray, bound: float, block: int) -> np.ndarray:
    """``x`` clipped to ``±bound`` (a power of 2) and rounded to a grid fine enough for its purpose and
    coarse enough that the sum of a block's values is exact in float64 in any order: the estimates then
    do not depend on how a block's windows were cut into calls, to the last bit."""
    _, up, down = grid(bound, block)
    return np.rint(np.minimum(np.maximum(x, -bound), bound) * up) * down  # np.clip, at less call overhead


def grid(bound: float, block: int) -> tuple[float, float, float]:
    """:func:`exact`'s bound and the scales to its grid and back, ``2**k`` and ``2**-k``."""
    k = 52 - int(math.log2(bound)) - int(math.ceil(math.log2(block + 1)))
    return bound, 2.0**k, 2.0**-k


def ew_block(tab, slots, closes, seg, q, values, est, acc, memory: int, col=None) -> None:
    """Add ``values`` (each ``(N,)``) of the windows ``q`` of each stream ``seg`` to its block's
    accumulators ``acc`` (slot fields: count, then one sum per value); where the stream's block
    ``closes``, one exponential-memory step of its estimates ``est`` (count, then one running mean per
    value) from the block's means: plain averages while a stream has at most ``memory`` values, then
    the block's mean weighs its windows / ``memory`` (at most 1/2). ``col``: the fields' column; or
    ``q`` and ``values`` of shape ``(T, N)``, row ``t`` for column ``t`` of the fields (one call for
    ``T`` columns). ``values`` must sum exactly in any order (:func:`exact`)."""
    U = slots.size
    q = np.asarray(q)
    if q.ndim == 2:
        T = q.shape[0]
        cols = slice(0, T)
        key = (seg[None, :] * T + np.arange(T)[:, None]).ravel()  # (stream, column), row-major

        def total(w):
            return np.bincount(key, weights=w.ravel(), minlength=U * T).reshape(U, T)
    else:
        cols = col

        def total(w):
            return np.bincount(seg, weights=w, minlength=U)
    at = (slots,) if cols is None else (slots, cols)
    f = [getattr(tab, name) for name in acc]
    f[0][at] += total(q).astype(np.int64)
    for a, v in zip(f[1:], values):
        a[at] += total(np.where(q, v, 0.0))
    c = np.flatnonzero(closes)
    if c.size == 0:
        return
    at = (slots[c],) if cols is None else (slots[c], cols)
    e = [getattr(tab, name) for name in est]
    cnt = f[0][at]
    n = e[0][at] + cnt
    w = ew_weight(cnt, n, memory)
    for m, a in zip(e[1:], f[1:]):
        m[at] = np.where(cnt > 0, m[at] + w * (a[at] / np.maximum(cnt, 1) - m[at]), m[at])
        a[at] = 0.0
    e[0][at] = n
    f[0][at] = 0


@kernel
def ew_weight_one(cnt, n, memory):
    """:func:`ew_weight` of one estimate, for the compiled passes (seqstep.py, maxtest.py)."""
    if n <= memory:
        return cnt / max(n, 1)
    return min(cnt / memory, 0.5)


def ew_weight(cnt, n, memory: int):
    """The weight of a block of ``cnt`` values in an estimate of ``n`` values in all (the block's own
    included): plain averages while ``n <= memory``, then ``cnt / memory`` (at most 1/2)."""
    return np.where(n <= memory, cnt / np.maximum(n, 1), np.minimum(cnt / memory, 0.5))
