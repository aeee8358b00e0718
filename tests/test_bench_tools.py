"""The bench's measuring pieces that need no broker: the (b-procs) leg's timing from output record
timestamps, and the engine-only rate of pipeline/tools/engine_rate.py on the CPU."""

from __future__ import annotations

import math

import pytest

from pipeline.tools.bench_pool import MIN_SPAN_S, timed_span
from pipeline.tools.engine_rate import main as engine_rate_main
from pipeline.tools.engine_rate import measure


def test_span_counts_the_samples_after_the_first_millisecond():
    # 3 records stamped at t=1000 ms (the first batch: its time is not in the span), then 5 more.
    stamps = [(1000, 512)] * 3 + [(1100, 512), (1300, 512), (1300, 256), (1600, 512), (2000, 512)]
    samples, secs = timed_span(stamps)
    assert samples == 4 * 512 + 256
    assert secs == pytest.approx(1.0)


def test_arrival_order_does_not_matter():
    stamps = [(2000, 10), (1000, 7), (1500, 10)]
    assert timed_span(stamps) == timed_span(sorted(stamps))
    assert timed_span(stamps)[0] == 20


def test_a_span_too_short_to_time_is_nan_not_a_huge_rate():
    short = [(1000, 512), (1000 + int(MIN_SPAN_S * 1000) - 1, 512)]
    samples, secs = timed_span(short)
    assert samples == 512 and math.isnan(secs)
    assert math.isnan(timed_span([])[1])


def test_engine_rate_on_the_cpu(model_registry, tmp_path):
    rows = measure(model_registry, "v1", "cpu", batches=(64,), min_s=0.01)
    assert [(r["mode"], r["batch"]) for r in rows] == [("engine", 64), ("device", 64)]  # no bf16 row on the CPU
    for r in rows:
        assert r["samples_per_s"] > 0 and r["hop"] == 128 and r["arch"] == "mlp" and r["device"] == "cpu"
    out = tmp_path / "rates.json"
    report = engine_rate_main(["--registry", str(model_registry), "--versions", "v1", "--device", "cpu",
                               "--batches", "32", "--min-s", "0.01", "--json", str(out)])
    assert out.exists() and len(report["rows"]) == 2 and report["procs"] == []
