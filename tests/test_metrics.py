import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from pipeline.monitor.metrics import ERROR_BUCKETS, STAGES, BatchHistogram, Ring, WorkerMetrics


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
    m.recon_error.labels("v1", "default").observe(0.1)
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
    "dae_windows": ("counter", {"model_version", "route"}),
    "dae_batch_windows": ("histogram", set()),
    "dae_inference_seconds": ("histogram", set()),
    "dae_end_to_end_latency_seconds": ("histogram", set()),
    "dae_reconstruction_error": ("histogram", {"model_version", "route"}),
    "dae_dead_letter_messages": ("counter", {"reason"}),
    "dae_dead_letter_write_failures": ("counter", set()),
    "dae_processing_errors": ("counter", set()),
    "dae_commit_age_seconds": ("gauge", set()),
    "dae_stream_discontinuities": ("counter", {"kind"}),
    "dae_idle_flushes": ("counter", set()),
    "dae_active_streams": ("gauge", set()),
    "dae_offset_commits": ("counter", set()),
    "dae_rebalances": ("counter", {"kind"}),
    "dae_model": ("info", {"route", "version", "arch", "window", "hop"}),
    "dae_model_swaps": ("counter", {"outcome"}),
    "dae_consumer_lag_messages": ("gauge", {"topic", "partition"}),
    "dae_alerts_raised": ("counter", set()),
    "dae_alerts_resolved": ("counter", set()),
    "dae_alerts_active": ("gauge", set()),
    "dae_drift_events": ("counter", set()),
    "dae_error_median_ratio": ("gauge", {"route"}),
    "dae_last_output_timestamp_seconds": ("gauge", set()),
    "dae_stream_state_evictions": ("counter", {"kind", "reason"}),
    "dae_stage_seconds": ("histogram", {"stage"}),
}


def _touch_every_metric(m: WorkerMetrics) -> None:
    m.windows.labels("v1", "default").inc()
    m.recon_error.labels("v1", "default").observe(0.1)
    m.dead_letters.labels("bad_length").inc()
    m.discontinuities.labels("gap").inc()
    m.rebalances.labels("assigned").inc()
    m.model_swaps.labels("swapped").inc()
    m.consumer_lag.labels("dae.raw", "0").set(3)
    m.set_model("v1", "mlp", 256, 128)
    m.drift_ratio.labels("default").set(1.0)


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


def test_batch_histogram_scalar_observe_equals_observe_many():
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    h1 = BatchHistogram("x_seconds", "x", ["stage"], buckets=(0.001, 0.01, 0.1), registry=r1)
    h2 = BatchHistogram("x_seconds", "x", ["stage"], buckets=(0.001, 0.01, 0.1), registry=r2)
    values = [0.0, 0.001, 0.0010001, 0.01, 0.05, 0.1, 3.0, float("inf")]
    for v in values:
        h1.labels("a").observe(v)
    h2.labels("a").observe_many(values)
    c1, s1 = h1.labels("a").snapshot()
    c2, s2 = h2.labels("a").snapshot()
    assert list(c1) == list(c2) == [2, 4, 6, 8] and s1 == s2


def test_ring_keeps_the_last_values():
    ring = Ring(4)
    assert ring.values().size == 0
    ring.add(1.0)
    ring.add_many([2.0, 3.0])
    assert sorted(ring.values()) == [1.0, 2.0, 3.0]
    ring.add_many(np.arange(10.0, 16.0))  # more than it holds: the last 4
    assert sorted(ring.values()) == [12.0, 13.0, 14.0, 15.0]
    ring.add(16.0)
    assert sorted(ring.values()) == [13.0, 14.0, 15.0, 16.0]


def test_stage_times_feed_the_histogram_and_keep_exact_quantiles():
    m = WorkerMetrics(CollectorRegistry())
    assert {s: m.stages.count(s) for s in STAGES} == dict.fromkeys(STAGES, 0)  # every stage born at 0
    m.stages.observe("forward", 0.002)
    m.stages.observe_many("poll", [0.01, 0.03])
    assert m.stages.count("forward") == 1 and m.stages.count("poll") == 2
    assert m.stages.quantiles() == {}  # nothing kept until asked
    m.stages.keep(1000)
    m.stages.observe_many("poll", np.arange(1, 101) / 1000.0)  # 1..100 ms
    q = m.stages.quantiles()
    assert set(q) == set(STAGES) and q["ack"]["count"] == 0
    assert q["poll"]["count"] == 100 and abs(q["poll"]["p50_ms"] - 50.5) < 1e-6 and abs(q["poll"]["p99_ms"] - 99.01) < 1e-6
    text = __import__("prometheus_client").generate_latest(m.registry).decode()
    assert 'dae_stage_seconds_count{stage="poll"} 102.0' in text and 'dae_stage_seconds_count{stage="ack"} 0.0' in text
