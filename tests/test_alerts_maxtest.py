"""The raw-sample tests' shared calibration (pipeline.monitor.alerts.maxtest): compiled, it is the numpy
form's to the last bit. Pure logic: no Kafka, no torch; every outcome is fixed by the seeds."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.monitor.alerts.maxtest import FIELDS, POS, ZN, MaxPlan, MaxTest, blocks


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lengths=st.lists(st.integers(0, 90), min_size=1, max_size=6),
       block=st.sampled_from([1, 8, 64]), calib_after=st.sampled_from([0, 16]), memory=st.sampled_from([16, 1024]))
def test_the_compiled_calibration_is_numpys_to_the_last_bit(seed, lengths, block, calib_after, memory):
    # streams young and old, mid-block or not, with unwarmed windows, heavy tails and hot windows; call
    # after call, the thresholds and every state column equal
    rng = np.random.default_rng(seed)
    plan = MaxPlan(floor=5.0, calib_after=calib_after, calib_memory=memory, gumbel_c=3.1, resolve_windows=4,
                   cooldown_windows=8, block=block)
    tests = [MaxTest(plan, "x"), MaxTest(plan, "x")]
    tests[1].compiled = False
    U, lengths = len(lengths), [lengths[0] + 1] + lengths[1:]  # a call has windows (the callers return before)
    S0 = np.zeros((U, FIELDS))
    S0[:, POS] = rng.integers(0, 3 * block + 5, U)
    states = [S0.copy(), S0.copy()]
    for _ in range(4):
        n_u = np.array(lengths)[rng.permutation(U)]
        first = np.concatenate(([0], np.cumsum(n_u)[:-1]))
        seg = np.repeat(np.arange(U), n_u)
        z = np.abs(rng.standard_t(3, n_u.sum())) * rng.choice([1.0, 3.0])
        warm = rng.random(z.size) < 0.9
        z = np.where(warm, z, 0.0)
        thr = []
        for t, S in zip(tests, states):
            pos, blk = blocks(S, seg, first, n_u, block)
            events: list = []
            t.decide(S, [f"s{u}" for u in range(U)], first, n_u, seg, pos, blk, np.arange(z.size) * 32, 64,
                     np.full(z.size, 32), z, warm, 1.0, "v1", events, [])
            thr.append([(e.kind, e.stream, e.start, e.end) for e in events])
        np.testing.assert_array_equal(states[0], states[1])
        assert thr[0] == thr[1]
    if min(lengths) * 4 >= 2 * block:  # every stream closed a block: its calibration moved
        assert (states[0][:, ZN] > 0).all()
