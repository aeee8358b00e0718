"""The worker's side of consumer-group membership: committable offsets, the resume entries they
rely on, commits, the rebalance handlers, and saying so when commits stall.

Order of durability (README "Delivery"): a partition's offset is committed only once every resume
entry it relies on is durable in the state topic (:mod:`pipeline.kafka.statestore`), and an idle
flush's entry is durable before the flushed tail is published (the processor holds the tail).

- at-least-once: changed entries are sent; once the broker has acknowledged them the offsets are
  committed with ``commit_async`` (a blocking commit issued while the group rebalances would wait
  for a re-join that only the worker's next ``poll()`` can drive);
- exactly-once (``transactions`` given): per partition, wait for the open transaction's records,
  send the changed entries and the offset into it, commit it (:mod:`pipeline.kafka.transactions`).

Revoke: commit what is done, then drop the partitions' state (kafka-python 2.3 calls
``on_partitions_revoked`` also when the membership was lost; a commit then fails, or in
exactly-once mode is refused once the next owner has fenced this one). Assign: the state is built
empty; :meth:`CommitManager.load_resume_points` reads the committed offset and the entries before
the partition's first record is handled.

Stalls: ``dae_commit_age_seconds`` is the time since this worker's progress was last committed
(or there was nothing to commit); a watchdog thread logs one WARNING per ``STALL_WARN_S`` naming the
broker, how long, and why, while it exceeds ``STALL_WARN_S`` plus the commit interval.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from pipeline.kafka.producer import Delivery, FatalWorkerError, TrackedProducer
from pipeline.kafka.statestore import StateStore
from pipeline.kafka.transactions import Transactions
from pipeline.stream.state import OutputRecord, PartitionState, Resume, StreamState

log = logging.getLogger(__name__)

# Longest wait for in-flight outputs on a revoke: the group's re-join waits for this handler.
REVOKE_FLUSH_MAX_S = 5.0
# Commits that have not succeeded for this long are a stall: one WARNING per this many seconds.
STALL_WARN_S = 10.0
# Taking over a partition (claim, committed offset, resume entries) slower than this is logged.
SLOW_LOAD_S = 5.0


class _Listener(ConsumerRebalanceListener):
    """Called from inside ``poll()`` (kafka-python 2.x), which swallows what a handler raises."""

    def __init__(self, manager: "CommitManager"):
        self.manager = manager

    def on_partitions_revoked(self, revoked):
        self.manager.on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.manager.on_assigned(assigned)


class CommitManager:
    def __init__(
        self,
        consumer,
        partitions: dict[TopicPartition, PartitionState],
        lock: threading.RLock,
        metrics,  # the worker's WorkerMetrics: commits, rebalances, consumer_lag, commit_age
        *,
        producer: TrackedProducer,
        store: StateStore,
        transactions: Transactions | None,
        drop_queued: Callable[[set[TopicPartition]], None],
        on_partition_gone: Callable[[PartitionState], None],
        commit_interval_s: float,
        flush_timeout_s: float,
        broker: str,
    ):
        self.consumer = consumer
        self.partitions = partitions
        self.lock = lock
        self.metrics = metrics
        self.producer = producer
        self.store = store
        self.transactions = transactions
        self._drop_queued = drop_queued
        self._on_partition_gone = on_partition_gone
        self.commit_interval_s = commit_interval_s
        self.flush_timeout_s = flush_timeout_s
        self.broker = broker
        self._last_commit = 0.0
        # At-least-once: offsets waiting for the acknowledgment of the entries they rely on.
        self._pending: tuple[dict[TopicPartition, OffsetAndMetadata], list[OutputRecord], float] | None = None
        # Stall tracking (read by the watchdog thread and the gauge).
        self._ok_at = time.monotonic()
        self._why = "no commit yet"
        self._idle_member = False  # the last assignment gave this worker no partition
        metrics.commit_age.set_function(lambda: time.monotonic() - self._ok_at)
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="dae-commit-watchdog", daemon=True)
        self._watchdog.start()

    def listener(self) -> ConsumerRebalanceListener:
        return _Listener(self)

    def close(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------------ state
    def write_state(self, part: PartitionState, stream: StreamState) -> OutputRecord:
        """Write ``stream``'s entry now (an idle flush's record); the returned record is
        acknowledged once it is durable. Called with the lock held."""
        entry = part.durable[stream.id] = part.entry(stream)
        return self._send_entry(part.tp, stream.id, entry)

    def _send_entry(self, tp: TopicPartition, stream: str, entry: Resume | None) -> OutputRecord:
        rec = OutputRecord(0, 0, None)
        partition, key, value = self.store.record(tp, stream, entry)
        self.producer.send(self.store.topic, key, value, [], partition=partition, source=tp, record=rec,
                           delivery=Delivery.FATAL, what=f"the resume entry of stream {stream}")
        return rec

    def load_resume_points(self) -> None:
        """Claim newly assigned partitions and read their committed offsets and resume entries
        (blocking: main thread, outside the lock)."""
        with self.lock:
            todo = [tp for tp, part in self.partitions.items() if not part.loaded]
        for tp in todo:
            t0 = time.monotonic()
            if self.transactions is not None:
                self.transactions.open(tp)  # fences the previous owner; its transaction ends first
            t1 = time.monotonic()
            committed = self.consumer.committed(tp)
            t2 = time.monotonic()
            entries = self.store.load(tp)
            t3 = time.monotonic()
            if t3 - t0 >= SLOW_LOAD_S:  # the partition's outputs waited as long
                log.warning("%s[%d]: taking over took %.1f s (claiming its transactional id %.1f s, reading the "
                            "committed offset %.1f s, the resume entries %.1f s)", tp.topic, tp.partition,
                            t3 - t0, t1 - t0, t2 - t1, t3 - t2)
            with self.lock:
                part = self.partitions.get(tp)
                if part is None or part.loaded:  # revoked meanwhile
                    continue
                part.resume, part.durable = dict(entries), dict(entries)
                part.start = part.committed = committed
                part.loaded = True

    # ---------------------------------------------------------------------------- commits
    def due(self) -> bool:
        return self._pending is not None or time.monotonic() - self._last_commit >= self.commit_interval_s

    def commit(self) -> None:
        """One commit round (every ``commit_interval_s``, and every step while entries are pending)."""
        now = time.monotonic()
        if self.transactions is not None:
            self._last_commit = now
            with self.lock:
                tps = [tp for tp, part in self.partitions.items() if part.loaded]
            failed = self._commit_transactions(tps)
            if failed:
                tp, exc = next(iter(failed.items()))
                raise FatalWorkerError(f"the transaction of {tp.topic}[{tp.partition}] was refused: {exc!r}") from exc
            self._settled(now, bool(tps))
            return
        if self._pending is not None:
            offsets, records, t = self._pending
            if not all(r.acked for r in records):
                return  # the entries are not durable yet
            self._pending = None
        elif now - self._last_commit >= self.commit_interval_s:
            self._last_commit = t = now
            with self.lock:
                offsets, records = self._prepare(list(self.partitions))
            if records:  # commit once the broker has them
                self._pending = (offsets, records, t)
                return
        else:
            return
        with self.lock:
            offsets = {tp: om for tp, om in offsets.items() if tp in self.partitions}
        if offsets:
            self._send_commit(offsets, t)
        else:
            self._settled(now, True)

    def final_commit(self) -> None:
        """Shutdown: commit everything done, waiting for the entries and the commit."""
        if self.transactions is not None:
            with self.lock:
                tps = [tp for tp, part in self.partitions.items() if part.loaded]
            failed = self._commit_transactions(tps)
            if failed:
                raise FatalWorkerError(f"transactions refused on shutdown: {failed}")
            return
        with self.lock:
            offsets, records = self._prepare(list(self.partitions))
        self.producer.flush(self.flush_timeout_s)
        if offsets and all(r.acked for r in records):
            self.consumer.commit(offsets)
            self._committed(offsets)

    def _lag(self, tp: TopicPartition, part: PartitionState) -> None:
        high = self.consumer.highwater(tp)
        if high is not None:  # known from the last fetch response: no extra request
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - part.consumed))

    def _prepare(self, tps) -> tuple[dict[TopicPartition, OffsetAndMetadata], list[OutputRecord]]:
        """At-least-once: send the changed entries of ``tps``; the offsets to commit once they are
        acknowledged (caller holds the lock)."""
        offsets, records = {}, []
        for tp in tps:
            part = self.partitions.get(tp)
            if part is None or part.consumed is None:
                continue
            self._lag(tp, part)
            if not part.loaded:
                continue
            offset, entries = part.committable()
            records += [self._send_entry(tp, sid, e) for sid, e in part.changes(entries)]
            if offset != part.committed:
                offsets[tp] = OffsetAndMetadata(offset, "", -1)
        return offsets, records

    def _send_commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], t: float) -> None:
        def done(committed, response):
            if isinstance(response, Exception):
                self._why = f"last error: {type(response).__name__}: {response}"
                log.debug("offset commit failed (the next one retries): %s", response)
                return
            self._committed(committed)
            self._ok_at = max(self._ok_at, t)

        self.consumer.commit_async(offsets, callback=done)
        self.metrics.commits.inc()

    def _committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        with self.lock:
            for tp, om in offsets.items():
                part = self.partitions.get(tp)
                if part is not None:
                    part.committed = om.offset

    def _commit_transactions(self, tps) -> dict[TopicPartition, KafkaError]:
        """Exactly-once: each partition's open transaction with its entries and offset, committed
        side by side; what the broker refused, by partition."""
        self.transactions.flush_all()  # every record in them acknowledged: the entries below cover them
        todo: dict[TopicPartition, tuple[PartitionState, int]] = {}
        with self.lock:
            for tp in tps:
                part = self.partitions.get(tp)
                if part is None or part.consumed is None:
                    continue
                self._lag(tp, part)
                offset, entries = part.committable()
                for sid, e in part.changes(entries):
                    self._send_entry(tp, sid, e)
                todo[tp] = (part, offset)
        failed = self.transactions.commit_all(
            {tp: offset if offset != part.committed else None for tp, (part, offset) in todo.items()})
        for tp, (part, offset) in todo.items():
            if tp not in failed and offset != part.committed:
                part.committed = offset
                self.metrics.commits.inc()
        return failed

    # ---------------------------------------------------------------------------- stalls
    def _settled(self, now: float, assigned: bool) -> None:
        """Nothing (more) to commit: up to date, unless the worker waits for an assignment."""
        if assigned or self._idle_member:
            self._ok_at = now
        else:
            self._why = "no partitions assigned: waiting for the group to assign them"

    def _watch(self) -> None:
        last_warn = 0.0
        while not self._stop.wait(1.0):
            now = time.monotonic()
            age = now - self._ok_at
            if age >= STALL_WARN_S + self.commit_interval_s and now - last_warn >= STALL_WARN_S:
                last_warn = now
                log.warning("stalled: offset commits to Kafka at %s have not succeeded for %.0f s (%s)",
                            self.broker, age, self._why)

    # -------------------------------------------------------------------------- rebalance
    def on_revoked(self, revoked) -> None:
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))
        self._idle_member = False
        self._pending = None
        with self.lock:
            revoked = [tp for tp in revoked if tp in self.partitions]
            if not revoked:
                return
            self.metrics.rebalances.labels("revoked").inc()
            self._drop_queued(set(revoked))
            if self.transactions is None:
                # Let in-flight outputs be acknowledged (the producer has its own IO thread), so the
                # commit below covers them and the next owner re-publishes less.
                self.producer.flush(min(REVOKE_FLUSH_MAX_S, self.flush_timeout_s))
                offsets, records = self._prepare(revoked)
                self.producer.flush(min(REVOKE_FLUSH_MAX_S, self.flush_timeout_s))
                if offsets and all(r.acked for r in records):
                    self._send_commit(offsets, time.monotonic())
        try:
            if self.transactions is not None:
                failed = self._commit_transactions([tp for tp in revoked if self.partitions[tp].loaded])
                for tp, exc in failed.items():
                    log.warning("%s[%d]: last transaction not committed (%r); the next owner replays it",
                                tp.topic, tp.partition, exc)
        finally:
            if self.transactions is not None:
                for tp in revoked:
                    self.transactions.close(tp)
            with self.lock:
                self._forget(revoked)

    def on_assigned(self, assigned) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self._idle_member = not assigned
        self._why = "partitions assigned, loading their committed offsets and resume entries"
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
            try:
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
