"""Drift end to end on the real broker: a new signal shape raises a drift event from the worker, the
scheduler retrains early, the worker swaps to the new model and its error returns toward the level
the old model had before the shift."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from kafka import KafkaConsumer

from models.registry import ModelRegistry
from models.training import TrainConfig, train_synthetic
from models.training.distill import DistilConfig
from pipeline.wire.codec import encode_chunk
from pipeline.kafka.clients import make_producer
from pipeline.retrain.run import RetrainResult
from pipeline.retrain.schedule import RetrainMetrics, run_every
from models.signals.families import add_noise, generate
from tests.workers import wait_for, worker_thread

pytestmark = pytest.mark.kafka

FS = 1000.0
STREAMS = 4


def produce(s, family: str, start: int, n: int, rng) -> None:
    p = make_producer(s.kafka)
    for i in range(STREAMS):
        y = add_noise(generate(family, n, FS, rng), 10.0, rng).astype(np.float32)
        for a in range(0, n, 500):
            key, value, headers = encode_chunk(f"s{i}", start + a, FS, y[a : a + 500])
            p.send(s.kafka.raw_topics[0], key=key, value=value, headers=headers)
    p.flush()
    p.close()


def drift_events(s) -> list[dict]:
    c = KafkaConsumer(s.kafka.alerts_topic, bootstrap_servers=s.kafka.bootstrap_servers,
                      auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        return [b for b in (json.loads(m.value) for m in c) if b.get("type") == "dae.drift"]
    finally:
        c.close()


@pytest.mark.timeout(2400)  # a 40-step conv retrain: ~1.5 minutes on a quiet 2-core machine, many beside a busy one
def test_drift_event_triggers_an_early_retrain_that_brings_the_error_back(make_settings, tmp_path):
    registry = tmp_path / "registry"
    reg = ModelRegistry(registry)
    # The model in service knows slow drifts only.
    old, meta = train_synthetic(TrainConfig(sample_rate=1000.0, families=("drift",), steps=400, seed=3),
                                progress=False)
    v1 = reg.publish(old, meta, promote=True)
    s = make_settings(
        model={"registry": registry, "watch_interval_s": 0.5},
        retrain={"max_cost_ratio": 1e6},  # v1 is a seed MLP; the conv candidate costs ~40x its FLOPs
        window={"idle_flush_s": 30.0},
        drift={"window_s": 30.0, "bucket_s": 1.0, "ratio": 2.0, "reference_windows": 400, "min_windows": 300,
               "cooldown_s": 600.0},
    )
    rng = np.random.default_rng(5)
    stop, ready = threading.Event(), threading.Event()
    metrics = RetrainMetrics()
    runs: list[RetrainResult] = []

    def scheduler():
        from pipeline.retrain.run import retrain_once

        def runner():
            # A quarter of the default distillation pool, a third of its steps (as test_retrain_kafka's
            # promotion test: the default's teacher labelling and fit took half of it); the error must
            # still come back.
            runs.append(retrain_once(s, last_seconds=600, steps=40, seed=1,
                                     distil_config=DistilConfig(steps=200, pool=2048, val_windows=256, seed=1)))
            return runs[-1]

        run_every(s, 3600.0, stop=stop, drift=True, min_gap_s=0.0, metrics=metrics, ready=ready, runner=runner)

    sched = threading.Thread(target=scheduler, daemon=True)
    sched.start()
    try:
        assert ready.wait(300), "the scheduler never joined the alerts topic"
        with worker_thread(s) as w:
            produce(s, "drift", 0, 20_000, rng)  # the old shape: the model's reference level
            wait_for(lambda: w.drift.reference_median is not None, 60, 0.2, "the drift reference")
            ref_v1 = w.drift.reference_median
            produce(s, "vibration", 20_000, 40_000, rng)  # a new shape on the same streams
            wait_for(lambda: drift_events(s), 60, 0.5, "a drift event")
            ev = drift_events(s)[0]
            wait_for(lambda: runs, 900, 0.5, "the drift-triggered retrain")  # 40 steps; a busy machine is slow
            r = runs[0]
            assert r.outcome == "promoted", r.summary()
            wait_for(lambda: w.engine.version == r.candidate, 30, 0.2, "the worker to serve the new model")
            produce(s, "vibration", 60_000, 20_000, rng)
            wait_for(lambda: w.drift.model_version == r.candidate and w.drift.reference_median is not None,
                     60, 0.2, "the new model's error level")
            ref_v2 = w.drift.reference_median
    finally:
        stop.set()
        sched.join(timeout=30)
    print(f"error median: {v1} on the old shape {ref_v1:.4f}; {v1} after the shift {ev['median']:.4f} "
          f"({ev['ratio']:.2f}x); {r.candidate} after the early retrain {ref_v2:.4f} ({ref_v2 / ref_v1:.2f}x); "
          f"{r.summary()}")
    assert ev["model_version"] == v1 and ev["ratio"] > 2.0 and ev["reference_median"] == pytest.approx(ref_v1)
    assert metrics.drift_triggers.labels("default")._value.get() == 1 and len(runs) == 1
    assert metrics.runs.labels("promoted", "default")._value.get() == 1
    # Back toward the calibration level: most of the way from the drifted median to the old reference.
    assert np.log(ref_v2 / ref_v1) < 0.5 * np.log(ev["median"] / ref_v1)
