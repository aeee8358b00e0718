"""Prometheus metrics of the worker. The registry is passed in (tests use a fresh one).

Conventions: base units in names (``_seconds``, ``_samples``), counters end in ``_total``, and no
label ever takes an unbounded value such as a stream id.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ERROR_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# Per-stage durations: from half a millisecond (a forward pass of a small batch) to 10 s (a stalled ack).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Kinds of per-stream state a worker bounds (a TTL and a cap), and why a stream's state was dropped.
STATE_KINDS = ("alerts",)
EVICTION_REASONS = ("idle", "cap")
# Stages of a sample's way through the worker (dae_stage_seconds{stage}; README, Metrics):
# poll: input record timestamp -> the poll that returned it (per message); batch_wait: first window
# of a batch queued -> the batch submitted; forward: the forward pass; encode: overlap-add, encode
# and hand to the producer (per batch); score: the alert engine on the batch; ack: publish of a
# cleaned chunk -> the broker's acknowledgment (per message).
STAGES = ("poll", "batch_wait", "forward", "encode", "score", "ack")


class WorkerMetrics:
    # Over 80 lines on purpose: one declaration per exported metric, the whole list in one place.
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        r = registry
        self.messages = Counter("dae_input_messages_total", "Raw chunks consumed", registry=r)
        self.input_samples = Counter("dae_input_samples_total", "Raw frames consumed (per channel)", registry=r)
        self.output_samples = Counter("dae_output_samples_total", "Cleaned frames published", registry=r)
        self.windows = Counter("dae_windows_total", "Windows denoised", ["model_version", "route"], registry=r)
        self.batch_size = Histogram(
            "dae_batch_windows", "Windows per inference batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "dae_inference_seconds", "Wall time of one batched forward pass", buckets=LATENCY_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "dae_end_to_end_latency_seconds",
            "From the input record's timestamp to the broker's acknowledgment of its cleaned output",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Observed once per window, in whole batches (BatchHistogram.observe_many).
        self.recon_error = BatchHistogram(
            "dae_reconstruction_error",
            "Per-window reconstruction error (mean squared error, standardised units)",
            ["model_version", "route"],
            buckets=ERROR_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "dae_dead_letter_messages_total", "Messages sent to the dead-letter topic", ["reason"], registry=r
        )
        self.dead_letter_failures = Counter(
            "dae_dead_letter_write_failures_total", "Dead-letter writes the broker did not acknowledge", registry=r
        )
        self.processing_errors = Counter(
            "dae_processing_errors_total",
            "Exceptions while handling one message (dead-lettered as processing_error) or applying a batch "
            "to one stream (its segments dropped); the worker carries on",
            registry=r,
        )
        self.commit_age = Gauge(
            "dae_commit_age_seconds",
            "Seconds since this worker's consumed input was last fully committed (grows while commits fail "
            "or the group re-joins)",
            registry=r,
        )
        self.discontinuities = Counter(
            "dae_stream_discontinuities_total",
            "Sample-index gaps and rewinds (each starts a new segment)",
            ["kind"],
            registry=r,
        )
        self.idle_flushes = Counter(
            "dae_idle_flushes_total", "Stream tails released after the stream went idle", registry=r
        )
        self.active_streams = Gauge("dae_active_streams", "Streams with open window state", registry=r)
        self.commits = Counter("dae_offset_commits_total", "Offset commits", registry=r)
        self.rebalances = Counter("dae_rebalances_total", "Partition revocations and assignments", ["kind"], registry=r)
        # One series per configured route (routes are settings, never stream ids: bounded).
        self.model_info = Info("dae_model", "Model being served, per model route", ["route"], registry=r)
        self.model_info.labels("default")  # exported from the start, like every other name
        self.model_swaps = Counter(
            "dae_model_swaps_total", "New model versions seen in the registry, by outcome", ["outcome"], registry=r
        )
        self.consumer_lag = Gauge(
            "dae_consumer_lag_messages", "Messages behind the partition's end offset", ["topic", "partition"], registry=r
        )
        self.alerts_raised = Counter("dae_alerts_raised_total", "Anomaly alerts raised", registry=r)
        self.alerts_resolved = Counter("dae_alerts_resolved_total", "Anomaly alerts resolved", registry=r)
        self.alerts_active = Gauge("dae_alerts_active", "Streams with an alert raised now", registry=r)
        self.drift_events = Counter(
            "dae_drift_events_total", "Drift events: the live error median left its reference band", registry=r
        )
        self.drift_ratio = Gauge(
            "dae_error_median_ratio",
            "Live reconstruction-error median over the drift window, relative to the model's reference, "
            "per model route",
            ["route"],
            registry=r,
        )
        self.last_output = Gauge(
            "dae_last_output_timestamp_seconds", "Unix time of the last acknowledged cleaned output", registry=r
        )
        self.state_evictions = Counter(
            "dae_stream_state_evictions_total",
            "Per-stream state dropped: silent longer than its TTL (idle) or least recently seen beyond the "
            "cap on tracked streams (cap)",
            ["kind", "reason"],
            registry=r,
        )
        for kind in STATE_KINDS:  # born at 0, so rate() sees the first eviction
            for reason in EVICTION_REASONS:
                self.state_evictions.labels(kind, reason)
        # Observed once per message or batch, whole polls at once (BatchHistogram.observe_many).
        self.stage_seconds = BatchHistogram(
            "dae_stage_seconds", "Time spent in one stage of the worker's path (stage: see README, Metrics)",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )
        self.stages = StageTimes(self.stage_seconds)

    def alert_state_evicted(self, _stream: str, reason: str) -> None:
        """The alert engine's ``on_evict`` callback (the stream id is not a label: unbounded)."""
        self.state_evictions.labels("alerts", reason).inc()

    def set_model(self, version: str, arch: str, window: int, hop: int, route: str = "default") -> None:
        self.model_info.labels(route).info({"version": version, "arch": arch, "window": str(window), "hop": str(hop)})


