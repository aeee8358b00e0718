"""The vectorised path of the alert engine (pipeline.monitor.alerts.runs): many streams in one call score
exactly as each stream alone, whatever the batching; the row-wise robust statistics equal numpy's."""

import numpy as np
import pytest

from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.monitor.alerts.terms import robust_stats
from pipeline.settings import AlertSettings
from tests.test_alerts_reference import CAL, W, stream_inputs


@pytest.mark.parametrize("small", [False, True])
def test_streams_batched_together_score_exactly_as_each_stream_alone(small):
    rng = np.random.default_rng(3 + small)
    cfg = AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=5, slow_windows=16,
                        cooldown_windows=3) if small else AlertSettings()
    n, k = 1500, 12
    streams = {f"s{j}": stream_inputs(rng, n, offset=float(j)) for j in range(k)}
    ends = {sid: 0 for sid in streams}
    together, alone = AlertEngine(cfg, CAL, "v1"), AlertEngine(cfg, CAL, "v1")
    got = {sid: [] for sid in streams}
    want = {sid: [] for sid in streams}
    while any(e < n for e in ends.values()):
        segs = []
        for sid in streams:  # each stream's next 0-40 windows: streams at different ages and phases
            m = min(n - ends[sid], int(rng.integers(0, 41)))
            if m:
                segs.append((sid, ends[sid], ends[sid] + m))
                ends[sid] += m
        if not segs:
            continue
        cat = [np.concatenate([streams[s][j][a:b] for s, a, b in segs]) for j in range(3)]
        feats = {t: np.concatenate([streams[s][3][t][a:b] for s, a, b in segs]) for t in streams["s0"][3]}
        r = together.update_batch([s for s, _, _ in segs], [b - a for _, a, b in segs], cat[0], W, cat[1], cat[2],
                                  now=1.0, features=feats)
        i = 0
        for s, a, b in segs:
            got[s].append((r.scores.score[i : i + b - a], r.scores.active[i : i + b - a]))
            i += b - a
            st, e, sc, f = streams[s]
            ev, one = alone.update_scored(s, st[a:b], W, e[a:b], sc[a:b], 1.0, features={t: v[a:b] for t, v in f.items()})
            want[s].append((one.score, one.active))
            assert [x.to_dict() for x in r.events if x.stream == s] == [x.to_dict() for x in ev]
    raised = 0
    for s in streams:
        for (gs, ga), (ws, wa) in zip(got[s], want[s]):
            np.testing.assert_array_equal(gs, ws)
            np.testing.assert_array_equal(ga, wa)
        raised += int(np.concatenate([a for _, a in got[s]]).any())
    assert raised >= k // 2  # alerts happened


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_robust_stats_match_numpy_quantile_and_median(dtype):
    rng = np.random.default_rng(0)
    for size in (8, 37, 64, 512):
        for p in (0.01, 0.2, 0.5 - 1e-9):
            v = np.round(rng.standard_normal((3, size)), int(rng.integers(0, 4))).astype(dtype)
            floor, margin, thr = 0.01, np.array([3.0, 4.0, 0.0]), 6.0
            med, hi, lo = robust_stats(v.copy(), p, floor, margin, thr)
            for j in range(3):
                x = v[j].astype(np.float64)
                q_lo, m, q_hi = np.quantile(x, (p, 0.5, 1.0 - p))
                assert med[j] == m
                sigma = max(1.4826 * float(np.median(np.abs(x - m))), floor)
                want_hi = max(sigma, (q_hi - m + margin[j] * sigma) / thr)
                want_lo = max(sigma, (m - q_lo + margin[j] * sigma) / thr)
                if dtype is np.float64:  # the same arithmetic, bit for bit
                    assert (hi[j], lo[j]) == (want_hi, want_lo)
                else:  # deviations from the median in the values' float32
                    assert hi[j] == pytest.approx(want_hi, rel=1e-6) and lo[j] == pytest.approx(want_lo, rel=1e-6)


