"""Sign-run tests (pipeline.monitor.alerts.signruns): a term on one side of the stream's median for longer
than its own history makes credible. Pure logic: no Kafka, no torch; every outcome is fixed by the seeds."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.monitor.alerts.signruns import (MAX_RUNS, RUN_L0, RUN_MIN, RUN_PRIOR_EXCESS, RUN_PRIOR_RUNS, SignRuns,
                                              run_limit)
from pipeline.settings import AlertSettings

W, H = 64, 32
CAL = {"q50": 0.01, "q90": 0.02, "q99": 0.05, "q999": 0.1}


def test_the_run_limit_is_where_the_geometric_tail_meets_the_budget():
    # 0.1 runs of >= RUN_L0 windows per window over n windows, mean excess 1.5 windows, shrunk towards
    # the prior (10 runs of mean excess 3): ratio r = E / (1 + E)
    c, p, n = 0.1, 1e-6, 5000.0
    E = (1.5 * c * n + RUN_PRIOR_RUNS * RUN_PRIOR_EXCESS) / (c * n + RUN_PRIOR_RUNS)
    want = RUN_L0 + math.log(c / p) / math.log((1 + E) / E)
    got = run_limit(np.array([c]), np.array([1.5 * c]), np.array([n]), p)[0]
    assert got == pytest.approx(want, rel=1e-12)
    # a stricter budget, longer runs in the history or a shorter history ask for longer runs
    assert run_limit(np.array([c]), np.array([1.5 * c]), np.array([n]), p / 10)[0] > want
    assert run_limit(np.array([c]), np.array([3.0 * c]), np.array([n]), p)[0] > want
    assert run_limit(np.array([c]), np.array([1.5 * c]), np.array([n / 20]), p)[0] > want
    # no run ever reached RUN_L0 in n windows: taken as one in n, at the prior's ratio 0.75
    lone = RUN_L0 + math.log(1 / (n * p)) / math.log(4 / 3)
    assert run_limit(np.array([0.0]), np.array([0.0]), np.array([n]), p)[0] == pytest.approx(lone, rel=1e-12)
    # every run ended at RUN_L0 in a long history: the floor
    assert run_limit(np.array([c]), np.array([0.0]), np.array([1e9]), p)[0] == RUN_MIN


def _tab(slots):
    z = lambda dt: np.zeros((slots, MAX_RUNS), dtype=dt)  # noqa: E731
    return SimpleNamespace(seq_rlen=z(np.int64), seq_rn=z(np.int64), seq_rc=z(float), seq_re=z(float),
                           seq_rqn=z(np.int64), seq_rq1=z(float), seq_rq2=z(float))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=120),
       st.lists(st.integers(1, 40), min_size=1, max_size=10))
def test_runs_are_counted_as_a_plain_loop_counts_them_however_the_calls_cut_the_stream(steps, cuts):
    # two tests on one stream; a window not counted (an alert) censors the run it breaks
    on = np.array([[a, b] for a, b, _ in steps]).T
    counted = np.array([c for _, _, c in steps])
    runs = SignRuns((0, 1), (1, 1), 1e-6, warmup=8, memory=10**9)
    tab, slots, pos = _tab(1), np.array([0]), 0
    sizes = (cuts * (len(steps) // sum(cuts) + 1))
    for m in sizes:
        if pos >= len(steps):
            break
        b = min(len(steps), pos + m)
        k = b - pos
        runs.learn(tab, slots, np.zeros(k, dtype=np.int64), np.array([0]), np.array([k]), on[:, pos:b],
                   counted[pos:b], np.array([False]))  # no block closes: the accumulators hold the sums
        pos = b
    for r in range(2):
        length, ended, excess = 0, 0, 0
        for o, c in zip(on[r], counted):
            if c and not o and length >= RUN_L0:
                ended, excess = ended + 1, excess + length - RUN_L0
            length = length + 1 if (o and c) else 0
        assert tab.seq_rqn[0, r] == counted.sum()
        assert (tab.seq_rq1[0, r], tab.seq_rq2[0, r], tab.seq_rlen[0, r]) == (ended, excess, length)


def _bursty(rng, n):
    """Log window scale of bursts over silence: silence at -1.2 (tight), bursts anywhere in -0.5..1.5;
    silence starts after a burst window with probability 0.35 and ends with 0.55 (about 40 % of the
    windows; a run of silence rarely lasts long)."""
    silent = np.zeros(n, dtype=bool)
    s = False
    for i in range(n):
        s = (rng.random() >= 0.55) if s else (rng.random() < 0.35)
        silent[i] = s
    return np.where(silent, -1.2 + 0.03 * rng.standard_normal(n), rng.uniform(-0.5, 1.5, n))


def _feed(eng, log_scale, rng, chunk=16):
    ev = []
    for a in range(0, log_scale.size, chunk):
        k = min(chunk, log_scale.size - a)
        err = 0.01 * np.exp(0.1 * rng.standard_normal(k))
        ev += eng.update_scored("s", H * np.arange(a, a + k), W, err, np.exp(log_scale[a : a + k]), now=0.0)[0]
    return ev


def _engine(sequential):
    return AlertEngine(AlertSettings(min_windows=8, warmup_windows=16, stats_windows=256, refresh_every=4,
                                     slow_terms=(), terms=("residual", "scale"), cooldown_windows=0,
                                     resolve_windows=3, sequential_warmup=256, sequential=sequential), CAL, "v1",
                       window=W)


def test_a_lost_burst_signal_raises_the_scale_run_test():
    # knocks over silence, then 40 windows (5 s at hop 128) of silence only: every window is ordinary,
    # the pattern is not
    rng = np.random.default_rng(31)
    x = _bursty(rng, 3000)
    a, b = 2500, 2540
    x[a:b] = -1.2 + 0.03 * rng.standard_normal(b - a)
    ev = _feed(_engine(("runs",)), x, np.random.default_rng(1))
    raised = [e for e in ev if e.kind == "raised"]
    assert [e.detector for e in raised] == ["run_scale-"]
    assert H * (a - 4) <= raised[0].start <= H * a  # the range starts where the run did
    assert raised[0].end <= H * b + W  # raised before the silence ended
    assert [e.kind for e in ev if e.start == raised[0].start] == ["raised", "resolved"]


def test_on_a_stream_of_the_same_law_the_run_test_keeps_to_its_false_alarm_budget():
    # 20 streams x 3,000 windows (2.1 stream-hours at 1 kHz, hop 128) of bursts over silence; the one
    # test's share of the budget is all of false_alarms_per_hour (0.2): 0.42 false alarms expected, and
    # more than 3 has probability 0.009. With the floor RUN_MIN instead of the fitted limit: dozens.
    rng = np.random.default_rng(32)
    raised = []
    for _ in range(20):
        raised += [e for e in _feed(_engine(("runs",)), _bursty(rng, 3000), rng, chunk=64)
                   if e.kind == "raised" and e.detector.startswith("run_")]
    assert len(raised) <= 3
