"""`dae retrain --every DURATION`: periodic retraining in one long-lived process, run early on drift.

- Runs are sequential (never two at once); the wait between two runs is ``interval`` ± ``jitter``
  so that many schedulers started together do not hit the broker together.
- Drift trigger: the worker publishes ``{"type": "dae.drift", "model_version": ...}`` events on the
  alerts topic (``pipeline.monitor.drift``). The scheduler follows that topic with its own consumer group
  (``<group_id>-retrain``, starting at the end: an event from before it started is not acted on,
  the next periodic run covers it) and starts a run as soon as a drift event names the model the
  registry serves now, but not sooner than ``min_gap_s`` after the previous run started: a drift that
  a retrain cannot cure (a broken sensor fleet) must not turn into back-to-back training.
- Metrics (prometheus-client, own registry): runs by outcome, duration, data span, candidate vs
  current gain, drift triggers, the serving version. The long-lived process serves them on the
  metrics endpoint; a one-shot run (a CronJob) can write them as a node-exporter textfile.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, write_to_textfile

from pipeline.monitor.drift import EVENT_TYPE as DRIFT_EVENT
from pipeline.settings import Settings

log = logging.getLogger(__name__)

RETRAIN_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 3600)


class RetrainMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.runs = Counter("dae_retrain_runs_total", "Retraining runs by outcome", ["outcome"], registry=r)
        for outcome in ("promoted", "rejected", "failed"):
            self.runs.labels(outcome)
        self.duration = Histogram("dae_retrain_duration_seconds", "Wall time of one retraining run",
                                  buckets=RETRAIN_BUCKETS, registry=r)
        self.data_span = Gauge("dae_retrain_data_span_seconds", "Seconds of signal the last run trained on "
                               "(longest stream)", registry=r)
        self.gain = Gauge("dae_retrain_gain_db", "Held-out SNR gain of the last run's models", ["model"], registry=r)
        self.last_run = Gauge("dae_retrain_last_run_timestamp_seconds", "Unix time the last run ended", registry=r)
        self.drift_triggers = Counter("dae_retrain_drift_triggers_total",
                                      "Drift events that started a run early", registry=r)
        self.current = Info("dae_registry_current", "Version the registry serves", registry=r)

    def record(self, result) -> None:
        self.runs.labels(result.outcome).inc()
        self.duration.observe(result.seconds)
        self.last_run.set(time.time())
        if result.data.get("span_seconds") is not None:
            self.data_span.set(result.data["span_seconds"])
        for model, key in (("candidate", "candidate_gain_db"), ("current", "current_gain_db")):
            if key in result.figures:
                self.gain.labels(model).set(result.figures[key])
        serving = result.candidate if result.outcome == "promoted" else result.current
        if serving:
            self.current.info({"version": str(serving)})

    def write_textfile(self, path) -> None:
        write_to_textfile(str(path), self.registry)


class DriftListener:
    """Follows the alerts topic in a background thread; ``wait(timeout)`` returns the drift event
    that arrived (for the model the registry serves), or None when the timeout passed."""

    def __init__(self, s: Settings, current_version, ready: threading.Event | None = None):
        from pipeline.kafka.clients import make_consumer

        self._current_version = current_version  # callable -> str | None
        self._event = threading.Event()
        self._stop = threading.Event()
        self._last: dict | None = None
        self.ready = ready or threading.Event()  # set once the consumer has its partitions
        self._consumer = make_consumer(s.kafka, group_id=f"{s.kafka.group_id}-retrain", auto_offset_reset="latest")
        self._consumer.subscribe([s.kafka.alerts_topic])
        self._thread = threading.Thread(target=self._run, name="dae-drift-listener", daemon=True)

    def start(self) -> "DriftListener":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                records = self._consumer.poll(timeout_ms=500)
            except Exception:  # pragma: no cover - logged, the periodic schedule goes on
                log.exception("drift listener: poll failed")
                time.sleep(1.0)
                continue
            if not self.ready.is_set() and self._consumer.assignment():
                self.ready.set()
            for msgs in records.values():
                for m in msgs:
                    try:
                        body = json.loads(m.value)
                    except (ValueError, TypeError):
                        continue
                    if not isinstance(body, dict) or body.get("type") != DRIFT_EVENT:
                        continue
                    if body.get("model_version") != self._current_version():
                        log.info("drift event for %s ignored: the registry serves %s", body.get("model_version"),
                                 self._current_version())
                        continue
                    self._last = body
                    self._event.set()
            if records:
                self._consumer.commit_async()

    def wait(self, timeout: float) -> dict | None:
        if self._event.wait(timeout):
            self._event.clear()
            return self._last
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close(autocommit=False)


def run_every(s: Settings, interval_s: float, jitter: float = 0.1, stop: threading.Event | None = None,
              drift: bool = True, min_gap_s: float = 600.0, metrics: RetrainMetrics | None = None,
              run_at_start: bool = False, ready: threading.Event | None = None, runner=None, **kw) -> None:
    """Run ``retrain_once`` every ``interval_s`` (± jitter) and early on drift; never two at once.

    The first run comes one interval after the start (a restarted scheduler does not retrain at
    once) unless ``run_at_start``; ``ready`` is set once drift events are being followed."""
    from models.registry import ModelRegistry
    from pipeline.retrain.run import retrain_once

    runner = runner or (lambda: retrain_once(s, **kw))
    stop = stop or threading.Event()
    rng = np.random.default_rng()
    listener = DriftListener(s, ModelRegistry(s.model.registry).current, ready).start() if drift else None
    if listener is None and ready is not None:
        ready.set()
    started = time.monotonic()
    earliest = started  # no run yet: a drift event may start one at once
    run_now = run_at_start
    try:
        while not stop.is_set():
            if run_now:
                started = time.monotonic()
                earliest = started + min_gap_s
                r = runner()
                print(r.summary(), flush=True)
                if metrics is not None:
                    metrics.record(r)
            run_now = True
            next_run = started + interval_s * (1 + rng.uniform(-jitter, jitter))
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_run:
                    break
                if listener is None:
                    stop.wait(min(next_run - now, 1.0))
                    continue
                ev = listener.wait(min(next_run - now, 1.0))
                if ev is None:
                    continue
                wait_more = earliest - time.monotonic()
                if wait_more > 0:
                    log.info("drift event: retraining in %.0f s (min gap %.0f s after the last run)", wait_more,
                             min_gap_s)
                    if stop.wait(min(wait_more, max(next_run - time.monotonic(), 0.0))):
                        break
                print(f"drift event (error median {ev.get('ratio', float('nan')):.2f}x the reference of "
                      f"{ev.get('model_version')}): retraining now", flush=True)
                if metrics is not None:
                    metrics.drift_triggers.inc()
                break
    finally:
        if listener is not None:
            listener.close()
