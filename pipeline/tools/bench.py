"""`dae bench`: the legs on the same broker, same input, in one run.

(a) raw ceiling — a kafka-python consumer copying every message to another topic, no model;
(b) the worker end to end with the benched model (``--model``, default: the registry's current
    one, i.e. what a user serves): windowing, micro-batching, overlap-add, alerts, commits;
(b-seed) the same with the seed MLP (the newest ``arch="mlp"`` version of the registry serving the
    rate) when the benched model is not one; skipped, saying how to add one, when there is none;
(c) the naive loop — one message at a time through the benched model, each output produced and flushed;
(b-procs) ``dae worker --processes N`` (``--processes``, default 2) on the same input, measured from
    the cleaned topic (pipeline.tools.bench_pool);
(d) the worker in exactly-once mode (``worker.delivery=exactly_once``): a transaction per input
    partition and commit interval; its throughput clock stops once the last transaction commits.

Two phases per leg, each on a fresh topic and consumer group:
- **throughput**: the whole input is already in the topic (a backlog); samples/s and MB/s count
  from the first record polled to the last output acknowledged (group join excluded);
- **latency**: a separate producer process publishes the input paced in real time at
  ``--live-rate`` samples/s in total; latency = output ack time − the timestamp of the input
  record holding the output's last sample (p50/p99). For (d) a read_committed reader sees an
  output only when its transaction commits, up to ``worker.commit_interval_s`` after the ack.
  The worker legs also report each stage's p50/p99 in this phase (``stages``: the worker's
  ``dae_stage_seconds`` values, the last 200,000 of each stage kept exactly).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pipeline.wire.codec import decode_chunk, encode_chunk
from pipeline.kafka.clients import ensure_topics, make_consumer, make_producer
from pipeline.settings import KafkaSettings, Settings
from pipeline.tools.bench_topics import bench_name

console = Console()


@dataclass
class LegResult:
    name: str
    samples: int
    seconds: float
    samples_per_s: float
    mb_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    live_rate: float
    model: str | None = None  # version served by the leg (None: no model)
    stages: dict | None = None  # worker legs: stage -> {count, p50_ms, p99_ms}, latency phase


def bench_signals(streams: int, seconds: float, rate: float, seed: int = 0) -> list[np.ndarray]:
    """The bench's input signals: the families in turn, at 10 dB."""
    from models.signals.families import FAMILIES, add_noise, generate

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    return [add_noise(generate(FAMILIES[i % len(FAMILIES)], n, rate, rng), 10.0, rng) for i in range(streams)]


def make_messages(streams: int, seconds: float, rate: float, chunk: int, seed: int = 0):
    sigs = bench_signals(streams, seconds, rate, seed)
    n = sigs[0].size
    out = []
    for start in range(0, n, chunk):  # interleave streams chunk by chunk, as live producers do
        for i, x in enumerate(sigs):
            out.append(encode_chunk(f"bench-{i:03d}", start, rate, x[start : start + chunk]))
    return out, streams * n


def _produce(k: KafkaSettings, topic: str, messages, samples_per_s: float | None) -> None:
    p = make_producer(k)
    t0 = time.monotonic()
    sent = 0
    for key, value, headers in messages:
        if samples_per_s:
            due = t0 + sent / samples_per_s
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        p.send(topic, key=key, value=value, headers=headers)
        sent += len(value) // 4
    p.flush()
    p.close()


def _producer_process(k, topic, messages, samples_per_s):
    proc = mp.get_context("fork").Process(target=_produce, args=(k, topic, messages, samples_per_s), daemon=True)
    proc.start()
    return proc


class RawCopy:
    name = "raw copy (a)"

    def __init__(self, s: Settings, topic: str, n_messages: int):
        self.out_topic = f"{topic}.copy"
        ensure_topics(s.kafka, [self.out_topic])
        self.c = make_consumer(s.kafka, topic, group_id=bench_name("g-raw"))
        self.p = make_producer(s.kafka)
        self.n, self.acked, self.lat = n_messages, 0, []
        self.first_records: float | None = None  # perf_counter when a poll first returned records

    def _ok(self, ts, _md):  # kafka-python calls f(*args, value)
        self.acked += 1
        self.lat.append(time.time() - ts / 1000.0)

    def pump(self) -> int:
        got = 0
        polled = self.c.poll(timeout_ms=50)
        if polled and self.first_records is None:
            self.first_records = time.perf_counter()
        for recs in polled.values():
            for m in recs:
                got += 1
                self.p.send(self.out_topic, key=m.key, value=m.value, headers=m.headers).add_callback(self._ok, m.timestamp)
        return got

    def done(self) -> bool:
        return self.acked >= self.n

    def close(self):
        self.c.close()
        self.p.close()


