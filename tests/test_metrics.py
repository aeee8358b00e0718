import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from pipeline.monitor.metrics import ERROR_BUCKETS, BatchHistogram, WorkerMetrics


def samples(reg, name):
    """{(sample name, labels): value} of ``name``'s series (``_created`` is a timestamp: left out)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in reg.collect() for s in m.samples
            if s.name.startswith(name) and not s.name.endswith("_created")}


def test_batch_histogram_equals_histogram_observed_one_by_one():
    values = np.concatenate([np.random.default_rng(0).exponential(0.05, 500), ERROR_BUCKETS, [0.0, 99.0]])
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("x", "x", ["model_version"], buckets=ERROR_BUCKETS, registry=r1)
    h2 = BatchHistogram("x", "x", ["model_version"], ERROR_BUCKETS, r2)
    for v in values:
        h1.labels("v1").observe(float(v))
    h1.labels("v2").observe(0.3)
    h2.labels("v1").observe_many(values[:200])
    h2.labels("v1").observe_many(values[200:])
    h2.labels("v1").observe_many(np.array([], np.float32))
    h2.labels("v2").observe(0.3)
    a, b = samples(r1, "x"), samples(r2, "x")
    assert a.keys() == b.keys() and len(a) == 2 * (len(ERROR_BUCKETS) + 3)
    for k in a:
        assert abs(a[k] - b[k]) < 1e-9 * max(1.0, abs(a[k])), k
    # The exposition text is the same apart from label order and _created.
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    def parsed(reg):
        return {(s.name, tuple(sorted(s.labels.items())), s.value)
                for f in text_string_to_metric_families(generate_latest(reg).decode())
                for s in f.samples if not s.name.endswith("_created")}

    assert parsed(r1) == parsed(r2)


def test_worker_metric_names_and_no_stream_label():
    reg = CollectorRegistry()
    m = WorkerMetrics(reg)
    m.dead_letters.labels("bad_length").inc()
    m.recon_error.labels("v1").observe(0.1)
    names = {metric.name for metric in reg.collect()}
    assert {"dae_dead_letter_messages", "dae_reconstruction_error", "dae_end_to_end_latency_seconds",
            "dae_stream_discontinuities"} <= names
    for metric in reg.collect():
        for s in metric.samples:
            assert "stream" not in s.labels


# name -> (type, label names): the public contract of the worker's /metrics (dashboards and rules
# depend on it). Counters are listed without the _total suffix, as prometheus_client names them.
SPEC = {
    "dae_input_messages": ("counter", set()),
    "dae_input_samples": ("counter", set()),
    "dae_output_samples": ("counter", set()),
    "dae_windows": ("counter", {"model_version"}),
    "dae_batch_windows": ("histogram", set()),
    "dae_inference_seconds": ("histogram", set()),
    "dae_end_to_end_latency_seconds": ("histogram", set()),
    "dae_reconstruction_error": ("histogram", {"model_version"}),
    "dae_dead_letter_messages": ("counter", {"reason"}),
    "dae_dead_letter_write_failures": ("counter", set()),
    "dae_processing_errors": ("counter", set()),
    "dae_commit_age_seconds": ("gauge", set()),
    "dae_stream_discontinuities": ("counter", {"kind"}),
    "dae_idle_flushes": ("counter", set()),
    "dae_active_streams": ("gauge", set()),
    "dae_offset_commits": ("counter", set()),
    "dae_rebalances": ("counter", {"kind"}),
    "dae_model": ("info", {"version", "arch", "window", "hop"}),
    "dae_model_swaps": ("counter", {"outcome"}),
    "dae_consumer_lag_messages": ("gauge", {"topic", "partition"}),
    "dae_alerts_raised": ("counter", set()),
    "dae_alerts_resolved": ("counter", set()),
    "dae_alerts_active": ("gauge", set()),
    "dae_drift_events": ("counter", set()),
    "dae_error_median_ratio": ("gauge", set()),
    "dae_last_output_timestamp_seconds": ("gauge", set()),
    "dae_stream_state_evictions": ("counter", {"kind", "reason"}),
}


def _touch_every_metric(m: WorkerMetrics) -> None:
    m.windows.labels("v1").inc()
    m.recon_error.labels("v1").observe(0.1)
    m.dead_letters.labels("bad_length").inc()
    m.discontinuities.labels("gap").inc()
    m.rebalances.labels("assigned").inc()
    m.model_swaps.labels("swapped").inc()
    m.consumer_lag.labels("dae.raw", "0").set(3)
    m.set_model("v1", "mlp", 256, 128)


def test_worker_metrics_names_types_labels_and_units():
    reg = CollectorRegistry()
    _touch_every_metric(WorkerMetrics(reg))
    got = {}
    for metric in reg.collect():
        labels = set()
        for s in metric.samples:
            labels |= set(s.labels) - {"le"}
        got[metric.name] = (metric.type, labels)
    assert got == SPEC
    for name, (kind, _) in SPEC.items():
        if kind == "histogram":  # base units in the name, or a dimensionless count/ratio
            assert name.endswith(("_seconds", "_windows", "_error")), name
    # Counters are exposed with _total; the registry is the one passed in (the default one is untouched).
    text = __import__("prometheus_client").generate_latest(reg).decode()
    assert "dae_alerts_raised_total 0.0" in text and "dae_drift_events_total 0.0" in text
    from prometheus_client import REGISTRY
    assert not any(m.name.startswith("dae_") for m in REGISTRY.collect())
