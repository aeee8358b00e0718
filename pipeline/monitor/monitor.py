"""The worker's scoring side: per-stream anomaly alerts and the drift trigger, published as JSON
events on the alerts topic (a mixin of :class:`pipeline.worker.Worker`, like ``membership``).

- Alert events (``pipeline.monitor.alerts.engine``) are outputs like cleaned chunks: the commit of the stream's
  partition is held at the oldest input its unpublished output still needs until the broker has
  acknowledged the event, and a refused event stops the worker (``_check_event_failures``), so an
  event is never lost behind a commit. After a restart a stream's alert statistics start afresh
  (warm-up), as after a rebalance; an alert raised before and not yet resolved is not resolved by
  the next owner (documented in docs/alerts.md).
- Alert state outlives the stream's window state (a stream silent for ``idle_flush_s`` keeps its
  statistics) and is dropped after ``ALERT_STATE_TTL_S`` of silence or when the partition goes.
- Drift events (``pipeline.monitor.drift``) are advisory, worker-wide: a failed send is logged and counted.
- Both switch with the model precisely: the first batch computed by a new model's engine resets
  them (its calibration, its version in the events).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from pipeline.monitor.alerts.engine import AlertEngine, AlertEvent
from pipeline.monitor.drift import DriftEvent, DriftMonitor
from pipeline.stream.state import OutputRecord, PartitionState, Segment

log = logging.getLogger(__name__)

# A stream silent this long loses its alert statistics (bounded memory for streams that never return).
ALERT_STATE_TTL_S = 3600.0


def _q50(engine) -> float | None:
    q = getattr(engine.meta, "error_quantiles", None) or {}
    v = q.get("q50")
    return float(v) if v is not None else None


class Monitoring:
    def _init_monitoring(self) -> None:
        engine = self.engine
        self.alerts = AlertEngine(self.s.alerts, engine.meta.error_quantiles, engine.version)
        self.drift = DriftMonitor(self.s.drift, engine.version, _q50(engine))
        self._alert_seen: dict[str, float] = {}
        self._event_failures: list[str] = []
        self._next_expiry = time.monotonic() + 60.0

    def _monitor_model(self, engine) -> None:
        """Called with each applied batch's engine: switch the calibration with the model."""
        if engine.version != self.alerts.model_version:
            self.alerts.set_model(engine.meta.error_quantiles, engine.version)
        if engine.version != self.drift.model_version:
            self.drift.set_model(engine.version, _q50(engine))
            self.metrics.drift_ratio.set(float("nan"))

    def _observe_drift(self, errors: np.ndarray) -> None:
        ev = self.drift.update(errors)
        ratio = self.drift.current_ratio()
        if ratio is not None:
            self.metrics.drift_ratio.set(ratio)
        if ev is not None:
            self._publish_drift(ev)

    def _score(self, part: PartitionState, seg: Segment, starts: np.ndarray, errors: np.ndarray,
               scales: np.ndarray, windows: np.ndarray, outputs: np.ndarray) -> None:
        """Advance the alert state of ``seg``'s stream by these windows; publish its events."""
        if not self.s.alerts.enabled:
            return
        sid = seg.stream.id
        self._alert_seen[sid] = time.monotonic()
        events = self.alerts.update(sid, starts, self.window, errors, scales, windows=windows, outputs=outputs)
        for ev in events:
            self._publish_alert(part, seg, ev)
        if events:
            self.metrics.alerts_active.set(self.alerts.active())

    def _publish_alert(self, part: PartitionState, seg: Segment, ev: AlertEvent) -> None:
        log.info("alert %s: stream %s samples [%d, %d) peak %.1f (model %s)", ev.kind, ev.stream, ev.start,
                 ev.end, ev.peak_score, ev.model_version)
        (self.metrics.alerts_raised if ev.kind == "raised" else self.metrics.alerts_resolved).inc()
        need = seg.needed_offset()
        rec = OutputRecord(ev.start, ev.end, None)
        part.events.append((need if need is not None else part.consumed, rec))

        def failed(exc, rec=rec, ev=ev):
            rec.error = exc
            self._event_failures.append(
                f"publishing the {ev.kind} alert of stream {ev.stream} [{ev.start}, {ev.end}) to "
                f"{self.s.kafka.alerts_topic} failed: {exc}"
            )

        headers = [("dae.event", ev.kind.encode()), ("dae.model", ev.model_version.encode())]
        self.producer.send(self.s.kafka.alerts_topic, key=ev.stream.encode("utf-8"), value=ev.to_json(),
                           headers=headers).add_callback(lambda _md, rec=rec: setattr(rec, "acked", True)
                                                         ).add_errback(failed)

    def _publish_drift(self, ev: DriftEvent) -> None:
        log.warning("drift: error median %.4g is %.2fx the reference %.4g of model %s (%d windows over %.0f s)",
                    ev.median, ev.ratio, ev.reference_median, ev.model_version, ev.windows, ev.window_s)
        self.metrics.drift_events.inc()

        def failed(exc):
            log.error("publishing a drift event to %s failed: %s", self.s.kafka.alerts_topic, exc)

        headers = [("dae.event", b"drift"), ("dae.model", ev.model_version.encode())]
        self.producer.send(self.s.kafka.alerts_topic, key=b"dae.drift", value=ev.to_json(),
                           headers=headers).add_errback(failed)

    def _expire_alert_state(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + 60.0
        limit = now - ALERT_STATE_TTL_S
        for sid in [sid for sid, t in self._alert_seen.items() if t < limit]:
            self._forget_alerts(sid)

    def _forget_alerts(self, sid: str) -> None:
        self._alert_seen.pop(sid, None)
        self.alerts.forget(sid)
        self.metrics.alerts_active.set(self.alerts.active())

    def _forget_partition_alerts(self, part: PartitionState | None) -> None:
        if part is None:
            return
        for sid in list(part.streams) + list(part.resume):
            self._forget_alerts(sid)