# Stage values kept per worker leg for exact quantiles (a few MB at most).
STAGE_VALUES_KEPT = 200_000


class WorkerLeg:
    def __init__(self, s: Settings, topic: str, n_samples: int, n_streams: int, name: str = "worker (b)"):
        self.name = name
        from pipeline.inference.engine import InferenceEngine
        from pipeline.worker import Worker

        tag = uuid.uuid4().hex[:6]
        k = s.kafka.model_copy(update={"raw_topics": (topic,), "clean_topic": f"{topic}.clean-{tag}",
                                       "group_id": bench_name("g-worker")})
        engine = InferenceEngine.from_source(s.model.registry, s.model.version, device=s.model.device, dtype=s.model.dtype)
        self.w = Worker(s.model_copy(update={"kafka": k}), engine)
        self.w.keep_latencies = True
        self.w.metrics.stages.keep(STAGE_VALUES_KEPT)
        self.model = engine.version
        self.w.start()
        self.first_records: float | None = None
        poll = self.w.consumer.poll

        def timed_poll(*args, **kwargs):  # the clock starts when records first arrive, not after that step
            records = poll(*args, **kwargs)
            if records and self.first_records is None:
                self.first_records = time.perf_counter()
            return records

        self.w.consumer.poll = timed_poll
        self.target = n_samples - n_streams * engine.window  # stream tails wait for the idle flush
        self.lat = self.w.latencies

    def pump(self) -> int:
        before = self.w.metrics.messages._value.get()
        self.w.step()
        return int(self.w.metrics.messages._value.get() - before)

    def done(self) -> bool:
        return self.w.metrics.output_samples._value.get() >= self.target

    def stages(self) -> dict:
        return self.w.metrics.stages.quantiles()

    def settle(self) -> None:
        """Exactly-once: commit the open transactions (readers see the output only then)."""
        if self.w.exactly_once:
            self.w.commits.final_commit()

    def close(self):
        self.w.stop_event.set()
        self.w.shutdown()


# Longest the naive loop runs per phase: its cost per message is constant, so a part of the input
# measures its rate (a model far slower than the seed MLP would otherwise take many minutes here).
NAIVE_MAX_S = 20.0


class NaiveLoop:
    """One message at a time: decode, the model on that chunk's windows, produce, flush; stops after
    ``max_s`` seconds of work (``samples_done`` says how far it got)."""

    name = "naive loop (c)"

    def __init__(self, s: Settings, topic: str, n_messages: int, max_s: float = NAIVE_MAX_S):
        from pipeline.inference.engine import InferenceEngine

        self.engine = InferenceEngine.from_source(s.model.registry, s.model.version, device=s.model.device)
        self.model = self.engine.version
        self.out_topic = f"{topic}.naive"
        ensure_topics(s.kafka, [self.out_topic])
        self.c = make_consumer(s.kafka, topic, group_id=bench_name("g-naive"), max_poll_records=1)
        self.p = make_producer(s.kafka)
        self.n, self.count, self.lat = n_messages, 0, []
        self.max_s, self.samples_done = max_s, 0
        self.first_records: float | None = None

    def pump(self) -> int:
        W, got = self.engine.window, 0
        polled = self.c.poll(timeout_ms=50, max_records=1)
        if polled and self.first_records is None:
            self.first_records = time.perf_counter()
        for recs in polled.values():
            for m in recs:
                ch = decode_chunk(m.key, m.value, m.headers)
                x = ch.samples[:, 0]
                xs = np.pad(x, (0, (-len(x)) % W)).reshape(-1, 1, W)
                y = self.engine.infer(xs).outputs.reshape(-1)[: len(x)]
                key, value, headers = encode_chunk(ch.stream, ch.index, ch.rate, y, model=self.engine.version)
                self.p.send(self.out_topic, key=key, value=value, headers=headers)
                self.p.flush()
                self.lat.append(time.time() - m.timestamp / 1000.0)
                self.count += 1
                self.samples_done += len(x)
                got += 1
        return got

    def done(self) -> bool:
        started = self.first_records is not None
        return self.count >= self.n or (started and time.perf_counter() - self.first_records > self.max_s)

    def close(self):
        self.c.close()
        self.p.close()


