"""Harness of the chaos suite (tests/test_chaos_kafka.py): live producers, worker processes that
can be killed and restarted, a broker of its own, the fuzzer, and the checks on the clean topics."""

from __future__ import annotations

import heapq
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from pipeline.kafka.clients import ensure_topics, make_consumer, make_producer, wait_for_broker
from pipeline.kafka.transactions import TRANSACTION_TIMEOUT_MS
from pipeline.settings import KafkaSettings
from pipeline.tools import kafka_local
from pipeline.tools.capture import capture
from pipeline.wire.codec import H_CHANNELS, H_FORMAT, H_INDEX, H_RATE, encode_chunk
from pipeline.wire.deadletter import DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON
from tests.workers import Zygote, wait_for

MODES = ("at_least_once", "exactly_once")
RATE = 1000.0
# Short timings so that faults resolve quickly: the broker's minimum session timeout, tails released
# after one silent second.
FAST = dict(session_ms=6000, idle_flush_s=1.0)


class Live:
    """Streams produced in real time (a chunk goes out once its last sample exists; ``speed`` < 1
    slows time down) until stop(); the truth is what was sent."""

    def __init__(self, k, streams: list[str], *, rate: float = RATE, chunk=(20, 300), seed: int = 0,
                 speed: float = 1.0):
        self.k, self.ids, self.rate, self.chunk, self.speed = k, streams, rate, chunk, speed
        self.rng = np.random.default_rng(seed)
        self.sent = {s: 0 for s in streams}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def signal(self, sid: str, a: int, b: int) -> np.ndarray:
        i = self.ids.index(sid)
        t = np.arange(a, b, dtype=np.float64) / self.rate
        return (np.sin(2 * np.pi * (3 + i % 7) * t) + 0.3 * np.sin(2 * np.pi * 41 * t + i)).astype(np.float32)

    def start(self) -> "Live":
        ensure_topics(self.k, [self.k.raw_topics[0]])
        self._thread.start()
        return self

    def _run(self):
        p = make_producer(self.k)
        try:
            t0 = time.monotonic()
            heap = [(0.0, sid, int(self.rng.integers(*self.chunk))) for sid in self.ids]
            heapq.heapify(heap)
            while heap and not self._stop.is_set():
                _, sid, n = heapq.heappop(heap)
                a = self.sent[sid]
                due = t0 + (a + n) / (self.rate * self.speed)
                wait = due - time.monotonic()  # read the clock once: a second read can pass `due`
                if wait > 0:
                    time.sleep(min(wait, 0.05))
                    heapq.heappush(heap, (due, sid, n))
                    continue
                p.send(self.k.raw_topics[0], **kvh(encode_chunk(sid, a, self.rate, self.signal(sid, a, a + n))))
                self.sent[sid] = a + n
                heapq.heappush(heap, (t0 + (a + n) / (self.rate * self.speed), sid, int(self.rng.integers(*self.chunk))))
            p.flush(timeout=120)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            p.close(timeout=5)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(180)
        assert not self._thread.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error
        return dict(self.sent)


def kvh(encoded) -> dict:
    """``encode_chunk``'s (key, value, headers) as keyword arguments of ``KafkaProducer.send``."""
    key, value, headers = encoded
    return dict(key=key, value=value, headers=headers)


def pair(make_settings, topics, **kw):
    """Settings of the two worker groups on one raw topic: {mode: Settings}."""
    out, extra = {}, kw.get("kafka", {})
    for mode in MODES:
        kafka = {"clean_topic": f"{topics['clean']}-{mode}", "dead_letter_topic": f"{topics['dead']}-{mode}",
                 "alerts_topic": f"{topics['alerts']}-{mode}", "group_id": f"{topics['group']}-{mode}",
                 "session_timeout_ms": FAST["session_ms"], **extra}
        out[mode] = make_settings(kafka=kafka, worker={"delivery": mode, **kw.get("worker", {})},
                                  window={"idle_flush_s": FAST["idle_flush_s"], **kw.get("window", {})},
                                  model=kw["model"])
    return out


class Proc:
    """A worker process (forked by the zygote) with a static member id, killed and restarted at will."""

    def __init__(self, zygote: Zygote, settings, log_dir: Path, name: str):
        self.s = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"group_instance_id": f"{name}-{settings.worker.delivery}"})})
        self.zygote, self.log_dir, self.name, self.runs, self.p = zygote, log_dir, name, 0, None

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}-{self.s.worker.delivery}-{self.runs}.log"

    def start(self) -> "Proc":
        self.runs += 1
        self.p = self.zygote.spawn(self.s, self.log)
        return self

    def kill9(self) -> float:
        t = time.time()
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(30)
        return t

    def assigned(self) -> bool:
        """This run logged a non-empty assignment."""
        return self.log.exists() and "partitions assigned: ['" in self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.p.terminate()
            try:
                self.p.wait(30)
            except TimeoutError:
                self.p.kill()


