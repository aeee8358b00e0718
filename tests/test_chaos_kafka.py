"""Chaos on a real broker, both delivery modes side by side (issue: "delivery you can bet a plant on").

Every test feeds one raw topic to two worker groups at once, one at-least-once and one exactly-once,
each with its own clean and dead-letter topics, and injects the fault into both. Then, per stream,
from the clean topics: at-least-once: nothing missing, every duplicate identical; exactly-once
(read_committed): nothing missing, no duplicate.

- kill -9 three times, each worker restarted at once (static membership: no session wait);
- broker stop + start mid-stream (a broker of its own: the shared test broker is never stopped),
  the streams going idle past ``idle_flush_s`` meanwhile, then kill -9 so a replay has to repeat
  the idle flushes taken during the outage;
- rebalance: a second worker joins, the first is killed, and rejoins;
- 5,000 fuzzed messages among good streams (lenient header text, the int64 poison pill, bad
  payloads and keys): each one ends as output or as a dead letter with its reason, exactly once
  (at-least-once: again, with the same reason, only where a replay repeats it);
- 200 streams with 91-byte ids on one partition, kill -9: resume state far beyond what commit
  metadata holds.

Sized to stay short on a 2-core machine: a few streams at 1 kHz for ~15-25 s per test.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from pipeline.kafka.clients import ensure_topics, make_producer, wait_for_broker
from pipeline.kafka.commits import STALL_WARN_S
from pipeline.tools import kafka_local
from pipeline.tools.capture import capture
from pipeline.wire.codec import decode_chunk, encode_chunk
from tests.chaos import (
    MODES, RATE, FAST, Live, Proc, fuzz_cases, kvh, capture_dead, output_stalls, own_broker, pair, processes,
    verify, wait_assigned,
)
from tests.workers import Zygote, worker_thread

# Group joins beside CPU hogs can be slow: the per-test limit leaves room for wait_assigned's 300 s.
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def test_kill9_three_times_with_restarts(make_settings, topics, model_registry, tmp_path, zygote):
    s = pair(make_settings, topics, model={"registry": model_registry})
    ids = [f"k9-{i}" for i in range(4)]
    procs = [Proc(zygote, s[m], tmp_path, "w") for m in MODES]
    with processes(*procs):
        for p in procs:
            p.start()
        live = Live(s[MODES[0]].kafka, ids, seed=1).start()
        wait_assigned(procs)
        kills = []
        for _ in range(3):
            time.sleep(3.0)  # some output published, some not yet committed
            kills.append(time.time())
            for p in procs:
                p.kill9()
                p.start()
            wait_assigned(procs)
        time.sleep(2.0)
        truth = live.stop()
        figures = verify(s, truth, "kill -9 x3")
    stalls = output_stalls(s["at_least_once"].kafka, kills)
    print(f"[chaos] kill -9 x3: output stall after each kill (s): {np.round(stalls, 1).tolist()}")
    assert all(f["samples"] > 0 for f in figures.values())


@pytest.mark.timeout(1200)  # starts, stops and restarts a broker of its own (JVM start-ups)
def test_broker_stop_and_start_mid_stream(make_settings, topics, model_registry, tmp_path, zygote):
    with own_broker(tmp_path) as (port, bootstrap):
        # At-least-once commits rarely here, so the replay after the kill reaches back before the
        # outage and has to repeat the idle flushes taken while the broker was away.
        s = pair(make_settings, topics, model={"registry": model_registry}, kafka={"bootstrap_servers": bootstrap})
        s["at_least_once"] = s["at_least_once"].model_copy(update={"worker": s["at_least_once"].worker.model_copy(
            update={"commit_interval_s": 60.0})})
        ids = [f"bo-{i}" for i in range(4)]
        procs = [Proc(zygote, s[m], tmp_path, "w") for m in MODES]
        with processes(*procs):
            for p in procs:
                p.start()
            live = Live(s[MODES[0]].kafka, ids, seed=2).start()
            wait_assigned(procs)
            time.sleep(3.0)
            t0 = time.monotonic()
            kafka_local.stop(port)
            # Away long enough for the streams to go idle for the workers and for a stall warning.
            time.sleep(max(0.0, STALL_WARN_S + 2.0 - (time.monotonic() - t0)))
            kafka_local.start(port)
            wait_for_broker(s[MODES[0]].kafka, 120)  # answering metadata requests, not just listening
            print(f"[chaos] broker away for {time.monotonic() - t0:.1f} s")
            time.sleep(5.0)  # outputs flow again (idle-flushed tails, then the continuation)
            for p in procs:
                if p.alive():
                    p.kill9()
                p.start()
            wait_assigned(procs)
            time.sleep(2.0)
            truth = live.stop()
            verify(s, truth, "broker outage")
        # The exactly-once worker (committing every second) said it was stalled, naming the broker.
        log = (tmp_path / "w-exactly_once-1.log").read_text(errors="replace")
        assert f"stalled: offset commits to Kafka at {bootstrap} have not succeeded for" in log, log[-3000:]


def test_rebalance_join_kill_rejoin(make_settings, topics, model_registry, tmp_path, zygote):
    s = pair(make_settings, topics, model={"registry": model_registry})
    ids = [f"rb-{i}" for i in range(4)]
    a = [Proc(zygote, s[m], tmp_path, "a") for m in MODES]
    b = [Proc(zygote, s[m], tmp_path, "b") for m in MODES]
    with processes(*a, *b):
        for p in a:
            p.start()
        live = Live(s[MODES[0]].kafka, ids, seed=3).start()
        wait_assigned(a)
        time.sleep(2.0)
        for p in b:  # B joins: the partitions are split
            p.start()
        wait_assigned(b)
        time.sleep(2.0)
        for p in a:  # A dies: B gets everything once A's session expires
            p.kill9()
        time.sleep(FAST["session_ms"] / 1000 + 3.0)
        for p in a:  # A rejoins
            p.start()
        wait_assigned(a)
        time.sleep(2.0)
        truth = live.stop()
        verify(s, truth, "rebalance")


def test_fuzzed_messages_among_good_streams(make_settings, topics, model_registry):
    s = pair(make_settings, topics, model={"registry": model_registry}, window={"max_chunk_frames": 4096})
    k = s[MODES[0]].kafka
    rng = np.random.default_rng(4)
    good = [f"fz-{i}" for i in range(4)]
    n_good = 15_000
    stream = Live(k, good)
    fuzz = []  # (key, value, headers, reason or None)
    while len(fuzz) < 5000:
        key = good[int(rng.integers(len(good)))] if rng.random() < 0.7 else f"rnd-{int(rng.integers(1 << 30))}"
        x = rng.normal(size=int(rng.integers(2, 200))).astype(np.float32)
        cases = fuzz_cases(key, x)
        if key.startswith("rnd") and rng.random() < 0.3:  # a valid message of a stream of its own
            fuzz.append((*encode_chunk(key, int(rng.integers(0, 10**9)), RATE, x), None))
        else:
            fuzz.append(cases[int(rng.integers(len(cases)))])
    ensure_topics(k, [k.raw_topics[0]])
    p = make_producer(k)
    sent, pos, fi = [], {sid: 0 for sid in good}, 0
    while any(pos[sid] < n_good for sid in good) or fi < len(fuzz):
        for sid in good:  # interleave: a good chunk of every stream, then ~12 fuzzed messages
            n = min(int(rng.integers(50, 300)), n_good - pos[sid])
            if n > 0:
                p.send(k.raw_topics[0], **kvh(encode_chunk(sid, pos[sid], RATE, stream.signal(sid, pos[sid], pos[sid] + n))))
                pos[sid] += n
        for key, value, headers, reason in fuzz[fi: fi + 12]:
            sent.append((p.send(k.raw_topics[0], key=key, value=value, headers=headers), key, value, headers, reason))
        fi += 12
    p.flush(60)
    p.close()
    where = {(f.get().partition, f.get().offset): (key, value, headers, reason) for f, key, value, headers, reason in sent}
    with worker_thread(s["at_least_once"]) as w1, worker_thread(s["exactly_once"]) as w2:
        verify(s, {sid: n_good for sid in good}, "fuzz")
        # Valid fuzzed chunks of streams of their own are output too (their tails after an idle flush).
        for mode in MODES:
            rnd = {}
            for key, value, headers, reason in where.values():
                if reason is None:
                    c = decode_chunk(key, value, headers)
                    rnd[c.stream] = (c.index, c.end)
            rep = capture(s[mode].kafka, idle_s=4.0, max_seconds=60)
            for sid, (a, b) in rnd.items():
                assert sid in rep.streams and rep.start[sid] == a and not rep.gaps[sid], sid
                assert rep.start[sid] + rep.streams[sid].shape[0] == b, sid
        assert all(w.metrics.processing_errors._value.get() == 0 for w in (w1, w2))
    for mode in MODES:
        dead = capture_dead(s[mode].kafka)
        counts = Counter((p_, o) for p_, o, _ in dead)
        if mode == "exactly_once":
            assert max(counts.values()) == 1, f"{mode}: a message dead-lettered more than once"
        # at-least-once: a replay from the last commit (a group membership lost on a starved machine:
        # seen beside two CPU hogs, 2026-12-04) dead-letters its bad messages again, as it re-publishes
        # outputs, with the same reason
        got = {}
        for p_, o, r in dead:
            first = got.setdefault((p_, o), r)
            assert first == r, f"{mode}: {(p_, o)} dead-lettered with reasons {first} and {r}"
        expected = {pos_: item[3] for pos_, item in where.items() if item[3] is not None}
        assert got.keys() == expected.keys(), f"{mode}: {len(got)} dead letters for {len(expected)} bad messages"
        wrong = [(pos_, got[pos_], r) for pos_, r in expected.items() if got[pos_] != r]
        assert not wrong, f"{mode}: wrong reasons {wrong[:5]}"
        print(f"[chaos] fuzz {mode}: {len(got)} dead letters, reasons {dict(Counter(got.values()))}")


def test_200_long_id_streams_on_one_partition_with_kill9(make_settings, topics, model_registry, tmp_path, zygote):
    s = pair(make_settings, topics, model={"registry": model_registry})
    k = s[MODES[0]].kafka
    ensure_topics(k, [k.raw_topics[0]], partitions=1)
    ids = [f"plant-north/area-{i // 20:02d}/line-{i % 20:02d}/" + "vibration-sensor-axial-".ljust(60, "x") + f"{i:03d}"
           for i in range(200)]
    assert all(len(sid.encode()) == 91 for sid in ids)
    procs = [Proc(zygote, s[m], tmp_path, "w") for m in MODES]
    with processes(*procs):
        for p in procs:
            p.start()
        live = Live(k, ids, chunk=(10, 60), seed=5, speed=0.2).start()  # 200 x 200 samples/s
        wait_assigned(procs)
        time.sleep(5.0)
        for p in procs:
            p.kill9()
            p.start()
        wait_assigned(procs)
        time.sleep(3.0)
        truth = live.stop()
        verify(s, truth, "200 long-id streams")
