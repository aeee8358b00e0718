"""Streams through the worker's alert path, offline (used by ``dae evaluate-alerts`` and its NAB part).

The signal is cut into chunks (like producer messages), each chunk goes through
:class:`~pipeline.stream.windowing.StreamWindowing`, each round's windows through one batched
``InferenceEngine.infer``, the outputs back through overlap-add, and errors, scales and window
features through one :meth:`AlertEngine.update_batch` per round, as the worker does. The recorded
per-window inputs let :func:`replay` score the same streams under other alert settings without
inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.monitor.alerts.events import TERMS, AlertEvent
from pipeline.monitor.alerts.isolated import isolated_features
from pipeline.monitor.alerts.outliers import record_features
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


def alert_engine(engine, settings, sample_rate: float) -> AlertEngine:
    """The worker's alert engine for ``engine``'s model on streams at ``sample_rate``: its window, its hop
    and the windows per stream-hour of its false-alarm budgets, as the worker computes them."""
    return AlertEngine(settings, engine.meta.error_quantiles, engine.version, window=engine.window, hop=engine.hop,
                       windows_per_hour=sample_rate / engine.hop * 3600.0)


def run_streams(
    engine, alerts: AlertEngine, signals: dict[str, np.ndarray], chunk: int, sample_rate: float = 1.0,
    hop: int | None = None, t0: float = 1.7e9, max_batch: int = 4096,
) -> dict[str, StreamRun]:
    """Streams through the worker's path: chunks → StreamWindowing → one batched ``engine.infer``
    per round across all streams (the micro-batcher) → overlap-add, and one
    :meth:`AlertEngine.update_batch` per round.

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
            if group:
                _score_group(engine, alerts, group, wins, events, parts, t0, sample_rate)
    out = {}
    for k, x in xs.items():
        alerts.forget(k)
        p = parts[k]
        cat = (lambda arrs, dt=np.float64: np.concatenate(arrs) if arrs else np.zeros(0, dt))
        terms = {t: cat([q[2][t] for q in p]) for t in TERMS}
        inputs = {name: cat([q[4][name] for q in p]) for name in (p[0][4] if p else {})}
        out[k] = StreamRun(k, x.shape[0], cat([q[0] for q in p], np.int64), cat([q[1] for q in p]),
                           terms, cat([q[3] for q in p], bool), events[k], inputs)
    return out


def _score_group(engine, alerts: AlertEngine, group, wins, events, parts, t0: float, sample_rate: float) -> None:
    """One micro-batch: ``engine.infer`` and overlap-add per block, then the alert engine once for all of
    them (each event stamped with its stream's time: its block's last complete window)."""
    W = engine.window
    data = np.concatenate([b.data for _, b in group])
    inf = engine.infer(data)
    lengths = [len(b) for _, b in group]
    ends = np.cumsum(lengths)
    for (k, b), j in zip(group, ends - lengths):
        wins[k].add_output(b.start, inf.outputs[j : j + len(b)])
        wins[k].ready()
    hop = wins[group[0][0]].hop  # every feature a setting may read, recorded for replay under other settings
    feats = {**window_features(data, inf.outputs), **record_features(data, hop), **isolated_features(data, hop)}
    res = alerts.update_batch([k for k, _ in group], lengths, np.concatenate([b.starts for _, b in group]), W,
                              inf.errors, inf.scales, features=feats)
    for ev, w in zip(res.events, res.event_windows):
        k, b = group[int(np.searchsorted(ends, w, side="right"))]
        ev.time = t0 + float(b.starts[-1] + W) / sample_rate
        events[k].append(ev)
    sc = res.scores
    for (k, _), j, n in zip(group, ends - lengths, lengths):
        sl = slice(j, j + n)
        inputs = {"errors": inf.errors[sl], "scales": inf.scales[sl], **{t: v[sl] for t, v in feats.items()}}
        parts[k].append((sc.starts[sl], sc.score[sl], {t: v[sl] for t, v in sc.terms.items()}, sc.active[sl], inputs))


def replay(alerts: AlertEngine, run: StreamRun, window: int) -> StreamRun:
    """The same stream's recorded engine outputs through ``alerts`` (other settings), one update."""
    feats = {k: v for k, v in run.inputs.items() if k not in ("errors", "scales")}
    ev, sc = alerts.update_scored(run.name, run.starts, window, run.inputs["errors"], run.inputs["scales"],
                                  now=0.0, features=feats)
    alerts.forget(run.name)
    return StreamRun(run.name, run.n, run.starts, sc.score, sc.terms, sc.active, ev, run.inputs)


def alert_intervals(events: Sequence[AlertEvent], n: int) -> list[dict]:
    """Pair raised/resolved events of one stream: [{raised_at, start, end, trigger:(s, e), peak, detector}]
    (``detector``: what raised it)."""
    out, cur = [], None
    for e in events:
        if e.kind == "raised":
            cur = {"raised_at": e.end, "trigger": (e.start, e.end), "start": e.start, "end": e.end,
                   "peak": e.peak_score, "resolved": False, "detector": e.detector}
            out.append(cur)
        elif e.kind == "resolved" and cur is not None:
            cur.update(start=min(cur["start"], e.start), end=max(cur["end"], e.end), peak=e.peak_score,
                       resolved=True)
            cur = None
    if cur is not None:  # still up at the end of the stream
        cur["end"] = max(cur["end"], n)
    return out
