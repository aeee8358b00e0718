"""The fix for kafka-python 2.3's transactional offset commit (pipeline.kafka.compat): any error in a
TxnOffsetCommit response made the library's handler raise inside its callback and the commit wait for
ever. Pure logic: a real TransactionManager and handler, the broker's response built by hand."""

from types import SimpleNamespace

import kafka
import kafka.errors as Errors
import pytest
from kafka.producer.transaction_manager import (TransactionalRequestResult, TransactionManager,
                                                 TransactionState, TxnOffsetCommitHandler)
from kafka.structs import OffsetAndMetadata, TopicPartition

import pipeline.kafka.transactions  # noqa: F401 - installs the fix
from pipeline.kafka import compat

TP = TopicPartition("t", 0)


def handler():
    tm = TransactionManager(transactional_id="g.t.0", transaction_timeout_ms=60_000, retry_backoff_ms=10,
                            api_version=(2, 1))
    tm._current_state = TransactionState.IN_TRANSACTION  # offsets are sent inside a transaction
    offsets = {TP: OffsetAndMetadata(42, "", -1)}
    tm._pending_txn_offset_commits.update(offsets)
    lookups = []
    tm._lookup_coordinator = lambda kind, key: lookups.append((kind, key))
    h = TxnOffsetCommitHandler(tm, "g", offsets, TransactionalRequestResult())
    return h, tm, lookups


def respond(h, code):
    h.handle_response(SimpleNamespace(topics=[(TP.topic, [(TP.partition, code)])]))


needs_2x = pytest.mark.skipif(int(kafka.__version__.split(".")[0]) >= 3, reason="fixed upstream in kafka-python 3")


@needs_2x
def test_the_fix_is_installed_and_the_original_fails_on_any_error():
    assert TxnOffsetCommitHandler.handle_response is compat.handle_response
    h, _, _ = handler()
    loading = SimpleNamespace(topics=[(TP.topic, [(TP.partition, Errors.CoordinatorLoadInProgressError.errno)])])
    with pytest.raises(AttributeError):  # the library's own method
        compat.ORIGINAL(h, loading)


@needs_2x
@pytest.mark.parametrize("error, lookup", [(Errors.CoordinatorLoadInProgressError, False),
                                           (Errors.CoordinatorNotAvailableError, True),
                                           (Errors.NotCoordinatorError, True),
                                           (Errors.RequestTimedOutError, True)])
def test_a_retriable_error_resends_the_offsets_instead_of_hanging(error, lookup):
    h, tm, lookups = handler()
    respond(h, error.errno)
    assert not h.result.is_done  # still pending: re-sent, not dropped
    assert [r for _, _, r in tm._pending_requests] == [h]
    assert lookups == ([("group", "g")] if lookup else [])
    respond(h, 0)  # the retry succeeds
    assert h.result.is_done and h.result.succeeded and TP not in tm._pending_txn_offset_commits


@needs_2x
@pytest.mark.parametrize("error", [Errors.ProducerFencedError, Errors.InvalidProducerEpochError,
                                   Errors.GroupAuthorizationFailedError, Errors.UnknownError])
def test_a_refusal_fails_the_commit_so_the_worker_stops_instead_of_hanging(error):
    h, tm, _ = handler()
    respond(h, error.errno)
    assert h.result.is_done and not h.result.succeeded
    assert tm._pending_requests == []
