"""Model routing in a running worker on the real broker: streams at three rates and two id
patterns, three routes plus the default route; each stream is cleaned by its route's model (the
output's dae.route and dae.model headers), a promotion and a rollback on one route swap only that
route with no gap and no duplicate, and a rate no route names goes to the default route's model (a rate-generic
one)."""

from __future__ import annotations

import threading

import pytest

from models.registry import ModelRegistry
from pipeline.tools.capture import capture
from pipeline.tools.simulate import simulate
from tests.routing_models import tiny_model
from tests.workers import wait_for, worker_thread

pytestmark = pytest.mark.kafka

ROUTES = [
    {"name": "ecg", "streams": "ecg-*", "rates": [360]},
    {"name": "slow", "rates": [100]},
    {"name": "vib", "streams": "vib-*"},
]
# prefix -> (rate, route expected, chunk frames)
STREAMS = {
    "ecg-a": (360.0, "ecg", (20, 90)),
    "ecg-b": (100.0, "slow", (10, 40)),  # an ecg id at 100 Hz: the ecg route wants 360 Hz
    "vib-a": (1000.0, "vib", (50, 250)),
    "ecg-c": (500.0, "default", (25, 120)),  # no route names 500 Hz: the default route's rate-generic model
}


def applied(w, prefix: str, version: str) -> bool:
    """Both streams ``prefix*`` have had a batch of ``version`` applied (the worker's own state)."""
    with w.lock:
        seen = {sid for part in w.partitions.values() for sid, st in part.streams.items()
                if sid.startswith(prefix) and any(seg.version == version for seg in st.segments())}
    return len(seen) == 2


def test_streams_follow_their_routes_and_one_route_swaps_alone(make_settings, tmp_path):
    root = tmp_path / "registry"
    reg = ModelRegistry(root)
    # Each route's model has its own window (and so its own windowing of the stream).
    v_default = reg.publish(*tiny_model(64, [], seed=1, rate_range=(50.0, 20000.0)), promote=True)
    v_ecg = reg.publish(*tiny_model(64, [360.0], seed=2), promote=True, route="ecg")
    v_slow = reg.publish(*tiny_model(32, [100.0], seed=3), promote=True, route="slow")
    v_vib = reg.publish(*tiny_model(128, [1000.0], seed=4), promote=True, route="vib")
    v_ecg2 = reg.publish(*tiny_model(64, [360.0], seed=5))
    s = make_settings(model={"registry": root, "watch_interval_s": 0.3, "routes": ROUTES})

    sims: dict[str, object] = {}

    def produce(prefix, rate, chunk, seed):
        sims[prefix] = simulate(s.kafka, streams=2, sample_rate=rate, seconds=10.0, snr_db=10.0, chunk=chunk,
                                realtime=True, seed=seed, prefix=prefix)

    producers = [threading.Thread(target=produce, args=(p, rate, chunk, i), daemon=True)
                 for i, (p, (rate, _, chunk)) in enumerate(STREAMS.items())]
    with worker_thread(s) as w:
        assert {r: e.version for r, e in w.models.engines.items()} == {
            "default": v_default, "ecg": v_ecg, "slow": v_slow, "vib": v_vib}
        for t in producers:
            t.start()
        # promote once the ecg streams' output is under way (a fixed sleep was too short beside CPU hogs)
        wait_for(lambda: applied(w, "ecg-a-", v_ecg), 60, 0.1, "the ecg streams' first batches")
        reg.promote(v_ecg2, route="ecg")
        wait_for(lambda: w.models.engines["ecg"].version == v_ecg2, 20, 0.1, "the ecg route to swap")
        assert {r: e.version for r, e in w.models.engines.items() if r != "ecg"} == {
            "default": v_default, "slow": v_slow, "vib": v_vib}, "only the promoted route swaps"
        wait_for(lambda: applied(w, "ecg-a-", v_ecg2), 60, 0.1, "a batch of the promoted ecg model")
        assert reg.rollback(route="ecg") == v_ecg and reg.current() == v_default
        wait_for(lambda: w.models.engines["ecg"].version == v_ecg, 20, 0.1, "the ecg route to roll back")
        rolled_back_live = all(t.is_alive() for t in producers)  # (else the streams ended on v_ecg2)
        for t in producers:
            t.join(60)
        expected = {sid: len(x) for sim in sims.values() for sid, x in sim.clean.items()}
        assert len(expected) == 8
        rep = capture(s.kafka, idle_s=6.0, max_seconds=90, expected=expected)
        dead = w.metrics.dead_letters
    own = {"default": v_default, "slow": v_slow, "vib": v_vib}
    for prefix, (rate, route, _) in STREAMS.items():
        for sid, clean in sims[prefix].clean.items():
            assert rep.gaps[sid] == [] and rep.duplicates.get(sid, 0) == 0, (sid, rep.gaps[sid])
            assert rep.streams[sid].shape[0] == len(clean), sid
            assert [r for _, r in rep.routes[sid]] == [route], (sid, rep.routes[sid])
            versions = [v for _, v in rep.models[sid]]
            if route == "ecg":  # live across the promotion and the rollback
                assert versions == ([v_ecg, v_ecg2, v_ecg] if rolled_back_live else [v_ecg, v_ecg2]), (sid, versions)
            else:
                assert versions == [own[route]], (sid, versions)
    assert sum(c._value.get() for c in dead._metrics.values()) == 0, "nothing dead-lettered"
