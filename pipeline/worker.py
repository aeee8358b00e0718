"""The worker: consume raw chunks, window per stream, denoise in micro-batches, overlap-add,
publish cleaned chunks, commit offsets only behind acknowledged outputs.

Delivery (at-least-once, deterministic sample indices):
- auto-commit is off; a partition's committed offset is the oldest source message still feeding
  an unpublished output (an unfinished window, an output not yet acknowledged by the broker, or a
  dead-letter write not yet acknowledged);
- each commit carries metadata ``{stream: [offset, anchor, first_unpublished_index]}`` so the next
  owner skips what is already published and re-creates the same windows (outputs after the
  commit may be published again, with identical indices and values);
- on revoke: publish and commit what is done, then drop the partitions' state; on lost: drop only;
- SIGTERM/SIGINT: finish the queued windows, wait for acknowledgments, commit, exit.

The worker composes the parts and owns the loop: the per-stream state lives in
:class:`pipeline.stream.state.PartitionState` (pure bookkeeping), every record goes out through a
:class:`~pipeline.kafka.producer.TrackedProducer`, commits and rebalances are the
:class:`~pipeline.kafka.commits.CommitManager`'s, alerts and drift the
:class:`~pipeline.monitor.monitor.Monitor`'s.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
import signal
import threading
import time

import numpy as np
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.inference.engine import InferenceEngine
from pipeline.inference.hotswap import ModelWatcher
from pipeline.kafka.clients import ensure_topics, make_consumer, verify_connection
from pipeline.kafka.commits import CommitManager
from pipeline.kafka.producer import Delivery, FatalWorkerError, TrackedProducer
from pipeline.monitor.drift import DriftMonitor
from pipeline.monitor.metrics import WorkerMetrics, serve
from pipeline.monitor.monitor import Monitor
from pipeline.settings import Settings
from pipeline.stream.batching import MicroBatcher
from pipeline.stream.state import OutputRecord, PartitionState, Segment
from pipeline.wire.codec import DecodeError, decode_chunk, encode_chunk
from pipeline.wire.deadletter import dead_letter_headers

log = logging.getLogger(__name__)

# Batches in the inference thread's queue: one running, one ready to start.
MAX_INFLIGHT_BATCHES = 2
# Longest wait for the raw topics' partition metadata before joining the group.
TOPIC_METADATA_WAIT_S = 30.0

__all__ = ["FatalWorkerError", "Worker"]


class Worker:
    def __init__(
        self,
        settings: Settings,
        engine: InferenceEngine,
        registry: CollectorRegistry | None = None,
        *,
        consumer_options: dict | None = None,
    ):
        self.s = settings
        self.engine = engine
        self.window = settings.window.window or engine.window
        self.hop = settings.window.hop or engine.hop
        if self.window != engine.window:
            raise ValueError(
                f"window.window={self.window} but model {engine.version} was trained on {engine.window}-sample windows"
            )
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        self.metrics.set_model(engine.version, engine.meta.arch, self.window, self.hop)
        self.batcher = MicroBatcher(settings.batch.max_batch, settings.batch.max_delay_ms / 1000.0)
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.stop_event = threading.Event()
        # Guards the partition table and the batcher: the rebalance handlers run inside poll().
        self.lock = threading.RLock()
        self.producer = TrackedProducer(settings.kafka)
        # Each output's policy on refusal (pipeline.kafka.producer): cleaned chunks and alert events
        # are fatal, dead letters hold the commit, drift events are advisory.
        alerts_topic = settings.kafka.alerts_topic
        self.monitor = Monitor(
            settings, engine, self.window, self.metrics,
            publish_alert=partial(self.producer.send, alerts_topic, delivery=Delivery.FATAL),
            publish_drift=partial(self.producer.send, alerts_topic, delivery=Delivery.ADVISORY),
        )
        self.consumer = None
        self.commits: CommitManager | None = None  # built in start(), around the consumer
        self._consumer_options = consumer_options or {}
        self._metrics_server = None
        self._watcher: ModelWatcher | None = None
        # One inference thread (worker.inference_thread): the next poll/decode/windowing overlaps
        # the forward pass; results are applied in order by this (the main) thread.
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dae-infer")
        self._inflight: deque = deque()
        self.latencies: list[float] = []  # seconds; read by `dae bench`
        self.keep_latencies = False

    @property
    def drift(self) -> DriftMonitor:
        """The monitor's drift state (read by tests/test_drift_retrain_kafka.py)."""
        return self.monitor.drift

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        k = self.s.kafka
        verify_connection(k)
        ensure_topics(k, [*k.raw_topics, k.clean_topic, k.dead_letter_topic, k.alerts_topic])
        self.producer.start()
        self.consumer = make_consumer(k, group_id=k.group_id, **self._consumer_options)
        # Know every raw topic's partitions before joining: a join on missing metadata assigns
        # nothing and kafka-python would not re-join until its next metadata refresh.
        deadline = time.monotonic() + TOPIC_METADATA_WAIT_S
        while not all(self.consumer.partitions_for_topic(t) for t in k.raw_topics):
            if time.monotonic() > deadline:
                raise FatalWorkerError(f"raw topic(s) {', '.join(k.raw_topics)} have no partitions")
            time.sleep(0.2)
        self.commits = CommitManager(
            self.consumer, self.partitions, self.lock, self.metrics,
            drop_queued=self._drop_queued, flush=self.producer.flush,
            on_partition_gone=self.monitor.forget_partition,
            commit_interval_s=self.s.worker.commit_interval_s, flush_timeout_s=self.s.worker.shutdown_timeout_s,
        )
        self.consumer.subscribe(list(k.raw_topics), listener=self.commits.listener())
        if self.s.metrics.enabled:
            self._metrics_server = serve(self.metrics.registry, self.s.metrics.host, self.s.metrics.port)
        if self.s.model.watch_interval_s > 0 and self.s.model.version is None:
            self._watcher = ModelWatcher(
                self.s.model.registry, self.engine, interval_s=self.s.model.watch_interval_s,
                device=self.s.model.device, dtype=self.s.model.dtype,
                on_refused=lambda version, exc: self.metrics.model_swaps.labels("refused").inc(),
            ).start()

    def install_signal_handlers(self) -> None:
        def _stop(signum, _frame):
            log.info("signal %s: finishing the in-flight batch, flushing, committing", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self, max_seconds: float | None = None) -> None:
        if self.consumer is None:
            self.start()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self.stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
                self.step()
            self.shutdown()
        except BaseException:
            # Never commit after an unexpected error: the next owner replays from the last commit.
            self._close()
            raise

    def step(self) -> None:
        left = self.batcher.time_left()
        timeout_ms = self.s.worker.poll_timeout_ms
        if left is not None:
            timeout_ms = min(timeout_ms, int(left * 1000))
        if self._inflight:  # come back soon to publish what the inference thread finished
            timeout_ms = min(timeout_ms, 2)
        if not self.partitions:
            # Nothing assigned (joining or re-joining the group): give the coordinator a whole
            # poll to finish the join; very short polls can keep timing out before it completes.
            timeout_ms = max(timeout_ms, 500)
        records = self.consumer.poll(timeout_ms=max(timeout_ms, 0))
        self.commits.load_resume_points()
        with self.lock:
            n_msgs = 0
            for tp, msgs in records.items():
                part = self.partitions.get(tp)
                if part is None:  # revoked meanwhile: the next owner replays these
                    continue
                n_msgs += len(msgs)
                for msg in msgs:
                    self._handle(tp, part, msg)
            if n_msgs:
                self.metrics.messages.inc(n_msgs)
            self._apply_done()
            self._maybe_swap_model()
            if self.s.worker.inference_thread:
                while self.batcher.due() and len(self._inflight) < MAX_INFLIGHT_BATCHES:
                    self._submit_batch()
            else:
                while self.batcher.due():
                    self._run_batch()
            self._idle_flush()
        self.producer.check()
        if self.commits.due():
            self.commits.commit()

    def shutdown(self) -> None:
        t0 = time.monotonic()
        with self.lock:
            self._apply_done(wait=True)
            while len(self.batcher):
                self._run_batch()
        self.producer.flush(timeout=self.s.worker.shutdown_timeout_s)
        self.producer.check()
        self.commits.commit(sync=True)
        self._close()
        log.info("worker stopped cleanly in %.2f s", time.monotonic() - t0)

    def _maybe_swap_model(self) -> None:
        """Switch to a validated new model between two batches: every window submitted from now
        on uses it and every output released by its batches carries its version."""
        new = self._watcher.take() if self._watcher is not None else None
        if new is None:
            return
        old = self.engine
        self.engine = new
        self.metrics.model_swaps.labels("swapped").inc()
        self.metrics.set_model(new.version, new.meta.arch, new.window, new.hop)
        log.info("now serving model %s (was %s)", new.version, old.version)

    def _close(self) -> None:
        """Release everything without committing."""
        if self._watcher is not None:
            self._watcher.stop()
        self._infer_pool.shutdown(wait=True, cancel_futures=True)
        if self._metrics_server is not None:
            server, _thread = self._metrics_server
            server.shutdown()
            server.server_close()
            self._metrics_server = None
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception:  # pragma: no cover - best effort on the way out
                log.exception("closing consumer")
            self.consumer = None
        self.producer.close(timeout=self.s.worker.shutdown_timeout_s)

    def _drop_queued(self, gone: set[TopicPartition]) -> None:
        """Discard the queued windows of these partitions' streams (the commit manager's hook)."""
        self.batcher.drop(lambda seg: seg.stream.tp in gone)

    # ---------------------------------------------------------------------------- input
    def _handle(self, tp: TopicPartition, part: PartitionState, msg) -> None:
        part.consumed = msg.offset + 1
        try:
            chunk = decode_chunk(msg.key, msg.value, msg.headers, max_frames=self.s.window.max_chunk_frames)
            if not self.engine.serves_rate(chunk.rate):
                raise DecodeError(
                    "rate_mismatch",
                    f"sample rate {chunk.rate:g} Hz is not served by model {self.engine.version} "
                    f"(serves {', '.join(f'{r:g}' for r in self.engine.meta.sample_rates)} Hz)",
                )
        except DecodeError as err:
            self._dead_letter(tp, part, msg, err)
            return
        self.metrics.input_samples.inc(chunk.frames)
        stream = part.stream(chunk.stream)
        seg, kind = part.route(stream, chunk, msg.offset, self.window, self.hop)
        if kind in ("gap", "rewind", "format"):
            self.metrics.discontinuities.labels(kind).inc()
            log.warning("stream %s: %s at sample %d (expected %s); new segment", chunk.stream, kind,
                        chunk.index, stream.expected)
        if seg is None:  # already published before the last commit
            return
        if kind != "next" and stream.closing:
            self._flush_segments(stream.closing)
        seg.add_input(msg.offset, chunk.index, chunk.end, msg.timestamp)
        block = seg.win.feed(chunk.samples)
        stream.last_seen = time.monotonic()
        if block is not None:
            self.batcher.add(seg, block, len(block))

    def _flush_segments(self, segments: list[Segment]) -> None:
        for seg in segments:
            tail = seg.win.flush()
            if tail is not None:
                self.batcher.add(seg, tail, len(tail))
            else:  # nothing left to denoise: what the flush made final goes out now
                chunk = seg.win.ready()
                if chunk is not None:
                    self._publish(seg, chunk.start, chunk.samples, seg.version)
        segments.clear()

    def _idle_flush(self) -> None:
        limit = time.monotonic() - self.s.window.idle_flush_s
        for part in self.partitions.values():
            for stream in part.streams.values():
                seg = stream.open
                if seg is not None and not seg.win.flushed and stream.last_seen < limit:
                    self.metrics.idle_flushes.inc()
                    stream.retired.append(seg)
                    stream.open = None
                    self._flush_segments([seg])
            part.forget_finished()
        self.monitor.expire()
        self.metrics.active_streams.set(sum(len(p.streams) for p in self.partitions.values()))

    def _dead_letter(self, tp: TopicPartition, part: PartitionState, msg, err: DecodeError) -> None:
        log.warning("dead-letter %s[%d]@%d: %s", tp.topic, tp.partition, msg.offset, err)
        self.metrics.dead_letters.labels(err.reason).inc()
        rec = OutputRecord(0, 0, None)
        part.dead_letters[msg.offset] = rec  # holds the partition's commit until acknowledged
        headers = dead_letter_headers(msg.headers, err.reason, err.detail, tp.topic, tp.partition, msg.offset)
        self.producer.send(self.s.kafka.dead_letter_topic, msg.key, msg.value, headers, record=rec,
                           delivery=Delivery.BLOCKING, what=f"the dead letter of {tp.topic}[{tp.partition}]@{msg.offset}",
                           on_error=lambda _exc: self.metrics.dead_letter_failures.inc())

    # ------------------------------------------------------------------------- inference
    def _submit_batch(self) -> None:
        """Close a batch and hand it to the inference thread (the main thread keeps polling)."""
        items = self.batcher.take()
        if not items:
            return
        # Group the blocks by segment (order within a segment kept): a segment's blocks in one
        # batch are consecutive grid windows, so each segment gets one vectorised overlap-add.
        groups: dict[int, tuple[Segment, list]] = {}
        for seg, block in items:
            groups.setdefault(id(seg), (seg, []))[1].append(block)
        data = np.concatenate([b.data for _, blocks in groups.values() for b in blocks])
        engine = self.engine  # the batch keeps the model it was submitted with, across a swap
        if self.s.worker.inference_thread:
            future = self._infer_pool.submit(self._timed_infer, engine, data)
        else:
            future = Future()
            future.set_result(self._timed_infer(engine, data))
        self._inflight.append((future, list(groups.values()), engine, data))

    @staticmethod
    def _timed_infer(engine: InferenceEngine, data: np.ndarray):
        t0 = time.perf_counter()
        result = engine.infer(data)
        return result, time.perf_counter() - t0

    def _apply_done(self, wait: bool = False) -> None:
        """Overlap-add and publish finished batches, strictly in submission order."""
        while self._inflight and (wait or self._inflight[0][0].done()):
            future, groups, engine, data = self._inflight.popleft()
            result, seconds = future.result()
            self.metrics.inference_seconds.observe(seconds)
            n = result.outputs.shape[0]
            self.metrics.batch_size.observe(n)
            version = engine.version
            self.metrics.windows.labels(version).inc(n)
            self.metrics.recon_error.labels(version).observe_many(result.errors)
            self.monitor.observe_batch(engine, result.errors)
            i = 0
            for seg, blocks in groups:
                k = sum(len(b) for b in blocks)
                part = self._alive(seg)
                if part is not None:  # its partition may have been revoked meanwhile
                    outputs = result.outputs[i : i + k]
                    seg.win.add_output(blocks[0].start, outputs)
                    seg.version = version
                    chunk = seg.win.ready()
                    if chunk is not None:
                        self._publish(seg, chunk.start, chunk.samples, version)
                    starts = np.concatenate([b.starts for b in blocks])
                    self.monitor.score(part, seg, starts, result.errors[i : i + k], result.scales[i : i + k],
                                       data[i : i + k], outputs)
                i += k

    def _alive(self, seg: Segment) -> PartitionState | None:
        """The partition state still holding ``seg``'s stream, or None (revoked or forgotten)."""
        part = self.partitions.get(seg.stream.tp)
        return part if part is not None and part.streams.get(seg.stream.id) is seg.stream else None

    def _run_batch(self) -> None:
        """Synchronous variant: submit one batch and apply it."""
        self._submit_batch()
        self._apply_done(wait=True)

    # ---------------------------------------------------------------------------- output
    def _publish(self, seg: Segment, start: int, samples: np.ndarray, version: str | None = None) -> None:
        stream = seg.stream
        key, value, headers = encode_chunk(stream.id, start, seg.rate, samples, model=version or self.engine.version)
        n = samples.shape[0]
        rec = OutputRecord(start, start + n, seg.input_timestamp(start + n - 1))
        seg.outputs.append(rec)
        self.producer.send(self.s.kafka.clean_topic, key, value, headers, record=rec, delivery=Delivery.FATAL,
                           what=f"cleaned output of stream {stream.id} [{start}, {start + n})",
                           on_ack=partial(self._output_acked, rec.source_ts, n))

    def _output_acked(self, source_ts: float | None, n: int) -> None:
        """The broker acknowledged ``n`` cleaned frames (the producer's IO thread)."""
        self.metrics.output_samples.inc(n)
        self.metrics.last_output.set(time.time())
        if source_ts is not None:
            lat = max(0.0, time.time() - source_ts / 1000.0)
            self.metrics.latency.observe(lat)
            if self.keep_latencies:
                self.latencies.append(lat)
