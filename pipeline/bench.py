"""`dae bench`: three legs on the same broker, same input, in one run.

(a) raw ceiling — a kafka-python consumer copying every message to another topic, no model;
(b) the worker end to end with the seed MLP (windowing, micro-batching, overlap-add, commits);
(c) the naive loop — one message at a time through the model, each output produced and flushed.

For each leg the consumer joins its group first; then a separate producer *process* publishes the
pre-encoded input as fast as it can, so the legs see the same load and the producer does not
share this process's GIL. Throughput = input samples / (last output ack - first input sent);
latency = output ack time - the timestamp of the input record holding its last sample.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pipeline.codec import decode_chunk, encode_chunk
from pipeline.kafka_io import ensure_topics, make_consumer, make_producer
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


def _messages(streams: int, seconds: float, rate: float, chunk: int, seed: int = 0):
    from pipeline.signals import FAMILIES, add_noise, generate

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    sigs = [add_noise(generate(FAMILIES[i % len(FAMILIES)], n, rate, rng), 10.0, rng) for i in range(streams)]
    out = []
    for start in range(0, n, chunk):  # interleave streams chunk by chunk, as live producers do
        for i, x in enumerate(sigs):
            out.append(encode_chunk(f"bench-{i:03d}", start, rate, x[start : start + chunk]))
    return out, streams * n


def _produce(k: KafkaSettings, topic: str, messages, t_first) -> None:
    p = make_producer(k)
    t_first.value = time.time()
    for key, value, headers in messages:
        p.send(topic, key=key, value=value, headers=headers)
    p.flush()
    p.close()


def _start_producer(k, topic, messages):
    ctx = mp.get_context("fork")
    t_first = ctx.Value("d", 0.0)
    proc = ctx.Process(target=_produce, args=(k, topic, messages, t_first), daemon=True)
    proc.start()
    return proc, t_first


def _joined(consumer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not consumer.assignment():
        consumer.poll(timeout_ms=100)
        if time.monotonic() > deadline:
            raise TimeoutError("consumer did not join its group")


def _result(name, samples, t_first, t_last, lat, nbytes) -> LegResult:
    secs = max(t_last - t_first, 1e-9)
    lat = np.asarray(lat) if len(lat) else np.array([np.nan])
    return LegResult(name, samples, secs, samples / secs, nbytes / secs / 1e6,
                     float(np.percentile(lat, 50) * 1000), float(np.percentile(lat, 99) * 1000))


def leg_raw(k: KafkaSettings, topic: str, messages, samples: int) -> LegResult:
    out_topic = f"{topic}.copy"
    ensure_topics(k, [out_topic])
    c = make_consumer(k, topic, group_id=f"bench-raw-{uuid.uuid4().hex[:6]}")
    p = make_producer(k)
    _joined(c)
    proc, t_first = _start_producer(k, topic, messages)
    lat, acked, nbytes = [], [0], 0
    lock = threading.Lock()

    def ok(_md, ts):
        with lock:
            acked[0] += 1
            lat.append(time.time() - ts / 1000.0)

    while acked[0] < len(messages):
        for recs in c.poll(timeout_ms=50).values():
            for m in recs:
                nbytes += len(m.value)
                p.send(out_topic, key=m.key, value=m.value, headers=m.headers).add_callback(ok, m.timestamp)
        if acked[0] < len(messages) and not any(c.assignment()):
            break
        if nbytes >= sum(len(v) for _, v, _ in messages):
            p.flush()
    t_last = time.time()
    proc.join()
    c.close()
    p.close()
    return _result("raw copy (a)", samples, t_first.value, t_last, lat, nbytes)


def leg_worker(s: Settings, topic: str, messages, samples: int) -> LegResult:
    from pipeline.engine import InferenceEngine
    from pipeline.worker import Worker

    tag = uuid.uuid4().hex[:6]
    k = s.kafka.model_copy(update={"raw_topics": (topic,), "clean_topic": f"{topic}.clean-{tag}",
                                   "group_id": f"bench-worker-{tag}"})
    ws = s.model_copy(update={"kafka": k})
    engine = InferenceEngine.from_source(s.model.registry, s.model.version, device=s.model.device, dtype=s.model.dtype)
    w = Worker(ws, engine)
    w.keep_latencies = True
    w.start()
    _joined(w.consumer)
    proc, t_first = _start_producer(k, topic, messages)
    n_streams = len({key for key, _, _ in messages})
    target = samples - n_streams * engine.window  # tails wait for the idle flush
    t_last = None
    while True:
        w.step()
        if w.metrics.output_samples._value.get() >= target:
            t_last = time.time()
            break
    w.stop_event.set()
    w.shutdown()
    proc.join()
    nbytes = samples * 4
    return _result("worker, seed MLP (b)", samples, t_first.value, t_last, w.latencies, nbytes)


def leg_naive(s: Settings, topic: str, messages, samples: int) -> LegResult:
    """One message at a time: decode, model on that chunk's windows, produce, flush."""
    from pipeline.engine import InferenceEngine

    engine = InferenceEngine.from_source(s.model.registry, s.model.version, device=s.model.device)
    W = engine.window
    out_topic = f"{topic}.naive"
    ensure_topics(s.kafka, [out_topic])
    c = make_consumer(s.kafka, topic, group_id=f"bench-naive-{uuid.uuid4().hex[:6]}", max_poll_records=1)
    p = make_producer(s.kafka)
    _joined(c)
    proc, t_first = _start_producer(s.kafka, topic, messages)
    lat, done, nbytes = [], 0, 0
    while done < len(messages):
        for recs in c.poll(timeout_ms=50, max_records=1).values():
            for m in recs:
                ch = decode_chunk(m.key, m.value, m.headers)
                x = ch.samples[:, 0]
                pad = (-len(x)) % W
                xs = np.pad(x, (0, pad)).reshape(-1, W)[:, :, None]
                y = engine.infer(xs).outputs.reshape(-1)[: len(x)]
                key, value, headers = encode_chunk(ch.stream, ch.index, ch.rate, y, model=engine.version)
                p.send(out_topic, key=key, value=value, headers=headers)
                p.flush()
                lat.append(time.time() - m.timestamp / 1000.0)
                nbytes += len(m.value)
                done += 1
    t_last = time.time()
    proc.join()
    c.close()
    p.close()
    return _result("naive loop (c)", samples, t_first.value, t_last, lat, nbytes)


