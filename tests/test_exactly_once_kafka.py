"""Exactly-once building blocks on a real broker: a zombie's late transaction is refused, and what it
wrote stays invisible to read_committed readers; the committed offset and records land together."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from pipeline.kafka.clients import ensure_topics
from pipeline.kafka.transactions import Transactions

pytestmark = pytest.mark.kafka


def read_values(bootstrap: str, topic: str, isolation_level: str) -> list[bytes]:
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000,
                      isolation_level=isolation_level)
    tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out = [m.value for m in c]
    c.close()
    return out


def test_the_new_owner_fences_the_zombie(make_settings):
    s = make_settings()
    k = s.kafka
    out = k.clean_topic
    ensure_topics(k, [k.raw_topics[0], out])
    tp = TopicPartition(k.raw_topics[0], 0)
    zombie, owner = Transactions(k, k.group_id), Transactions(k, k.group_id)
    try:
        zombie.open(tp)
        zombie.producer(tp).send(out, key=b"s", value=b"before").get(30)
        assert zombie.commit(tp, 5)
        zombie.producer(tp).send(out, key=b"s", value=b"zombie").get(30)  # written, not committed
        owner.open(tp)  # the partition's next owner claims the same transactional id
        with pytest.raises(KafkaError):
            zombie.commit(tp, 9)  # the zombie's late commit is refused...
        owner.producer(tp).send(out, key=b"s", value=b"owner").get(30)
        assert owner.commit(tp, 7)
    finally:
        zombie.close_all()
        owner.close_all()
    # ...its record is invisible to read_committed readers, and its offset was never committed.
    assert read_values(k.bootstrap_servers, out, "read_committed") == [b"before", b"owner"]
    assert b"zombie" in read_values(k.bootstrap_servers, out, "read_uncommitted")
    c = KafkaConsumer(bootstrap_servers=k.bootstrap_servers, group_id=k.group_id, enable_auto_commit=False)
    assert c.committed(tp) == 7
    c.close()
