"""The quiet runs compiled (pipeline/monitor/alerts/runpass.py) against their numpy form (runs.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.monitor.alerts import runpass
from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.monitor.alerts.terms import robust_stats
from pipeline.settings import AlertSettings
from tests.test_alerts_reference import CAL, W, stream_inputs

_values = st.integers(-6, 6).map(lambda v: np.float32(v / 4))  # few distinct values: ties everywhere


@settings(max_examples=200, deadline=None)
@given(base=st.lists(_values, min_size=1, max_size=64), data=st.data())
def test_a_merge_leaves_the_sorted_multiset_of_the_values_kept_and_added(base, data):
    srt = np.sort(np.array(base, np.float32))
    n = srt.size
    dels_idx = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=min(n, 16)))
    adds = np.array(data.draw(st.lists(_values, max_size=16)), np.float32)
    dels = srt[dels_idx].copy()
    rng = np.random.default_rng(len(base))
    rng.shuffle(dels)  # the pass collects them in ring order, not sorted
    want = np.sort(np.concatenate([np.delete(srt, dels_idx), adds]))
    buf = np.full(n + adds.size + 1, np.inf, np.float32)
    buf[:n] = srt
    m = runpass._merge(buf, n, adds.copy(), adds.size, dels, dels.size, np.empty(buf.size, np.float32))
    assert m == want.size
    np.testing.assert_array_equal(buf[:m], want)


@settings(max_examples=200, deadline=None)
@given(vals=st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=80), q=st.sampled_from([0.01, 0.1, 0.25]),
       floor=st.sampled_from([0.0, 0.05]), margin=st.sampled_from([0.0, 1.0]))
def test_the_statistics_of_a_sorted_copy_are_robust_stats_bit_for_bit(vals, q, floor, margin):
    v = np.sort(np.array(vals, np.float32))
    n = v.size
    out = np.empty(3)
    runpass._stats(v, n, runpass._plans(80, q)[n], floor, margin, 4.0, out)
    want = robust_stats(v[None, :].copy(), q, np.array([floor]), np.array([margin]), 4.0)
    assert out.tolist() == [float(w[0]) for w in want]


def feed_calls(eng, streams, calls):
    """``streams`` (``stream_inputs`` tuples) through ``eng`` in ``calls`` (window ranges, every stream in
    each): the events, scores, terms ``(terms, windows)``, active flags, and every slot field after each call."""
    evs, sc, zs, act, states = [], [], [], [], []
    tab, ids = eng._tab, list(streams)
    for a, b in calls:
        cat = [np.concatenate([streams[s][i][a:b] for s in ids]) for i in range(3)]
        feats = {t: np.concatenate([streams[s][3][t][a:b] for s in ids]) for t in streams[ids[0]][3]}
        r = eng.update_batch(ids, [b - a] * len(ids), cat[0], W, cat[1], cat[2], now=1.0, features=feats)
        evs += [e.to_dict() for e in r.events]
        sc.append(r.scores.score)
        act.append(r.scores.active)
        zs.append(np.stack([r.scores.terms[t] for t in sorted(r.scores.terms)]))
        states.append({name: getattr(tab, name)[: len(tab.ids)].copy() for name in tab.dtype.names})
    return evs, np.concatenate(sc), np.concatenate(zs, axis=1), np.concatenate(act), states


def assert_same(got, want):
    """:func:`feed_calls`' results equal, bit for bit (the slots after every call)."""
    assert got[0] == want[0] and len(got[0]) > 0
    for g, w in zip(got[1:4], want[1:4]):
        np.testing.assert_array_equal(g, w)
    for call, (g, w) in enumerate(zip(got[4], want[4])):
        for name, v in w.items():
            np.testing.assert_array_equal(g[name], v, err_msg=f"call {call}: {name}")


def _feed(cfg, streams, calls, compiled, monkeypatch):
    monkeypatch.setattr(AlertEngine, "compiled_runs", compiled)
    taken = []
    fn = runpass.quiet_runs_compiled if compiled else runpass.quiet_runs

    def counted(*a):
        done = fn(*a)
        taken.append(int(done.sum()))
        return done

    from pipeline.monitor.alerts import engine

    monkeypatch.setattr(engine, "quiet_runs_compiled" if compiled else "quiet_runs", counted)
    return feed_calls(AlertEngine(cfg, CAL, "v1", window=W), streams, calls), sum(taken)


@pytest.mark.parametrize("small", [False, True], ids=["defaults", "small"])
def test_the_compiled_runs_leave_what_the_numpy_runs_leave(small, monkeypatch):
    """Events, scores, every term's z and every field of every stream's slot after every call, bit for bit,
    on streams with anomalies of every kind, cut into calls of 1 to ~120 windows per stream (rings
    wrapping and refreshes inside calls with the small settings; the default profile's prefix pass with
    the defaults)."""
    rng = np.random.default_rng(5 + small)
    cfg = AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=5, slow_windows=16,
                        cooldown_windows=3) if small else AlertSettings()
    n = 1800
    streams = {f"s{j}": stream_inputs(rng, n, offset=float(j)) for j in range(5)}
    calls, pos = [], 0
    while pos < n:
        m = int(rng.integers(1, 120))
        calls.append((pos, min(n, pos + m)))
        pos += m
    got, taken = _feed(cfg, streams, calls, True, monkeypatch)
    want, taken_np = _feed(cfg, streams, calls, False, monkeypatch)
    assert taken > 2000 and taken == taken_np  # the runs carried real work, the same windows either way
    assert_same(got, want)
