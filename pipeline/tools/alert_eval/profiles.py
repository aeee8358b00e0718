"""What each part of the alert profile costs the engine, on the bench's own signals (docs/bench.md, "One
pass over a call's blocks").

The input of ``dae bench`` (8 streams of the signal families at 10 dB, 1 kHz; ``--seconds`` each) goes
once through the registry's current model (CPU), then through one alert engine per profile, every
engine fed the same calls of ``--streams-per-call`` streams x ``--n / --streams-per-call`` windows (a
worker's backlog reaches it as 2 x 256) in alternation, so that a machine whose speed wanders between
minutes weighs on every profile alike. Prints CPU µs per window per profile and pass, and the events.

    .venv/bin/python -m pipeline.tools.alert_eval.profiles --registry /tmp/hard-reg --seconds 1000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.settings import AlertSettings
from pipeline.tools.alert_eval.cost import EARLIER_SEQUENTIAL

# Profiles, each the settings it changes from the defaults.
PROFILES = {
    "window score alone": {"sequential": (), "isolated_z": 0.0},
    "profile before 2026-12-05": {"sequential": EARLIER_SEQUENTIAL, "isolated_z": 0.0},
    "defaults without the isolated test": {"isolated_z": 0.0},
    "defaults": {},
}
STREAMS, RATE = 8, 1000.0


def bench_windows(registry: Path, seconds: float):
    """Per stream of the bench's input: starts, errors, scales, windows and the model's outputs; and
    the model's window size."""
    from pipeline.inference.engine import InferenceEngine
    from pipeline.tools.bench import bench_signals

    eng = InferenceEngine.from_source(registry, device="cpu")
    W, hop = eng.window, eng.hop
    out = []
    for x in bench_signals(STREAMS, seconds, RATE):
        n = x.size
        idx = hop * np.arange((n - W) // hop + 1)[:, None] + np.arange(W)[None, :]
        win = x[idx].astype(np.float32)[:, None, :]
        r = eng.infer(win)
        out.append((hop * np.arange(len(win)), r.errors.astype(np.float64), r.scales.astype(np.float64), win,
                    r.outputs))
    return out, W


def compare(streams, W: int, n: int, per_call: int, passes: int) -> list[dict[str, tuple[float, int]]]:
    """Per pass, per profile: (CPU µs per window, events)."""
    err = np.concatenate([s[1] for s in streams])
    cal = {"q50": float(np.median(err)), "q999": float(np.quantile(err, 0.999))}
    ids = [f"s{s}" for s in range(len(streams))]
    total, step = streams[0][0].size, max(1, n // per_call)
    out = []
    for _ in range(passes):
        engines = {p: AlertEngine(AlertSettings(**kw), cal, "v1", window=W) for p, kw in PROFILES.items()}
        cpu, events, windows, turn = dict.fromkeys(engines, 0.0), dict.fromkeys(engines, 0), 0, 0
        for a in range(0, total, step):
            sl = slice(a, a + step)
            for g in range(0, len(streams), per_call):
                group = streams[g : g + per_call]
                cat = [np.concatenate([x[k][sl] for x in group]) for k in range(5)]
                lengths = [x[0][sl].size for x in group]
                order = list(engines) if turn % 2 == 0 else list(engines)[::-1]
                turn += 1
                for p in order:
                    c0 = time.process_time()
                    r = engines[p].update_batch(ids[g : g + per_call], lengths, cat[0], W, cat[1], cat[2], now=1.0,
                                                windows=cat[3], outputs=cat[4])
                    cpu[p] += time.process_time() - c0
                    events[p] += len(r.events)
                windows += cat[0].size
        out.append({p: (cpu[p] / windows * 1e6, events[p]) for p in engines})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, required=True, help="model registry (its current model)")
    ap.add_argument("--seconds", type=float, default=1000.0, help="signal per stream")
    ap.add_argument("--n", type=int, default=512, help="windows per call")
    ap.add_argument("--streams-per-call", type=int, default=2)
    ap.add_argument("--passes", type=int, default=2)
    a = ap.parse_args()
    streams, W = bench_windows(a.registry, a.seconds)
    for k, res in enumerate(compare(streams, W, a.n, a.streams_per_call, a.passes)):
        print(f"pass {k + 1}: " + "; ".join(f"{p} {us:.2f} us/window ({ev} events)" for p, (us, ev) in res.items()))


if __name__ == "__main__":
    main()
