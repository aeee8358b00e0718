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
- A micro-batch is scored in one engine call: :meth:`Monitor.observe_batch` announces a batch of N
  windows, :meth:`Monitor.score` queues each of its segments, and the batch is scored once all N
  windows are queued (windows of segments the caller skipped, a revoked partition's, are scored at
  the next batch, before a model switch). While an event is published, :attr:`Monitor.publishing`
  is the partition of its stream (the publish function's transaction in exactly-once mode).
- Alert state outlives the stream's window state (a stream silent for ``idle_flush_s`` keeps its
  statistics) and is dropped after ``alerts.state_ttl_s`` of silence (:meth:`Monitor.expire`),
  beyond ``alerts.max_streams`` streams (least recently seen first), or when the partition goes
  (:meth:`Monitor.forget_partition`, the commit manager's callback).
- Drift events (:mod:`pipeline.monitor.drift`) are advisory, worker-wide: published as advisory
  (a failed send is logged).
- Both switch with the model precisely: the first batch computed by a new model's engine resets
  them (its calibration, its version in the events).
- Model routes (pipeline.inference.routing) each have their own alert engine and drift monitor
  (calibration and reference are per model); a batch is computed by one route's engine, so its
  windows are scored by that route's. A stream moving to another route starts its statistics
  afresh there.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from pipeline.inference.routing import route_geometry
from pipeline.monitor.alerts.engine import AlertEngine, AlertEvent
from pipeline.monitor.drift import DriftEvent, DriftMonitor
from pipeline.monitor.metrics import WorkerMetrics
from pipeline.settings import DEFAULT_ROUTE, Settings
from pipeline.stream.state import OutputRecord, PartitionState, Segment

log = logging.getLogger(__name__)


class Publish(Protocol):
    """Send one event; ``record`` (if given) is marked when the broker acknowledges it; ``what``
    names the event in a failure message."""

    def __call__(self, key: bytes, value: bytes, headers: list, *, record: OutputRecord | None = None,
                 what: str) -> None: ...


def _windows_per_hour(engine, hop: int | None) -> float | None:
    """Windows per stream-hour at the model's sample rate (the highest, if it serves several: the
    strictest thresholds) / hop x 3600: the sequential tests' false-alarm budgets are per hour.
    None (1 kHz at hop 128) for a rate-generic model, which serves a range."""
    meta, hop = engine.meta, hop or 0
    rates = getattr(meta, "sample_rates", None)
    if getattr(meta, "rate_range", None) or not rates or hop <= 0:
        return None
    return max(float(r) for r in rates) / hop * 3600.0


def _q50(engine) -> float | None:
    q = getattr(engine.meta, "error_quantiles", None) or {}
    v = q.get("q50")
    return float(v) if v is not None else None


def _rows(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, without a copy when the parts are consecutive rows of one array (the
    slices of a batch the caller hands in, in order)."""
    if len(parts) == 1:
        return parts[0]
    base = parts[0].base
    if (isinstance(base, np.ndarray) and base.flags.c_contiguous and base.dtype == parts[0].dtype
            and base.shape[1:] == parts[0].shape[1:] and all(p.base is base and p.flags.c_contiguous for p in parts)):
        addr = [p.__array_interface__["data"][0] for p in parts]
        row = max(1, base[:1].nbytes)
        first, rest = divmod(addr[0] - base.__array_interface__["data"][0], row)
        if rest == 0 and all(a + p.nbytes == b for a, p, b in zip(addr, parts, addr[1:])):
            return base[first : first + sum(len(p) for p in parts)]
    return np.concatenate(parts)


class Monitor:
    def __init__(self, settings: Settings, engine, window: int, metrics: WorkerMetrics, *,
                 publish_alert: Publish, publish_drift: Publish, hop: int | None = None):
        self.enabled = settings.alerts.enabled
        self.window = window
        # The default route's windows are cut at `hop` where the worker's window.hop overrides its model's:
        # the alert engine's tests (the samples new in each window, windows per hour) take the same.
        self.hop = hop
        self.metrics = metrics
        self._publish_alert_event = publish_alert
        self._publish_drift_event = publish_drift
        self._settings = settings
        # route -> (alert engine, drift monitor); the current route's pair is self.alerts/self.drift.
        self._routes: dict[str, tuple[AlertEngine, DriftMonitor]] = {}
        self.route = getattr(engine, "route", DEFAULT_ROUTE)
        self.alerts, self.drift = self._pair(self.route, engine)
        self._queued: list[tuple[PartitionState, Segment, tuple]] = []  # segments scored by the next flush
        self._expect = self._got = 0  # windows of the announced batch, and of them queued so far
        self.publishing: PartitionState | None = None  # the partition of the alert event being published

    def _pair(self, route: str, engine) -> tuple[AlertEngine, DriftMonitor]:
        pair = self._routes.get(route)
        if pair is None:
            hop = route_geometry(route, engine, self.window, self.hop)[1] or getattr(engine, "hop", None)
            alerts = AlertEngine(self._settings.alerts, engine.meta.error_quantiles, engine.version,
                                 on_evict=self.metrics.alert_state_evicted, window=getattr(engine, "window", 256),
                                 windows_per_hour=_windows_per_hour(engine, hop), hop=hop)
            drift = DriftMonitor(self._settings.drift, engine.version, _q50(engine))
            pair = self._routes[route] = (alerts, drift)
            self.metrics.drift_ratio.labels(route).set(float("nan"))
        return pair

    def _engines(self) -> list[AlertEngine]:
        return [a for a, _ in self._routes.values()]

    def _set_active(self) -> None:
        self.metrics.alerts_active.set(sum(a.active() for a in self._engines()))

    def observe_batch(self, engine, errors: np.ndarray) -> None:
        """A batch of ``engine`` applied: its segments follow (:meth:`score`). Switch to the route's
        alert engine and drift monitor, and their calibration with the model; feed the drift monitor,
        publish a drift event when one is due."""
        self._flush()  # a previous batch's windows still queued: the caller skipped some of its segments
        self._expect, self._got = len(errors), 0
        self.route = getattr(engine, "route", DEFAULT_ROUTE)
        self.alerts, self.drift = self._pair(self.route, engine)
        if engine.version != self.alerts.model_version:
            self.alerts.set_model(engine.meta.error_quantiles, engine.version)
        if engine.version != self.drift.model_version:
            self.drift.set_model(engine.version, _q50(engine))
            self.metrics.drift_ratio.labels(self.route).set(float("nan"))
        ev = self.drift.update(errors)
        ratio = self.drift.current_ratio()
        if ratio is not None:
            self.metrics.drift_ratio.labels(self.route).set(ratio)
        if ev is not None:
            self._publish_drift(ev)

    def score(self, part: PartitionState, seg: Segment, starts: np.ndarray, errors: np.ndarray,
              scales: np.ndarray, windows: np.ndarray, outputs: np.ndarray) -> None:
        """Queue the windows of ``seg``'s stream; the batch's last segment scores them all in one call."""
        if not self.enabled:
            return
        self._queued.append((part, seg, (starts, errors, scales, windows, outputs)))
        self._got += len(starts)
        if self._got >= self._expect:
            self._flush()

    def _flush(self) -> None:
        """Score the queued segments in one engine call; publish their events."""
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        arrays = list(zip(*(q[2] for q in queued)))
        lengths = [len(a) for a in arrays[0]]
        starts, errors, scales, windows, outputs = (_rows(list(a)) for a in arrays)
        res = self.alerts.update_batch([seg.stream.id for _, seg, _ in queued], lengths, starts, self.window,
                                       errors, scales, windows=windows, outputs=outputs)
        if not res.events:
            return
        ends = np.cumsum(lengths)
        for ev, i in zip(res.events, res.event_windows):
            part, seg, _ = queued[int(np.searchsorted(ends, i, side="right"))]
            self._publish_alert(part, seg, ev)
        self._set_active()

    def _publish_alert(self, part: PartitionState, seg: Segment, ev: AlertEvent) -> None:
        log.info("alert %s: stream %s samples [%d, %d) peak %.1f (model %s)", ev.kind, ev.stream, ev.start,
                 ev.end, ev.peak_score, ev.model_version)
        (self.metrics.alerts_raised if ev.kind == "raised" else self.metrics.alerts_resolved).inc()
        need = seg.needed_offset()
        rec = OutputRecord(ev.start, ev.end, None)
        part.events.append((need if need is not None else part.consumed, rec))
        headers = [("dae.event", ev.kind.encode()), ("dae.model", ev.model_version.encode()),
                   ("dae.route", self.route.encode())]
        self.publishing = part
        try:
            self._publish_alert_event(ev.stream.encode("utf-8"), ev.to_json(), headers, record=rec,
                                      what=f"the {ev.kind} alert of stream {ev.stream} [{ev.start}, {ev.end})")
        finally:
            self.publishing = None

    def _publish_drift(self, ev: DriftEvent) -> None:
        log.warning("drift: error median %.4g is %.2fx the reference %.4g of model %s (%d windows over %.0f s)",
                    ev.median, ev.ratio, ev.reference_median, ev.model_version, ev.windows, ev.window_s)
        self.metrics.drift_events.inc()
        headers = [("dae.event", b"drift"), ("dae.model", ev.model_version.encode()), ("dae.route", self.route.encode())]
        self._publish_drift_event(b"dae.drift", ev.to_json(), headers, what="a drift event")

    def expire(self) -> None:
        """Drop the alert state of streams silent for ``alerts.state_ttl_s`` (cheap: looks at the least
        recently seen streams only)."""
        expired = [a.expire() for a in self._engines()]
        if any(expired):
            self._set_active()

    def streams(self) -> int:
        """Streams with alert state, over every route."""
        return sum(a.streams() for a in self._engines())

    def forget_partition(self, part: PartitionState) -> None:
        """The partition went (revoked or lost): its streams' alert state goes with it, queued windows too."""
        self._queued = [q for q in self._queued if q[0] is not part]
        for alerts in self._engines():
            for sid in list(part.streams) + list(part.resume):
                alerts.forget(sid)
        self._set_active()
