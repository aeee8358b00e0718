"""The scalar step compiled (pipeline/monitor/alerts/steppass.py) against its Python form (scalar.py)."""

import numpy as np
import pytest

from pipeline.monitor.alerts import engine
from pipeline.monitor.alerts.engine import AlertEngine
from pipeline.settings import AlertSettings
from tests.test_alerts_reference import CAL, W, stream_inputs
from tests.test_alerts_runpass import assert_same, feed_calls


def _streams(rng, n, k, rewinds):
    out = {}
    for j in range(k):
        st, e, sc, f = stream_inputs(rng, n, offset=float(j))
        e = e.copy()
        e[rng.random(n) < 0.003] = np.nan  # non-finite inputs: scored 0, not admitted
        st = st.copy()
        if j == 1:  # a rewound producer: the stream starts over, at each of these windows
            for i in rewinds:
                st[i:] -= st[i]
        out[f"s{j}"] = (st, e, sc, f)
    return out


def _feed(cfg, streams, calls, compiled, fast, monkeypatch):
    monkeypatch.setattr(AlertEngine, "compiled_scalar", compiled)
    stepped = []
    fn = engine.step_spans_compiled if compiled else engine.step_spans

    def counted(*a, **k):
        r = fn(*a, **k)
        stepped.append(sum(r))
        return r

    monkeypatch.setattr(engine, "step_spans_compiled" if compiled else "step_spans", counted)
    return feed_calls(AlertEngine(cfg, CAL, "v1", window=W, fast_path=fast), streams, calls), sum(stepped)


@pytest.mark.parametrize("fast", [True, False], ids=["with-runs", "scalar-only"])
@pytest.mark.parametrize("small", [False, True], ids=["defaults", "small"])
def test_the_compiled_step_leaves_what_the_python_step_leaves(small, fast, monkeypatch):
    """Events, scores, every term's z, active flags and every field of every stream's slot after every call,
    bit for bit,
    on streams with anomalies of every kind, non-finite inputs and a rewind, cut into calls of 1 to ~120
    windows per stream: warm-up, alerts raised and resolved, cooldowns and the trickle admissions during
    alerts go through the step (all windows without the runs)."""
    rng = np.random.default_rng(9 + small)
    cfg = AlertSettings(min_windows=8, warmup_windows=16, stats_windows=64, refresh_every=5, slow_windows=16,
                        cooldown_windows=3, alert_admit_every=4) if small else AlertSettings()
    n = 1500
    calls, pos = [], 0
    while pos < n:
        m = int(rng.integers(1, 120))
        calls.append((pos, min(n, pos + m)))
        pos += m
    # rewinds two windows before the end of some calls: the debounce history they clear is in the slot
    rewinds = [b - 2 for a, b in calls[len(calls) // 4 :: 5] if b - a >= 3]
    streams = _streams(rng, n, 4, rewinds)
    got, stepped = _feed(cfg, streams, calls, True, fast, monkeypatch)
    want, stepped_py = _feed(cfg, streams, calls, False, fast, monkeypatch)
    assert stepped == stepped_py and stepped > (400 if fast else 5000)  # real work, the same windows either way
    assert {e["kind"] for e in want[0]} == {"raised", "resolved"}
    assert_same(got, want)