@pytest.mark.parametrize("small", [False, True])
def test_refreshes_taken_at_once_equal_the_rounds_also_where_winsorising_bites(small, monkeypatch):
    """runs._Run takes a call's refreshes first as if no admitted value were winsorised, and redoes them in
    rounds where a committed window depends on one that was: the same events, scores and terms as the
    rounds alone, bit for bit, on streams whose non-voting ``freq`` (clipped, never hot) and ``error`` jump
    now and then, in calls of many windows per stream (many rounds)."""
    from pipeline.monitor.alerts import runs

    monkeypatch.setattr(AlertEngine, "compiled_runs", False)  # runs.py's own way (runpass.py is held to it)
    rng = np.random.default_rng(11 + small)
    cfg = AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=5, slow_windows=16,
                        cooldown_windows=3) if small else AlertSettings()
    n, k = 2400, 6
    streams = {}
    for j in range(k):
        st, e, sc, f = stream_inputs(rng, n, offset=float(j))
        f = dict(f)
        jump = rng.random(n) < 0.02
        f["freq"] = np.where(jump, f["freq"] + rng.choice([-8.0, 8.0], n), f["freq"])  # far out, no vote
        streams[f"s{j}"] = (st, e, sc, f)
    calls, pos = [], 0
    while pos < n:
        m = int(rng.integers(20, 60 if small else 120))  # windows per stream and call: up to ~25 rounds
        calls.append((pos, min(n, pos + m)))
        pos += m
    counts = {"taken": 0, "redone": 0}
    unclipped, redo = runs._Run._unclipped, runs._Run.redo

    def counted_unclipped(self, ring):
        counts["taken"] += 1
        return unclipped(self, ring)

    def counted_redo(self):
        counts["redone"] += 1
        return redo(self)

    monkeypatch.setattr(runs._Run, "_unclipped", counted_unclipped)
    monkeypatch.setattr(runs._Run, "redo", counted_redo)
    out = {}
    for first in (1, 10**9):  # every call as if unclipped first, and never (the rounds)
        monkeypatch.setattr(runs._Run, "unclipped_from", first)
        eng, evs, sc, zs = AlertEngine(cfg, CAL, "v1"), [], [], []
        for a, b in calls:
            ids = list(streams)
            cat = [np.concatenate([streams[s][i][a:b] for s in ids]) for i in range(3)]
            feats = {t: np.concatenate([streams[s][3][t][a:b] for s in ids]) for t in streams["s0"][3]}
            r = eng.update_batch(ids, [b - a] * k, cat[0], W, cat[1], cat[2], now=1.0, features=feats)
            evs += [e.to_dict() for e in r.events]
            sc.append(r.scores.score)
            zs.append(np.stack([r.scores.terms[t] for t in sorted(r.scores.terms)]))
        out[first] = (evs, np.concatenate(sc), np.concatenate(zs, axis=1))
        if first == 1:
            assert counts["taken"] > 20 and counts["redone"] > 0  # both ways were exercised
    (e1, s1, z1), (e2, s2, z2) = out.values()
    assert e1 == e2 and len(e1) > 0
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(z1, z2)


@pytest.mark.parametrize("sequential, tail", [((), "pot"), (("level", "scale", "noise", "spike"), "pot"),
                                              (("level", "scale", "noise", "freq", "spike", "runs"), "pot"),
                                              (("level", "scale", "noise", "spike", "score"), "pot"),
                                              (("level", "scale", "noise", "spike", "score"), "gumbel")])
def test_decisions_do_not_depend_on_how_a_stream_is_cut_into_calls(sequential, tail):
    # the worker's micro-batches grow when it falls behind (a busy machine, a backlog after a restart):
    # the same windows, cut into calls of other sizes, must give the same scores and the same events
    rng = np.random.default_rng(11)
    cfg = AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=5, slow_windows=16,
                        cooldown_windows=3, sequential_warmup=32, sequential_memory=64, sequential=sequential,
                        score_tail=tail)
    n, k = 1200, 3
    streams = {f"s{j}": stream_inputs(rng, n, offset=float(j)) for j in range(k)}
    runs = []
    for cuts in ("fixed", "random", "batched"):
        eng, pos = AlertEngine(cfg, CAL, "v1"), 0
        events, scores = {s: [] for s in streams}, {s: [] for s in streams}
        while pos < n:
            m = 16 if cuts == "fixed" else int(rng.integers(1, 120))
            b = min(n, pos + m)
            if cuts == "batched":  # one call across the streams, the first stream in two segments
                h = (pos + b) // 2
                parts = [("s0", pos, h), *((sid, pos, b) for sid in streams if sid != "s0"), ("s0", h, b)]
                cat = [np.concatenate([streams[sid][i][a:c] for sid, a, c in parts]) for i in range(3)]
                feats = {t: np.concatenate([streams[sid][3][t][a:c] for sid, a, c in parts]) for t in streams["s0"][3]}
                r = eng.update_batch([p[0] for p in parts], [c - a for _, a, c in parts], cat[0], W, cat[1], cat[2],
                                     1.0, features=feats)
                ends = np.cumsum([c - a for _, a, c in parts])
                owner = np.repeat([sid for sid, _, _ in parts], [c - a for _, a, c in parts])
                assert len(r.event_windows) == len(r.events)
                for e, w in zip(r.events, r.event_windows):  # each event names a window of its own stream
                    assert 0 <= w < owner.size and owner[w] == e.stream
                    events[e.stream].append(e.to_dict())
                for (sid, a, c), end in zip(parts, ends):
                    scores[sid].append(r.scores.score[end - (c - a):end])
            else:
                for sid, (st, e, sc, f) in streams.items():
                    ev, one = eng.update_scored(sid, st[pos:b], W, e[pos:b], sc[pos:b], 1.0,
                                                features={t: v[pos:b] for t, v in f.items()})
                    events[sid] += [x.to_dict() for x in ev]
                    scores[sid].append(one.score)
            pos = b
        runs.append((events, {s: np.concatenate(v) for s, v in scores.items()}))
    (ev_a, sc_a), (ev_b, sc_b), (ev_c, sc_c) = runs
    assert sum(map(len, ev_a.values())) >= 4  # alerts happened
    if sequential:  # ... of the sequential tests too
        assert {e["detector"] for v in ev_a.values() for e in v} - {"score"}
    for s in streams:
        assert ev_a[s] == ev_b[s] == ev_c[s]
        np.testing.assert_array_equal(sc_a[s], sc_b[s])
        np.testing.assert_array_equal(sc_a[s], sc_c[s])