def backlog_phase(make, s: Settings, messages):
    """The throughput phase: ``messages`` produced as a backlog to a fresh topic, then ``make(topic)``'s
    leg pumped until it is done (at most 600 s). Returns the leg, still open, and the seconds from the
    first poll that returned records (the group join excluded) to the end."""
    topic = bench_name("raw")
    ensure_topics(s.kafka, [topic])
    _produce(s.kafka, topic, messages, None)
    leg = make(topic)
    t0 = None
    deadline = time.monotonic() + 600
    while not leg.done() and time.monotonic() < deadline:
        if leg.pump() and t0 is None:
            t0 = leg.first_records or time.perf_counter()
    if isinstance(leg, WorkerLeg):
        leg.settle()
    return leg, time.perf_counter() - t0


def _run_leg(make, s: Settings, messages, samples: int, live_rate: float) -> LegResult:
    nbytes = sum(len(v) for _, v, _ in messages)
    leg, secs = backlog_phase(make, s, messages)  # throughput: backlog first, then consume it
    done = getattr(leg, "samples_done", samples)  # the naive loop may stop early (NAIVE_MAX_S)
    name = leg.name
    leg.close()
    if not getattr(leg, "measures_latency", True):  # (b-procs: throughput only, from output timestamps)
        from pipeline.tools.bench_pool import MIN_SPAN_S

        done, secs = leg.timed()
        if math.isnan(secs):
            console.print(f"  {name}: output span under {MIN_SPAN_S} s, too short to time (more --seconds)")
        return LegResult(name, done, secs, done / secs, nbytes * done / samples / secs / 1e6, float("nan"),
                         float("nan"), live_rate, getattr(leg, "model", None), None)
    # Latency: paced live input, consumer joined first.
    topic = bench_name("raw")
    ensure_topics(s.kafka, [topic])
    leg = make(topic)
    for _ in range(20):  # let the group join before the first record exists
        leg.pump()
    proc = _producer_process(s.kafka, topic, messages, live_rate)
    deadline = time.monotonic() + 600
    while not leg.done() and time.monotonic() < deadline:
        leg.pump()
    proc.join()
    lat = np.asarray(leg.lat) if len(leg.lat) else np.array([np.nan])
    stages = leg.stages() if isinstance(leg, WorkerLeg) else None
    leg.close()
    return LegResult(name, done, secs, done / secs, nbytes * done / samples / secs / 1e6,
                     float(np.percentile(lat, 50) * 1000), float(np.percentile(lat, 99) * 1000), live_rate,
                     getattr(leg, "model", None), stages)


def seed_mlp_version(registry: Path, sample_rate: float) -> str | None:
    """The newest version of the seed MLP (``arch="mlp"``) serving ``sample_rate``, or None."""
    from models.registry import ModelRegistry

    reg = ModelRegistry(registry)
    for v in reversed(reg.versions()):
        meta = reg.meta(v)
        if meta.arch == "mlp" and meta.serves_rate(sample_rate):
            return v
    return None


def _with_model(s: Settings, version: str) -> Settings:
    return s.model_copy(update={"model": s.model.model_copy(update={"version": version})})


def _legs(s: Settings, model: str, seed: str | None, n_messages: int, samples: int, streams: int,
          processes: int = 2) -> list:
    """(name, make(topic)) of every leg, in running order."""
    from pipeline.tools.bench_pool import PoolLeg

    sm = _with_model(s, model)
    eos = sm.model_copy(update={"worker": sm.worker.model_copy(update={"delivery": "exactly_once"})})
    legs = [
        ("a", lambda t: RawCopy(s, t, n_messages)),
        ("b", lambda t: WorkerLeg(sm, t, samples, streams, f"worker, model {model} (b)")),
    ]
    if seed is not None and seed != model:
        legs.append(("b_seed", lambda t: WorkerLeg(_with_model(s, seed), t, samples, streams,
                                                   f"worker, seed MLP {seed} (b-seed)")))
    if processes > 1:
        legs.append(("b_procs", lambda t: PoolLeg(sm, t, samples, streams, processes)))
    legs += [
        ("c", lambda t: NaiveLoop(sm, t, n_messages)),
        ("d", lambda t: WorkerLeg(eos, t, samples, streams, f"worker, model {model}, exactly-once (d)")),
    ]
    return legs


