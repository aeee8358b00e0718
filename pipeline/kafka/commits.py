"""The worker's side of consumer-group membership: committable offsets with resume metadata,
commits, and the rebalance handlers (revoke: commit what is done, drop state; lost: drop state;
assign: read each partition's resume points before its first record is processed).

:class:`CommitManager` is given everything it touches: the consumer, the worker's partition
table and the lock guarding it, a hook that drops a set of partitions' queued windows, a producer
flush (so a revoke's last commit covers what is in flight), the metrics, and a callback for each
partition state it drops (the monitor forgets that partition's alert state).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.structs import OffsetAndMetadata

from pipeline.stream.state import PartitionState

log = logging.getLogger(__name__)

# Kafka's default offset.metadata.max.bytes is 4096; stay under it on any broker.
COMMIT_METADATA_MAX_BYTES = 4000
# Longest wait for in-flight outputs on a revoke: the group's re-join waits for this handler.
REVOKE_FLUSH_MAX_S = 5.0


class _Listener(ConsumerRebalanceListener):
    """Called from inside ``poll()`` (kafka-python 2.x). The handlers take the worker's
    lock and never block on the consumer (commits go out with commit_async, queued on the
    coordinator connection ahead of the re-join), so they are also safe where a client version
    runs them on its own IO thread."""

    def __init__(self, manager: "CommitManager"):
        self.manager = manager

    def on_partitions_revoked(self, revoked):
        self.manager.on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.manager.on_assigned(assigned)

    def on_partitions_lost(self, lost):
        self.manager.on_lost(lost)


class CommitManager:
    def __init__(
        self,
        consumer,
        partitions: dict[TopicPartition, PartitionState],
        lock: threading.RLock,
        metrics,  # the worker's WorkerMetrics: commits, rebalances, consumer_lag
        *,
        drop_queued: Callable[[set[TopicPartition]], None],
        flush: Callable[[float], None],
        on_partition_gone: Callable[[PartitionState], None],
        commit_interval_s: float,
        flush_timeout_s: float,
    ):
        self.consumer = consumer
        self.partitions = partitions
        self.lock = lock
        self.metrics = metrics
        self._drop_queued = drop_queued
        self._flush = flush
        self._on_partition_gone = on_partition_gone
        self.commit_interval_s = commit_interval_s
        self.flush_timeout_s = flush_timeout_s
        # Per partition: (offset, metadata) the broker last confirmed; None when it had no commit.
        self._committed: dict[TopicPartition, tuple[int, str] | None] = {}
        self._last_commit = 0.0

    def listener(self) -> ConsumerRebalanceListener:
        return _Listener(self)

    def load_resume_points(self) -> None:
        """Read the committed offset and resume metadata of newly assigned partitions (blocking
        consumer call: main thread, outside the lock)."""
        with self.lock:
            todo = [tp for tp, part in self.partitions.items() if not part.loaded]
        for tp in todo:
            committed = self.consumer.committed(tp, metadata=True)
            resume = {}
            if committed is not None and committed.metadata:
                try:
                    resume = {k: tuple(v) for k, v in json.loads(committed.metadata).items()}
                except (ValueError, TypeError, AttributeError):
                    log.warning("%s: unreadable commit metadata ignored", tp)
            with self.lock:
                part = self.partitions.get(tp)
                if part is not None and not part.loaded:
                    part.resume, part.loaded = resume, True
                    self._committed[tp] = (committed.offset, committed.metadata) if committed else None

    # ---------------------------------------------------------------------------- commits
    def _offsets(self, tps) -> dict[TopicPartition, OffsetAndMetadata]:
        out = {}
        for tp in tps:
            part = self.partitions.get(tp)
            if part is None or part.consumed is None:
                continue
            high = self.consumer.highwater(tp)
            if high is not None:  # known from the last fetch response: no extra request
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - part.consumed))
            if not part.loaded:
                continue
            offset, resume = part.committable()
            meta = json.dumps(resume, separators=(",", ":"))
            if len(meta) > COMMIT_METADATA_MAX_BYTES:
                log.warning("%s: resume metadata for %d streams exceeds %d bytes; dropping it (a restart "
                            "then re-publishes a few windows per stream)", tp, len(resume), COMMIT_METADATA_MAX_BYTES)
                meta = ""
            if self._committed.get(tp) == (offset, meta):
                continue
            out[tp] = OffsetAndMetadata(offset, meta, -1)
        return out

    def due(self) -> bool:
        return time.monotonic() - self._last_commit >= self.commit_interval_s

    def commit(self, sync: bool = False) -> None:
        """Commit every assigned partition's committable offset.

        Periodic commits are asynchronous: a blocking commit issued while the group rebalances
        would wait for a re-join that only this thread's next poll() can drive. ``sync`` is for
        the final commit on shutdown.
        """
        with self.lock:
            offsets = self._offsets(list(self.partitions))
        self._last_commit = time.monotonic()
        if not offsets:
            return

        def done(committed, response):
            if isinstance(response, Exception):
                log.warning("offset commit failed (the next one retries): %s", response)
                return
            with self.lock:
                for tp, om in committed.items():
                    if tp in self.partitions:
                        self._committed[tp] = (om.offset, om.metadata)

        if sync:
            self.consumer.commit(offsets)
            done(offsets, None)
        else:
            self.consumer.commit_async(offsets, callback=done)
        self.metrics.commits.inc()

    # -------------------------------------------------------------------------- rebalance
    def on_revoked(self, revoked) -> None:
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))
        with self.lock:
            revoked = [tp for tp in revoked if tp in self.partitions]
            if not revoked:
                return
            self.metrics.rebalances.labels("revoked").inc()
            self._drop_queued(set(revoked))
            # Let in-flight outputs be acknowledged (the producer has its own IO thread), so the
            # commit below covers them and the next owner re-publishes less.
            self._flush(min(REVOKE_FLUSH_MAX_S, self.flush_timeout_s))
            offsets = self._offsets(revoked)
            self._forget(revoked)
        if offsets:
            self.consumer.commit_async(offsets)
            self.metrics.commits.inc()

    def on_lost(self, lost) -> None:
        log.warning("partitions lost: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in lost))
        with self.lock:
            self.metrics.rebalances.labels("lost").inc()
            self._drop_queued(set(lost))
            self._forget(lost)

    def on_assigned(self, assigned) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        with self.lock:
            self.metrics.rebalances.labels("assigned").inc()
            for tp in assigned:
                if tp not in self.partitions:
                    self.partitions[tp] = PartitionState(tp)  # resume points: load_resume_points()

    def _forget(self, tps) -> None:
        """Drop the partitions' state (the caller holds the lock)."""
        for tp in tps:
            part = self.partitions.pop(tp, None)
            if part is not None:
                self._on_partition_gone(part)
            self._committed.pop(tp, None)
            try:
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
