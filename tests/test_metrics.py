import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from pipeline.metrics import ERROR_BUCKETS, WorkerMetrics, observe_many


def samples(reg, name):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in reg.collect() for s in m.samples if s.name.startswith(name)}


def test_observe_many_equals_observe_one_by_one():
    values = np.concatenate([np.random.default_rng(0).exponential(0.05, 500), ERROR_BUCKETS, [0.0, 99.0]])
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("x", "x", buckets=ERROR_BUCKETS, registry=r1)
    h2 = Histogram("x", "x", buckets=ERROR_BUCKETS, registry=r2)
    for v in values:
        h1.observe(float(v))
    observe_many(h2, values)
    a, b = samples(r1, "x"), samples(r2, "x")
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) < 1e-9 * max(1.0, abs(a[k])), k


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