def _print_results(results: list[LegResult]) -> None:
    table = Table(title="dae bench")
    for col in ("leg", "samples/s", "MB/s", "p50 ms", "p99 ms", "seconds"):
        table.add_column(col, justify="right" if col != "leg" else "left")
    for r in results:
        table.add_row(r.name, f"{r.samples_per_s:,.0f}", f"{r.mb_per_s:.1f}", f"{r.latency_p50_ms:.1f}",
                      f"{r.latency_p99_ms:.1f}", f"{r.seconds:.2f}")
    console.print(table)
    for r in results:
        if r.stages:
            parts = "  ".join(f"{k} {v['p50_ms']:.2f}/{v['p99_ms']:.2f}" for k, v in r.stages.items())
            console.print(f"  stages p50/p99 ms, {r.name}: {parts}")


def run_bench(s: Settings, *, streams: int, seconds: float, sample_rate: float, chunk: int,
              live_rate: float, json_path: Path | None = None, model: str | None = None,
              processes: int = 2) -> dict:
    from models.registry import ModelRegistry
    from pipeline.tools.demo import ensure_broker, ensure_model

    ensure_broker(s)
    current = ensure_model(s, sample_rate)
    model = model or s.model.version or current
    meta = ModelRegistry(s.model.registry).meta(model)  # an unknown version fails here, before any leg
    if not meta.serves_rate(sample_rate):
        raise ValueError(f"model {model} serves {meta.rates_label()}, not --sample-rate {sample_rate:g}")
    seed = model if meta.arch == "mlp" else seed_mlp_version(s.model.registry, sample_rate)
    if seed is None:
        console.print(f"no seed MLP for {sample_rate:g} Hz in {s.model.registry}: the seed leg is skipped "
                      f"(add one: dae train --arch mlp --sample-rate {sample_rate:g} --no-promote)")
    messages, samples = make_messages(streams, seconds, sample_rate, chunk)
    console.print(f"input: {len(messages)} messages, {samples:,} samples ({samples * 4 / 1e6:.1f} MB), "
                  f"{streams} streams, chunks of {chunk} samples; live phase at {live_rate:,.0f} samples/s; "
                  f"model {model} ({meta.arch})" + (f", seed MLP {seed}" if seed not in (None, model) else ""))
    by_leg: dict[str, LegResult] = {}
    for key, make in _legs(s, model, seed, len(messages), samples, streams, processes):
        r = by_leg[key] = _run_leg(make, s, messages, samples, live_rate)
        console.print(f"  {r.name}: {r.samples_per_s:,.0f} samples/s, p50 {r.latency_p50_ms:.1f} ms")
    results = list(by_leg.values())
    _print_results(results)
    a, b, c, d = (by_leg[k] for k in "abcd")
    ratios = {"b_over_a": b.samples_per_s / a.samples_per_s, "b_over_c": b.samples_per_s / c.samples_per_s,
              "d_over_b": d.samples_per_s / b.samples_per_s}
    if "b_seed" in by_leg:
        ratios["seed_over_a"] = by_leg["b_seed"].samples_per_s / a.samples_per_s
    if "b_procs" in by_leg:
        ratios["procs_over_b"] = by_leg["b_procs"].samples_per_s / b.samples_per_s
    console.print(f"b/a = {ratios['b_over_a']:.2f}   b/c = {ratios['b_over_c']:.1f}   "
                  f"exactly-once/at-least-once d/b = {ratios['d_over_b']:.2f}")
    report = {"legs": [asdict(r) for r in results], **ratios,
              "model": {"version": model, "arch": meta.arch, "seed_mlp": seed},
              "input": {"streams": streams, "seconds": seconds, "sample_rate": sample_rate, "chunk": chunk,
                        "messages": len(messages), "samples": samples, "live_rate": live_rate,
                        "processes": processes},
              "torch_threads": torch.get_num_threads(), "device": str(s.model.device)}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
    return report
