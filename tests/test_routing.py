"""Model routing without Kafka: route settings and their errors, which engine serves a stream
(pipeline.inference.routing), route pointers in the registry, `dae models --route`, and the
processor moving a stream to another model's geometry without losing a sample."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from models.registry import ModelRegistry, RegistryError
from pipeline.inference.engine import Inference
from pipeline.inference.routing import ModelSet
from pipeline.monitor.metrics import WorkerMetrics
from pipeline.settings import ModelSettings, Route
from pipeline.stream.batching import MicroBatcher
from pipeline.stream.processor import StreamProcessor
from pipeline.stream.state import OutputRecord, PartitionState
from pipeline.wire.codec import encode_chunk
from tests.routing_models import tiny_model

ROUTES = [
    {"name": "ecg", "streams": "ecg-*", "rates": [360]},
    {"name": "slow", "rates": [100]},
    {"name": "vib", "streams": "vib-*"},
]


# ----------------------------------------------------------------------------- settings
def test_routes_match_in_order_first_match_wins():
    routes = ModelSettings(routes=ROUTES).routes
    first = lambda sid, rate: next((r.name for r in routes if r.matches(sid, rate)), "default")  # noqa: E731
    assert first("ecg-7", 360.0) == "ecg"
    assert first("ecg-7", 100.0) == "slow"  # the ecg route wants 360 Hz; the rate route takes it
    assert first("vib-1", 100.0) == "slow"  # order: slow comes before vib
    assert first("vib-1", 1000.0) == "vib"
    assert first("ecg-7", 500.0) == "default"
    assert first("ECG-7", 360.0) == "default"  # globs are case-sensitive


@pytest.mark.parametrize("routes, words", [
    ([{"name": "a", "streams": "*"}, {"name": "b", "streams": "x-*"}], ["'b'", "unreachable", "'a'"]),
    ([{"name": "a", "streams": "ecg-*"}, {"name": "b", "streams": "ecg-1?", "rates": [5]}], ["'b'", "unreachable"]),
    ([{"name": "a", "rates": [360, 100]}, {"name": "b", "streams": "q", "rates": [100]}], ["'b'", "unreachable"]),
    ([{"name": "a", "streams": "x"}, {"name": "a", "streams": "y"}], ["both named 'a'"]),
    ([{"name": "default", "streams": "x"}], ["reserved"]),
    ([{"name": "a"}], ["matches every stream"]),
    ([{"name": "Bad Name", "streams": "x"}], ["route name"]),
    ([{"name": "a", "rates": []}], ["rates"]),
    ([{"name": "a", "rates": [-1]}], ["rates"]),
])
def test_bad_routes_are_refused_with_the_reason(routes, words):
    with pytest.raises(ValidationError) as e:
        ModelSettings(routes=routes)
    for w in words:
        assert w in str(e.value)


def test_overlapping_but_reachable_routes_are_accepted():
    ms = ModelSettings(routes=[{"name": "a", "streams": "ecg-*", "rates": [360]}, {"name": "b", "streams": "ecg-*"}])
    assert [r.name for r in ms.routes] == ["a", "b"]


def test_routes_and_a_pinned_version_exclude_each_other():
    with pytest.raises(ValidationError, match="cannot be combined"):
        ModelSettings(routes=ROUTES, version="v3")


@hsettings(max_examples=200, deadline=None)
@given(prefix=st.text("abc-", min_size=0, max_size=4), tail=st.text("abc-1", min_size=0, max_size=4),
       sid=st.text("abc-1", min_size=0, max_size=8))
def test_a_route_judged_shadowed_never_misses_a_stream_of_the_later_one(prefix, tail, sid):
    """``shadows`` must be sound: when it says the earlier route covers the later one, every id the
    later glob matches is matched by the earlier glob."""
    earlier = Route(name="e", streams=prefix + "*")
    later = Route(name="l", streams=prefix + tail + "?")
    if earlier.shadows(later) and later.matches(sid, 1.0):
        assert earlier.matches(sid, 1.0)


# ----------------------------------------------------------------------------- which engine
@dataclass
class Meta:
    sample_rates: list


class Eng:
    def __init__(self, version, rates, window=32, route="default"):
        self.version, self.meta, self.window, self.hop, self.route = version, Meta(list(rates)), window, window // 2, route

    def serves_rate(self, rate):
        return any(abs(r - rate) < 1e-9 for r in self.meta.sample_rates)


def test_resolve_route_model_fallback_and_strict_mode():
    routes = ModelSettings(routes=ROUTES).routes
    ms = ModelSet(Eng("v1", [500, 1000]), routes, {"ecg": Eng("v2", [360], route="ecg"),
                                                   "vib": Eng("v3", [2000], route="vib")})
    assert ms.resolve("ecg-1", 360.0)[:2] == ("ecg", ms.engines["ecg"])
    assert ms.resolve("x", 500.0)[:2] == ("default", ms.default)  # no route matches
    # slow has no version yet and the default route's model does not serve 100 Hz: refused
    route, eng, why = ms.resolve("ecg-1", 100.0)
    assert (route, eng) == ("slow", None) and "100 Hz" in why and "v1" in why
    # vib has a model, but not for 1 kHz: the default route's model serves the stream
    assert ms.resolve("vib-1", 1000.0)[:2] == ("default", ms.default)
    strict = ModelSet(Eng("v1", [500, 1000]), routes, {"vib": Eng("v3", [2000], route="vib")}, strict_rates=True)
    route, eng, why = strict.resolve("vib-1", 1000.0)
    assert eng is None and route == "vib" and "strict" in why
    # a route's first version takes its streams from the fallback
    ms.install(Eng("v4", [100], route="slow"))
    assert ms.resolve("ecg-1", 100.0)[:2] == ("slow", ms.engines["slow"])


# ----------------------------------------------------------------------------- registry
def test_route_pointers_are_independent_and_listed(tmp_path):
    reg = ModelRegistry(tmp_path)
    m, meta = tiny_model(32, [1000])
    v1 = reg.publish(m, meta, promote=True)
    v2 = reg.publish(m, meta, route="ecg", promote=True)
    v3 = reg.publish(m, meta)
    assert (reg.current(), reg.current("ecg"), reg.current("vib")) == (v1, v2, None)
    reg.promote(v3, route="ecg")
    assert (reg.current(), reg.current("ecg"), reg.current("default")) == (v1, v3, v1)
    assert reg.routes() == ["default", "ecg"]
    assert reg.rollback(route="ecg") == v2 and reg.current() == v1
    with pytest.raises(RegistryError, match="route 'ecg'"):
        reg.rollback(route="ecg")
    with pytest.raises(RegistryError, match="invalid route name"):
        reg.promote(v1, route="../x")


def test_models_cli_promote_list_and_show_routes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    monkeypatch.setenv("DAE_MODEL__ROUTES", '[{"name": "ecg", "streams": "ecg-*"}]')
    reg = ModelRegistry(tmp_path)
    m, meta = tiny_model(32, [1000])
    reg.publish(m, meta, promote=True)
    reg.publish(m, meta)
    run = lambda *a: CliRunner().invoke(app, [*a, "--registry", str(tmp_path)])  # noqa: E731
    r = run("models", "promote", "v2", "--route", "ecg")
    assert r.exit_code == 0 and "current (ecg): v2" in r.output and "note" not in r.output, r.output
    r = run("models", "promote", "v1", "--route", "ppg")
    assert r.exit_code == 0 and "not in this environment's model.routes: ecg" in r.output, r.output
    r = run("models", "list")
    lines = {line[2:].split()[0]: line for line in r.output.splitlines()}
    assert lines["v1"].startswith("*") and lines["v1"].endswith("routes: default,ppg"), r.output
    assert lines["v2"].endswith("routes: ecg"), r.output
    r = run("models", "show", "current", "--route", "ecg")
    assert r.exit_code == 0 and '"version": "v2"' in r.output and '"routes": [\n    "ecg"\n  ]' in r.output


# ----------------------------------------------------------------------------- processor
class Doubler(Eng):
    """Output = 2 x input: every published sample shows which model produced it."""

    def __init__(self, version, rates, window, route, factor):
        super().__init__(version, rates, window, route)
        self.factor = factor

    def infer(self, data):
        n = len(data)
        return Inference((self.factor * data).astype(np.float32), np.zeros(n, np.float32), np.ones(n, np.float32))


def _processor(models):
    out = defaultdict(list)

    def publish(seg, rec, samples, version):
        rec.acked = True
        out[seg.stream.id].append((rec.start, samples[:, 0].copy(), version, seg.served))

    p = StreamProcessor(models, 32, 16, WorkerMetrics(CollectorRegistry()),
                        batcher=MicroBatcher(4, 0.0), max_chunk_frames=4096, idle_flush_s=2.0,
                        publish=publish, dead_letter=lambda *a: pytest.fail(f"dead letter {a[2:]}"),
                        write_state=lambda part, stream: OutputRecord(0, 0, None, acked=True),
                        score=lambda *a: None, observe_batch=lambda *a: None)
    part = p.partitions["tp"] = PartitionState("tp")
    return p, part, out


@dataclass
class Msg:
    offset: int
    key: bytes
    value: bytes
    headers: list
    timestamp: float = 0.0


@hsettings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 90), min_size=4, max_size=14), switch=st.integers(1, 12),
       window=st.sampled_from([16, 32, 64]))
def test_a_stream_moving_to_its_routes_first_model_loses_and_repeats_nothing(sizes, switch, window):
    """A stream served by the default model moves to its route's first version (another window
    when ``window`` != 32: a new segment) at any message: every sample is published exactly once,
    each by one of the two models, the route's from the first segment boundary on."""
    routes = ModelSettings(routes=[{"name": "ecg", "streams": "ecg-*"}]).routes
    models = ModelSet(Doubler("v1", [100], 32, "default", 2.0), routes)
    p, part, out = _processor(models)
    x = np.random.default_rng(len(sizes)).standard_normal(sum(sizes)).astype(np.float32)
    i = 0
    for off, n in enumerate(sizes):
        if off == min(switch, len(sizes) - 1):
            models.install(Doubler("v2", [100], window, "ecg", 3.0))
        key, value, headers = encode_chunk("ecg-1", i, 100.0, x[i:i + n])
        p.handle(part, Msg(off, key, value, headers))
        p.run_due_batches()
        i += n
    for stream in part.streams.values():
        stream.last_seen = -1e9
    p.idle_flush()
    p.finish()
    p.release_held()
    chunks = sorted(out["ecg-1"], key=lambda c: c[0])
    got = np.concatenate([c[1] for c in chunks])
    starts = [c[0] for c in chunks]
    assert starts == sorted(set(starts)) and got.shape == x.shape  # contiguous, nothing twice
    assert np.array_equal(np.cumsum([0] + [len(c[1]) for c in chunks])[:-1], starts)
    ratio = got / np.where(np.abs(x) > 1e-3, x, np.nan)
    ok = np.isfinite(ratio)
    at = sum(sizes[:min(switch, len(sizes) - 1)])  # first sample of the message after the install
    assert (ratio[ok] > 2 - 1e-3).all() and (ratio[ok] < 3 + 1e-3).all()  # v1, v2, or their overlap-add blend
    before, after = np.arange(len(x)) < at - 32, np.arange(len(x)) >= at + max(32, window)
    assert np.allclose(ratio[ok & before], 2.0, rtol=1e-4), "windows computed before the install are v1's"
    assert np.allclose(ratio[ok & after], 3.0, rtol=1e-4), "windows starting after it are the route's model's"
    for start, samples, version, served in chunks:
        assert served == {"v1": "default", "v2": "ecg"}[version]
    versions = [c[2] for c in chunks]
    assert versions == sorted(versions), "once on the route's model, the stream stays there"