@contextmanager
def processes(*procs: Proc):
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def wait_assigned(procs, timeout=300.0):
    """A liveness wait, not a timing assertion: a group join beside CPU hogs once took over 120 s."""
    for p in procs:
        wait_for(lambda: p.assigned() or not p.alive(), timeout, 0.5, f"{p.log.name} to be assigned partitions")
        assert p.alive(), p.log.read_text(errors="replace")[-3000:]


def verify(settings: dict, truth: dict[str, int], label: str) -> dict:
    """Capture both clean topics; assert completeness and the mode's duplicate rule; return counts."""
    figures = {}
    for mode, s in settings.items():
        # Stops as soon as every stream is whole; a restarted worker may be silent for a while first.
        rep = capture(s.kafka, idle_s=30.0, max_seconds=240, expected=truth)
        missing = sum(n - covered(rep, sid, n) for sid, n in truth.items())
        dups = sum(rep.duplicates.get(sid, 0) for sid in truth)
        bad = sum(rep.mismatched_duplicates.get(sid, 0) for sid in truth)
        figures[mode] = {"missing": missing, "duplicates": dups, "mismatched": bad, "samples": sum(truth.values())}
        print(f"[chaos] {label} {mode}: {figures[mode]}")
        if missing:
            try:
                why = diagnose_missing(s.kafka, rep, truth)
            except Exception as exc:  # the diagnosis must not hide the failure
                why = f"no diagnosis ({exc!r})"
            raise AssertionError(f"{label} {mode}: {missing} samples missing; {why}")
        assert bad == 0, f"{label} {mode}: {bad} duplicates with different values"
        if mode == "exactly_once":
            assert dups == 0, f"{label} {mode}: {dups} duplicated samples"
    return figures


def diagnose_missing(k, rep, truth: dict[str, int]) -> str:
    """Where the missing samples are (none of a stream, a tail, holes), whether a read_uncommitted
    reader sees them (written in a transaction still open or aborted), the partitions' last stable
    offsets against their high watermarks, and how many are still missing after waiting past the
    broker's abort of an abandoned transaction: what tells a stall (a stuck transaction, a stalled
    worker) from a loss."""
    absent = [sid for sid in truth if sid not in rep.streams]
    tails, holes = [], 0
    for sid, n in truth.items():
        if sid in absent:
            continue
        have = present(rep, sid, n)
        last = int(np.flatnonzero(have)[-1]) + 1 if have.any() else 0
        if last < n:
            tails.append(last)
        holes += int(np.count_nonzero(~have[:last]))
    had = sum(covered(rep, sid, n) for sid, n in truth.items())
    raw = capture(k, idle_s=5.0, max_seconds=60, expected=truth, read_committed=False)
    seen = sum(covered(raw, sid, n) for sid, n in truth.items()) - had
    offsets = []
    for level in ("read_committed", "read_uncommitted"):
        c = make_consumer(k, isolation_level=level)
        tps = [TopicPartition(k.clean_topic, p) for p in sorted(c.partitions_for_topic(k.clean_topic) or ())]
        offsets.append([c.end_offsets(tps)[tp] for tp in tps])
        c.close()
    # A stall or a loss? Read again, waiting past the broker's abort of an abandoned transaction.
    late = capture(k, idle_s=TRANSACTION_TIMEOUT_MS / 1000 + 15, max_seconds=180, expected=truth)
    still = sum(truth.values()) - sum(covered(late, sid, n) for sid, n in truth.items())
    cut = f"ending at samples {min(tails)}..{max(tails)}" if tails else ""
    return (f"{len(absent)} streams absent, {len(tails)} cut short {cut}, {holes} samples in holes; "
            f"a read_uncommitted reader sees {seen} more samples; clean topic end offsets "
            f"read_committed {offsets[0]} vs read_uncommitted {offsets[1]}; read again until "
            f"{TRANSACTION_TIMEOUT_MS / 1000 + 15:.0f} s without a record ({late.seconds:.0f} s): {still} still missing")


def present(rep, sid: str, n: int) -> np.ndarray:
    """Which samples of [0, n) the capture of ``sid`` holds, ``(n,)`` bool."""
    have = np.zeros(n, bool)
    if sid in rep.streams:
        x, s0 = rep.streams[sid][:, 0], rep.start[sid]
        lo, hi = max(0, s0), min(n, s0 + x.size)
        if hi > lo:
            have[lo:hi] = ~np.isnan(x[lo - s0: hi - s0])
    return have


def covered(rep, sid: str, n: int) -> int:
    """Samples of [0, n) present in the capture of ``sid``."""
    return int(np.count_nonzero(present(rep, sid, n)))


