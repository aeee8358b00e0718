"""The worker's throughput per alert profile, the profiles alternated in one process (docs/bench.md,
"Where the profile's cost goes in the worker").

``dae bench``'s leg (b), throughput phase only: the bench's input (8 streams of the signal families at
10 dB, 1 kHz, ``--seconds`` each, chunks of 512 samples) produced as a backlog to a fresh topic, then a
worker with the registry's current model reads it all, once per profile and pair, the order of the
profiles reversed every other pair so that a machine whose speed wanders between minutes weighs on
each alike. A full ``dae bench`` takes ~3.5 minutes per run and its legs' figures wander by ±20 %
between runs; here a run of 1000 s of input takes ~10 s, so many alternated pairs fit in minutes.

Per run: samples/s from the first record polled to the last output acknowledged (as ``dae bench``),
and the worker's own stage totals (``dae_stage_seconds``) per window: ``score`` is the alert engine
and the drift monitor, ``forward`` the model. Summary: each profile's mean and median, and the ratio
of the means to the first profile.

    .venv/bin/python -m pipeline.tools.alert_eval.worker_profiles --registry /tmp/hard-reg \\
        --bootstrap 127.0.0.1:29092 --seconds 1000 --pairs 8
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.settings import Settings
from pipeline.tools.alert_eval.profiles import PROFILES

RATE, STREAMS, CHUNK = 1000.0, 8, 512
STAGES = ("score", "forward", "encode", "ack")


@dataclass
class Run:
    profile: str
    samples_per_s: float
    us_per_window: dict[str, float]  # the worker's stage totals per window
    batches: int  # micro-batches through the model


def run_once(s: Settings, messages, samples: int) -> tuple[float, dict[str, float], int, int]:
    """Leg (b)'s throughput phase on a fresh topic: samples/s, the stage totals (s), the batches and
    the model's hop."""
    from pipeline.tools.bench import WorkerLeg, backlog_phase

    leg, secs = backlog_phase(lambda topic: WorkerLeg(s, topic, samples, STREAMS), s, messages)
    try:
        if not leg.done():
            raise TimeoutError(f"the worker did not finish {samples} samples in 600 s")
        totals = {st: leg.w.metrics.stages.total(st) for st in STAGES}
        batches = leg.w.metrics.stages.count("forward")
        hop = leg.w.processor.engine.hop
    finally:
        leg.close()
    return samples / secs, totals, batches, hop


def label(profile: str, max_batch: int | None) -> str:
    return profile if max_batch is None else f"{profile}, max_batch {max_batch}"


def compare(base: Settings, profiles: list[str], seconds: float, pairs: int, say=print,
            max_batches: list[int | None] | None = None) -> list[Run]:
    """``pairs`` rounds of one run per profile and ``max_batches`` value (default: the settings'),
    alternating the order."""
    from pipeline.tools.bench import make_messages

    messages, samples = make_messages(STREAMS, seconds, RATE, CHUNK)
    runs: list[Run] = []
    configs = [(name, mb) for mb in (max_batches or [None]) for name in profiles]
    for p in range(pairs):
        for name, mb in (configs if p % 2 == 0 else configs[::-1]):
            s = base.model_copy(update={"alerts": base.alerts.model_copy(update=PROFILES[name])})
            if mb is not None:
                s = s.model_copy(update={"batch": s.batch.model_copy(update={"max_batch": mb})})
            rate, totals, batches, hop = run_once(s, messages, samples)
            r = Run(label(name, mb), rate, {st: v / (samples / hop) * 1e6 for st, v in totals.items()}, batches)
            runs.append(r)
            say(f"pair {p + 1} {r.profile}: {rate / 1e6:.3f} M samples/s, {batches} batches; per window, us: "
                + ", ".join(f"{st} {v:.2f}" for st, v in r.us_per_window.items()))
    return runs


def summary(runs: list[Run], profiles: list[str]) -> list[str]:
    """Per configuration label (``profiles``, in order): its rates and stage means, against the first."""
    rates = {p: np.array([r.samples_per_s for r in runs if r.profile == p]) for p in profiles}
    lines = []
    for p in profiles:
        stage = {st: np.mean([r.us_per_window[st] for r in runs if r.profile == p]) for st in STAGES}
        lines.append(f"{p}: mean {rates[p].mean() / 1e6:.3f} M samples/s, median {np.median(rates[p]) / 1e6:.3f}, "
                     f"{rates[p].mean() / rates[profiles[0]].mean():.3f} of the first profile; per window, us: "
                     + ", ".join(f"{st} {v:.2f}" for st, v in stage.items()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, required=True, help="model registry (its current model)")
    ap.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: the settings')")
    ap.add_argument("--seconds", type=float, default=1000.0, help="signal per stream")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--profiles", default="window score alone,defaults",
                    help=f"comma-separated, of: {', '.join(PROFILES)}")
    ap.add_argument("--max-batch", default=None,
                    help="batch.max_batch, or several comma-separated, each run with every profile (default: the settings')")
    a = ap.parse_args()
    profiles = [p.strip() for p in a.profiles.split(",")]
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        ap.error(f"unknown profile(s) {unknown}; known: {list(PROFILES)}")
    base = Settings()
    update = {"model": base.model.model_copy(update={"registry": a.registry, "device": "cpu"})}
    if a.bootstrap:
        update["kafka"] = base.kafka.model_copy(update={"bootstrap_servers": a.bootstrap})
    batches = [int(b) for b in a.max_batch.split(",")] if a.max_batch else [None]
    runs = compare(base.model_copy(update=update), profiles, a.seconds, a.pairs, max_batches=batches)
    print("\n".join(summary(runs, [label(p, mb) for mb in batches for p in profiles])))


if __name__ == "__main__":
    main()
