"""Exactly-once mode: one transactional producer per assigned input partition.

A partition's cleaned chunks, alert events, dead letters and resume entries go out through its
own producer, inside a transaction that also carries the partition's consumed offset
(``send_offsets_to_transaction``); the commit manager commits it every ``commit_interval_s`` and on
revoke, then begins the next one. Readers with ``isolation_level=read_committed`` see a
transaction's records only once it commits, and never those of an aborted one.

Fencing: the transactional.id is ``<group id>.<topic>.<partition>``, the same for whichever worker
owns the partition. The new owner's ``init_transactions`` bumps the producer epoch of that id, which
aborts the previous owner's open transaction and makes the broker refuse any later write or
commit from it (a zombie: a worker paused past its session timeout, or cut off from the group).
An id per partition rather than per worker is what makes that work with kafka-python 2.3, whose
transactional offset commits carry no consumer-group generation (KIP-447).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from pipeline.kafka.clients import make_producer
from pipeline.kafka.compat import install as _fix_txn_offset_commit
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)
_fix_txn_offset_commit()  # kafka-python 2.3's TxnOffsetCommit error handling (pipeline/kafka/compat.py)

# A killed worker's open transaction blocks read_committed readers of the partitions it wrote to
# until the partition's next owner re-initialises the id, or the broker aborts it after this long
# (Kafka's default; a shorter one would also abort the transactions of a worker riding out a
# broker outage of that length).
TRANSACTION_TIMEOUT_MS = 60_000
# Partitions whose transactions are committed side by side (each commit is a few round trips).
COMMIT_THREADS = 8
# After each commit the broker answers the next transaction's first write with "concurrent
# transactions" until its commit markers are written; kafka-python's 100 ms default retry backoff
# made every transaction cost ~110 ms here, 10 ms keeps it ~20 ms.
TXN_RETRY_BACKOFF_MS = 10


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    return f"{group_id}.{tp.topic}.{tp.partition}"


class Transactions:
    def __init__(self, kafka: KafkaSettings, group_id: str):
        self._kafka = kafka
        self.group_id = group_id
        self._producers: dict[TopicPartition, KafkaProducer] = {}
        self._sent: set[TopicPartition] = set()  # partitions whose open transaction has records
        self._pool = ThreadPoolExecutor(max_workers=COMMIT_THREADS, thread_name_prefix="dae-txn")

    def open(self, tp: TopicPartition) -> None:
        """Claim ``tp``'s transactional id (fencing the previous owner; blocking) and begin a transaction."""
        self.close(tp)
        p = make_producer(self._kafka, client_id=f"{self._kafka.client_id}-txn-{tp.partition}",
                          transactional_id=transactional_id(self.group_id, tp),
                          transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, retry_backoff_ms=TXN_RETRY_BACKOFF_MS)
        while True:  # the broker may be away: wait for it (the commit watchdog says so meanwhile)
            try:
                p.init_transactions()
                break
            except KafkaTimeoutError:  # retrying waits for the same request (kafka-python 2.3)
                log.warning("%s[%d]: claiming transactional id %s: no answer yet, still waiting", tp.topic,
                            tp.partition, transactional_id(self.group_id, tp))
        p.begin_transaction()
        self._producers[tp] = p

    def producer(self, tp: TopicPartition) -> KafkaProducer | None:
        p = self._producers.get(tp)
        if p is not None:
            self._sent.add(tp)
        return p

    def __contains__(self, tp: TopicPartition) -> bool:
        return tp in self._producers

    def commit(self, tp: TopicPartition, offset: int | None) -> bool:
        """Commit the open transaction with ``offset`` as the group's position on ``tp`` (None:
        records only), begin the next one; False when there was nothing to commit. Raises what
        the broker answered (a fenced producer: ``ProducerFencedError``/``InvalidProducerEpochError``)."""
        if offset is None and tp not in self._sent:
            return False
        p = self._producers[tp]
        if offset is not None:
            p.send_offsets_to_transaction({tp: OffsetAndMetadata(offset, "", -1)}, self.group_id)
        p.commit_transaction()
        self._sent.discard(tp)
        p.begin_transaction()
        return True

    def commit_all(self, offsets: dict[TopicPartition, int | None]) -> dict[TopicPartition, KafkaError]:
        """:meth:`commit` for several partitions side by side; what each refused, by partition."""
        futures = {tp: self._pool.submit(self.commit, tp, offset) for tp, offset in offsets.items()}
        errors = {}
        for tp, future in futures.items():
            try:
                future.result()
            except KafkaError as exc:
                errors[tp] = exc
        return errors

    def close(self, tp: TopicPartition) -> None:
        """Close ``tp``'s producer. A transaction left open with records in it is aborted by the
        partition's next owner (its ``init_transactions``) or by the broker after
        ``TRANSACTION_TIMEOUT_MS``; no abort here, which would wait for an answer without a bound."""
        p = self._producers.pop(tp, None)
        self._sent.discard(tp)
        if p is None:
            return
        try:
            p.close(timeout=1.0)
        except Exception:  # pragma: no cover - best effort on the way out
            log.exception("closing the transactional producer of %s", tp)

    def close_all(self) -> None:
        for tp in list(self._producers):
            self.close(tp)
        self._pool.shutdown(wait=False)

    def flush_all(self, timeout: float | None = None) -> None:
        """Wait for every record sent so far (the producers drain side by side, each on its own thread)."""
        for p in self._producers.values():
            p.flush(timeout=timeout)
