"""`dae bench` removes the topics it created, and only those (real broker)."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.kafka.clients import ensure_topics, make_admin
from pipeline.settings import KafkaSettings
from pipeline.tools import bench_topics

pytestmark = pytest.mark.kafka


def _topics(k: KafkaSettings) -> set[str]:
    admin = make_admin(k)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def _until_gone(k: KafkaSettings, names: set[str], timeout_s: float = 30.0) -> set[str]:
    """The names still listed once they are gone or the time is up."""
    deadline = time.monotonic() + timeout_s
    while (left := names & _topics(k)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_only_this_runs_topics_are_deleted(kafka_bootstrap):
    k = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    raw = bench_topics.bench_name("raw")
    mine = {raw, f"{raw}.clean-abc123", f"{bench_topics.bench_name('g-worker')}.state"}
    other_run = f"dae.bench.{'0' * 8}.raw-000000"  # another run's, same broker
    lookalike = f"{bench_topics.PREFIX[:-1]}x.raw"  # the prefix without its dot
    ensure_topics(k, [*mine, other_run, lookalike], partitions=1)
    assert sorted(bench_topics.delete_run_topics(k)) == sorted(mine)
    assert _until_gone(k, mine) == set()
    assert {other_run, lookalike} <= _topics(k)
    assert bench_topics.delete_run_topics(k, prefix=other_run) == [other_run]
    assert bench_topics.delete_run_topics(k, prefix=lookalike) == [lookalike]


def test_a_failed_bench_run_still_deletes_what_it_created(kafka_bootstrap, model_registry):
    before = bench_topics.named()
    res = CliRunner().invoke(app, ["bench", "--many", "10", "--warmup", "0", "--model", "v999",
                                   "--bootstrap", kafka_bootstrap, "--registry", str(model_registry)])
    assert res.exit_code != 0  # no such version
    assert bench_topics.named() > before  # it had created its topic before failing
    assert "deleted this run's" in res.output
    left = {t for t in _topics(KafkaSettings(bootstrap_servers=kafka_bootstrap)) if t.startswith(bench_topics.PREFIX)}
    assert _until_gone(KafkaSettings(bootstrap_servers=kafka_bootstrap), left) == set()
