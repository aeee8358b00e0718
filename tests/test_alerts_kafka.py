"""Alerts end to end on the real broker: injected anomalies raise and then resolve alerts with the
right sample ranges on the alerts topic; clean streams raise none."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kafka import KafkaConsumer

from pipeline.wire.codec import encode_chunk
from pipeline.kafka.clients import make_producer
from models.signals.families import add_noise, generate
from tests.workers import wait_for, worker_thread

pytestmark = pytest.mark.kafka

FS = 1000.0
N = 60_000  # 60 s per stream
A, B = 30_000, 33_000  # the anomaly: samples [A, B)


def _inject(kind: str, y: np.ndarray, rng) -> np.ndarray:
    y = y.copy()
    sd = float(y[:A].std())
    if kind == "spike":
        y[A : A + 3] += 12 * sd
    elif kind == "level_shift":
        y[A:B] += 4 * sd
    elif kind == "noise_burst":
        y[A:B] += rng.normal(0, 1.5 * sd, B - A)
    elif kind == "flatline":
        y[A:B] = y[A - 1]
    return y


def _streams(seed: int = 11):
    rng = np.random.default_rng(seed)
    streams, anomalies = {}, {}
    fams = ("vibration", "drift", "ecg", "audio")
    for i, fam in enumerate(fams):
        streams[f"clean-{fam}"] = add_noise(generate(fam, N, FS, rng), 10.0, rng).astype(np.float32)
    for kind, fam in zip(("spike", "level_shift", "noise_burst", "flatline"), fams):
        y = add_noise(generate(fam, N, FS, rng), 10.0, rng)
        sid = f"{kind}-{fam}"
        streams[sid] = _inject(kind, y, rng).astype(np.float32)
        anomalies[sid] = (A, A + 3 if kind == "spike" else B)
    return streams, anomalies


def _events(settings, timeout_ms: int = 1000) -> list[dict]:
    c = KafkaConsumer(settings.kafka.alerts_topic, bootstrap_servers=settings.kafka.bootstrap_servers,
                      auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=timeout_ms)
    try:
        return [json.loads(m.value) | {"_key": m.key.decode(), "_headers": dict(m.headers)} for m in c]
    finally:
        c.close()


def test_injected_anomalies_raise_then_resolve_with_their_ranges(make_settings, model_registry):
    s = make_settings(model={"registry": model_registry}, window={"idle_flush_s": 1.0})
    streams, anomalies = _streams()
    total = sum(len(v) for v in streams.values())
    with worker_thread(s) as w:
        window, hop = w.window, w.hop
        producer = make_producer(s.kafka)
        for start in range(0, N, 500):  # interleaved, as live producers would send
            for sid, y in streams.items():
                key, value, headers = encode_chunk(sid, start, FS, y[start : start + 500])
                producer.send(s.kafka.raw_topics[0], key=key, value=value, headers=headers)
        producer.flush()
        producer.close()
        wait_for(lambda: w.metrics.output_samples._value.get() >= total, 180, 0.5, "all cleaned output acknowledged")
        assert w.metrics.alerts_raised._value.get() >= len(anomalies)
        # However many streams flowed, none of their ids became a label value.
        values = {v for m in w.metrics.registry.collect() for smp in m.samples for v in smp.labels.values()}
        assert values and not values & set(streams), values & set(streams)
    events = _events(s)
    by_stream: dict[str, list[dict]] = {}
    for ev in events:
        assert ev["type"] == "dae.alert" and ev["_key"] == ev["stream"]
        assert ev["model_version"] == "v1" and ev["_headers"]["dae.model"] == b"v1"
        assert ev["threshold"] > 0 and ev["peak_score"] >= ev["threshold"] * (ev["kind"] == "raised")
        by_stream.setdefault(ev["stream"], []).append(ev)
    print({sid: [(e["detector"], e["kind"], e["start"], e["end"], round(e["peak_score"], 1)) for e in evs]
           for sid, evs in by_stream.items()})

    clean_with_events = [sid for sid in by_stream if sid.startswith("clean-")]
    assert clean_with_events == [], f"clean streams raised alerts: {clean_with_events}"
    for sid, (a, b) in anomalies.items():
        evs = by_stream.get(sid, [])
        assert evs, f"{sid}: no alert for the anomaly at [{a}, {b})"
        # Every alert on an anomaly stream is about the anomaly: windows touching [a, b) start in
        # (a - W, b) and end by b - 1 + W; hysteresis may keep it up for a few more windows.
        # The window score and each sequential test raise and resolve alerts of their own: a fault
        # may be reported by two detectors, one window apart or in the same micro-batch (larger under
        # load), so the events alternate per detector, not per stream.
        pairs = []
        for det in dict.fromkeys(e["detector"] for e in evs):
            mine = [e for e in evs if e["detector"] == det]
            kinds = [e["kind"] for e in mine]
            assert kinds[0] == "raised" and "resolved" in kinds, f"{sid} ({det}): events {kinds}"
            assert kinds == ["raised", "resolved"] * (len(kinds) // 2), f"{sid} ({det}): {kinds} do not alternate"
            pairs += zip(mine[::2], mine[1::2])
        for raised, resolved in pairs:
            assert raised["start"] < b and raised["end"] > a, f"{sid}: raised {raised} misses [{a}, {b})"
            assert raised["start"] > a - window and raised["end"] <= b - 1 + window, f"{sid}: raised {raised}"
            assert resolved["start"] == raised["start"], f"{sid}: resolved {resolved} vs raised {raised}"
            assert resolved["end"] >= raised["end"]
            assert resolved["end"] <= b - 1 + window + 8 * hop, f"{sid}: resolved {resolved} runs past the anomaly"
            assert resolved["peak_score"] >= raised["peak_score"]
