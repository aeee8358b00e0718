"""A fix for kafka-python 2.3's transactional offset commit, applied when this package is imported.

kafka-python 2.3.3 (the last 2.x) answers *any* error in a TxnOffsetCommit response by raising
``AttributeError`` inside its response callback: ``TxnOffsetCommitHandler.handle_response`` names
the per-partition result dict ``errors`` and then reads ``errors.CoordinatorNotAvailableError``
from it. The library logs "Error processing callback" and never completes the request, so
``KafkaProducer.send_offsets_to_transaction`` (which waits without a bound) blocks for ever and the
exactly-once worker stalls (seen: `dae bench`'s (d) leg against a freshly started broker, the group
coordinator still loading, 2026-12-04). kafka-python 3.0 fixed it; this project pins 2.x.

:func:`handle_response` is 2.3.3's method with the name fixed and the retriable errors handled as
3.0.12 and the Java client (KAFKA-7296) handle them: any retriable error (the coordinator loading,
moved or away, a timeout) re-sends the offsets that failed, after a coordinator lookup where the
coordinator moved; fencing and authorization errors fail the transaction (the worker's commit then
raises, and the worker stops with a fatal error instead of hanging). :mod:`pipeline.kafka.transactions`
installs it when imported; only on 2.x.
"""

from __future__ import annotations

import logging

import kafka
import kafka.errors as Errors
from kafka.producer.transaction_manager import TxnOffsetCommitHandler
from kafka.structs import TopicPartition

log = logging.getLogger(__name__)

_LOOKUP = (Errors.CoordinatorNotAvailableError, Errors.NotCoordinatorError, Errors.RequestTimedOutError)


def handle_response(self, response) -> None:
    """``TxnOffsetCommitHandler.handle_response`` of kafka-python 2.3.3, fixed (module docstring)."""
    lookup_coordinator = retriable_failure = False
    results = {TopicPartition(topic, partition): Errors.for_code(error_code)
               for topic, partition_data in response.topics
               for partition, error_code in partition_data}
    for tp, error in results.items():
        if error is Errors.NoError:
            self.transaction_manager._pending_txn_offset_commits.pop(tp, None)
        elif getattr(error, "retriable", False):
            retriable_failure = True
            lookup_coordinator = lookup_coordinator or error in _LOOKUP
            log.info("transactional offset commit of %s for group %s: %s, retrying", tp, self.consumer_group_id,
                     error.__name__)
        elif error is Errors.GroupAuthorizationFailedError:
            self.abortable_error(error(self.consumer_group_id))
            return
        elif error in (Errors.TransactionalIdAuthorizationFailedError, Errors.InvalidProducerEpochError,
                       Errors.ProducerFencedError, Errors.UnsupportedForMessageFormatError):
            self.fatal_error(error())
            return
        else:
            self.fatal_error(Errors.KafkaError(f"Unexpected error in TxnOffsetCommitResponse: {error()}"))
            return
    if lookup_coordinator:
        self.transaction_manager._lookup_coordinator("group", self.consumer_group_id)
    if not retriable_failure:
        self.result.done()
    elif self.transaction_manager._pending_txn_offset_commits:
        self.offsets = self.transaction_manager._pending_txn_offset_commits
        self.request = self._build_request()
        self.reenqueue()


# The library's own method, kept for the tests that show the bug.
ORIGINAL = TxnOffsetCommitHandler.handle_response


def install() -> bool:
    """Put :func:`handle_response` in place on kafka-python 2.x; True when it did."""
    if int(kafka.__version__.split(".")[0]) >= 3:
        return False
    TxnOffsetCommitHandler.handle_response = handle_response
    return True
