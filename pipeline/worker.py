"""The worker: consume raw chunks, window per stream, denoise in micro-batches, overlap-add,
publish cleaned chunks, commit offsets only behind acknowledged outputs.

Delivery (README "Delivery"; ``worker.delivery``):
- at-least-once (default): auto-commit is off; a partition's committed offset is the oldest
  source message still feeding an unpublished output (an unfinished window, an output not yet
  acknowledged, or a dead-letter write not yet acknowledged); every stream's resume entry (grid
  anchor, first unpublished index, recorded idle flushes) is durable in the compacted state topic
  before an offset relying on it is committed, so a replay re-publishes the same values or nothing;
- exactly-once: the same, with each input partition's outputs, alert events, dead letters, resume
  entries and offset in one transaction of that partition's transactional producer;
- on revoke: publish and commit what is done, then drop the partitions' state;
- SIGTERM/SIGINT: finish the queued windows, wait for acknowledgments, commit, exit.

The worker composes the parts and owns the loop: the per-message logic is the
:class:`~pipeline.stream.processor.StreamProcessor`'s (pure apart from the sinks below), every
record goes out through a :class:`~pipeline.kafka.producer.TrackedProducer`, commits, resume
entries and rebalances are the :class:`~pipeline.kafka.commits.CommitManager`'s, alerts and drift
the :class:`~pipeline.monitor.monitor.Monitor`'s.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from functools import partial

import numpy as np
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.inference.engine import InferenceEngine
from pipeline.inference.hotswap import ModelWatcher, load_route_engines
from pipeline.inference.routing import ModelSet, route_geometry
from pipeline.kafka.clients import ensure_topics, make_consumer, verify_connection
from pipeline.kafka.commits import CommitManager
from pipeline.kafka.producer import Delivery, FatalWorkerError, TrackedProducer
from pipeline.kafka.statestore import StateStore
from pipeline.kafka.transactions import Transactions
from pipeline.monitor.drift import DriftMonitor
from pipeline.monitor.metrics import WorkerMetrics, serve
from pipeline.monitor.monitor import Monitor
from pipeline.settings import Settings
from pipeline.stream.batching import MicroBatcher
from pipeline.stream.processor import StreamProcessor
from pipeline.stream.state import OutputRecord, PartitionState, Segment, StreamState
from pipeline.wire.codec import encode_chunk
from pipeline.wire.deadletter import dead_letter_headers

log = logging.getLogger(__name__)

# Longest wait for the raw topics' partition metadata before joining the group.
TOPIC_METADATA_WAIT_S = 30.0
# Freed per-stream state goes back to glibc's heap, which keeps the pages: every TRIM_EVERY_S, when
# at least TRIM_AFTER_STREAMS streams' state was dropped since the last trim, hand them back to the
# OS (malloc_trim; `dae bench --many`: 10,000 dropped streams left +58 MB of RSS without, +20 MB
# with it; 60,000: +123 MB without, +56 MB with).
TRIM_EVERY_S = 30.0
TRIM_AFTER_STREAMS = 1000


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass

__all__ = ["FatalWorkerError", "Worker"]


class Worker:
    def __init__(
        self,
        settings: Settings,
        engine: InferenceEngine,
        registry: CollectorRegistry | None = None,
        *,
        consumer_options: dict | None = None,
        route_engines: dict[str, InferenceEngine] | None = None,
    ):
        self.s = settings
        k = settings.kafka
        self.window = settings.window.window or engine.window
        self.hop = settings.window.hop or engine.hop
        if self.window != engine.window:
            raise ValueError(
                f"window.window={self.window} but model {engine.version} was trained on {engine.window}-sample windows"
            )
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        m = settings.model
        if route_engines is None and m.routes:
            route_engines = load_route_engines(m.registry, m.routes, device=m.device, dtype=m.dtype)
        # One engine per model route (docs/routing.md); without routes, the default route alone.
        self.models = ModelSet(engine, m.routes, route_engines, strict_rates=m.strict_rates)
        self.metrics.set_model(engine.version, engine.meta.arch, self.window, self.hop)
        for eng in self.models.engines.values():
            if eng is not engine:
                self.metrics.set_model(eng.version, eng.meta.arch, eng.window, eng.hop, route=eng.route)
        self.stop_event = threading.Event()
        # Guards the partition table and the batcher: the rebalance handlers run inside poll().
        self.lock = threading.RLock()
        self.exactly_once = settings.worker.delivery == "exactly_once"
        self.transactions = Transactions(k, k.group_id) if self.exactly_once else None
        self.producer = TrackedProducer(k, self.transactions)
        # Each output's policy on refusal (pipeline.kafka.producer): cleaned chunks, alert events and
        # resume entries are fatal, dead letters hold the commit, drift events are advisory.
        self.monitor = Monitor(
            settings, engine, self.window, self.metrics, hop=self.hop, publish_alert=self._publish_alert,
            publish_drift=partial(self.producer.send, k.alerts_topic, delivery=Delivery.ADVISORY),
        )
        self.processor = StreamProcessor(
            self.models, self.window, self.hop, self.metrics,
            batcher=MicroBatcher(settings.batch.max_batch, settings.batch.max_delay_ms / 1000.0),
            max_chunk_frames=settings.window.max_chunk_frames, idle_flush_s=settings.window.idle_flush_s,
            publish=self._publish, dead_letter=self._dead_letter, write_state=self._write_state,
            score=self.monitor.score, observe_batch=self._observe_batch, inference_thread=settings.worker.inference_thread,
            on_stage=self.metrics.stages.observe,
        )
        self.partitions: dict[TopicPartition, PartitionState] = self.processor.partitions
        self.store = StateStore(k, read_committed=self.exactly_once)
        self.consumer = None
        self.commits: CommitManager | None = None  # built in start(), around the consumer
        self._consumer_options = consumer_options or {}
        self._metrics_server = None
        self._watcher: ModelWatcher | None = None
        self.latencies: list[float] = []  # seconds; read by `dae bench`
        self.keep_latencies = False
        self._trim_at = time.monotonic() + TRIM_EVERY_S
        self._tracked_high = 0  # most streams with state since the last trim

    @property
    def engine(self) -> InferenceEngine:
        return self.processor.engine

    @property
    def drift(self) -> DriftMonitor:
        """The monitor's drift state (read by tests/test_drift_retrain_kafka.py)."""
        return self.monitor.drift

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        k = self.s.kafka
        verify_connection(k)
        for eng in self.models.engines.values():  # before joining: the first assignment may be a backlog
            secs = eng.warm(self.s.batch.max_batch)
            log.info("model %s (route %s) warmed up in %.0f ms", eng.version, eng.route, secs * 1e3)
        ensure_topics(k, [*k.raw_topics, k.clean_topic, k.dead_letter_topic, k.alerts_topic])
        self.producer.start()
        opts = dict(self._consumer_options)
        if k.group_instance_id:
            opts.setdefault("group_instance_id", k.group_instance_id)
        if self.exactly_once:  # raw input written in transactions counts only once committed
            opts.setdefault("isolation_level", "read_committed")
        self.consumer = make_consumer(k, group_id=k.group_id, **opts)
        # Know every raw topic's partitions before joining: a join on missing metadata assigns
        # nothing and kafka-python would not re-join until its next metadata refresh.
        deadline = time.monotonic() + TOPIC_METADATA_WAIT_S
        while not all(self.consumer.partitions_for_topic(t) for t in k.raw_topics):
            if time.monotonic() > deadline:
                raise FatalWorkerError(f"raw topic(s) {', '.join(k.raw_topics)} have no partitions")
            time.sleep(0.2)
        self.store.ensure(max(len(self.consumer.partitions_for_topic(t)) for t in k.raw_topics))
        self.commits = CommitManager(
            self.consumer, self.partitions, self.lock, self.metrics,
            producer=self.producer, store=self.store, transactions=self.transactions,
            drop_queued=self.processor.drop_queued, on_partition_gone=self.monitor.forget_partition,
            commit_interval_s=self.s.worker.commit_interval_s, flush_timeout_s=self.s.worker.shutdown_timeout_s,
            broker=k.bootstrap_servers,
        )
        self.consumer.subscribe(list(k.raw_topics), listener=self.commits.listener())
        if self.s.metrics.enabled:
            self._metrics_server = serve(self.metrics.registry, self.s.metrics.host, self.s.metrics.port)
        if self.s.model.watch_interval_s > 0 and self.s.model.version is None:
            self._watcher = ModelWatcher(
                self.s.model.registry, self.models, interval_s=self.s.model.watch_interval_s,
                device=self.s.model.device, dtype=self.s.model.dtype, warm_rows=self.s.batch.max_batch,
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
        p = self.processor
        left = p.batcher.time_left()
        timeout_ms = self.s.worker.poll_timeout_ms
        if left is not None:
            timeout_ms = min(timeout_ms, int(left * 1000))
        if p.busy:  # come back soon to publish what the inference thread finished
            timeout_ms = min(timeout_ms, 2)
        if not self.partitions:
            # Nothing assigned (joining or re-joining the group): give the coordinator a whole
            # poll to finish the join; very short polls can keep timing out before it completes.
            timeout_ms = max(timeout_ms, 500)
        records = self.consumer.poll(timeout_ms=max(timeout_ms, 0))
        if records:
            self._observe_poll(records)
        self.commits.load_resume_points()
        with self.lock:
            n_msgs = 0
            for tp, msgs in records.items():
                part = self.partitions.get(tp)
                if part is None:  # revoked meanwhile: the next owner replays these
                    continue
                n_msgs += len(msgs)
                for msg in msgs:
                    p.handle(part, msg)
            if n_msgs:
                self.metrics.messages.inc(n_msgs)
            p.apply_done()
            self._maybe_swap_model()
            p.run_due_batches()
            self._mark_caught_up()
            p.idle_flush()
            self.monitor.expire()
            p.release_held()
            self._maybe_trim()
        self.producer.check()
        if self.commits.due():
            self.commits.commit()

    def _mark_caught_up(self) -> None:
        """Per partition: has this worker consumed everything the broker had at the last fetch? (Its
        position has reached the high watermark.) Called with the lock held."""
        for tp, part in self.partitions.items():
            try:
                high, pos = self.consumer.highwater(tp), self.consumer.position(tp, timeout_ms=0)
            except AssertionError:  # no longer assigned (kafka-python asserts it)
                high = pos = None
            part.caught_up = high is not None and pos is not None and pos >= high

    def _maybe_trim(self) -> None:
        tracked = self.monitor.streams() + sum(len(part.streams) for part in self.partitions.values())
        self._tracked_high = max(self._tracked_high, tracked)
        if time.monotonic() < self._trim_at:
            return
        self._trim_at = time.monotonic() + TRIM_EVERY_S
        if self._tracked_high - tracked >= TRIM_AFTER_STREAMS:
            _malloc_trim()
        self._tracked_high = tracked

    def _observe_poll(self, records: dict) -> None:
        """Stage "poll": each record's age (its timestamp, producer or broker clock) when polled, one
        histogram call per poll."""
        now_ms = time.time() * 1000.0
        ts = np.fromiter((m.timestamp for msgs in records.values() for m in msgs), dtype=np.float64)
        ts = ts[ts >= 0]  # -1: no timestamp
        if ts.size:
            self.metrics.stages.observe_many("poll", np.maximum(now_ms - ts, 0.0) / 1000.0)

    def shutdown(self) -> None:
        t0 = time.monotonic()
        with self.lock:
            self.processor.finish()
        self.producer.flush(timeout=self.s.worker.shutdown_timeout_s)
        with self.lock:
            self.processor.release_held()  # tails whose flush records are acknowledged by now
        self.producer.check()
        self.commits.final_commit()
        self._close()
        log.info("worker stopped cleanly in %.2f s", time.monotonic() - t0)

    def _maybe_swap_model(self) -> None:
        """Switch a route to its validated new model between two batches: every window of the route
        submitted from now on uses it and every output released by its batches carries its version."""
        for new in self._watcher.take() if self._watcher is not None else ():
            old = self.models.engine(new.route)
            self.models.install(new)
            self.metrics.model_swaps.labels("swapped").inc()
            hop = route_geometry(new.route, new, self.window, self.hop)[1]
            self.metrics.set_model(new.version, new.meta.arch, new.window, hop, route=new.route)
            log.info("route %s: now serving model %s (was %s)", new.route, new.version, old.version)

    def _close(self) -> None:
        """Release everything without committing."""
        if self._watcher is not None:
            self._watcher.stop()
        self.processor.close()
        if self._metrics_server is not None:
            server, _thread = self._metrics_server
            server.shutdown()
            server.server_close()
            self._metrics_server = None
        if self.commits is not None:
            self.commits.close()
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception:  # pragma: no cover - best effort on the way out
                log.exception("closing consumer")
            self.consumer = None
        self.producer.close(timeout=self.s.worker.shutdown_timeout_s)
        self.store.close()

    # ------------------------------------------------------------------ the processor's sinks
    def _publish(self, seg: Segment, rec: OutputRecord, samples: np.ndarray, version: str) -> None:
        stream = seg.stream
        key, value, headers = encode_chunk(stream.id, rec.start, seg.rate, samples, model=version, route=seg.served)
        self.producer.send(self.s.kafka.clean_topic, key, value, headers, record=rec, delivery=Delivery.FATAL,
                           what=f"cleaned output of stream {stream.id} [{rec.start}, {rec.end})", source=stream.tp,
                           on_ack=partial(self._output_acked, rec.source_ts, rec.end - rec.start, time.perf_counter()))

    def _dead_letter(self, part: PartitionState, msg, reason: str, detail: str) -> None:
        tp = part.tp
        log.warning("dead-letter %s[%d]@%d: %s: %s", tp.topic, tp.partition, msg.offset, reason, detail)
        self.metrics.dead_letters.labels(reason).inc()
        rec = OutputRecord(0, 0, None)
        part.dead_letters[msg.offset] = rec  # holds the partition's commit until acknowledged
        headers = dead_letter_headers(msg.headers, reason, detail, tp.topic, tp.partition, msg.offset)
        self.producer.send(self.s.kafka.dead_letter_topic, msg.key, msg.value, headers, record=rec,
                           delivery=Delivery.BLOCKING, what=f"the dead letter of {tp.topic}[{tp.partition}]@{msg.offset}",
                           on_error=lambda _exc: self.metrics.dead_letter_failures.inc(), source=tp)

    def _write_state(self, part: PartitionState, stream: StreamState) -> OutputRecord:
        return self.commits.write_state(part, stream)

    def _publish_alert(self, key: bytes, value: bytes, headers: list, *, record: OutputRecord | None = None,
                       what: str) -> None:
        # Exactly-once: the event goes into the transaction of the partition whose window raised it
        # (a micro-batch scores windows of several partitions in one call).
        part = self.monitor.publishing
        self.producer.send(self.s.kafka.alerts_topic, key, value, headers, record=record, delivery=Delivery.FATAL,
                           what=what, source=part.tp if part is not None else None)

    def _observe_batch(self, engine: InferenceEngine, result) -> None:
        n = result.outputs.shape[0]
        self.metrics.batch_size.observe(n)
        route = getattr(engine, "route", "default")
        self.metrics.windows.labels(engine.version, route).inc(n)
        self.metrics.recon_error.labels(engine.version, route).observe_many(result.errors)
        self.monitor.observe_batch(engine, result.errors)

    def _output_acked(self, source_ts: float | None, n: int, sent: float) -> None:
        """The broker acknowledged ``n`` cleaned frames sent at ``sent`` (perf_counter; the producer's IO thread)."""
        self.metrics.stages.observe("ack", time.perf_counter() - sent)
        self.metrics.output_samples.inc(n)
        self.metrics.last_output.set(time.time())
        if source_ts is not None:
            lat = max(0.0, time.time() - source_ts / 1000.0)
            self.metrics.latency.observe(lat)
            if self.keep_latencies:
                self.latencies.append(lat)
