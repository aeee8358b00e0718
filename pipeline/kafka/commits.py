"""Consumer-group membership of the worker: committable offsets with resume metadata, commits,
and the rebalance callbacks (revoke: commit what is done, drop state; lost: drop state; assign:
read each partition's resume points before its first record is processed).

A mixin of :class:`pipeline.worker.Worker`; it uses the worker's ``lock``, ``partitions``,
``consumer``, ``producer``, ``batcher``, ``metrics`` and settings ``s``.
"""

from __future__ import annotations

import json
import logging
import time

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.structs import OffsetAndMetadata

from pipeline.stream.state import PartitionState

log = logging.getLogger(__name__)

# Kafka's default offset.metadata.max.bytes is 4096; stay under it on any broker.
COMMIT_METADATA_MAX_BYTES = 4000


class Rebalance(ConsumerRebalanceListener):
    """Called from inside ``poll()`` (kafka-python 2.x). The handlers take the worker's lock and
    never block on the consumer (commits go out with commit_async, queued on the coordinator
    connection ahead of the re-join), so they are also safe where a client version runs them on
    its own IO thread."""

    def __init__(self, worker):
        self.worker = worker

    def on_partitions_revoked(self, revoked):
        self.worker._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.worker._on_assigned(assigned)

    def on_partitions_lost(self, lost):
        self.worker._on_lost(lost)


class GroupMembership:
    def _load_resume_points(self) -> None:
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
            high = self.consumer.highwater(tp) if self.consumer is not None else None
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

    def commit(self, sync: bool = False) -> None:
        """Commit every assigned partition's committable offset.

        Periodic commits are asynchronous: a blocking commit issued while the group rebalances
        would wait for a re-join that only this thread's next poll() can drive. ``sync`` is for
        the final commit on shutdown.
        """
        with self.lock:
            offsets = self._offsets(list(self.partitions))
        self._last_commit = time.monotonic()
        if not offsets or self.consumer is None:
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
    def _on_revoked(self, revoked) -> None:
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))
        with self.lock:
            revoked = [tp for tp in revoked if tp in self.partitions]
            if not revoked:
                return
            self.metrics.rebalances.labels("revoked").inc()
            gone = set(revoked)
            self.batcher.drop(lambda seg: seg.stream.tp in gone)
            # Let in-flight outputs be acknowledged (the producer has its own IO thread), so the
            # commit below covers them and the next owner re-publishes less.
            self.producer.flush(timeout=min(5.0, self.s.worker.shutdown_timeout_s))
            offsets = self._offsets(revoked)
            for tp in revoked:
                self._forget_partition_alerts(self.partitions.pop(tp, None))
                self._committed.pop(tp, None)
                self._forget_lag(tp)
        if offsets and self.consumer is not None:
            self.consumer.commit_async(offsets)
            self.metrics.commits.inc()

    def _on_lost(self, lost) -> None:
        log.warning("partitions lost: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in lost))
        with self.lock:
            self.metrics.rebalances.labels("lost").inc()
            gone = set(lost)
            self.batcher.drop(lambda seg: seg.stream.tp in gone)
            for tp in lost:
                self._forget_partition_alerts(self.partitions.pop(tp, None))
                self._committed.pop(tp, None)
                self._forget_lag(tp)

    def _forget_lag(self, tp) -> None:
        try:
            self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        except KeyError:
            pass

    def _on_assigned(self, assigned) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        with self.lock:
            self.metrics.rebalances.labels("assigned").inc()
            for tp in assigned:
                if tp not in self.partitions:
                    self.partitions[tp] = PartitionState(tp)  # resume points: _load_resume_points