class _BatchChild:
    """One label set of a :class:`BatchHistogram`."""

    def __init__(self, bounds: np.ndarray):
        self._bounds = bounds
        self._counts = np.zeros(bounds.size, dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()  # observe on the worker's thread, collect on the server's
        self._bounds_list = [float(b) for b in bounds]

    def observe(self, value: float) -> None:
        """One value: a bisect, no numpy call (~0.5 us; the producer's IO thread observes each ack)."""
        v = float(value)
        if v != v:  # NaN: no bucket, as observe_many
            self.observe_many((v,))
            return
        i = bisect_left(self._bounds_list, v)
        with self._lock:
            self._counts[i] += 1
            self._sum += v

    def observe_many(self, values) -> None:
        """Count a whole array: one ``searchsorted`` and ``bincount`` instead of a call per value."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            return
        # First bucket whose bound is >= the value (le semantics); NaN sorts past the end and,
        # as with Histogram.observe, lands in no bucket.
        idx = np.searchsorted(self._bounds, v, side="left")
        counts = np.bincount(idx, minlength=self._bounds.size + 1)[: self._bounds.size]
        with self._lock:
            self._counts += counts
            self._sum += float(v.sum())

    def snapshot(self) -> tuple[np.ndarray, float]:
        with self._lock:
            return np.cumsum(self._counts), self._sum


class BatchHistogram(Collector):
    """A labelled histogram fed whole batches of values, exposed through the public collector API
    (``collect`` yields a ``HistogramMetricFamily``: the same ``_bucket``/``_count``/``_sum``
    series as a ``prometheus_client.Histogram``, without ``_created``).

    Why: the worker observes every window's error. ``Histogram.observe`` in a loop costs ~0.45-0.6 ms
    per 512-value batch on the 2-core dev machine, ``observe_many`` here ~8 us.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] | list[str],
                 buckets: tuple[float, ...], registry: CollectorRegistry):
        self._name, self._doc, self._labelnames = name, documentation, tuple(labelnames)
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = np.asarray(bounds)
        self._le = [_go_float(b) for b in bounds]
        self._children: dict[tuple[str, ...], _BatchChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _BatchChild:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = _BatchChild(self._bounds)
            return child

    def describe(self):
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self):
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            cumulative, total = child.snapshot()
            family.add_metric(list(key), [(le, float(c)) for le, c in zip(self._le, cumulative)], total)
        yield family


class Ring:
    """The last ``size`` values added (a bounded record for exact quantiles; thread-safe)."""

    def __init__(self, size: int):
        self._buf = np.empty(int(size))
        self._n = 0  # values ever added
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._buf[self._n % self._buf.size] = value
            self._n += 1

    def add_many(self, values) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)[-self._buf.size :]
        with self._lock:
            idx = (self._n + np.arange(v.size)) % self._buf.size
            self._buf[idx] = v
            self._n += v.size

    def values(self) -> np.ndarray:
        with self._lock:
            return self._buf[: min(self._n, self._buf.size)].copy()


class StageTimes:
    """``dae_stage_seconds{stage}``'s children, and after :meth:`keep` the last values of each stage
    (``dae bench`` reports their exact p50/p99; the histogram's buckets are too coarse for that)."""

    def __init__(self, hist: BatchHistogram):
        self._children = {s: hist.labels(s) for s in STAGES}  # born at zero
        self._rings: dict[str, Ring] = {}

    def keep(self, size: int) -> None:
        """Also keep the last ``size`` values of every stage (from now on)."""
        self._rings = {s: Ring(size) for s in STAGES}

    def observe(self, stage: str, seconds: float) -> None:
        self._children[stage].observe(seconds)
        ring = self._rings.get(stage)
        if ring is not None:
            ring.add(seconds)

    def observe_many(self, stage: str, seconds) -> None:
        self._children[stage].observe_many(seconds)
        ring = self._rings.get(stage)
        if ring is not None:
            ring.add_many(seconds)

    def count(self, stage: str) -> int:
        return int(self._children[stage].snapshot()[0][-1])

    def total(self, stage: str) -> float:
        """Seconds observed in ``stage`` so far (the histogram's ``_sum``)."""
        return float(self._children[stage].snapshot()[1])

    def quantiles(self) -> dict[str, dict[str, float]]:
        """Per stage kept: ``{"count", "p50_ms", "p99_ms"}`` over the values kept (NaN when none)."""
        out = {}
        for stage, ring in self._rings.items():
            v = ring.values()
            p50, p99 = (float(x) * 1000 for x in np.percentile(v, (50, 99))) if v.size else (math.nan, math.nan)
            out[stage] = {"count": int(v.size), "p50_ms": p50, "p99_ms": p99}
        return out


def _go_float(b: float) -> str:
    """A bucket bound as prometheus_client writes its ``le`` label ("+Inf", "0.001", "1.0")."""
    return "+Inf" if b == math.inf else repr(float(b))


def serve(registry: CollectorRegistry, host: str, port: int):
    """Start the /metrics endpoint; returns (server, thread) from prometheus_client."""
    return start_http_server(port, addr=host, registry=registry)
