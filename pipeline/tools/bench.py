"""`dae bench`: four legs on the same broker, same input, in one run.

(a) raw ceiling — a kafka-python consumer copying every message to another topic, no model;
(b) the worker end to end with the seed MLP (windowing, micro-batching, overlap-add, commits);
(c) the naive loop — one message at a time through the model, each output produced and flushed;
(d) the worker in exactly-once mode (``worker.delivery=exactly_once``): a transaction per input
    partition and commit interval; its throughput clock stops once the last transaction commits.

Two phases per leg, each on a fresh topic and consumer group:
- **throughput**: the whole input is already in the topic (a backlog); samples/s and MB/s count
  from the first record polled to the last output acknowledged (group join excluded);
- **latency**: a separate producer process publishes the input paced in real time at
  ``--live-rate`` samples/s in total; latency = output ack time − the timestamp of the input
  record holding the output's last sample (p50/p99). For (d) a read_committed reader sees an
  output only when its transaction commits, up to ``worker.commit_interval_s`` after the ack.
"""

from __future__ import annotations

import json
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


def make_messages(streams: int, seconds: float, rate: float, chunk: int, seed: int = 0):
    from models.signals.families import FAMILIES, add_noise, generate

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    sigs = [add_noise(generate(FAMILIES[i % len(FAMILIES)], n, rate, rng), 10.0, rng) for i in range(streams)]
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
        self.c = make_consumer(s.kafka, topic, group_id=f"bench-raw-{uuid.uuid4().hex[:6]}")
        self.p = make_producer(s.kafka)
        self.n, self.acked, self.lat = n_messages, 0, []

    def _ok(self, ts, _md):  # kafka-python calls f(*args, value)
        self.acked += 1
        self.lat.append(time.time() - ts / 1000.0)

    def pump(self) -> int:
        got = 0
        for recs in self.c.poll(timeout_ms=50).values():
            for m in recs:
                got += 1
                self.p.send(self.out_topic, key=m.key, value=m.value, headers=m.headers).add_callback(self._ok, m.timestamp)
        return got

    def done(self) -> bool:
        return self.acked >= self.n

    def close(self):
        self.c.close()
        self.p.close()


class WorkerLeg:
    name = "worker, seed MLP (b)"

    def __init__(self, s: Settings, topic: str, n_samples: int, n_streams: int):
        if s.worker.delivery == "exactly_once":
            self.name = "worker, exactly-once (d)"
        from pipeline.inference.engine import InferenceEngine
        from pipeline.worker import Worker

        tag = uuid.uuid4().hex[:6]
        k = s.kafka.model_copy(update={"raw_topics": (topic,), "clean_topic": f"{topic}.clean-{tag}",
                                       "group_id": f"bench-worker-{tag}"})
        engine = InferenceEngine.from_source(s.model.registry, s.model.version, device=s.model.device, dtype=s.model.dtype)
        self.w = Worker(s.model_copy(update={"kafka": k}), engine)
        self.w.keep_latencies = True
        self.w.start()
        self.target = n_samples - n_streams * engine.window  # stream tails wait for the idle flush
        self.lat = self.w.latencies

    def pump(self) -> int:
        before = self.w.metrics.messages._value.get()
        self.w.step()
        return int(self.w.metrics.messages._value.get() - before)

    def done(self) -> bool:
        return self.w.metrics.output_samples._value.get() >= self.target

    def settle(self) -> None:
        """Exactly-once: commit the open transactions (readers see the output only then)."""
        if self.w.exactly_once:
            self.w.commits.final_commit()

    def close(self):
        self.w.stop_event.set()
        self.w.shutdown()


class NaiveLoop:
    """One message at a time: decode, the model on that chunk's windows, produce, flush."""

    name = "naive loop (c)"

    def __init__(self, s: Settings, topic: str, n_messages: int):
        from pipeline.inference.engine import InferenceEngine

        self.engine = InferenceEngine.from_source(s.model.registry, s.model.version, device=s.model.device)
        self.out_topic = f"{topic}.naive"
        ensure_topics(s.kafka, [self.out_topic])
        self.c = make_consumer(s.kafka, topic, group_id=f"bench-naive-{uuid.uuid4().hex[:6]}", max_poll_records=1)
        self.p = make_producer(s.kafka)
        self.n, self.count, self.lat = n_messages, 0, []

    def pump(self) -> int:
        W, got = self.engine.window, 0
        for recs in self.c.poll(timeout_ms=50, max_records=1).values():
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
                got += 1
        return got

    def done(self) -> bool:
        return self.count >= self.n

    def close(self):
        self.c.close()
        self.p.close()


