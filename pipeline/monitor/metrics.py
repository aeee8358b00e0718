"""Prometheus metrics of the worker. The registry is passed in (tests use a fresh one).

Conventions: base units in names (``_seconds``, ``_samples``), counters end in ``_total``, and no
label ever takes an unbounded value such as a stream id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ERROR_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        r = registry
        self.messages = Counter("dae_input_messages_total", "Raw chunks consumed", registry=r)
        self.input_samples = Counter("dae_input_samples_total", "Raw frames consumed (per channel)", registry=r)
        self.output_samples = Counter("dae_output_samples_total", "Cleaned frames published", registry=r)
        self.windows = Counter("dae_windows_total", "Windows denoised", ["model_version"], registry=r)
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
        self.recon_error = Histogram(
            "dae_reconstruction_error",
            "Per-window reconstruction error (mean squared error, standardised units)",
            ["model_version"],
            buckets=ERROR_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "dae_dead_letter_messages_total", "Messages sent to the dead-letter topic", ["reason"], registry=r
        )
        self.dead_letter_failures = Counter(
            "dae_dead_letter_write_failures_total", "Dead-letter writes the broker did not acknowledge", registry=r
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
        self.model_info = Info("dae_model", "Model being served", registry=r)
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
            "Live reconstruction-error median over the drift window, relative to the model's reference",
            registry=r,
        )
        self.last_output = Gauge(
            "dae_last_output_timestamp_seconds", "Unix time of the last acknowledged cleaned output", registry=r
        )

    def set_model(self, version: str, arch: str, window: int, hop: int) -> None:
        self.model_info.info({"version": version, "arch": arch, "window": str(window), "hop": str(hop)})


def observe_many(hist, values) -> None:
    """Observe many values at once (one bucket count per bucket instead of one call per value).

    Uses the histogram child's bucket counters, as ``Histogram.observe`` does.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return
    bounds = np.asarray(hist._upper_bounds)
    idx = np.searchsorted(bounds, values, side="left")  # first bucket with value <= bound
    counts = np.bincount(idx, minlength=len(bounds))
    hist._sum.inc(float(values.sum()))
    for i, c in enumerate(counts[: len(bounds)]):
        if c:
            hist._buckets[i].inc(int(c))


def serve(registry: CollectorRegistry, host: str, port: int):
    """Start the /metrics endpoint; returns (server, thread) from prometheus_client."""
    return start_http_server(port, addr=host, registry=registry)
