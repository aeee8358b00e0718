"""Producers for tests, demos and benchmarks: synthetic noisy streams, recorded files, raw messages.

``simulate`` returns the clean and noisy truth so the cleaned output can be scored (SNR) afterwards.
Signals depend only on (seed, stream number, family, length, rate): changing chunk sizes or pacing
never changes the data, only how it is cut into messages.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from pipeline.wire.codec import encode_chunk
from pipeline.kafka.clients import ensure_topics, make_producer
from pipeline.settings import KafkaSettings
from models.signals.families import FAMILIES, add_noise, generate

# How long flush/close may wait for outstanding acknowledgements (s).
_FLUSH_TIMEOUT_S = 60.0


class SimulateError(ValueError):
    """An argument of simulate/replay that cannot work; the message names it."""


class PublishError(RuntimeError):
    """The broker did not acknowledge a message (after the producer's retries)."""


@dataclass
class SimResult:
    clean: dict[str, np.ndarray]  # stream id -> float32 (n,)
    noisy: dict[str, np.ndarray]  # what was published, float32 (n,)
    messages: int
    samples: int
    seconds: float  # wall time spent publishing (including the final flush)


def _chunk_bounds(n: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """Start offsets of consecutive chunks covering [0, n) (plus n at the end), sizes in [lo, hi]."""
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    # Draw sizes in blocks of about the expected count (not n // lo: huge for lo=1 and long runs).
    parts, total = [], 0
    block = max(16, int(1.1 * n / ((lo + hi) / 2)) + 16)
    while total < n:
        sizes = rng.integers(lo, hi + 1, size=block)
        parts.append(sizes)
        total += int(sizes.sum())
    starts = np.concatenate([[0], np.cumsum(np.concatenate(parts))])
    k = int(np.searchsorted(starts, n))  # first boundary >= n
    out = starts[: k + 1].copy()
    out[-1] = n
    return out


class _Sender:
    """One producer; remembers every send so a failure anywhere is raised after the flush."""

    def __init__(self, k: KafkaSettings, topic: str):
        self.producer = make_producer(k)
        self.topic = topic
        self.futures: list = []
        self.messages = 0

    def send(self, key, value, headers) -> None:
        self.futures.append(self.producer.send(self.topic, key=key, value=value, headers=headers))
        self.messages += 1
        if len(self.futures) >= 50_000:  # bound memory on long runs: check what is already done
            self._check(done_only=True)

    def _check(self, done_only: bool) -> None:
        pending = []
        for f in self.futures:
            if done_only and not f.is_done:
                pending.append(f)
            elif f.failed():
                raise PublishError(f"send to {self.topic} failed: {f.exception!r}") from f.exception
            elif not f.is_done:
                raise PublishError(f"send to {self.topic} not acknowledged after flush")
        self.futures = pending

    def finish(self) -> None:
        try:
            self.producer.flush(timeout=_FLUSH_TIMEOUT_S)
            self._check(done_only=False)
        finally:
            self.producer.close(timeout=_FLUSH_TIMEOUT_S)


def _sleep_until(t: float) -> None:
    dt = t - time.monotonic()
    if dt > 0:
        time.sleep(dt)


def simulate(
    k: KafkaSettings,
    *,
    streams: int = 8,
    sample_rate: float = 1000.0,
    seconds: float = 10.0,
    snr_db: float = 10.0,
    chunk: tuple[int, int] = (64, 1024),
    realtime: bool = False,
    seed: int = 0,
    families: tuple[str, ...] = FAMILIES,
    topic: str | None = None,
    prefix: str = "sim",
) -> SimResult:
    """Publish ``streams`` noisy synthetic signals as randomly sized chunks, interleaving streams.

    Stream i is ``f"{prefix}-{i:03d}"`` with family ``families[i % len(families)]``. Chunk sizes are
    uniform in [chunk[0], chunk[1]] frames (the last one shorter); sample indices start at 0. As fast
    as possible: round-robin, each stream sends its next chunk in turn. ``realtime``: a chunk goes out
    once its last sample "exists", i.e. no sample i before t0 + i / sample_rate.
    """
    lo, hi = int(chunk[0]), int(chunk[1])
    if not 1 <= lo <= hi:
        raise SimulateError(f"chunk must be (min, max) frames with 1 <= min <= max, got {chunk}")
    if streams < 0:
        raise SimulateError(f"streams must be >= 0, got {streams}")
    if not families:
        raise SimulateError("families must not be empty")
    if not sample_rate > 0:
        raise SimulateError(f"sample_rate must be > 0, got {sample_rate}")
    n = int(round(seconds * sample_rate))
    if n < 0:
        raise SimulateError(f"seconds must be >= 0, got {seconds}")
    topic = topic or k.raw_topics[0]

    # Independent generators: stream i's data depends on (seed, i) only; chunking has its own.
    seqs = np.random.SeedSequence(seed).spawn(streams)
    chunk_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    ids, clean, noisy, bounds = [], {}, {}, []
    for i in range(streams):
        sid = f"{prefix}-{i:03d}"
        rng = np.random.default_rng(seqs[i])
        x = generate(families[i % len(families)], n, sample_rate, rng)
        ids.append(sid)
        clean[sid] = x
        noisy[sid] = add_noise(x, snr_db, rng)
        bounds.append(_chunk_bounds(n, lo, hi, chunk_rng))

    ensure_topics(k, [topic])
    sender = _Sender(k, topic)
    t0 = time.monotonic()
    try:
        if realtime:
            # Due time of chunk j of stream s: when its last sample exists.
            heap = [(float(b[1] - 1) / sample_rate, s, 0) for s, b in enumerate(bounds) if len(b) > 1]
            heapq.heapify(heap)
            while heap:
                due, s, j = heapq.heappop(heap)
                _sleep_until(t0 + due)
                b = bounds[s]
                sender.send(*encode_chunk(ids[s], int(b[j]), sample_rate, noisy[ids[s]][b[j]:b[j + 1]]))
                if j + 2 < len(b):
                    heapq.heappush(heap, (float(b[j + 2] - 1) / sample_rate, s, j + 1))
        else:
            j = 0
            active = True
            while active:
                active = False
                for s, b in enumerate(bounds):
                    if j + 1 < len(b):
                        active = True
                        sender.send(*encode_chunk(ids[s], int(b[j]), sample_rate, noisy[ids[s]][b[j]:b[j + 1]]))
                j += 1
        sender.finish()
    except BaseException:
        sender.producer.close(timeout=0)
        raise
    return SimResult(clean=clean, noisy=noisy, messages=sender.messages, samples=n * streams,
                     seconds=time.monotonic() - t0)


def replay(
    k: KafkaSettings,
    samples: np.ndarray,
    *,
    stream_id: str,
    sample_rate: float,
    chunk: int = 1024,
    realtime: bool = False,
    start_index: int = 0,
    topic: str | None = None,
) -> int:
    """Publish one recorded signal ((frames,) or (frames, channels)) as one stream; messages sent.

    Chunks of ``chunk`` frames carry indices from ``start_index``; ``realtime`` paces them at
    ``sample_rate`` (frame i no earlier than t0 + (i - start_index) / sample_rate).
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise SimulateError(f"samples must be (frames,) or (frames, channels), got shape {x.shape}")
    if chunk < 1:
        raise SimulateError(f"chunk must be >= 1 frame, got {chunk}")
    if start_index < 0:
        raise SimulateError(f"start_index must be >= 0, got {start_index}")
    if not sample_rate > 0:
        raise SimulateError(f"sample_rate must be > 0, got {sample_rate}")
    topic = topic or k.raw_topics[0]
    ensure_topics(k, [topic])
    sender = _Sender(k, topic)
    t0 = time.monotonic()
    try:
        for a in range(0, x.shape[0], chunk):
            b = min(a + chunk, x.shape[0])
            if realtime:
                _sleep_until(t0 + (b - 1) / sample_rate)
            sender.send(*encode_chunk(stream_id, start_index + a, sample_rate, x[a:b]))
        sender.finish()
    except BaseException:
        sender.producer.close(timeout=0)
        raise
    return sender.messages


def produce_raw(k: KafkaSettings, topic: str, key: bytes | None, value: bytes | None, headers: list) -> None:
    """Send one arbitrary (possibly malformed) message and wait for the broker's acknowledgement."""
    producer = make_producer(k)
    try:
        producer.send(topic, key=key, value=value, headers=list(headers or [])).get(timeout=_FLUSH_TIMEOUT_S)
    finally:
        producer.close(timeout=_FLUSH_TIMEOUT_S)
