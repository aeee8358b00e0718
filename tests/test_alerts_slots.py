"""Bounded alert state (pipeline.monitor.alerts.slots): silent streams expire, a cap on tracked streams
evicts the least recently seen, a dropped stream restarts with warm-up, freed memory goes back."""

import sys

import numpy as np
import pytest

from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.settings import AlertSettings

W, H = 64, 32
CAL = {"q50": 0.01, "q999": 0.1}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _engine(clock, evicted=None, **kw):
    cfg = AlertSettings(**{**dict(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=4, slow_terms=(),
                                  cooldown_windows=0, resolve_windows=3, k=1, n=1), **kw})
    on_evict = None if evicted is None else (lambda sid, reason: evicted.append((sid, reason)))
    return AlertEngine(cfg, CAL, "v1", clock=clock, on_evict=on_evict)


def _feed(eng, stream, n, first=0, hot=(), seed=0):
    rng = np.random.default_rng(seed)
    e = 0.1 * np.exp(0.1 * rng.standard_normal(n))
    s = np.exp(0.05 * rng.standard_normal(n))
    e[list(hot)] *= 1e3
    return eng.update(stream, first + H * np.arange(n), W, e, s, now=0.0)


def test_a_silent_stream_expires_with_its_alert_and_an_active_one_stays():
    clock, evicted = Clock(), []
    eng = _engine(clock, evicted, state_ttl_s=300.0)
    _feed(eng, "quiet", 100)
    assert [e.kind for e in _feed(eng, "alarmed", 101, hot=[100])] == ["raised"]
    assert eng.active() == 1 and eng.streams() == 2
    clock.t = 200.0
    _feed(eng, "quiet", 10, first=H * 100)
    clock.t = 400.0  # "alarmed" silent for 400 s, "quiet" for 200 s
    assert eng.expire() == ["alarmed"]
    assert evicted == [("alarmed", "idle")] and eng.evictions == {"idle": 1, "cap": 0}
    assert eng.active() == 0 and not eng.is_active("alarmed") and eng.streams() == 1
    clock.t = 600.0
    assert eng.expire() == ["quiet"] and eng.streams() == 0


def test_beyond_max_streams_the_least_recently_seen_is_evicted_and_restarts_with_warm_up():
    clock, evicted = Clock(), []
    eng = _engine(clock, evicted, max_streams=3)
    for i, sid in enumerate(("a", "b", "c")):
        clock.t = float(i)
        _feed(eng, sid, 50)
    clock.t = 3.0
    _feed(eng, "a", 5, first=H * 50)  # "a" seen again: "b" is now the least recently seen
    clock.t = 4.0
    _feed(eng, "d", 50)
    assert evicted == [("b", "cap")] and eng.streams() == 3
    # "b" comes back as a new stream: no alert before min_windows, even on a hot window
    assert _feed(eng, "b", 3, first=H * 50, hot=[1]) == []
    assert evicted == [("b", "cap"), ("c", "cap")] and eng.evictions["cap"] == 2
    # a warmed-up stream raises on the same window
    assert [e.kind for e in _feed(eng, "d", 3, first=H * 50, hot=[1])] == ["raised"]


def test_one_call_with_more_streams_than_the_cap_scores_them_all_then_trims():
    clock = Clock()
    eng = _engine(clock, max_streams=2)
    n = 20
    ids = [f"s{i}" for i in range(5)]
    r = eng.update_batch(ids, [n] * 5, np.tile(H * np.arange(n), 5), W, np.full(5 * n, 0.1), np.ones(5 * n), now=0.0)
    assert r.scores.score.shape == (5 * n,) and eng.streams() == 5
    clock.t = 1.0
    _feed(eng, "t", 5)
    assert eng.streams() == 2 and eng.evictions["cap"] == 4


def test_a_freed_slot_is_zeroed_and_reused():
    eng = _engine(Clock())
    _feed(eng, "a", 100, hot=[99])
    tab = eng._tab
    slot = tab.get("a")
    assert tab.count[slot].any() and tab.active[slot]
    eng.forget("a")
    assert not tab.count[slot].any() and not tab.active[slot] and not tab.ring[slot].any()
    _feed(eng, "b", 10)
    assert tab.get("b") == slot


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_many_young_streams_cost_a_few_kilobytes_each_and_give_them_back():
    clock = Clock()
    eng = AlertEngine(AlertSettings(), CAL, "v1", clock=clock)  # default sizes: 512 values per term
    n, per = 4000, 250
    x = np.random.default_rng(0).standard_normal((per, 1, 256)).astype(np.float32)
    eng.update_batch([f"w{i}" for i in range(per)], [1] * per, np.zeros(per, np.int64), 256, np.full(per, 0.01),
                     np.ones(per), now=0.0, windows=x, outputs=0.9 * x)  # warm the code paths
    before = _rss()
    for k in range(0, n, per):
        ids = [f"s{i}" for i in range(k, k + per)]
        eng.update_batch(ids, [1] * per, np.zeros(per, np.int64), 256, np.full(per, 0.01), np.ones(per),
                         now=0.0, windows=x, outputs=0.9 * x)
    grown = _rss() - before
    assert eng.streams() == n + per
    assert grown / n <= 8192, f"{grown / n:.0f} bytes per stream"
    clock.t = 1e6
    eng.expire()
    assert eng.streams() == 0
    assert _rss() - before <= 0.25 * grown + 2**20, f"{(_rss() - before) / 2**20:.1f} MiB left after expiry"
