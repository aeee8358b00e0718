"""The worker's scoring side: per-stream anomaly alerts and the drift trigger, published as JSON
events on the alerts topic through the two publish functions the worker hands in (its tracked
producer's ``send`` bound to the alerts topic and a delivery policy; this package does not import
``pipeline.kafka``).

- Alert events (:mod:`pipeline.monitor.alerts.engine`) are outputs like cleaned chunks: the commit
  of the stream's partition is held at the oldest input its unpublished output still needs until
  the broker has acknowledged the event, and the worker publishes them as fatal on refusal, so an
  event is never lost behind a commit. After a restart a stream's alert
  statistics start afresh (warm-up), as after a rebalance; an alert raised before and not yet
  resolved is not resolved by the next owner (documented in docs/alerts.md).
- Alert state outlives the stream's window state (a stream silent for ``idle_flush_s`` keeps its
  statistics) and is dropped after ``ALERT_STATE_TTL_S`` of silence or when the partition goes
  (:meth:`Monitor.forget_partition`, the commit manager's callback).
- Drift events (:mod:`pipeline.monitor.drift`) are advisory, worker-wide: published as advisory
  (a failed send is logged).
- Both switch with the model precisely: the first batch computed by a new model's engine resets
  them (its calibration, its version in the events).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import numpy as np

from pipeline.monitor.alerts.engine import AlertEngine, AlertEvent
from pipeline.monitor.drift import DriftEvent, DriftMonitor
from pipeline.monitor.metrics import WorkerMetrics
from pipeline.settings import Settings
from pipeline.stream.state import OutputRecord, PartitionState, Segment

log = logging.getLogger(__name__)

# A stream silent this long loses its alert statistics (bounded memory for streams that never return).
ALERT_STATE_TTL_S = 3600.0
# How often the silent streams are looked for (a scan over every stream's last-seen time).
EXPIRY_SCAN_S = 60.0


class Publish(Protocol):
    """Send one event; ``record`` (if given) is marked when the broker acknowledges it; ``what``
    names the event in a failure message."""

    def __call__(self, key: bytes, value: bytes, headers: list, *, record: OutputRecord | None = None,
                 what: str) -> None: ...


def _q50(engine) -> float | None:
    q = getattr(engine.meta, "error_quantiles", None) or {}
    v = q.get("q50")
    return float(v) if v is not None else None


class Monitor:
    def __init__(self, settings: Settings, engine, window: int, metrics: WorkerMetrics, *,
                 publish_alert: Publish, publish_drift: Publish):
        self.enabled = settings.alerts.enabled
        self.window = window
        self.metrics = metrics
        self._publish_alert_event = publish_alert
        self._publish_drift_event = publish_drift
        self.alerts = AlertEngine(settings.alerts, engine.meta.error_quantiles, engine.version)
        self.drift = DriftMonitor(settings.drift, engine.version, _q50(engine))
        self._seen: dict[str, float] = {}  # stream id -> monotonic time of its last scored window
        self._next_expiry = time.monotonic() + EXPIRY_SCAN_S

    def observe_batch(self, engine, errors: np.ndarray) -> None:
        """One applied batch of ``engine``: switch the calibration with the model, feed the drift
        monitor, publish a drift event when one is due."""
        if engine.version != self.alerts.model_version:
            self.alerts.set_model(engine.meta.error_quantiles, engine.version)
        if engine.version != self.drift.model_version:
            self.drift.set_model(engine.version, _q50(engine))
            self.metrics.drift_ratio.set(float("nan"))
        ev = self.drift.update(errors)
        ratio = self.drift.current_ratio()
        if ratio is not None:
            self.metrics.drift_ratio.set(ratio)
        if ev is not None:
            self._publish_drift(ev)

    def score(self, part: PartitionState, seg: Segment, starts: np.ndarray, errors: np.ndarray,
              scales: np.ndarray, windows: np.ndarray, outputs: np.ndarray) -> None:
        """Advance the alert state of ``seg``'s stream by these windows; publish its events."""
        if not self.enabled:
            return
        sid = seg.stream.id
        self._seen[sid] = time.monotonic()
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
        headers = [("dae.event", ev.kind.encode()), ("dae.model", ev.model_version.encode())]
        self._publish_alert_event(ev.stream.encode("utf-8"), ev.to_json(), headers, record=rec,
                                  what=f"the {ev.kind} alert of stream {ev.stream} [{ev.start}, {ev.end})")

    def _publish_drift(self, ev: DriftEvent) -> None:
        log.warning("drift: error median %.4g is %.2fx the reference %.4g of model %s (%d windows over %.0f s)",
                    ev.median, ev.ratio, ev.reference_median, ev.model_version, ev.windows, ev.window_s)
        self.metrics.drift_events.inc()
        headers = [("dae.event", b"drift"), ("dae.model", ev.model_version.encode())]
        self._publish_drift_event(b"dae.drift", ev.to_json(), headers, what="a drift event")

    def expire(self) -> None:
        """Drop the alert state of streams silent for ``ALERT_STATE_TTL_S`` (scans at most every minute)."""
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + EXPIRY_SCAN_S
        limit = now - ALERT_STATE_TTL_S
        for sid in [sid for sid, t in self._seen.items() if t < limit]:
            self._forget(sid)

    def forget_partition(self, part: PartitionState) -> None:
        """The partition went (revoked or lost): its streams' alert state goes with it."""
        for sid in list(part.streams) + list(part.resume):
            self._forget(sid)

    def _forget(self, sid: str) -> None:
        self._seen.pop(sid, None)
        self.alerts.forget(sid)
        self.metrics.alerts_active.set(self.alerts.active())
