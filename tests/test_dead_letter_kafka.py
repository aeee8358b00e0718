"""Bad input lands in the dead-letter topic with reasons; good streams beside it stay complete."""

from __future__ import annotations

import time

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from pipeline.tools.capture import capture
from pipeline.wire.codec import encode_chunk, encode_headers
from pipeline.kafka.clients import ensure_topics, make_admin
from pipeline.wire.deadletter import DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC
from pipeline.tools.simulate import produce_raw, simulate
from tests.workers import wait_for, worker_thread

pytestmark = pytest.mark.kafka


def good(index=0, frames=300, rate=1000.0, channels=1):
    return np.random.default_rng(index).normal(size=(frames, channels)).astype(np.float32), rate


def bad_messages():
    """(name, expected reason, key, value, headers) for every kind of bad input."""
    x, rate = good()
    key, value, headers = encode_chunk("bad-stream", 0, rate, x)
    nan = x.copy()
    nan[17, 0] = np.nan
    inf = x.copy()
    inf[3, 0] = np.inf
    big = np.zeros((5000, 1), np.float32)
    return [
        ("undecodable length", "bad_length", key, value[:-3], headers),
        ("empty value", "bad_length", key, b"", headers),
        ("missing headers", "missing_header", key, value, headers[:2]),
        ("non-numeric index", "invalid_header", key, value, [(n, b"abc" if n == "dae.index" else v) for n, v in headers]),
        ("zero channels", "invalid_header", key, value, [(n, b"0" if n == "dae.channels" else v) for n, v in headers]),
        ("unknown format", "unsupported_format", key, value, [(n, b"9" if n == "dae.format" else v) for n, v in headers]),
        ("NaN", "non_finite", *encode_chunk("good-000", 10_000_000, rate, nan)),
        ("Inf", "non_finite", *encode_chunk("bad-inf", 0, rate, inf)),
        ("too large", "too_large", *encode_chunk("bad-big", 0, rate, big)),
        ("rate not served", "rate_mismatch", *encode_chunk("bad-rate", 0, 44100.0, x)),
        ("no key", "invalid_key", None, value, headers),
    ]


def read_all(bootstrap, topic, idle_s=3.0, min_count=0):
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=int(idle_s * 1000))
    tps = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or [])]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out = list(c)
    c.close()
    return out


def test_each_bad_input_is_dead_lettered_with_reason_and_good_streams_complete(make_settings, model_registry):
    s = make_settings(model={"registry": model_registry}, window={"max_chunk_frames": 4096})
    cases = bad_messages()
    ensure_topics(s.kafka, [s.kafka.raw_topics[0]])
    sent = []
    with worker_thread(s) as w:
        sim_first = simulate(s.kafka, streams=4, sample_rate=1000.0, seconds=3.0, seed=1, prefix="good")
        for name, reason, key, value, headers in cases:
            produce_raw(s.kafka, s.kafka.raw_topics[0], key, value, headers)
            sent.append((name, reason, key, value, headers))
        sim = simulate(s.kafka, streams=4, sample_rate=1000.0, seconds=3.0, seed=2, prefix="more")
        rep = capture(s.kafka, idle_s=6.0, max_seconds=60,
                      expected={**{k: len(v) for k, v in sim.clean.items()},
                                **{k: len(v) for k, v in sim_first.clean.items()}})
        dead = wait_for(lambda: (lambda m: m if len(m) >= len(cases) else None)(
            read_all(s.kafka.bootstrap_servers, s.kafka.dead_letter_topic)), 30, 1.0, "dead letters")
        counted = {r: w.metrics.dead_letters.labels(r)._value.get() for _, r, *_ in cases}
    assert len(dead) == len(cases)
    by_value = {}
    for m in dead:
        h = dict(m.headers)
        by_value.setdefault((m.key, m.value), []).append(h)
        assert h[DLQ_TOPIC].decode() == s.kafka.raw_topics[0]
        assert int(h[DLQ_PARTITION]) >= 0 and int(h[DLQ_OFFSET]) >= 0
        assert h["dae.dlq.detail"]
    for name, reason, key, value, headers in sent:
        hs = by_value.get((key, value))
        assert hs, f"{name}: not in the dead-letter topic"
        reasons = [h[DLQ_REASON].decode() for h in hs]
        assert reason in reasons, f"{name}: reasons {reasons}, expected {reason}"
        # Original headers are kept next to the reason headers.
        for hn, hv in headers:
            assert any(h.get(hn) == hv for h in hs), f"{name}: original header {hn} lost"
        assert counted[reason] >= 1
    for sim_ in (sim_first, sim):
        for sid, clean in sim_.clean.items():
            assert rep.gaps[sid] == [] and rep.streams[sid].shape[0] == len(clean), sid


def test_failed_dead_letter_write_blocks_the_commit(make_settings, model_registry):
    s = make_settings(model={"registry": model_registry})
    k = s.kafka
    # A dead-letter topic that refuses anything over 200 bytes: the write fails at the broker.
    admin = make_admin(k)
    admin.create_topics([NewTopic(k.dead_letter_topic, 1, 1, topic_configs={"max.message.bytes": "200"}),
                         NewTopic(k.raw_topics[0], 1, 1)])
    admin.close()
    x, rate = good(frames=500)
    key, value, headers = encode_chunk("victim", 0, rate, x)
    bad_headers = [(n, b"x" if n == "dae.index" else v) for n, v in headers]
    with worker_thread(s) as w:
        simulate(k, streams=2, sample_rate=1000.0, seconds=1.0, seed=3, prefix="before")
        produce_raw(k, k.raw_topics[0], key, value, bad_headers)
        sim = simulate(k, streams=2, sample_rate=1000.0, seconds=2.0, seed=4, prefix="after")
        rep = capture(k, idle_s=5.0, max_seconds=60, expected={i: len(v) for i, v in sim.clean.items()})
        wait_for(lambda: w.metrics.dead_letter_failures._value.get() >= 1, 30, 0.5, "the failed write")
        time.sleep(3 * s.worker.commit_interval_s)  # several commit rounds after the failure
        bad_offset = min(w.partitions[TopicPartition(k.raw_topics[0], 0)].dead_letters)
    for sid in sim.clean:
        assert rep.gaps[sid] == [], "good streams after the bad message still flow"
    c = KafkaConsumer(bootstrap_servers=k.bootstrap_servers, group_id=k.group_id)
    committed = c.committed(TopicPartition(k.raw_topics[0], 0))
    c.close()
    assert committed is not None and committed <= bad_offset, (committed, bad_offset)
