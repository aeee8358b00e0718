"""simulate/replay/produce_raw publish what capture reads back (no worker: capture the raw topic)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tools.capture import capture, safe_filename
from pipeline.wire.codec import encode_chunk
from pipeline.kafka.clients import ensure_topics
from pipeline.tools.simulate import produce_raw, replay, simulate

pytestmark = pytest.mark.kafka


def test_simulated_streams_come_back_exactly(make_settings, tmp_path):
    k = make_settings().kafka
    sim = simulate(k, streams=5, sample_rate=500.0, seconds=4.0, snr_db=5.0, chunk=(1, 300), seed=4)
    assert sim.samples == 5 * 2000 and sim.messages > 5 * 2000 / 300
    assert sorted(sim.clean) == [f"sim-{i:03d}" for i in range(5)]
    for sid, clean in sim.clean.items():
        assert clean.dtype == np.float32 and clean.shape == (2000,)
        assert not np.array_equal(clean, sim.noisy[sid])
    expected = {sid: len(x) for sid, x in sim.noisy.items()}
    rep = capture(k, topic=k.raw_topics[0], idle_s=5.0, max_seconds=30, expected=expected, out_dir=tmp_path)
    assert rep.messages == sim.messages
    for sid, noisy in sim.noisy.items():
        assert rep.start[sid] == 0 and rep.gaps[sid] == []
        assert rep.duplicates[sid] == 0 and rep.mismatched_duplicates[sid] == 0
        assert rep.models[sid] == []  # raw chunks carry no model header
        assert rep.streams[sid].shape == (len(noisy), 1)
        np.testing.assert_array_equal(rep.streams[sid][:, 0], noisy)
        np.testing.assert_array_equal(np.load(tmp_path / f"{safe_filename(sid)}.npy"), rep.streams[sid])
    assert "sim-000" in rep.summary()
    assert sorted(rep.written) == sorted(tmp_path / f"{safe_filename(sid)}.npy" for sid in sim.noisy)
    assert f"wrote 5 file(s) to {tmp_path}" in rep.summary()


def test_simulation_is_deterministic_and_chunking_independent(make_settings):
    k = make_settings().kafka
    a = simulate(k, streams=2, sample_rate=200.0, seconds=1.0, chunk=(10, 20), seed=1, prefix="a")
    b = simulate(k, streams=2, sample_rate=200.0, seconds=1.0, chunk=(50, 200), seed=1, prefix="a")
    for sid in a.clean:
        np.testing.assert_array_equal(a.clean[sid], b.clean[sid])
        np.testing.assert_array_equal(a.noisy[sid], b.noisy[sid])
    assert a.messages > b.messages


def test_duplicates_mismatches_gaps_and_model_changes_are_reported(make_settings):
    k = make_settings().kafka
    topic = k.clean_topic
    ensure_topics(k, [topic], partitions=2)
    x = np.arange(1000, dtype=np.float32)

    def send(a, b, model, values=None):
        produce_raw(k, topic, *encode_chunk("s/1", a, 100.0, x[a:b] if values is None else values, model=model))

    send(0, 100, "v1")
    send(100, 200, "v1")
    send(100, 200, "v1")  # exact duplicate: 100 samples
    send(150, 250, "v2", values=x[150:250] + 1.0)  # 50 overlapping with different values
    # [250, 400) skipped
    send(400, 500, "v2")
    send(600, 610, "v2")  # second gap [500, 600)
    produce_raw(k, topic, b"s/1", b"junk", [])  # undecodable: counted, skipped
    rep = capture(k, idle_s=2.0, max_seconds=30)
    sid = "s/1"
    assert rep.messages == 7 and rep.undecodable == 1
    assert rep.start[sid] == 0
    assert rep.gaps[sid] == [(250, 400), (500, 600)]
    assert rep.duplicates[sid] == 150
    assert rep.mismatched_duplicates[sid] == 50
    assert rep.models[sid] == [(0, "v1"), (150, "v2")]
    got = rep.streams[sid][:, 0]
    assert got.shape == (610,)
    np.testing.assert_array_equal(got[:200], x[:200])  # the first copy is kept
    np.testing.assert_array_equal(got[200:250], x[200:250] + 1.0)
    assert np.isnan(got[250:400]).all() and np.isnan(got[500:600]).all()
    assert "2 gap(s)" in rep.summary()


def test_replay_two_channels_round_trips_and_expected_stops_early(make_settings):
    k = make_settings().kafka
    x = np.random.default_rng(2).normal(size=(5000, 2)).astype(np.float32)
    n = replay(k, x, stream_id="rec", sample_rate=250.0, chunk=700, start_index=1000)
    assert n == 8
    # Covering [1000, 6000) does not satisfy expected (counts from 0): idle_s ends the capture.
    rep = capture(k, topic=k.raw_topics[0], idle_s=1.0, max_seconds=20, expected={"rec": 5000})
    assert rep.start["rec"] == 1000 and rep.gaps["rec"] == []
    np.testing.assert_array_equal(rep.streams["rec"], x)
    # From index 0 it is covered: capture returns without waiting for idle_s.
    replay(k, x, stream_id="rec0", sample_rate=250.0, chunk=1024)
    rep = capture(k, topic=k.raw_topics[0], idle_s=60.0, max_seconds=30, expected={"rec0": 5000})
    assert rep.seconds < 20
    np.testing.assert_array_equal(rep.streams["rec0"], x)


def test_realtime_pacing(make_settings):
    import time

    k = make_settings().kafka
    t0 = time.monotonic()
    sim = simulate(k, streams=3, sample_rate=1000.0, seconds=1.0, chunk=(50, 100), realtime=True, seed=2)
    took = time.monotonic() - t0
    assert took >= 0.9, took
    rep = capture(k, topic=k.raw_topics[0], idle_s=2.0, max_seconds=20,
                  expected={s: len(v) for s, v in sim.noisy.items()})
    for sid, noisy in sim.noisy.items():
        np.testing.assert_array_equal(rep.streams[sid][:, 0], noisy)


def test_capture_of_a_topic_that_never_appears_ends_at_max_seconds(make_settings):
    k = make_settings().kafka
    rep = capture(k, topic=k.clean_topic, idle_s=0.5, max_seconds=2.0)
    assert rep.messages == 0 and rep.streams == {}


def test_capture_without_wait_stops_after_idle_s_when_nothing_ever_arrives(make_settings):
    import time

    k = make_settings().kafka
    ensure_topics(k, [k.clean_topic])
    t0 = time.monotonic()
    rep = capture(k, idle_s=1.0, max_seconds=60.0, wait=False)
    assert rep.messages == 0 and rep.written == []
    assert time.monotonic() - t0 < 30  # idle_s (plus connecting), far from max_seconds
    rep = capture(k, idle_s=0.5, max_seconds=3.0, wait=True)  # waits for a first message until max_seconds
    assert rep.messages == 0 and rep.seconds >= 3.0