def _run_leg(make, s: Settings, messages, samples: int, live_rate: float) -> LegResult:
    nbytes = sum(len(v) for _, v, _ in messages)
    # Throughput: backlog first, then consume it.
    topic = f"dae.bench.{uuid.uuid4().hex[:8]}"
    ensure_topics(s.kafka, [topic])
    _produce(s.kafka, topic, messages, None)
    leg = make(topic)
    t0 = None
    deadline = time.monotonic() + 600
    while not leg.done() and time.monotonic() < deadline:
        # The clock starts after the first poll that returned records (the group join is excluded).
        if leg.pump() and t0 is None:
            t0 = time.perf_counter()
    if isinstance(leg, WorkerLeg):
        leg.settle()
    secs = time.perf_counter() - t0
    name = leg.name
    leg.close()
    # Latency: paced live input, consumer joined first.
    topic = f"dae.bench.{uuid.uuid4().hex[:8]}"
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
    leg.close()
    return LegResult(name, samples, secs, samples / secs, nbytes / secs / 1e6,
                     float(np.percentile(lat, 50) * 1000), float(np.percentile(lat, 99) * 1000), live_rate)


def run_bench(s: Settings, *, streams: int, seconds: float, sample_rate: float, chunk: int,
              live_rate: float, json_path: Path | None = None) -> dict:
    from pipeline.tools.demo import ensure_broker, ensure_model

    ensure_broker(s)
    ensure_model(s, sample_rate)
    messages, samples = make_messages(streams, seconds, sample_rate, chunk)
    console.print(f"input: {len(messages)} messages, {samples:,} samples ({samples * 4 / 1e6:.1f} MB), "
                  f"{streams} streams, chunks of {chunk} samples; live phase at {live_rate:,.0f} samples/s")
    eos = s.model_copy(update={"worker": s.worker.model_copy(update={"delivery": "exactly_once"})})
    legs = [
        lambda t: RawCopy(s, t, len(messages)),
        lambda t: WorkerLeg(s, t, samples, streams),
        lambda t: NaiveLoop(s, t, len(messages)),
        lambda t: WorkerLeg(eos, t, samples, streams),
    ]
    results = []
    for make in legs:
        results.append(_run_leg(make, s, messages, samples, live_rate))
        r = results[-1]
        console.print(f"  {r.name}: {r.samples_per_s:,.0f} samples/s, p50 {r.latency_p50_ms:.1f} ms")
    a, b, c, d = results
    table = Table(title="dae bench")
    for col in ("leg", "samples/s", "MB/s", "p50 ms", "p99 ms", "seconds"):
        table.add_column(col, justify="right" if col != "leg" else "left")
    for r in results:
        table.add_row(r.name, f"{r.samples_per_s:,.0f}", f"{r.mb_per_s:.1f}", f"{r.latency_p50_ms:.1f}",
                      f"{r.latency_p99_ms:.1f}", f"{r.seconds:.2f}")
    console.print(table)
    ratios = {"b_over_a": b.samples_per_s / a.samples_per_s, "b_over_c": b.samples_per_s / c.samples_per_s,
              "d_over_b": d.samples_per_s / b.samples_per_s}
    console.print(f"b/a = {ratios['b_over_a']:.2f}   b/c = {ratios['b_over_c']:.1f}   "
                  f"exactly-once/at-least-once d/b = {ratios['d_over_b']:.2f}")
    report = {"legs": [asdict(r) for r in results], **ratios,
              "input": {"streams": streams, "seconds": seconds, "sample_rate": sample_rate, "chunk": chunk,
                        "messages": len(messages), "samples": samples, "live_rate": live_rate},
              "torch_threads": torch.get_num_threads(), "device": str(s.model.device)}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
    return report
