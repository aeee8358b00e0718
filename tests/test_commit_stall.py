"""Saying when commits stall: the gauge and the rate-limited warning naming the broker (no broker
needed: the watchdog reads the manager's own clock of the last successful commit)."""

from __future__ import annotations

import logging
import re
import threading
import time

from prometheus_client import CollectorRegistry

from pipeline.kafka import commits
from pipeline.kafka.commits import CommitManager
from pipeline.monitor.metrics import WorkerMetrics


def manager(metrics: WorkerMetrics, interval_s: float = 0.1) -> CommitManager:
    return CommitManager(
        None, {}, threading.RLock(), metrics, producer=None, store=None, transactions=None,
        drop_queued=lambda gone: None, on_partition_gone=lambda part: None, commit_interval_s=interval_s,
        flush_timeout_s=1.0, broker="broker-1:9092,broker-2:9092",
    )


def test_stalled_commits_show_in_the_gauge_and_one_warning_per_period(monkeypatch, caplog):
    monkeypatch.setattr(commits, "STALL_WARN_S", 2.0)  # the watchdog checks every second
    metrics = WorkerMetrics(CollectorRegistry())
    m = manager(metrics)
    try:
        assert metrics.registry.get_sample_value("dae_commit_age_seconds") < 1.0
        with caplog.at_level(logging.WARNING, logger="pipeline.kafka.commits"):
            m._ok_at -= 30.0  # no commit has succeeded for 30 s
            m._why = "last error: KafkaConnectionError: socket disconnected"
            time.sleep(4.5)
        assert metrics.registry.get_sample_value("dae_commit_age_seconds") >= 30.0
        warnings = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
        assert 1 <= len(warnings) <= 3, warnings  # one per STALL_WARN_S at most, not one per check
        assert "broker-1:9092,broker-2:9092" in warnings[0] and "have not succeeded for 3" in warnings[0]
        assert "KafkaConnectionError" in warnings[0]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.kafka.commits"):
            m._ok_at = time.monotonic()  # a commit succeeded: quiet again
            time.sleep(2.0)
        assert not [r for r in caplog.records if "stalled" in r.getMessage()]
    finally:
        m.close()


class _Slow:
    """Stand-ins for the consumer, the state store and the transactions, each taking ``s`` seconds."""

    def __init__(self, s: float):
        self.s = s

    def committed(self, tp):
        time.sleep(self.s)
        return 42

    def load(self, tp):
        time.sleep(self.s)
        return {}

    def open(self, tp):
        time.sleep(self.s)


def test_a_slow_takeover_is_logged_with_where_the_time_went(monkeypatch, caplog):
    from kafka import TopicPartition

    from pipeline.stream.state import PartitionState

    slow = _Slow(0.05)
    tp = TopicPartition("raw", 3)
    for threshold, expect in ((1000.0, 0), (0.1, 1)):
        monkeypatch.setattr(commits, "SLOW_LOAD_S", threshold)
        m = CommitManager(
            slow, {tp: PartitionState(tp)}, threading.RLock(), WorkerMetrics(CollectorRegistry()), producer=None,
            store=slow, transactions=slow, drop_queued=lambda gone: None, on_partition_gone=lambda part: None,
            commit_interval_s=1.0, flush_timeout_s=1.0, broker="b:9092",
        )
        try:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="pipeline.kafka.commits"):
                m.load_resume_points()
            assert m.partitions[tp].loaded and m.partitions[tp].committed == 42
            said = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
            assert len(said) == expect, said
            if expect:
                assert re.fullmatch(r"raw\[3\]: taking over took \d+\.\d s \(claiming its transactional id "
                                    r"\d+\.\d s, reading the committed offset \d+\.\d s, the resume entries "
                                    r"\d+\.\d s\)", said[0]), said[0]
        finally:
            m.close()
