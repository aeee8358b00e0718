"""The worker's per-message logic without Kafka: decode, route to a segment, cut windows, batch,
denoise, overlap-add, and hand every result to the sinks the worker passes in (publish, dead-letter,
state write, scoring). Pure logic apart from those sinks and the engine, so a property test drives
arbitrary messages through exactly the worker's path (tests/test_processor.py).

No message can stop the processor: a message the codec rejects is dead-lettered with its reason;
any other exception while handling one message dead-letters that message as ``processing_error``
(exception type and message in the detail), is counted, and the message's stream restarts with a
new segment; the other streams carry on. An exception while applying a batch's output to one
segment drops that segment (logged, counted), never the batch or the worker.

Idle flushes are decisions taken on the wall clock, so a replay could not recompute them: each is
recorded (``write_state``) before the flushed tail is published, and a replay repeats it after the
same message (``StreamState.replay``). They are taken only on partitions read to the end
(``PartitionState.caught_up``): a replay, or a worker that fell behind, must not take new ones on a
stall of its own while the stream's next message waits in the backlog.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from pipeline.inference.routing import ModelSet, route_geometry
from pipeline.settings import DEFAULT_ROUTE
from pipeline.stream.batching import MicroBatcher
from pipeline.stream.state import OutputRecord, PartitionState, Segment, StreamState
from pipeline.wire.codec import DecodeError, decode_chunk
from pipeline.wire.deadletter import PROCESSING_ERROR

log = logging.getLogger(__name__)

# Batches in the inference thread's queue: one running, one ready to start.
MAX_INFLIGHT_BATCHES = 2

# publish(segment, record, samples, model version): send one cleaned chunk, marking ``record``.
Publish = Callable[[Segment, OutputRecord, np.ndarray, str], None]
# dead_letter(partition, message, reason, detail)
DeadLetter = Callable[[PartitionState, Any, str, str], None]
# write_state(partition, stream) -> the record acknowledged once the stream's entry is durable
WriteState = Callable[[PartitionState, StreamState], OutputRecord]
# on_stage(stage, seconds): one stage's duration, once per batch ("batch_wait", "forward", "encode",
# "score"); the worker feeds its dae_stage_seconds histogram (this layer imports no Prometheus).
OnStage = Callable[[str, float], None]


def _no_stage(_stage: str, _seconds: float) -> None:
    pass


class StreamProcessor:
    def __init__(
        self,
        engine,  # an engine, or a ModelSet (one engine per route)
        window: int,
        hop: int,
        metrics,  # WorkerMetrics: messages, input_samples, discontinuities, idle_flushes, ...
        *,
        batcher: MicroBatcher,
        max_chunk_frames: int,
        idle_flush_s: float,
        publish: Publish,
        dead_letter: DeadLetter,
        write_state: WriteState,
        score: Callable[..., None],  # (partition, segment, starts, errors, scales, windows, outputs)
        observe_batch: Callable[[Any, Any], None],  # (engine, Inference) after each batch
        inference_thread: bool = False,
        clock: Callable[[], float] = time.monotonic,
        on_stage: OnStage | None = None,
    ):
        self.models = engine if isinstance(engine, ModelSet) else ModelSet.single(engine)
        # The default route's geometry (window.hop may override its model's); other routes' models
        # use their own.
        self.window, self.hop = window, hop
        self.metrics = metrics
        self.batcher = batcher
        self.max_chunk_frames = max_chunk_frames
        self.idle_flush_s = idle_flush_s
        self._publish_chunk = publish
        self._dead_letter = dead_letter
        self._write_state = write_state
        self._score = score
        self._observe_batch = observe_batch
        self._clock = clock
        self._stage = on_stage or _no_stage
        self._t_encode = self._t_score = 0.0  # of the batch being applied
        self.partitions: dict[Any, PartitionState] = {}
        # One inference thread (worker.inference_thread): the next poll/decode/windowing overlaps
        # the forward pass; results are applied in order by the caller's thread.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dae-infer") if inference_thread else None
        self._inflight: deque = deque()
        # Tails of idle-flushed segments waiting for their flush record: (segment, record, samples, version).
        self._held: list[tuple[Segment, OutputRecord, np.ndarray, str]] = []

    @property
    def engine(self):
        """The default route's engine."""
        return self.models.default

    def _geometry(self, route: str, engine) -> tuple[int, int]:
        return route_geometry(route, engine, self.window, self.hop)

    # ---------------------------------------------------------------------------- input
    def handle(self, part: PartitionState, msg) -> None:
        """One consumed record (``offset``, ``key``, ``value``, ``headers``, ``timestamp``)."""
        part.consumed = msg.offset + 1
        if part.start is not None and msg.offset < part.start:  # before the committed offset
            return
        try:
            self._handle(part, msg)
        except Exception as exc:  # the guard: a bug met by one message must not stop the others
            self._processing_error(part, msg, exc)

    def _handle(self, part: PartitionState, msg) -> None:
        try:
            chunk = decode_chunk(msg.key, msg.value, msg.headers, max_frames=self.max_chunk_frames)
            route, engine, why = self.models.resolve(chunk.stream, chunk.rate)
            if engine is None:
                raise DecodeError("rate_mismatch", why)
        except DecodeError as err:
            self._dead_letter(part, msg, err.reason, err.detail)
            return
        self.metrics.input_samples.inc(chunk.frames)
        stream = part.stream(chunk.stream)
        seg, kind = part.route(stream, chunk, msg.offset, *self._geometry(route, engine))
        if seg is not None:
            seg.route = route  # (a segment moves to its route's first model when the geometry allows)
        if kind in ("gap", "rewind", "format"):
            self.metrics.discontinuities.labels(kind).inc()
            log.warning("stream %s: %s at sample %d (expected %s); new segment", chunk.stream, kind,
                        chunk.index, stream.expected)
        if seg is None:  # already published before the last commit
            return
        if kind != "next" and stream.closing:
            self._flush_segments(stream.closing)
            stream.closing = ()
        seg.add_input(msg.offset, chunk.index, chunk.end, msg.timestamp)
        block = seg.win.feed(chunk.samples)
        stream.last_seen = self._clock()
        if block is not None:
            self.batcher.add(seg, block, len(block))
        if msg.offset in stream.replay:  # the previous owner idle-flushed here: do the same
            stream.replay.discard(msg.offset)
            self._end_segment(stream, None)

    def _processing_error(self, part: PartitionState, msg, exc: Exception) -> None:
        log.exception("processing_error at offset %d: dead-lettering the message, restarting its stream", msg.offset)
        self.metrics.processing_errors.inc()
        self._dead_letter(part, msg, PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
        try:
            stream = part.streams.get(msg.key.decode("utf-8"))
        except (AttributeError, UnicodeDecodeError):
            return
        if stream is None:
            return
        # Its next message starts a new segment; what it had so far is released as after a gap.
        todo = list(stream.closing)
        if stream.open is not None:
            stream.retire(stream.open)
            todo.append(stream.open)
        stream.open, stream.expected, stream.closing = None, None, ()
        try:
            self._flush_segments(todo)
        except Exception:  # its state is broken too: give its segments up, keep the worker
            log.exception("stream %s: could not flush after a processing error; dropping its segments", stream.id)
            self._drop_segments(stream)

    def _drop_segments(self, stream: StreamState) -> None:
        dropped = set(map(id, stream.segments()))
        self.batcher.drop(lambda seg: id(seg) in dropped)
        self._held = [h for h in self._held if id(h[0]) not in dropped]
        stream.open, stream.retired, stream.expected, stream.closing = None, (), None, ()

    def _end_segment(self, stream: StreamState, gate: OutputRecord | None) -> None:
        seg = stream.open
        stream.retire(seg)
        stream.open = None
        seg.gate = gate
        self._flush_segments([seg])

    def _flush_segments(self, segments: list[Segment]) -> None:
        for seg in segments:
            tail = seg.win.flush()
            if tail is not None:
                self.batcher.add(seg, tail, len(tail))
            else:  # nothing left to denoise: what the flush made final goes out now
                chunk = seg.win.ready()
                if chunk is not None:
                    if seg.version is None:  # no batch applied yet: the model serving it now
                        engine = self.models.engine(seg.route)
                        seg.version, seg.served = engine.version, getattr(engine, "route", DEFAULT_ROUTE)
                    self._publish(seg, chunk.start, chunk.samples, seg.version)

    def idle_flush(self) -> None:
        """Release the tails of streams silent for ``idle_flush_s`` on partitions this owner has read
        to the end (``PartitionState.caught_up``); forget finished streams."""
        limit = self._clock() - self.idle_flush_s
        for part in self.partitions.values():
            for stream in part.streams.values() if part.caught_up else ():
                seg = stream.open
                if seg is not None and not seg.win.flushed and stream.last_seen < limit:
                    self.metrics.idle_flushes.inc()
                    stream.flushed_at(stream.last_offset)
                    self._end_segment(stream, self._write_state(part, stream))
            part.forget_finished()
        self.metrics.active_streams.set(sum(len(p.streams) for p in self.partitions.values()))

    def release_held(self) -> None:
        """Publish the held tails whose flush record is now durable."""
        if not self._held:
            return
        keep = []
        for item in self._held:
            seg = item[0]
            if self._alive(seg) is None:
                continue
            if seg.gate.acked:
                self._publish_chunk(*item)
            else:
                keep.append(item)
        self._held = keep

    def drop_queued(self, gone: set) -> None:
        """Discard the queued windows and held tails of these partitions' streams."""
        self.batcher.drop(lambda seg: seg.stream.tp in gone)
        self._held = [h for h in self._held if h[0].stream.tp not in gone]

    # ------------------------------------------------------------------------- inference
    def run_due_batches(self) -> None:
        if self._pool is not None:
            while self.batcher.due() and len(self._inflight) < MAX_INFLIGHT_BATCHES:
                self._submit_batch()
        else:
            while self.batcher.due():
                self._submit_batch()
                self.apply_done(wait=True)

    def finish(self) -> None:
        """Apply what is in flight and run every queued window (shutdown)."""
        self.apply_done(wait=True)
        while len(self.batcher):
            self._submit_batch()
            self.apply_done(wait=True)

    @property
    def busy(self) -> bool:
        """A batch is in the inference thread."""
        return bool(self._inflight)

    def _submit_batch(self) -> None:
        """Close a batch and hand it to the inference thread (or run it now): one forward pass per
        route and channel count in it (streams may differ), each grouped by segment (order within a
        segment kept), so each segment gets one vectorised overlap-add of consecutive grid windows."""
        items = self.batcher.take()
        self._stage("batch_wait", self.batcher.last_wait)
        by_model: dict[tuple[str, int], dict[int, tuple[Segment, list]]] = {}
        for seg, block in items:
            groups = by_model.setdefault((seg.route, block.data.shape[1]), {})
            groups.setdefault(id(seg), (seg, []))[1].append(block)
        for (route, _channels), groups in by_model.items():
            engine = self.models.engine(route)  # the batch keeps the model it was submitted with, across a swap
            data = np.concatenate([b.data for _, blocks in groups.values() for b in blocks])
            if self._pool is not None:
                future = self._pool.submit(_timed_infer, engine, data)
            else:
                future = Future()
                future.set_result(_timed_infer(engine, data))
            self._inflight.append((future, list(groups.values()), engine, data))

    def apply_done(self, wait: bool = False) -> None:
        """Overlap-add and publish finished batches, strictly in submission order."""
        while self._inflight and (wait or self._inflight[0][0].done()):
            future, groups, engine, data = self._inflight.popleft()
            result, seconds = future.result()
            self.metrics.inference_seconds.observe(seconds)
            self._stage("forward", seconds)
            self._observe_batch(engine, result)
            self._t_encode = self._t_score = 0.0
            i = 0
            for seg, blocks in groups:
                k = sum(len(b) for b in blocks)
                part = self._alive(seg)
                if part is not None:  # its partition may have been revoked meanwhile
                    try:
                        seg.served = getattr(engine, "route", DEFAULT_ROUTE)
                        self._apply(part, seg, blocks, engine.version, result, data, i, k)
                    except Exception:  # one broken segment must not stop the batch or the worker
                        log.exception("stream %s: applying a batch failed; dropping its segments", seg.stream.id)
                        self.metrics.processing_errors.inc()
                        self._drop_segments(seg.stream)
                i += k
            self._stage("encode", self._t_encode)
            self._stage("score", self._t_score)

    def _apply(self, part, seg: Segment, blocks, version: str, result, data, i: int, k: int) -> None:
        t0 = time.perf_counter()
        outputs = result.outputs[i : i + k]
        seg.win.add_output(blocks[0].start, outputs)
        seg.version = version
        chunk = seg.win.ready()
        if chunk is not None:
            self._publish(seg, chunk.start, chunk.samples, version)
        t1 = time.perf_counter()
        # The blocks of one segment in a batch are consecutive grid windows (add_output relies on it too).
        starts = blocks[0].start + blocks[0].hop * np.arange(k)
        self._score(part, seg, starts, result.errors[i : i + k], result.scales[i : i + k], data[i : i + k], outputs)
        self._t_encode += t1 - t0
        self._t_score += time.perf_counter() - t1

    def _alive(self, seg: Segment) -> PartitionState | None:
        """The partition state still holding ``seg``'s stream, or None (revoked or forgotten)."""
        part = self.partitions.get(seg.stream.tp)
        return part if part is not None and part.streams.get(seg.stream.id) is seg.stream else None

    # ---------------------------------------------------------------------------- output
    def _publish(self, seg: Segment, start: int, samples: np.ndarray, version: str) -> None:
        n = samples.shape[0]
        rec = OutputRecord(start, start + n, seg.input_timestamp(start + n - 1))
        seg.outputs.append(rec)  # unacknowledged: holds the commit until the broker has it
        if seg.gate is not None and not seg.gate.acked:
            self._held.append((seg, rec, samples, version))
        else:
            self._publish_chunk(seg, rec, samples, version)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _timed_infer(engine, data: np.ndarray):
    t0 = time.perf_counter()
    result = engine.infer(data)
    return result, time.perf_counter() - t0
