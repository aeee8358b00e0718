"""Retraining per route (docs/retrain.md, "Per route"): which streams a route's run learns from, the
route errors, the scheduler's per-route schedule and drift dispatch, the one-run-at-a-time lock, and
(on the real broker) a route's run learning from its streams only and promoting its pointer only."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from models.registry import ModelRegistry
from pipeline.inference.routing import ModelSet
from pipeline.retrain.run import RetrainResult, RouteError, check_route, route_streams, training_lock
from pipeline.retrain.schedule import DriftInbox, RetrainMetrics, run_every
from pipeline.settings import Settings
from tests.routing_models import tiny_model

ROOT = Path(__file__).resolve().parents[1]
ROUTES = [{"name": "ecg", "streams": "ecg-*", "rates": [360]}, {"name": "ppg", "rates": [100]},
          {"name": "vib", "streams": "vib-*"}]


def settings(registry, routes=ROUTES, **kw) -> Settings:
    return Settings(model={"registry": registry, "routes": routes, "device": "cpu"}, metrics={"enabled": False}, **kw)


def test_a_routes_streams_are_those_the_worker_would_give_it():
    s = settings("/nonexistent-registry")
    rates = {"ecg-1": 360.0, "ecg-7": 100.0, "vib-1": 100.0, "vib-2": 1000.0, "s1": 500.0, "ecg-2": 500.0,
             "mic": 16000.0, "ppg-3": 100.0}
    assert route_streams(s, "ecg", rates) == ["ecg-1"]
    assert route_streams(s, "ppg", rates) == ["ecg-7", "vib-1", "ppg-3"]  # the first match wins
    assert route_streams(s, "vib", rates) == ["vib-2"]
    # The default route: the streams no route matches (None and "default" alike).
    assert route_streams(s, None, rates) == route_streams(s, "default", rates) == ["s1", "ecg-2", "mic"]
    match = ModelSet(None, s.model.routes).match  # the worker's rule, stream by stream
    for name in ("default", "ecg", "ppg", "vib"):
        assert route_streams(s, name, rates) == [sid for sid, r in rates.items() if match(sid, r) == name]
    # Without routes, every stream is the default route's.
    assert route_streams(settings("/nonexistent-registry", routes=[]), None, rates) == list(rates)


def publish_tiny(reg: ModelRegistry, rate: float, route: str | None, seed: int, window: int = 64) -> str:
    return reg.publish(*tiny_model(window, [rate], seed=seed), promote=True, route=route)


def test_route_errors_say_what_to_do(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    s = settings(tmp_path / "reg")
    with pytest.raises(RouteError, match=r"route 'ekg' is not in model.routes .*configured: ecg, ppg, vib"):
        check_route(s, "ekg", reg)
    with pytest.raises(RouteError, match=r"route 'ecg' has no current version .*dae models promote V --route ecg"):
        check_route(s, "ecg", reg)
    with pytest.raises(RouteError, match=r"route 'default' has no current version .*\(dae models promote V\)"):
        check_route(s, None, reg)
    publish_tiny(reg, 360.0, "ecg", 1)
    assert check_route(s, "ecg", reg) == "ecg"
    # retrain_once reports the same as a failed run, logged with its route, without touching Kafka.
    from pipeline.retrain.run import retrain_once

    r = retrain_once(s, route="ppg")
    assert r.outcome == "failed" and r.route == "ppg" and "dae models promote V --route ppg" in r.error
    assert r.summary().startswith("retrain failed (route ppg)")
    (line,) = [json.loads(x) for x in (tmp_path / "reg" / "retrain-log.jsonl").read_text().splitlines()]
    assert line["route"] == "ppg" and line["outcome"] == "failed"


def test_cli_refuses_an_unknown_route_or_one_without_a_version_before_any_broker(tmp_path):
    from pipeline.cli.app import app

    env = {"DAE_MODEL__ROUTES": json.dumps(ROUTES), "DAE_MODEL__REGISTRY": str(tmp_path / "reg"),
           "DAE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # nothing listens there: the check comes first
    for args, needles in ((["--route", "ekg"], ["not in model.routes", "ecg, ppg, vib"]),
                          (["--route", "ecg", "--every", "1h"], ["dae models promote V --route ecg"])):
        res = CliRunner().invoke(app, ["retrain", *args], env=env)
        assert res.exit_code == 2, (res.exit_code, res.output)
        assert all(n in res.output for n in needles) and "Traceback" not in res.output, res.output


def _scheduler(s, **kw):
    stop = threading.Event()
    t = threading.Thread(target=run_every, args=(s, kw.pop("interval", 3600.0)),
                         kwargs=dict(jitter=0.0, stop=stop, **kw), daemon=True)
    t.start()
    return t, stop


def _result(route, outcome="rejected"):
    return RetrainResult(outcome, "v1", "v9", {"candidate_gain_db": 1.0, "current_gain_db": 2.0},
                         {"span_seconds": 6.0}, 0.01, route=route)


def wait_until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_a_drift_event_retrains_only_its_route_and_only_for_its_current_version(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    v1 = publish_tiny(reg, 360.0, None, 1)  # the default route
    v2 = publish_tiny(reg, 360.0, "ecg", 2)  # ppg and vib have no version yet
    s = settings(tmp_path / "reg")
    runs = []

    def runner(route):
        runs.append(route)
        return _result(route)

    routes = ("default", "ecg", "ppg", "vib")
    inbox = DriftInbox(lambda r: reg.current(None if r == "default" else r), routes)
    metrics = RetrainMetrics(CollectorRegistry())
    t, stop = _scheduler(s, drift=True, min_gap_s=0.0, inbox=inbox, runner=runner, metrics=metrics)
    try:
        def drift(model, route=None):
            headers = [("dae.event", b"drift"), ("dae.model", model.encode())]
            headers += [("dae.route", route.encode())] if route else []
            return inbox.offer({"type": "dae.drift", "model_version": model, "ratio": 3.0}, headers)

        assert drift(v2, "ecg") == "ecg"
        wait_until(lambda: runs == ["ecg"])
        assert drift(v1, "ecg") is None  # ecg serves v2: an event about v1 on ecg is stale
        assert drift(v2, "default") is None and drift(v2) is None  # nor is v2 the default route's
        assert drift("v7", "ppg") is None  # ppg has no version: nothing to retrain
        assert drift(v1, "other") is None  # a route this scheduler does not run
        assert inbox.offer({"type": "dae.alert", "model_version": v1}, []) is None
        assert drift(v1) == "default"  # no dae.route header (a worker without routes): the default route
        wait_until(lambda: runs == ["ecg", "default"])
        time.sleep(0.3)
        assert runs == ["ecg", "default"]  # nothing else ran
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()
    assert metrics.drift_triggers.labels("ecg")._value.get() == 1
    assert metrics.drift_triggers.labels("default")._value.get() == 1
    assert metrics.drift_triggers.labels("ppg")._value.get() == 0
    text = generate_latest(metrics.registry).decode()
    assert 'dae_retrain_runs_total{outcome="rejected",route="ecg"} 1.0' in text
    assert 'dae_retrain_runs_total{outcome="rejected",route="vib"} 0.0' in text  # bounded: configured routes
    assert 'dae_retrain_gain_db{model="candidate",route="ecg"} 1.0' in text
    assert 'dae_registry_current_info{route="default",version="v1"}' in text


def test_every_route_with_a_version_runs_on_its_own_schedule_one_run_at_a_time(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    # The recommended default route: a rate-generic model, which a retrain (one rate) cannot replace.
    reg.publish(*tiny_model(64, [], seed=1, rate_range=(50.0, 20000.0)), promote=True)
    publish_tiny(reg, 360.0, "ecg", 2)
    publish_tiny(reg, 100.0, "vib", 3)  # ppg has none: skipped
    s = settings(tmp_path / "reg")
    calls, active, most = [], [0], [0]
    lock = threading.Lock()

    def runner(route):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        calls.append((route, time.monotonic()))
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return _result(route)

    t0 = time.monotonic()
    t, stop = _scheduler(s, interval=0.4, drift=False, runner=runner)
    # Until both routes ran twice (however busy the machine), then a little longer for a stray run.
    wait_until(lambda: all(sum(rr == r for rr, _ in calls) >= 2 for r in ("ecg", "vib")), 60)
    time.sleep(0.2)
    stop.set()
    t.join(5)
    assert not t.is_alive() and most[0] == 1
    by_route = {r: [c - t0 for rr, c in calls if rr == r] for r in ("default", "ecg", "ppg", "vib")}
    assert by_route["ppg"] == [] and by_route["default"] == []
    for r in ("ecg", "vib"):
        times = by_route[r]
        assert len(times) >= 2, by_route
        assert all(c >= 0.4 * (k + 1) for k, c in enumerate(times)), by_route  # its own interval after its last


def test_two_schedulers_of_this_host_never_train_at_once(tmp_path):
    """`--route ecg --every` and `--route default --every` side by side (here two threads; the lock is
    a flock in the registry, so two processes alike): their runs never overlap."""
    reg = ModelRegistry(tmp_path / "reg")
    publish_tiny(reg, 360.0, None, 1)
    publish_tiny(reg, 360.0, "ecg", 2)
    s = settings(tmp_path / "reg")
    spans, active, most = [], [0], [0]
    lock = threading.Lock()

    def runner(route):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        a = time.monotonic()
        time.sleep(0.15)
        with lock:
            active[0] -= 1
        spans.append((route, a, time.monotonic()))
        return _result(route)

    threads = [_scheduler(s, interval=0.05, drift=False, runner=runner, route=r, run_at_start=True)
               for r in ("ecg", "default")]
    wait_until(lambda: all(sum(x == r for x, _, _ in spans) >= 3 for r in ("ecg", "default")), 60)
    for t, stop in threads:
        stop.set()
    for t, _ in threads:
        t.join(5)
    assert most[0] == 1
    assert {r for r, _, _ in spans} == {"ecg", "default"}, spans
    spans.sort(key=lambda x: x[1])
    assert all(b[1] >= a[2] for a, b in zip(spans, spans[1:])), spans


def test_the_training_lock_waits_for_another_process(tmp_path):
    """Another process holds the lock until told to let go: this process's run cannot start before
    (no timing assumption: the holder releases only on our signal)."""
    (tmp_path / "reg").mkdir()
    code = ("import sys; from pipeline.retrain.run import training_lock\n"
            "with training_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "reg")], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    got = threading.Event()

    def take():
        with training_lock(tmp_path / "reg"):
            with training_lock(tmp_path / "reg"):  # the holder's thread re-enters
                got.set()

    try:
        assert p.stdout.readline().strip() == "held"
        t = threading.Thread(target=take, daemon=True)
        t.start()
        assert not got.wait(0.5), "took the lock while another process held it"
        p.stdin.write("\n")
        p.stdin.flush()
        assert got.wait(60), "never got the lock after the other process let go"
        t.join(10)
    finally:
        p.stdin.close()
        p.wait(10)
    assert p.returncode == 0


# ------------------------------------------------------------------------------- real broker


def produce(s, streams: dict[str, float], seconds: float, seed: int) -> None:
    from models.signals.families import add_noise, generate
    from pipeline.kafka.clients import make_producer
    from pipeline.wire.codec import encode_chunk

    rng = np.random.default_rng(seed)
    p = make_producer(s.kafka)
    for sid, fs in streams.items():
        n = int(seconds * fs)
        y = add_noise(generate("vibration", n, fs, rng), 10.0, rng).astype(np.float32)
        for a in range(0, n, 512):
            key, value, headers = encode_chunk(sid, a, fs, y[a : a + 512])
            p.send(s.kafka.raw_topics[0], key=key, value=value, headers=headers)
    p.flush()
    p.close()


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_a_routes_retrain_learns_from_its_streams_and_promotes_its_pointer_only(make_settings, tmp_path):
    from models.training.distill import DistilConfig
    from pipeline.retrain.run import retrain_once

    registry = tmp_path / "registry"
    reg = ModelRegistry(registry)
    v1 = publish_tiny(reg, 360.0, None, 1)  # the default route: 360 Hz too, so the rate cannot tell them apart
    v2 = publish_tiny(reg, 360.0, "ecg", 2)
    s = make_settings(model={"registry": registry, "device": "cpu",
                             "routes": [{"name": "ecg", "streams": "ecg-*"}]},
                      retrain={"max_cost_ratio": 1e6})
    # ecg-0/1: the ecg route at its model's rate; ecg-2: the ecg route at another rate; s0/s1: default.
    produce(s, {"ecg-0": 360.0, "ecg-1": 360.0, "ecg-2": 1000.0, "s0": 360.0, "s1": 360.0}, 12.0, seed=3)
    tiny = dict(last_seconds=3600, steps=2, seed=1, arch="mlp", margin_db=100.0,
                distil_config=DistilConfig(steps=2, pool=256, val_windows=64))

    r = retrain_once(s, route="ecg", **tiny)
    print(r.summary())
    assert r.outcome == "promoted" and r.route == "ecg" and r.current == v2, r.summary()
    assert r.data["streams"] == 2 and r.data["stream_ids"] == ["ecg-0", "ecg-1"], r.data
    assert r.data["other_route_streams"] == 2 and r.data["other_rate_streams"] == 1, r.data
    assert r.data["warm_start_from"] == v2 and r.summary().startswith("retrain promoted (route ecg)")
    assert reg.current("ecg") == r.candidate and reg.history("ecg") == [v2, r.candidate]
    assert reg.current() == v1 and reg.history() == [v1]  # the default pointer untouched
    assert reg.meta(r.candidate).training["retrain"]["route"] == "ecg"

    d = retrain_once(s, **tiny)  # the default route: the streams no route matches
    print(d.summary())
    assert d.outcome == "promoted" and d.route == "default" and d.current == v1, d.summary()
    assert d.data["stream_ids"] == ["s0", "s1"] and d.data["other_route_streams"] == 3, d.data
    assert reg.current() == d.candidate and reg.current("ecg") == r.candidate

    log = [json.loads(x) for x in (registry / "retrain-log.jsonl").read_text().splitlines()]
    assert [(x["route"], x["outcome"], x["current"]) for x in log] == [("ecg", "promoted", v2),
                                                                        ("default", "promoted", v1)]


@pytest.mark.kafka
@pytest.mark.timeout(600)
def test_the_drift_listener_reads_the_route_header_on_the_real_topic(make_settings, tmp_path):
    from pipeline.kafka.clients import make_producer
    from pipeline.retrain.schedule import DriftListener

    reg = ModelRegistry(tmp_path / "reg")
    v1 = publish_tiny(reg, 360.0, None, 1)
    v2 = publish_tiny(reg, 360.0, "ecg", 2)
    s = make_settings(model={"registry": tmp_path / "reg", "routes": [{"name": "ecg", "streams": "ecg-*"}]})
    ready = threading.Event()
    listener = DriftListener(s, lambda r: reg.current(None if r == "default" else r), ("default", "ecg"), ready)
    listener.start()
    try:
        # a liveness wait, not a timing assertion: joining the group took over 60 s once beside two CPU hogs
        assert ready.wait(300), "the listener never got its partitions"
        time.sleep(1.0)  # auto_offset_reset=latest: let its position settle before producing
        p = make_producer(s.kafka)
        for model, route in ((v2, "ecg"), (v1, "ecg"), (v1, None)):  # ecg's, stale, default's (no header)
            headers = [("dae.event", b"drift"), ("dae.model", model.encode())]
            headers += [("dae.route", route.encode())] if route else []
            body = json.dumps({"type": "dae.drift", "model_version": model, "ratio": 3.0}).encode()
            p.send(s.kafka.alerts_topic, key=b"dae.drift", value=body, headers=headers)
        p.flush()
        p.close()
        got: dict = {}
        end = time.monotonic() + 30
        while set(got) != {"ecg", "default"} and time.monotonic() < end:
            got.update(listener.take(0.5))
    finally:
        listener.close()
    assert got["ecg"]["model_version"] == v2 and got["default"]["model_version"] == v1, got
