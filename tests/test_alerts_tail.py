"""The window score's tail models (pipeline.monitor.alerts.tail): the POT threshold lands where the
score's clusters of exceedances start at the rate it was given, and declustering counts a run of
exceedances once."""

import math

import numpy as np
import pytest

from pipeline.monitor.alerts.slots import SlotTable
from pipeline.monitor.alerts.scoring import Scoring
from pipeline.monitor.alerts.tail import ScoreTail, pot_threshold, tail_levels
from pipeline.settings import AlertSettings

R, P = 6.0, 1e-4  # raise threshold; clusters per window the threshold is set for


def threshold(scores, kind="pot", call=64, memory=1 << 20):
    """Feed one stream's quiet scores through a ScoreTail (calls of ``call``, blocks of 64); its threshold."""
    tab = SlotTable(Scoring.build(AlertSettings(), {}, "v"), 4, 1e9)
    slots = tab.claim(["s"], 0.0)
    slot = int(slots[0])
    tail = ScoreTail(kind, P, 0.02, R, warmup=64, memory=memory, block=64)
    for a in range(0, scores.size, call):
        sc = scores[a : a + call]
        closes = np.array([(a + sc.size) % 64 == 0])
        tail.update(tab, slots, np.zeros(sc.size, dtype=np.int64), np.array([0]), np.array([sc.size]), sc,
                    np.ones(sc.size, bool), np.zeros(sc.size, bool), closes)
    return float(tab.seq_thr[slot])


def exponential_tail(rng, n, base=2.0, beta=0.5):
    """Scores whose upper tail above ``base`` is exponential of scale ``beta`` (P(s > base) = 0.2)."""
    s = rng.uniform(0.0, base, n)
    top = rng.random(n) < 0.2
    s[top] = base + rng.exponential(beta, top.sum())
    return s


def test_the_pot_threshold_is_the_quantile_of_an_exponential_tail():
    rng = np.random.default_rng(1)
    s = exponential_tail(rng, 64 * 1200)
    # independent windows: a cluster starts at a window above its level after one below it; the tail's
    # level (the grid's under the 98 % quantile, 3.0) is crossed so at 0.2 exp(-2) (1 - 0.2 exp(-2))
    got = threshold(s)
    above = 0.2 * math.exp(-(3.0 - 2.0) / 0.5)
    want = 3.0 + 0.5 * math.log(above * (1 - above) / P)
    assert abs(got - want) < 0.25, (got, want)


def test_runs_of_exceedances_count_once():
    rng = np.random.default_rng(2)
    s = exponential_tail(rng, 64 * 400)
    runs = np.repeat(s, 3)  # every value three windows in a row: a third as many clusters
    single, tripled = threshold(s[: runs.size // 3]), threshold(runs)
    assert tripled == pytest.approx(single - 0.5 * math.log(3.0), abs=0.3)
    # the Gumbel fit sees the same marginal law either way
    assert threshold(runs, "gumbel") == pytest.approx(threshold(s[: runs.size // 3], "gumbel"), abs=0.3)


def test_a_heavier_tail_earns_a_higher_threshold_and_a_young_stream_twice_the_raise_threshold():
    rng = np.random.default_rng(3)
    light, heavy = exponential_tail(rng, 64 * 300, beta=0.3), exponential_tail(rng, 64 * 300, beta=1.0)
    assert threshold(heavy) > threshold(light) + 3.0
    assert threshold(light[:60]) == 2 * R  # under sequential_warmup quiet scores


def test_the_threshold_does_not_depend_on_how_the_scores_are_cut_into_calls():
    s = exponential_tail(np.random.default_rng(4), 64 * 50)
    assert threshold(s, call=64, memory=256) == threshold(s, call=8, memory=256)  # to the last bit
    assert threshold(s, call=64, memory=256) == threshold(s, call=32, memory=256)


def test_pot_threshold_reads_the_highest_level_the_tail_fraction_still_exceeds():
    lev = tail_levels(R, 64)
    assert lev[0] == 0.5 and lev[-1] == 12.0
    above = np.where(lev < 3.0, 0.5, 0.01)[None, :]  # 0.5 above every level under 3, 0.01 from 3 up
    cross = above / 2
    excess = above * 0.4  # mean excess 0.4 everywhere
    t = pot_threshold(lev, above, cross, excess, 0.02, P)[0]
    assert t == pytest.approx(2.5 + 0.4 * math.log(0.25 / P))
    # nothing ever above the lowest level: the threshold is that level (the raise threshold then rules)
    z = np.zeros((1, lev.size))
    assert pot_threshold(lev, z, z, z, 0.02, P)[0] == lev[0]
