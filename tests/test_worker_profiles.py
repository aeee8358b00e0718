"""pipeline/tools/alert_eval/worker_profiles.py on the real broker: every run reads the whole backlog,
the profiles alternate, and the stage totals it reports are the worker's own."""

from __future__ import annotations

import pytest

from pipeline.settings import Settings
from pipeline.tools.alert_eval import worker_profiles as wp

pytestmark = pytest.mark.kafka


def test_each_profile_reads_the_whole_backlog_in_alternating_order(kafka_bootstrap, model_registry):
    base = Settings(_env_file=None, kafka={"bootstrap_servers": kafka_bootstrap},
                    model={"registry": model_registry, "device": "cpu"}, metrics={"enabled": False})
    said: list[str] = []
    profiles = ["window score alone", "defaults"]
    runs = wp.compare(base, profiles, seconds=3.0, pairs=2, say=said.append)
    assert [r.profile for r in runs] == profiles + profiles[::-1]
    for r in runs:
        assert r.samples_per_s > 0
        # the model ran on every window and the alert engine scored them (a stage left out would read 0)
        assert r.us_per_window["forward"] > 0 and r.us_per_window["score"] > 0
    lines = wp.summary(runs, profiles)
    assert len(said) == 4 and len(lines) == 2 and "1.000 of the first profile" in lines[0]


def test_several_batch_sizes_run_with_every_profile(kafka_bootstrap, model_registry):
    base = Settings(_env_file=None, kafka={"bootstrap_servers": kafka_bootstrap},
                    model={"registry": model_registry, "device": "cpu"}, metrics={"enabled": False})
    runs = wp.compare(base, ["defaults"], seconds=3.0, pairs=1, say=lambda _: None, max_batches=[16, 512])
    assert [r.profile for r in runs] == ["defaults, max_batch 16", "defaults, max_batch 512"]
    small, large = runs
    # the same backlog: 8 streams x 3,000 samples, ~22 windows each; 16 per batch needs at least 11
    assert small.batches >= 11 and large.batches < small.batches
