"""The worker's scoring side (pipeline.monitor.monitor.Monitor): a micro-batch's segments are scored in one
engine call, each event is published with its own stream's partition and holds that partition's commit,
windows of skipped segments are scored at the next batch, before a model switch."""

import json
import time
from types import SimpleNamespace

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from pipeline.monitor.metrics import WorkerMetrics
from pipeline.monitor.monitor import Monitor
from pipeline.settings import AlertSettings, Settings
from pipeline.stream.state import PartitionState

W, H, N = 64, 32, 16  # window, hop, windows per segment and batch


class Seg:
    def __init__(self, sid: str, need: int):
        self.stream = SimpleNamespace(id=sid)
        self._need = need

    def needed_offset(self) -> int:
        return self._need


def _engine(version="v1"):
    return SimpleNamespace(version=version, meta=SimpleNamespace(error_quantiles={"q50": 0.01, "q999": 0.1}))


def _monitor(published, **alerts):
    settings = Settings(alerts=AlertSettings(stats_windows=128, slow_terms=(), **alerts))
    mon = None

    def publish(key, value, headers, *, record=None, what):
        published.append((key.decode(), mon.publishing, record, json.loads(value)))

    mon = Monitor(settings, _engine(), W, WorkerMetrics(CollectorRegistry()), publish_alert=publish,
                  publish_drift=lambda *a, **k: None)
    return mon


def _batch(mon, engine, segs, b, hot=(), skip=()):
    """One micro-batch: N windows of each segment, as the worker hands them in; ``hot`` streams get a
    300x error on their batch's windows 5 and 6, ``skip`` segments are left out (a revoked partition)."""
    rng = np.random.default_rng(b)
    k = len(segs)
    errors = 0.1 * np.exp(0.1 * rng.standard_normal(k * N))
    scales = np.exp(0.05 * rng.standard_normal(k * N))
    data = rng.standard_normal((k * N, 1, W)).astype(np.float32)
    for j, (_, seg) in enumerate(segs):
        if seg.stream.id in hot:
            errors[j * N + 5 : j * N + 7] *= 300.0
    mon.observe_batch(engine, errors)
    for j, (part, seg) in enumerate(segs):
        if seg.stream.id not in skip:
            sl = slice(j * N, (j + 1) * N)
            mon.score(part, seg, H * (b * N + np.arange(N)), errors[sl], scales[sl], data[sl], 0.9 * data[sl])


def test_a_batch_is_scored_in_one_call_and_events_go_out_with_their_partition():
    published = []
    mon = _monitor(published)
    calls = []
    real = mon.alerts.update_batch
    mon.alerts.update_batch = lambda *a, **k: calls.append(len(a[0])) or real(*a, **k)
    p0, p1 = PartitionState(tp="p0", consumed=100), PartitionState(tp="p1", consumed=200)
    segs = [(p0, Seg("a", 10)), (p1, Seg("b", 20)), (p1, Seg("c", 30))]
    engine = _engine()
    for b in range(12):
        _batch(mon, engine, segs, b)
    assert calls == [3] * 12 and published == []  # one engine call per batch, all three streams
    _batch(mon, engine, segs, 12, hot={"a", "c"})
    assert [(sid, part.tp, ev["kind"]) for sid, part, _, ev in published] == [
        ("a", "p0", "raised"), ("a", "p0", "resolved"), ("c", "p1", "raised"), ("c", "p1", "resolved")]
    assert [need for need, _ in p0.events] == [10, 10] and [need for need, _ in p1.events] == [30, 30]
    assert [rec for _, _, rec, _ in published] == [rec for p in (p0, p1) for _, rec in p.events]
    assert mon.publishing is None and mon.alerts.active() == 0


def test_skipped_segments_are_scored_at_the_next_batch_before_a_model_switch():
    published = []
    mon = _monitor(published)
    part = PartitionState(tp="p0", consumed=0)
    segs = [(part, Seg("a", 1)), (part, Seg("b", 2))]
    engine = _engine()
    for b in range(12):
        _batch(mon, engine, segs, b)
    _batch(mon, engine, segs, 12, hot={"a"}, skip={"b"})  # "b" left out: the batch is not complete
    assert published == []
    _batch(mon, _engine("v2"), segs, 13)  # the next batch, of a new model: "a" is scored first, by v1
    assert [(sid, ev["kind"], ev["model_version"]) for sid, _, _, ev in published] == [
        ("a", "raised", "v1"), ("a", "resolved", "v1")]
    assert mon.alerts.model_version == "v2"


def _evictions(mon) -> dict[str, float]:
    c = mon.metrics.state_evictions
    return {reason: c.labels("alerts", reason)._value.get() for reason in ("idle", "cap")}


def test_evicted_alert_state_is_counted_by_reason():
    """dae_stream_state_evictions_total{kind="alerts", reason}: one stream pushed out by the cap on
    tracked streams, then the two left dropped once silent for the state TTL."""
    mon = _monitor([], max_streams=2, state_ttl_s=0.05)
    part, engine = PartitionState(tp="p0", consumed=0), _engine()
    assert _evictions(mon) == {"idle": 0, "cap": 0}  # born at zero
    _batch(mon, engine, [(part, Seg("a", 1)), (part, Seg("b", 2))], 0)
    _batch(mon, engine, [(part, Seg("c", 3))], 1)  # a third stream: "a", the least recently seen, goes
    assert _evictions(mon) == {"idle": 0, "cap": 1}
    time.sleep(0.2)
    mon.expire()
    assert _evictions(mon) == {"idle": 2, "cap": 1} and mon.alerts.streams() == 0
    text = generate_latest(mon.metrics.registry).decode()
    assert 'dae_stream_state_evictions_total{kind="alerts",reason="idle"} 2.0' in text


def test_the_alert_engine_tests_the_hop_the_windows_are_cut_at():
    """`window.hop` overrides the model's hop for the default route's windows (pipeline.worker): the alert
    engine takes the same (the samples new in each window, windows per stream-hour of its false-alarm
    budgets); another route keeps its own model's."""
    settings = Settings(alerts=AlertSettings(stats_windows=128, slow_terms=()))
    meta = SimpleNamespace(error_quantiles={"q50": 0.01, "q999": 0.1}, sample_rates=[1000.0])
    engine = SimpleNamespace(version="v1", window=W, hop=H, meta=meta)
    for hop, want in ((None, H), (48, 48), (16, 16)):
        mon = Monitor(settings, engine, W, WorkerMetrics(CollectorRegistry()), hop=hop,
                      publish_alert=lambda *a, **k: None, publish_drift=lambda *a, **k: None)
        assert (mon.alerts._hop, mon.alerts._wph) == (want, 1000.0 / want * 3600.0)
    other = SimpleNamespace(version="v2", route="ecg", window=W, hop=8, meta=meta)
    assert mon._pair("ecg", other)[0]._hop == 8