def output_stalls(k, kills: list[float]) -> list[float]:
    """Seconds from each kill to the first cleaned record published after it."""
    c = KafkaConsumer(bootstrap_servers=k.bootstrap_servers, enable_auto_commit=False, consumer_timeout_ms=3000)
    tps = [TopicPartition(k.clean_topic, p) for p in c.partitions_for_topic(k.clean_topic)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    stamps = sorted(m.timestamp / 1000.0 for m in c)
    c.close()
    return [min((t for t in stamps if t > kill), default=float("nan")) - kill for kill in kills]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@contextmanager
def own_broker(tmp_path: Path):
    """A second local broker with its own data directory (the shared test broker is never stopped)."""
    # Below Linux's ephemeral range (32768-60999 by default): while the broker is away, clients
    # reconnecting to it, or any process's outgoing connection, may be handed one of its ports as a
    # local port (a client retrying a closed local port can even connect to itself), and the restart
    # then fails to bind (a fresh-clone CI run lost the controller port 39093 that way).
    port = next(p for p in range(28092, 28200, 3) if all(port_free(p + i) for i in range(3)))
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) \
        if Path("/proc/sys/net/ipv4/ip_local_port_range").exists() else 32768
    assert port + 2 < low, f"test broker ports {port}-{port + 2} lie in the ephemeral range (from {low})"
    old = os.environ.get("DAE_KAFKA_DATA")
    os.environ["DAE_KAFKA_DATA"] = str(tmp_path / "kafka")
    try:
        bootstrap = kafka_local.start(port)
        # Listening is not serving: wait until it has registered itself and creates topics.
        probe = KafkaSettings(bootstrap_servers=bootstrap)
        wait_for_broker(probe, 120)
        wait_for(lambda: creates_topics(probe), 120, 1.0, f"the broker at {bootstrap} to create topics")
        yield port, bootstrap
    finally:
        try:
            kafka_local.stop(port)
        finally:
            if old is None:
                os.environ.pop("DAE_KAFKA_DATA", None)
            else:
                os.environ["DAE_KAFKA_DATA"] = old


def creates_topics(k) -> bool:
    try:
        ensure_topics(k, ["chaos.probe"], partitions=1)
        return True
    except KafkaError:
        return False


def capture_dead(k) -> list[tuple[int, int, str]]:
    """(source partition, source offset, reason) of every dead letter (read_committed)."""
    c = KafkaConsumer(bootstrap_servers=k.bootstrap_servers, enable_auto_commit=False, consumer_timeout_ms=4000,
                      isolation_level="read_committed")
    tps = [TopicPartition(k.dead_letter_topic, p) for p in (c.partitions_for_topic(k.dead_letter_topic) or [])]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out = []
    for m in c:
        h = dict(m.headers)
        out.append((int(h[DLQ_PARTITION]), int(h[DLQ_OFFSET]), h[DLQ_REASON].decode()))
    c.close()
    return out


def fuzz_cases(key, x):
    """Mutations of a good message of stream ``key``, each with the reason it must be dead-lettered with."""
    k, v, h = encode_chunk(key, 100, RATE, x)

    def hdr(name, raw):
        return [(n, raw if n == name else val) for n, val in h]

    lenient = [b" 12", b"12 ", b"+12", b"1_000", b"12\n", b"012", b"1e3", b"0x1f", b"", "١٢".encode()]
    nan = x.copy()
    nan[len(x) // 2] = np.nan
    return (
        [(k, v, hdr(H_INDEX, t), "invalid_header") for t in lenient]
        + [(k, v, hdr(H_RATE, t), "invalid_header") for t in (b" 1000", b"+1000", b"1000.", b"inf", b"nan", b"1_000")]
        + [(k, v, hdr(H_CHANNELS, t), "invalid_header") for t in (b"01", b"+1", b"0", b"65")]
        + [(k, v, hdr(H_FORMAT, b"2"), "unsupported_format"), (k, v, hdr(H_FORMAT, b"01"), "invalid_header"),
           (k, v, h[1:], "missing_header"), (k, v, h + [h[1]], "invalid_header"),
           (k, v[:-2], h, "bad_length"), (k, b"", h, "bad_length"), (k, None, h, "bad_length"),
           (*encode_chunk(key, 100, RATE, nan), "non_finite"),
           (*encode_chunk(key, 100, 44100.0, x), "rate_mismatch"),
           (*encode_chunk(key, 100, RATE, np.zeros(5000, np.float32)), "too_large"),
           # The poison pill: index + frames beyond int64.
           (*encode_chunk(key, 2**63 - 1, RATE, np.ones(1, np.float32)), "invalid_header"),
           (*encode_chunk(key, 2**63 - 5, RATE, np.ones(10, np.float32)), "invalid_header"),
           (b"\xff\xfe" + k, v, h, "invalid_key"), (None, v, h, "invalid_key"), (b"k" * 256, v, h, "invalid_key")]
    )
