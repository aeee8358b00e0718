"""The retraining scheduler's timing (no broker: drift following off) and its metrics."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, generate_latest

import models.registry  # noqa: F401  (imports torch before the timing starts)
from pipeline.retrain.run import RetrainResult
from pipeline.retrain.schedule import RetrainMetrics, run_every
from pipeline.settings import Settings


def _run(interval, run_at_start, seconds):
    s = Settings(model={"registry": "/nonexistent-registry"})
    calls, stop = [], threading.Event()

    def runner():
        calls.append(time.monotonic())
        time.sleep(0.05)  # runs never overlap: the next wait starts after this returns
        return RetrainResult("rejected", "v1", "v2", {"candidate_gain_db": 1.0, "current_gain_db": 2.0},
                             {"span_seconds": 60.0}, 0.05)

    metrics = RetrainMetrics(CollectorRegistry())
    t = threading.Thread(target=run_every, args=(s, interval), kwargs=dict(
        jitter=0.0, stop=stop, drift=False, metrics=metrics, run_at_start=run_at_start, runner=runner))
    t0 = time.monotonic()
    t.start()
    time.sleep(seconds)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    return [c - t0 for c in calls], metrics


def test_first_run_waits_one_interval_then_runs_periodically():
    calls, metrics = _run(0.4, False, 2.5)
    assert 2 <= len(calls) <= 6, calls  # ~5 on a quiet machine; the lower bounds below are exact
    # Run k starts one interval after run k-1 started (a late start does not push the schedule:
    # a gap between two calls may be shorter than the interval), so call k is >= (k+1) intervals
    # after the start, whatever the load; and runs never overlap (each runs 0.05 s).
    assert all(c >= 0.4 * (k + 1) for k, c in enumerate(calls)), calls
    assert all(b - a >= 0.05 for a, b in zip(calls, calls[1:])), calls
    assert metrics.runs.labels("rejected", "default")._value.get() == len(calls)
    text = generate_latest(metrics.registry).decode()
    assert 'dae_retrain_gain_db{model="candidate",route="default"} 1.0' in text
    assert 'dae_retrain_data_span_seconds{route="default"} 60.0' in text
    assert 'dae_registry_current_info{route="default",version="v1"}' in text  # rejected: the current one keeps serving


def test_run_at_start_runs_at_once():
    calls, _ = _run(10.0, True, 1.0)
    assert len(calls) == 1 and calls[0] < 1.0


def test_metrics_textfile(tmp_path):
    m = RetrainMetrics(CollectorRegistry())
    m.record(RetrainResult("promoted", "v1", "v2", {"candidate_gain_db": 3.0, "current_gain_db": 1.0},
                           {"span_seconds": 10.0}, 12.0))
    path = tmp_path / "retrain.prom"
    m.write_textfile(path)
    text = path.read_text()
    assert 'dae_retrain_runs_total{outcome="promoted",route="default"} 1.0' in text
    assert 'dae_retrain_runs_total{outcome="failed",route="default"} 0.0' in text
    assert 'dae_registry_current_info{route="default",version="v2"}' in text
