"""Streams through the worker's alert path, offline (used by ``dae evaluate-alerts`` and its NAB part).

The signal is cut into chunks (like producer messages), each chunk goes through
:class:`~pipeline.stream.windowing.StreamWindowing`, each round's windows through one batched
``InferenceEngine.infer``, the outputs back through overlap-add, and errors, scales and window
features through :meth:`AlertEngine.update_scored`. The recorded per-window inputs let
:func:`replay` score the same streams under other alert settings without inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.monitor.alerts.events import TERMS, AlertEvent
from pipeline.monitor.alerts.terms import window_features
from pipeline.stream.windowing import StreamWindowing


@dataclass
class StreamRun:
    name: str
    n: int  # samples
    starts: np.ndarray  # (windows,) first sample index of each window
    score: np.ndarray  # (windows,) alert score
    terms: dict[str, np.ndarray]  # term -> (windows,) signed z
    active: np.ndarray  # (windows,) alert up after the window
    events: list[AlertEvent]
    inputs: dict[str, np.ndarray]  # errors, scales and window features: replay with other settings


def run_streams(
    engine, alerts: AlertEngine, signals: dict[str, np.ndarray], chunk: int, sample_rate: float = 1.0,
    hop: int | None = None, t0: float = 1.7e9, max_batch: int = 4096,
) -> dict[str, StreamRun]:
    """Streams through the worker's path: chunks → StreamWindowing → one batched ``engine.infer``
    per round across all streams (the micro-batcher) → overlap-add → :class:`AlertEngine`.

    Every stream gets its next ``chunk`` samples per round; a stream that runs out is flushed
    (its padded tail window, as on idle) in that round. The raw windows and the model's outputs go
    to the alert engine too (level, clip and peak terms). ``now`` is the stream time of the last
    complete window, so the run is deterministic.
    """
    W = engine.window
    H = hop or engine.hop
    xs = {k: (np.asarray(v, np.float32)[:, None] if np.ndim(v) == 1 else np.asarray(v, np.float32))
          for k, v in signals.items()}
    wins = {k: StreamWindowing(W, H, x.shape[1], 0) for k, x in xs.items()}
    parts: dict[str, list] = {k: [] for k in xs}
    events: dict[str, list] = {k: [] for k in xs}
    pos = 0
    longest = max((x.shape[0] for x in xs.values()), default=0)
    while pos < longest:
        blocks = []
        for k, x in xs.items():
            if pos >= x.shape[0]:
                continue
            st = wins[k]
            b = st.feed(x[pos : pos + chunk])
            if b is not None:
                blocks.append((k, b))
            if pos + chunk >= x.shape[0]:
                b = st.flush()
                if b is not None:
                    blocks.append((k, b))
        pos += chunk
        for i in range(0, len(blocks), max_batch):
            group = blocks[i : i + max_batch]
            if not group:
                continue
            inf = engine.infer(np.concatenate([b.data for _, b in group]))
            j = 0
            for k, b in group:
                sl = slice(j, j + len(b))
                j += len(b)
                wins[k].add_output(b.start, inf.outputs[sl])
                wins[k].ready()
                starts = b.starts
                now = t0 + float(starts[-1] + W) / sample_rate
                feats = window_features(b.data, inf.outputs[sl])
                ev, sc = alerts.update_scored(k, starts, W, inf.errors[sl], inf.scales[sl], now=now, features=feats)
                events[k].extend(ev)
                parts[k].append((sc, {"errors": inf.errors[sl], "scales": inf.scales[sl], **feats}))
    out = {}
    for k, x in xs.items():
        alerts.forget(k)
        p = parts[k]
        cat = (lambda arrs, dt=np.float64: np.concatenate(arrs) if arrs else np.zeros(0, dt))
        terms = {t: cat([q[0].terms[t] for q in p]) for t in TERMS}
        inputs = {name: cat([q[1][name] for q in p]) for name in (p[0][1] if p else {})}
        out[k] = StreamRun(k, x.shape[0], cat([q[0].starts for q in p], np.int64), cat([q[0].score for q in p]),
                           terms, cat([q[0].active for q in p], bool), events[k], inputs)
    return out


def replay(alerts: AlertEngine, run: StreamRun, window: int) -> StreamRun:
    """The same stream's recorded engine outputs through ``alerts`` (other settings), one update."""
    feats = {k: v for k, v in run.inputs.items() if k not in ("errors", "scales")}
    ev, sc = alerts.update_scored(run.name, run.starts, window, run.inputs["errors"], run.inputs["scales"],
                                  now=0.0, features=feats)
    alerts.forget(run.name)
    return StreamRun(run.name, run.n, run.starts, sc.score, sc.terms, sc.active, ev, run.inputs)


def alert_intervals(events: Sequence[AlertEvent], n: int) -> list[dict]:
    """Pair raised/resolved events of one stream: [{raised_at, start, end, trigger:(s, e), peak}]."""
    out, cur = [], None
    for e in events:
        if e.kind == "raised":
            cur = {"raised_at": e.end, "trigger": (e.start, e.end), "start": e.start, "end": e.end,
                   "peak": e.peak_score, "resolved": False}
            out.append(cur)
        elif e.kind == "resolved" and cur is not None:
            cur.update(start=min(cur["start"], e.start), end=max(cur["end"], e.end), peak=e.peak_score,
                       resolved=True)
            cur = None
    if cur is not None:  # still up at the end of the stream
        cur["end"] = max(cur["end"], n)
    return out
