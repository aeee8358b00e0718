"""The sequential tests in one pass over a call (compiled: pipeline/monitor/alerts/quietpass.py; in numpy
where nothing is hot: span.py) leave what the block-by-block rounds leave."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.monitor.alerts import span
from pipeline.monitor.alerts.cusum import ew_block
from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.monitor.alerts.sequential import SequentialTests
from pipeline.settings import AlertSettings
from tests.test_alerts_reference import CAL, W, stream_inputs


def _fields(eng: AlertEngine, ids) -> dict[str, np.ndarray]:
    tab = eng._tab
    slots = np.array([tab.get(s) for s in ids])
    return {f: np.asarray(getattr(tab, f))[slots].copy() for f in tab.dtype.names if f.startswith("seq_")}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("sequential, tail, cut", [(None, "pot", True), (None, "gumbel", True),
                                                   (("level", "scale", "noise", "freq", "spike", "runs"), "pot", True),
                                                   (None, "pot", False)])
def test_one_pass_over_blocks_leaves_what_the_rounds_leave(sequential, tail, cut, compiled, monkeypatch):
    # the same calls through an engine that takes a call in one pass (compiled: any call, its alerts
    # included; numpy: where nothing in it is hot) and through one that always goes block by block: the
    # same scores and events, and every estimate, accumulator, alert and threshold the same to the last bit
    # (the CUSUMs up to their rounding). cut=False: the engines do not cut calls with the score calibrated
    # at block ends (AlertEngine._rounds), so the compiled pass meets windows it must hand back
    rng = np.random.default_rng(3)
    kw = {} if sequential is None else {"sequential": sequential}
    cfg = AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=5, slow_windows=16,
                        cooldown_windows=3, sequential_warmup=32, sequential_memory=64, sequential_block=16,
                        score_tail=tail, **kw)
    n, ids = 1500, ("s0", "s1", "s2")
    streams = {s: stream_inputs(rng, n, offset=float(j)) for j, s in enumerate(ids)}
    # numpy: calls taken in one pass or not; compiled: streams handed back, and events it raised or resolved
    taken = {"one pass": 0, "rounds": 0, "handed back": 0, "events": 0}
    real_span, real_compiled = SequentialTests._span, SequentialTests._compiled

    def counted(self, *a):
        out = real_span(self, *a)
        taken["one pass" if out is not None else "rounds"] += 1
        return out

    def counted_streams(self, tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active, ts,
                        model_version, events, ev_win, *a):
        k = len(events)
        out, left = real_compiled(self, tab, ids, slots, first, n_u, starts, window, z, spike, finite, engine_active,
                                  ts, model_version, events, ev_win, *a)
        taken["handed back"] += left.size
        taken["events"] += len(events) - k
        return out, left

    monkeypatch.setattr(SequentialTests, "_span", counted)
    monkeypatch.setattr(SequentialTests, "_compiled", counted_streams)
    if not cut:
        monkeypatch.setattr(AlertEngine, "_rounds", lambda self, streams, lengths: [None])
    one, rounds = AlertEngine(cfg, CAL, "v1"), AlertEngine(cfg, CAL, "v1")
    rounds._seq.one_pass = False
    if not compiled:
        one._seq.compiled = None
    pos = 0
    while pos < n:
        b = min(n, pos + int(rng.integers(1, 200)))
        parts = [(s, pos, b) for s in ids if rng.random() < 0.8] or [("s0", pos, b)]
        cat = [np.concatenate([streams[s][i][a:c] for s, a, c in parts]) for i in range(3)]
        feats = {t: np.concatenate([streams[s][3][t][a:c] for s, a, c in parts]) for t in streams["s0"][3]}
        got = [e.update_batch([p[0] for p in parts], [c - a for _, a, c in parts], cat[0], W, cat[1], cat[2], 1.0,
                              features=feats) for e in (one, rounds)]
        assert [e.to_dict() for e in got[0].events] == [e.to_dict() for e in got[1].events]
        assert got[0].event_windows == got[1].event_windows
        np.testing.assert_array_equal(got[0].scores.score, got[1].scores.score)
        pos = b  # a stream a call skips has a gap in its windows
    a, b = _fields(one, ids), _fields(rounds, ids)
    for f in a:
        if f == "seq_S":
            np.testing.assert_allclose(a[f], b[f], rtol=1e-12, atol=1e-9)
        else:
            np.testing.assert_array_equal(a[f], b[f], err_msg=f)
    if compiled:  # its alerts were exercised; handed back only where the engine does not cut calls at block ends
        assert taken["events"] >= 2 and (taken["handed back"] == 0) == cut, taken
    else:  # both ways were exercised
        assert taken["one pass"] >= 2 and taken["rounds"] >= 1, taken
    assert a["seq_n"].max() > 0 and a["seq_rn"].max() + a["seq_sn"].max() > 0  # the estimates moved


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_block_steps_equal_ew_block_block_by_block(data):
    # span.steps over R blocks at once equals ew_block called once per block, to the last bit: the
    # estimates at each block start and the final estimates and accumulators (values on an exact grid)
    U = data.draw(st.integers(1, 4))
    R = data.draw(st.integers(1, 5))
    per = data.draw(st.integers(1, 12))  # windows per stream and block
    memory = data.draw(st.sampled_from([4, 16, 64]))
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    tab = SimpleNamespace(n=rng.integers(0, 40, U).astype(np.int64), m1=rng.integers(-64, 64, U) / 8.0,
                          m2=rng.integers(0, 64, U) / 8.0, qn=rng.integers(0, 5, U).astype(np.int64),
                          q1=rng.integers(-64, 64, U) / 16.0, q2=rng.integers(0, 64, U) / 16.0)
    slots = np.arange(U)
    closes = rng.random((R, U)) < 0.7
    q = rng.random((R, U * per)) < 0.8
    v1 = rng.integers(-256, 256, (R, U * per)) / 32.0
    seg = np.repeat(np.arange(U), per)
    g = span.Group(("n", "m1", "m2"), ("qn", "q1", "q2"), None, tab.n[:, None].copy(),
                   [tab.m1[:, None].copy(), tab.m2[:, None].copy()], tab.qn[:, None].copy(),
                   [tab.q1[:, None].copy(), tab.q2[:, None].copy()],
                   np.stack([np.bincount(seg, weights=q[r], minlength=U).astype(np.int64) for r in range(R)])[..., None],
                   [np.stack([np.bincount(seg, weights=np.where(q[r], v[r], 0.0), minlength=U) for r in range(R)])[..., None]
                    for v in (v1, v1 * v1)], memory)
    (at_n, at_m, n, m, an, a), = span.steps([g], closes)
    for r in range(R):
        np.testing.assert_array_equal(at_n[r, :, 0], tab.n)
        np.testing.assert_array_equal(at_m[0][r, :, 0], tab.m1)
        np.testing.assert_array_equal(at_m[1][r, :, 0], tab.m2)
        ew_block(tab, slots, closes[r], seg, q[r], (v1[r], v1[r] * v1[r]), ("n", "m1", "m2"), ("qn", "q1", "q2"),
                 memory=memory)
    for got, want in ((n, tab.n), (m[0], tab.m1), (m[1], tab.m2), (an, tab.qn), (a[0], tab.q1), (a[1], tab.q2)):
        np.testing.assert_array_equal(got[:, 0], want)


def test_profile_cost_tool_gives_every_profile_the_same_calls_each_pass():
    # pipeline.tools.alert_eval.profiles: engines of every profile fed the same calls in alternation;
    # each pass starts fresh engines, so their decisions repeat exactly; windows 300x off raise
    from pipeline.tools.alert_eval.profiles import PROFILES, compare

    rng = np.random.default_rng(2)
    streams = []
    for s in range(4):
        win = rng.standard_normal((400, 1, W)).astype(np.float32)
        err = np.exp(rng.normal(np.log(0.01), 0.3, 400))
        err[300:303] *= 300.0
        streams.append((128 * np.arange(400), err, np.exp(rng.normal(0.0, 0.05, 400)), win, 0.9 * win))
    res = compare(streams, W, n=128, per_call=2, passes=2)
    assert set(res[0]) == set(PROFILES)
    assert {p: ev for p, (_, ev) in res[0].items()} == {p: ev for p, (_, ev) in res[1].items()}
    assert all(us > 0 for r in res for us, _ in r.values())
    assert res[0]["window score alone"][1] >= 4  # each stream's 300x windows raise


@pytest.mark.parametrize("cooldown, fault", [(0, "spikes"), (3, "spikes"), (3, "level")])
def test_compiled_alerts_are_the_rounds(cooldown, fault):
    # spikes 1-12 windows apart, past the spike test's warm-up: alerts that raise, extend, resolve and
    # meet the cooldown's end at every distance; or small level shifts of 100 windows, whose CUSUM's capped
    # sum resolves long before the uncapped one falls back (windows the estimates still may not learn
    # from). The compiled pass raises and resolves them as the block-by-block rounds do (Lockstep), in
    # calls of any size
    rng = np.random.default_rng(5)
    cfg = AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=5, slow_windows=16,
                        cooldown_windows=cooldown, resolve_windows=2, sequential_warmup=32, sequential_memory=64,
                        sequential_block=16)
    n = 1200
    starts, errors, scales, feats = stream_inputs(rng, n)
    feats = {t: v.copy() for t, v in feats.items()}
    if fault == "spikes":
        at = 200 + np.cumsum(rng.integers(1, 13, size=150))
        feats["spike"][at[at < n]] = 20.0
    else:
        for a in (300, 600, 900):
            feats["level"][a : a + 100] += 1.5 * feats["level"][:300].std()
    one, rounds = AlertEngine(cfg, CAL, "v1"), AlertEngine(cfg, CAL, "v1")
    rounds._seq.one_pass = False
    pos, raised = 0, 0
    while pos < n:
        b = min(n, pos + int(rng.integers(1, 100)))
        f = {t: v[pos:b] for t, v in feats.items()}
        got = [e.update_batch(["s"], [b - pos], starts[pos:b], W, errors[pos:b], scales[pos:b], 1.0, features=f)
               for e in (one, rounds)]
        ev = [[e.to_dict() for e in g.events] for g in got]
        # a CUSUM's peak as its sums round (the rounds' closed form rounds them otherwise, within 1e-9)
        assert [e["peak_score"] for e in ev[0]] == pytest.approx([e["peak_score"] for e in ev[1]], rel=1e-12)
        assert [{**e, "peak_score": 0} for e in ev[0]] == [{**e, "peak_score": 0} for e in ev[1]]
        raised += sum(e.kind == "raised" and e.detector != "score" for e in got[0].events)
        pos = b
    a, b = _fields(one, ["s"]), _fields(rounds, ["s"])
    for f in a:
        if f != "seq_S":
            np.testing.assert_array_equal(a[f], b[f], err_msg=f)
    assert raised >= (10 if fault == "spikes" else 3)
