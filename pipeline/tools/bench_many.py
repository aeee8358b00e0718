"""`dae bench --many K`: the many-streams leg (issue 13 item 2), the whole worker in this process.

Rounds of K new stream ids, one chunk each (``--chunk`` frames, default 64), produced as a
backlog; the worker consumes them, releases each stream's tail after ``window.idle_flush_s`` and
publishes it. Per round: seconds from the first record polled to the last output acknowledged (the
idle-flush wait included: that is when a one-chunk stream's output can exist), and the process's
RSS. After the last round the worker keeps stepping with no input until the alert state of every
stream has timed out (``alerts.state_ttl_s``, shortened for the bench: ``--state-ttl``), then the
RSS again (after the worker's periodic memory trim, ``pipeline.worker.TRIM_EVERY_S``), against the
RSS when the worker was idle before the first round and, by default, after a warm-up round of 1,000
streams whose state has timed out (``--warmup``; :func:`run_many`).
"""

from __future__ import annotations

import gc
import time
import uuid

import numpy as np

from pipeline.kafka.clients import ensure_topics, make_producer
from pipeline.settings import Settings
from pipeline.tools.bench_topics import bench_name
from pipeline.worker import TRIM_EVERY_S
from pipeline.wire.codec import encode_chunk

MiB = 1 << 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _produce_round(s: Settings, topic: str, k: int, chunk: int, rate: float, tag: str, rng) -> None:
    p = make_producer(s.kafka)
    x = rng.standard_normal((k, chunk)).astype(np.float32)
    for i in range(k):
        key, value, headers = encode_chunk(f"many-{tag}-{i:06d}", 0, rate, x[i])
        p.send(topic, key=key, value=value, headers=headers)
    p.flush(timeout=120)
    p.close()


def _drain(w, target: float, deadline_s: float = 600.0, peak: int = 0) -> tuple[float, bool, int]:
    """Step ``w`` until its output reaches ``target`` samples: (seconds from the first record polled to
    then, whether it got there, the peak RSS on the way)."""
    t0 = None
    deadline = time.monotonic() + deadline_s
    while w.metrics.output_samples._value.get() < target and time.monotonic() < deadline:
        before = w.metrics.messages._value.get()
        w.step()
        if t0 is None and w.metrics.messages._value.get() > before:
            t0 = time.perf_counter()
        peak = max(peak, rss())
    return time.perf_counter() - (t0 or time.perf_counter()), w.metrics.output_samples._value.get() >= target, peak


def _idle_out(w, state_ttl_s: float) -> int:
    """Step ``w`` with no input until every stream's state has timed out and the worker's next memory trim
    (pipeline.worker.TRIM_EVERY_S) has run; the RSS then."""
    t_end = time.monotonic() + state_ttl_s + TRIM_EVERY_S + 5.0
    while time.monotonic() < t_end:
        w.step()
    gc.collect()
    return rss()


def run_many(s: Settings, *, streams: int, rounds: int = 3, chunk: int = 64, sample_rate: float = 1000.0,
             state_ttl_s: float = 20.0, model: str | None = None, warmup: int = 1000, say=print) -> dict:
    """The leg. RSS growth is reported against two idle states: the worker joined but before its first
    record (``rss_idle_mib``: cold), and, with ``warmup`` > 0, after a first round of ``warmup`` streams
    whose state has timed out (``rss_warm_idle_mib``): what is then left is what the first load
    initialises once (code pages, client buffers, allocator arenas), not per-stream state."""
    from pipeline.inference.engine import InferenceEngine
    from pipeline.worker import Worker

    tag = uuid.uuid4().hex[:6]
    topic = bench_name("many")
    ensure_topics(s.kafka, [topic])
    k = s.kafka.model_copy(update={"raw_topics": (topic,), "clean_topic": f"{topic}.clean",
                                   "group_id": bench_name("g-many")})
    s = s.model_copy(update={"kafka": k, "alerts": s.alerts.model_copy(update={"state_ttl_s": state_ttl_s})})
    engine = InferenceEngine.from_source(s.model.registry, model or s.model.version, device=s.model.device,
                                         dtype=s.model.dtype)
    w = Worker(s, engine)
    w.start()
    rng = np.random.default_rng(0)
    out = {"streams_per_round": streams, "rounds": [], "chunk": chunk, "model": engine.version,
           "idle_flush_s": s.window.idle_flush_s, "state_ttl_s": state_ttl_s, "warmup_streams": warmup}
    try:
        t_join = time.monotonic() + 60
        while not w.partitions and time.monotonic() < t_join:  # join before the first round
            w.step()
        gc.collect()
        idle = warm = rss()
        out["rss_idle_mib"] = idle / MiB
        if warmup:
            _produce_round(s, topic, warmup, chunk, sample_rate, f"{tag}w", rng)
            _drain(w, w.metrics.output_samples._value.get() + warmup * chunk)
            warm = _idle_out(w, state_ttl_s)
            out["rss_warm_idle_mib"] = warm / MiB
            say(f"  warm-up: {warmup:,} streams, their state timed out: RSS {warm / MiB:.0f} MiB "
                f"({(warm - idle) / MiB:+.0f} vs idle)")
        peak = idle
        for r in range(rounds):
            _produce_round(s, topic, streams, chunk, sample_rate, f"{tag}{r}", rng)
            secs, done, peak = _drain(w, w.metrics.output_samples._value.get() + streams * chunk, peak=peak)
            out["rounds"].append({"seconds": secs, "complete": done, "rss_mib": rss() / MiB,
                                  "alert_streams": w.monitor.alerts.streams()})
            say(f"  round {r + 1}: {streams:,} new streams in {secs:.1f} s, RSS {rss() / MiB:.0f} MiB "
                f"({(rss() - idle) / MiB:+.0f} vs idle)" + ("" if done else "  INCOMPLETE after 600 s"))
        out["rss_peak_growth_mib"] = (peak - idle) / MiB
        after = _idle_out(w, state_ttl_s)
        out["rss_after_ttl_mib"] = after / MiB
        out["rss_after_ttl_growth_mib"] = (after - idle) / MiB
        if warmup:
            out["rss_peak_growth_vs_warm_mib"] = (peak - warm) / MiB
            out["rss_after_ttl_growth_vs_warm_mib"] = (after - warm) / MiB
        parts = list(w.partitions.values())
        out["tracked_after_ttl"] = {"alert_streams": w.monitor.alerts.streams(),
                                    "window_streams": sum(len(p.streams) for p in parts),
                                    "finished_entries": sum(len(p.finished) for p in parts),
                                    "durable_entries": sum(len(p.durable) for p in parts),
                                    "route_cache": len(w.models._matched)}
        vs_warm = f", {(after - warm) / MiB:+.0f} vs warm idle" if warmup else ""
        say(f"  after the state timeout ({state_ttl_s:g} s): RSS {after / MiB:.0f} MiB "
            f"({out['rss_after_ttl_growth_mib']:+.0f} vs idle{vs_warm}), peak growth "
            f"{out['rss_peak_growth_mib']:.0f} MiB, tracked: {out['tracked_after_ttl']}")
    finally:
        w.stop_event.set()
        w.shutdown()
    return out
