"""Training data from a raw topic: read_topic returns exactly what was published (no consumer group),
the last N seconds / samples, gap policies, skipped messages, and a short train_from_topic run."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.retrain.recent_data import read_topic, read_topic_report, train_from_topic
from pipeline.wire.codec import encode_chunk
from pipeline.kafka.clients import ensure_topics
from pipeline.tools.simulate import produce_raw, simulate

pytestmark = pytest.mark.kafka


def test_read_topic_returns_exactly_what_was_published(make_settings):
    k = make_settings().kafka
    topic = k.raw_topics[0]
    ensure_topics(k, [topic], partitions=3)
    sim = simulate(k, streams=5, sample_rate=500.0, seconds=4.0, chunk=(1, 300), seed=7)
    produce_raw(k, topic, b"sim-bad", b"junk", [])  # undecodable: skipped and counted
    rep = read_topic_report(k, topic)
    assert rep.complete and rep.messages == sim.messages + 1
    assert rep.undecodable == 1 and sum(rep.undecodable_reasons.values()) == 1
    assert sorted(rep.streams) == sorted(sim.noisy)
    assert len(rep.offsets) == 3  # every partition was read
    for sid, noisy in sim.noisy.items():
        x = rep.streams[sid]
        assert x.dtype == np.float32 and x.shape == (2000, 1)
        np.testing.assert_array_equal(x[:, 0], noisy)
        assert rep.start[sid] == 0 and rep.gaps[sid] == [] and rep.duplicates[sid] == 0
        assert rep.rates[sid] == 500.0
    # read_topic is the same data; reading again gives it again (nothing was committed)
    again = read_topic(k, topic)
    for sid in sim.noisy:
        np.testing.assert_array_equal(again[sid], rep.streams[sid])


def test_last_samples_per_stream(make_settings):
    k = make_settings().kafka
    topic = k.raw_topics[0]
    ensure_topics(k, [topic], partitions=2)
    # 3 streams x 20000 frames in ~100-frame chunks: ~600 messages, so the tail read must extend.
    sim = simulate(k, streams=3, sample_rate=1000.0, seconds=20.0, chunk=(80, 120), seed=3)
    for n in (50, 1000, 15000):
        rep = read_topic_report(k, topic, last_samples=n)
        assert sorted(rep.streams) == sorted(sim.noisy)
        for sid, noisy in sim.noisy.items():
            np.testing.assert_array_equal(rep.streams[sid][:, 0], noisy[-n:])
            assert rep.start[sid] == noisy.size - n
        if n == 50:  # a small tail needs only the newest messages, not the whole topic
            assert rep.messages < sim.messages
    whole = read_topic(k, topic, last_samples=10**6)  # more than there is: everything
    for sid, noisy in sim.noisy.items():
        np.testing.assert_array_equal(whole[sid][:, 0], noisy)


def test_last_seconds_uses_message_time(make_settings):
    k = make_settings().kafka
    topic = k.raw_topics[0]
    ensure_topics(k, [topic], partitions=2)
    old = simulate(k, streams=2, sample_rate=200.0, seconds=2.0, seed=1, prefix="old")
    time.sleep(4.0)
    t_new = time.time()
    new = simulate(k, streams=2, sample_rate=200.0, seconds=2.0, seed=2, prefix="new")
    # From 2 s before the new streams' first message: after every old one (4 s older at least).
    # read_topic counts last_seconds back from its call, however long its consumer takes to start.
    got = read_topic(k, topic, last_seconds=time.time() - t_new + 2.0)
    assert sorted(got) == sorted(new.noisy)
    for sid, noisy in new.noisy.items():
        np.testing.assert_array_equal(got[sid][:, 0], noisy)
    everything = read_topic(k, topic, last_seconds=3600)
    assert sorted(everything) == sorted([*old.noisy, *new.noisy])
    both = read_topic(k, topic, last_seconds=3600, last_samples=100)
    for sid, noisy in {**old.noisy, **new.noisy}.items():
        np.testing.assert_array_equal(both[sid][:, 0], noisy[-100:])


def test_gaps_duplicates_and_channel_changes(make_settings):
    k = make_settings().kafka
    topic = k.raw_topics[0]
    ensure_topics(k, [topic], partitions=1)
    x = np.arange(1000, dtype=np.float32)

    def send(a, b, sid="g", values=None, rate=100.0):
        produce_raw(k, topic, *encode_chunk(sid, a, rate, x[a:b] if values is None else values))

    send(100, 200)  # out of order on purpose
    send(0, 100)
    send(150, 250)  # overlaps 50 frames
    send(400, 700)  # gap [250, 400): the longer segment
    send(700, 710, values=np.stack([x[700:710]] * 2, axis=1))  # other channel count: skipped
    nan = x[710:720].copy()
    nan[3] = np.nan
    send(710, 720, values=nan)  # non-finite: undecodable, skipped
    rep = read_topic_report(k, topic)
    assert rep.undecodable == 1 and rep.undecodable_reasons == {"non_finite": 1}
    assert rep.channel_mismatch == {"g": 1}
    assert rep.duplicates["g"] == 50 and rep.gaps["g"] == [(250, 400)]
    np.testing.assert_array_equal(rep.streams["g"][:, 0], np.concatenate([x[:250], x[400:700]]))
    longest = read_topic_report(k, topic, gaps="longest")
    np.testing.assert_array_equal(longest.streams["g"][:, 0], x[400:700])
    assert longest.start["g"] == 400
    tail = read_topic(k, topic, last_samples=350)  # 300 after the gap + 50 before it
    np.testing.assert_array_equal(tail["g"][:, 0], np.concatenate([x[200:250], x[400:700]]))


def test_missing_topic_and_bad_arguments(make_settings):
    k = make_settings().kafka
    with pytest.raises(LookupError, match="not found"):
        read_topic(k, "t-does-not-exist-" + str(time.time_ns()), max_wait_s=1.0)
    for bad in (dict(last_seconds=0), dict(last_samples=0), dict(gaps="splice")):
        with pytest.raises(ValueError):
            read_topic(k, k.raw_topics[0], **bad)


def test_train_from_topic_noisy_target(make_settings):
    from models.forward import denoise_rows
    from models.training import TrainConfig

    k = make_settings().kafka
    topic = k.raw_topics[0]
    sim = simulate(k, streams=6, sample_rate=1000.0, seconds=3.0, snr_db=10.0, seed=5)
    simulate(k, streams=1, sample_rate=250.0, seconds=3.0, seed=6, prefix="slow")  # other rate: left out
    cfg = TrainConfig(sample_rate=1000.0, window=64, arch="conv", arch_config={"channels": [4, 8]},
                      steps=20, batch_size=32, max_seconds=30.0, n2n_draws=2)
    model, meta = train_from_topic(k, topic, cfg, last_samples=2000, progress=False)
    assert meta.training["objective"] == "noisier2noise" and meta.arch == "noisier2noise"
    data = meta.training["data"]
    assert data["source"] == f"kafka:{topic}"
    assert data["train_streams"] + data["val_streams"] == len(sim.noisy)
    assert data["train_samples"] + data["val_samples"] == 6 * 2000
    assert data["kafka"]["left_out_other_rate"] == ["slow-000"]
    assert data["kafka"]["last_samples"] == 2000 and data["kafka"]["undecodable"] == 0
    rows = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    assert denoise_rows(model, rows).shape == (3, 64)