def test_segments_without_windows_change_nothing():
    # a segment of length 0 (a stream with nothing in this micro-batch) is skipped: the same scores,
    # events and later decisions as the call without it, wherever it sits and whether or not its
    # stream was seen before; a negative length is refused
    rng = np.random.default_rng(5)
    cfg = AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=5, slow_windows=16,
                        sequential_warmup=32, sequential_memory=64)
    n = 600
    streams = {f"s{j}": stream_inputs(rng, n, offset=float(j)) for j in range(2)}
    results = []
    for empty in (False, True):
        eng, out = AlertEngine(cfg, CAL, "v1"), []
        for pos in range(0, n, 40):
            parts = [("s0", pos, pos + 40), ("s1", pos, pos + 40)]
            if empty:
                parts = [("s1", pos, pos), ("s0", pos, pos + 40), ("never", 0, 0), ("s1", pos, pos + 40), ("s0", 0, 0)]
            src = [streams.get(sid, streams["s0"]) for sid, _, _ in parts]
            cat = [np.concatenate([x[i][a:c] for x, (_, a, c) in zip(src, parts)]) for i in range(3)]
            feats = {t: np.concatenate([x[3][t][a:c] for x, (_, a, c) in zip(src, parts)]) for t in src[0][3]}
            r = eng.update_batch([p[0] for p in parts], [c - a for _, a, c in parts], cat[0], W, cat[1], cat[2],
                                 1.0, features=feats)
            out.append((r.scores.score, [e.to_dict() for e in r.events], r.event_windows))
        results.append(out)
        assert eng.streams() == 2  # the empty segments' streams are not tracked for them
    assert sum(len(ev) for _, ev, _ in results[0]) >= 2  # alerts happened
    for (sa, ea, wa), (sb, eb, wb) in zip(*results):
        np.testing.assert_array_equal(sa, sb)
        assert ea == eb and wa == wb
    with pytest.raises(ValueError, match="negative"):
        AlertEngine(cfg, CAL, "v1").update_batch(["a", "b"], [2, -1], np.arange(1), W, np.ones(1), np.ones(1), 1.0)


def test_a_stream_hot_in_its_first_block_decides_alike_however_cut():
    # with the window score's threshold calibrated per stream ("score"), a young stream raises at twice
    # the setting from its very first window, not only from its second call on: hot windows in the
    # first block then count alike whether that block came in one call or several
    rng = np.random.default_rng(21)
    cfg = AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=5, slow_windows=16,
                        cooldown_windows=3, sequential_warmup=32, sequential_memory=64, sequential=("score",))
    n = 900
    starts, errors, scales, feats = stream_inputs(rng, n)
    errors = errors.copy()
    errors[10:13] *= 300.0  # hot in the first block (64 windows)
    errors[400:403] *= 300.0
    runs = []
    for cuts in ([n], [1, n - 1], [3, 50, 200, n - 253]):
        eng, pos, events, scores = AlertEngine(cfg, CAL, "v1"), 0, [], []
        for m in cuts:
            sl = slice(pos, pos + m)
            ev, one = eng.update_scored("s", starts[sl], W, errors[sl], scales[sl], 1.0,
                                        features={t: v[sl] for t, v in feats.items()})
            events += [e.to_dict() for e in ev]
            scores.append(one.score)
            pos += m
        runs.append((events, np.concatenate(scores)))
    assert any(e["detector"] == "score" and e["kind"] == "raised" for e in runs[0][0])
    for events, scores in runs[1:]:
        assert events == runs[0][0]
        np.testing.assert_array_equal(scores, runs[0][1])
