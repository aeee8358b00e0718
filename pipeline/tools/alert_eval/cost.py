"""What the alert engine costs per window, alone (docs/bench.md, "The alert engine alone").

8 streams x 9,600 windows of 256 samples (hop 128), white noise as window and 0.9 x it as the model's
output, log-normal errors and scales, and now and then (one 64-window block in ten) three windows
with a 300x error: an alert raised and resolved. Fed either as the worker feeds it
(``--api batch``: one ``AlertEngine.update_batch`` call per micro-batch of N windows, N/8 from each
stream; with ``--streams-per-call K``, N/K windows of each of K streams, groups in turn: a worker's
backlog reaches the engine as 2 streams x 256 windows) or one call per stream and N windows
(``--api update``, the only way before the batch entry point). Prints µs per window, process CPU
time and wall time, min and median over the repeats, and the number of events (the decisions must not depend on the API or on N).

``--many K``: instead, rounds of K new stream ids with one window each (a 64-sample chunk flushed as
one padded window), micro-batches of 512; prints the time per round, the RSS per tracked stream and
the RSS after the state timeout (Linux: reads /proc/self/statm).

    .venv/bin/python -m pipeline.tools.alert_eval.cost --api batch --n 256 --repeats 5
    .venv/bin/python -m pipeline.tools.alert_eval.cost --api batch --n 512 --streams-per-call 2   # a backlog's calls
    .venv/bin/python -m pipeline.tools.alert_eval.cost --many 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.settings import AlertSettings

STREAMS, BLOCKS, BLOCK, W, HOP = 8, 150, 64, 256, 128
_SETTINGS = [AlertSettings()]  # main() may swap in --no-sequential
# The sequential tests of the defaults before 2026-12-05 (no "score", no "floor", isolated_z 0).
EARLIER_SEQUENTIAL = ("level", "scale", "noise", "freq", "spike", "runs")
CAL = {"q50": 0.01, "q999": 0.1}


def make_streams(seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """Per stream: starts, errors, scales, windows ``(n, 1, W)`` and outputs."""
    rng = np.random.default_rng(seed)
    parts: list[list] = [[] for _ in range(STREAMS)]
    for b in range(BLOCKS):
        for s in range(STREAMS):
            win = rng.standard_normal((BLOCK, 1, W)).astype(np.float32)
            out = (0.9 * win).astype(np.float32)
            err = np.exp(rng.normal(np.log(0.01), 0.3, BLOCK))
            sc = np.exp(rng.normal(0.0, 0.05, BLOCK))
            if rng.random() < 0.1:  # an occasional anomaly: three hot windows
                j = int(rng.integers(0, BLOCK - 4))
                err[j : j + 3] *= 300.0
            parts[s].append(((b * BLOCK + np.arange(BLOCK)) * HOP, err, sc, win, out))
    return [tuple(np.concatenate([p[k] for p in ps]) for k in range(5)) for ps in parts]


def run(streams, api: str, n: int, per_call: int = 0) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, events) of one pass over ``streams`` by a fresh engine. ``per_call``
    (batch): streams per call, each call ``n / per_call`` windows of each, groups of streams in turn
    (0: all of them)."""
    eng = AlertEngine(_SETTINGS[0], CAL, "v1")
    ids = [f"s{s}" for s in range(len(streams))]
    total = streams[0][0].size
    cpu = wall = 0.0
    events = 0
    k = per_call or len(streams)
    step = n if api == "update" else max(1, n // k)
    for a in range(0, total, step):
        sl = slice(a, a + step)
        if api == "update":
            calls = [(lambda x=x, sid=sid: eng.update_scored(sid, x[0][sl], W, *(v[sl] for v in x[1:3]), 1.0,
                                                            x[3][sl], x[4][sl])[0])
                     for sid, x in zip(ids, streams)]
        else:
            calls = [_batch_call(eng, ids[g : g + k], streams[g : g + k], sl) for g in range(0, len(streams), k)]
        for call in calls:
            c0, t0 = time.process_time(), time.perf_counter()
            ev = call()
            cpu += time.process_time() - c0
            wall += time.perf_counter() - t0
            events += len(ev)
    return cpu, wall, events


def _batch_call(eng, ids, streams, sl):
    cat = [np.concatenate([x[k][sl] for x in streams]) for k in range(5)]
    lengths = [x[0][sl].size for x in streams]
    return lambda: eng.update_batch(ids, lengths, cat[0], W, cat[1], cat[2], now=1.0, windows=cat[3],
                                    outputs=cat[4]).events


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def many_streams(k: int, rounds: int, batch: int = 512) -> None:
    """Rounds of ``k`` new streams with one window each; prints time and memory per round."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, W)).astype(np.float32)
    x[:, :, 64:] = 0.0  # a 64-sample chunk padded to a window
    y, err = (0.9 * x).astype(np.float32), np.exp(rng.normal(np.log(0.01), 0.3, batch))
    sc = x.reshape(batch, -1).std(axis=1).astype(np.float64)
    clock = [0.0]
    eng = AlertEngine(_SETTINGS[0], CAL, "v1", clock=lambda: clock[0])
    base = _rss()
    for r in range(rounds):
        c0, t0 = time.process_time(), time.perf_counter()
        for a in range(0, k, batch):
            m = min(batch, k - a)
            eng.update_batch([f"r{r}-s{a + i}" for i in range(m)], [1] * m, np.zeros(m, np.int64), W, err[:m], sc[:m],
                             now=0.0, windows=x[:m], outputs=y[:m])
        grown = _rss() - base
        print(f"round {r + 1}: {time.process_time() - c0:.2f} s CPU, {time.perf_counter() - t0:.2f} s wall; RSS "
              f"+{grown / 2**20:.1f} MiB, {grown / eng.streams():.0f} bytes per tracked stream ({eng.streams()})")
    clock[0] = 1e9
    t0 = time.perf_counter()
    gone = len(eng.expire())
    print(f"state timeout: {gone} streams dropped in {time.perf_counter() - t0:.2f} s; "
          f"RSS +{(_rss() - base) / 2**20:.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--api", choices=("batch", "update"), default="batch")
    ap.add_argument("--n", type=int, default=256, help="windows per call (batch: across the 8 streams)")
    ap.add_argument("--streams-per-call", type=int, default=0,
                    help="batch: each call holds N/K windows of K streams, groups in turn (a worker's backlog "
                         "reaches it as 2 streams x 256 windows); default all 8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--many", type=int, default=0, help="rounds of this many new one-window streams instead")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-sequential", action="store_true",
                    help="the window score alone (alerts.sequential empty, isolated test off): what the tests cost")
    ap.add_argument("--outlier", action="store_true",
                    help="with the record outlier test (alerts.outlier_z 7; off by default): what it costs")
    ap.add_argument("--earlier", action="store_true",
                    help="the alert profile before 2026-12-05: without the window score's calibration, the "
                         "noise-floor CUSUM and the isolated-sample test; --score, --floor, --isolated add one back")
    ap.add_argument("--isolated", action="store_true", help="with --earlier: the isolated-sample test (isolated_z 5)")
    ap.add_argument("--floor", action="store_true", help="with --earlier: the noise-floor CUSUM (\"floor\")")
    ap.add_argument("--score", action="store_true", help="with --earlier: the window score's calibration (\"score\")")
    a = ap.parse_args()
    kw: dict = {"outlier_z": 7.0} if a.outlier else {}
    if a.no_sequential:
        kw.update(sequential=(), isolated_z=0.0)
    elif a.earlier or a.isolated or a.floor or a.score:
        kw.update(sequential=EARLIER_SEQUENTIAL + (("floor",) if a.floor else ()) + (("score",) if a.score else ()),
                  isolated_z=5.0 if a.isolated else 0.0)
    _SETTINGS[0] = AlertSettings(**kw)
    if a.many:
        many_streams(a.many, a.rounds)
        return
    streams = make_streams()
    windows = sum(x[0].size for x in streams)
    events = run(streams, a.api, a.n, a.streams_per_call)[2]  # warm-up
    runs = [run(streams, a.api, a.n, a.streams_per_call) for _ in range(a.repeats)]
    for name, k in (("cpu", 0), ("wall", 1)):
        us = [r[k] / windows * 1e6 for r in runs]
        print(f"{a.api} n={a.n}{f' ({a.streams_per_call} streams per call)' if a.streams_per_call else ''} {name}: us/window min {min(us):.2f} median {statistics.median(us):.2f} "
              f"({' '.join(f'{u:.2f}' for u in us)})")
    print(f"{windows} windows, {events} events")


if __name__ == "__main__":
    main()
