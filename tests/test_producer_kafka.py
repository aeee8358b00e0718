"""TrackedProducer's delivery policies against a real broker: a topic that refuses records over
200 bytes makes the broker fail the writes we want to fail."""

from __future__ import annotations

import logging
import time

import pytest
from kafka.admin import NewTopic

from pipeline.kafka.clients import make_admin
from pipeline.kafka.producer import Delivery, FatalWorkerError, TrackedProducer
from pipeline.stream.state import OutputRecord

pytestmark = pytest.mark.kafka


@pytest.fixture
def producer(make_settings, topics):
    s = make_settings()
    admin = make_admin(s.kafka)
    admin.create_topics([NewTopic(topics["dead"], 1, 1, topic_configs={"max.message.bytes": "200"}),
                         NewTopic(topics["clean"], 1, 1)])
    admin.close()
    p = TrackedProducer(s.kafka)
    p.start()
    yield p
    p.close(timeout=5)


def test_acknowledged_records_are_marked_and_hooks_run(producer, topics):
    recs, acks = [OutputRecord(i, i + 1, None) for i in range(5)], []
    for r in recs:
        producer.send(topics["clean"], b"k", b"v" * 10, [], record=r, on_ack=lambda r=r: acks.append(r.start))
    producer.send(topics["clean"], b"k", b"v", [], delivery=Delivery.ADVISORY)  # no record: fine too
    producer.flush(timeout=10)
    assert all(r.acked for r in recs) and sorted(acks) == [0, 1, 2, 3, 4]
    producer.check()  # nothing failed


def test_policies_on_a_refused_write(producer, topics, caplog):
    too_big = b"x" * 1000
    blocking, errors = OutputRecord(0, 0, None), []
    with caplog.at_level(logging.ERROR, logger="pipeline.kafka.producer"):
        producer.send(topics["dead"], b"k", too_big, [], record=blocking, delivery=Delivery.BLOCKING,
                      what="the dead letter of t[0]@7", on_error=errors.append)
        producer.send(topics["dead"], b"k", too_big, [], delivery=Delivery.ADVISORY, what="a drift event")
        producer.flush(timeout=10)
        deadline = time.monotonic() + 10
        while len(errors) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    # Blocking and advisory failures are logged, never fatal; the blocking record stays unacknowledged.
    assert len(errors) == 1 and not blocking.acked
    producer.check()
    text = caplog.text
    assert "the dead letter of t[0]@7" in text and "not committing past it" in text and "a drift event" in text

    fatal = OutputRecord(5, 9, None)
    producer.send(topics["dead"], b"k", too_big, [], record=fatal, what="cleaned output of stream s [5, 9)")
    producer.flush(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            producer.check()
        except FatalWorkerError as exc:
            assert f"publishing cleaned output of stream s [5, 9) to {topics['dead']} failed" in str(exc)
            break
        time.sleep(0.05)
    else:
        pytest.fail("a refused FATAL record did not make check() raise")
    assert not fatal.acked