def run_bench(s: Settings, *, streams: int, seconds: float, sample_rate: float, chunk: int,
              json_path: Path | None = None) -> dict:
    from pipeline.demo import ensure_broker, ensure_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    ensure_broker(s)
    ensure_model(s, sample_rate)
    messages, samples = _messages(streams, seconds, sample_rate, chunk)
    console.print(f"input: {len(messages)} messages, {samples:,} samples ({samples * 4 / 1e6:.1f} MB), "
                  f"{streams} streams, chunks of {chunk}")
    results = []
    for leg in ("a", "b", "c"):
        topic = f"dae.bench.{uuid.uuid4().hex[:8]}.{leg}"
        ensure_topics(s.kafka, [topic])
        if leg == "a":
            results.append(leg_raw(s.kafka, topic, messages, samples))
        elif leg == "b":
            results.append(leg_worker(s, topic, messages, samples))
        else:
            results.append(leg_naive(s, topic, messages, samples))
        console.print(f"  {results[-1].name}: {results[-1].samples_per_s:,.0f} samples/s")
    a, b, c = results
    table = Table(title="dae bench")
    for col in ("leg", "samples/s", "MB/s", "p50 ms", "p99 ms", "seconds"):
        table.add_column(col, justify="right" if col != "leg" else "left")
    for r in results:
        table.add_row(r.name, f"{r.samples_per_s:,.0f}", f"{r.mb_per_s:.1f}", f"{r.latency_p50_ms:.1f}",
                      f"{r.latency_p99_ms:.1f}", f"{r.seconds:.2f}")
    console.print(table)
    ratios = {"b_over_a": b.samples_per_s / a.samples_per_s, "b_over_c": b.samples_per_s / c.samples_per_s}
    console.print(f"b/a = {ratios['b_over_a']:.2f}   b/c = {ratios['b_over_c']:.1f}")
    report = {"legs": [asdict(r) for r in results], **ratios,
              "input": {"streams": streams, "seconds": seconds, "sample_rate": sample_rate, "chunk": chunk,
                        "messages": len(messages), "samples": samples},
              "torch_threads": torch.get_num_threads(), "device": str(s.model.device)}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
    return report
