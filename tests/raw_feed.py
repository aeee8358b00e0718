"""Feeding raw streams through an AlertEngine window by window, with the calls cut where a test says:
the helper of the raw-sample tests' tests (test_alerts_outliers.py, test_alerts_isolated.py)."""

from __future__ import annotations

import numpy as np


def windows_of(x, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, windows ``(N, C, window)`` float32) of a stream ``(n,)`` or ``(C, n)``."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    n = (x.shape[1] - window) // hop + 1
    idx = hop * np.arange(n)[:, None] + np.arange(window)[None, :]
    return hop * np.arange(n), np.transpose(x[:, idx], (1, 0, 2)).astype(np.float32)


def feed(eng, streams: dict, cuts, detector: str, window: int, hop: int) -> dict:
    """Every stream's windows, the calls cut at window indices ``cuts`` (all streams in each call);
    returns ``detector``'s events per stream, in order, as (kind, start, end, peak)."""
    wins = {k: windows_of(x, window, hop) for k, x in streams.items()}
    n = max(s.size for s, _ in wins.values())
    out = {k: [] for k in streams}
    edges = [0, *sorted(set(c for c in cuts if 0 < c < n)), n]
    for a, b in zip(edges[:-1], edges[1:]):
        ids, lengths, st_, ws = [], [], [], []
        for k, (starts, w) in wins.items():
            if a < starts.size:
                ids.append(k)
                lengths.append(min(b, starts.size) - a)
                st_.append(starts[a:b])
                ws.append(w[a:b])
        m = sum(lengths)
        r = eng.update_batch(ids, lengths, np.concatenate(st_), window, np.full(m, 0.01), np.ones(m), now=float(a),
                             windows=np.concatenate(ws))
        for ev in r.events:
            if ev.detector == detector:
                out[ev.stream].append((ev.kind, ev.start, ev.end, ev.peak_score))
    return out
