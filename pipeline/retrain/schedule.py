"""`dae retrain --every DURATION`: periodic retraining in one long-lived process, run early on drift.

- Runs are sequential (never two at once); the wait between two runs is ``interval`` ± ``jitter``
  so that many schedulers started together do not hit the broker together.
- Per route (docs/routing.md): without ``route`` the scheduler runs the default route and every
  route of ``model.routes``, each on its own schedule (``interval`` after its own previous run) and
  its own drift trigger; a configured route without a current version is skipped until it has one.
  Runs of all routes are still one at a time: the scheduler is one loop, and every run holds
  ``pipeline.retrain.run.training_lock`` (also against other processes on the host, e.g. a CronJob
  or a second scheduler for another route).
- Drift trigger: the worker publishes ``{"type": "dae.drift", "model_version": ...}`` events on the
  alerts topic (``pipeline.monitor.drift``) with the headers ``dae.model`` and ``dae.route``. The
  scheduler follows that topic with its own consumer group (``<group_id>-retrain``, starting at the
  end: an event from before it started is not acted on, the next periodic run covers it) and starts a
  run of the event's route (``dae.route``; an event without it counts for the default route) as soon
  as the event names that route's current version, but not sooner than ``min_gap_s`` after that
  route's previous run started: a drift that a retrain cannot cure (a broken sensor fleet) must not
  turn into back-to-back training.
- Metrics (prometheus-client, own registry), labelled by route where they describe one (routes are
  configured, so the label is bounded): runs by outcome, data span, candidate vs current gain, drift
  triggers, last run, the serving version; the duration histogram is the host's. The long-lived
  process serves them on the metrics endpoint; a one-shot run (a CronJob) can write them as a
  node-exporter textfile.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, write_to_textfile

from pipeline.monitor.drift import EVENT_TYPE as DRIFT_EVENT
from pipeline.settings import DEFAULT_ROUTE, Settings

log = logging.getLogger(__name__)

RETRAIN_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 3600)


class RetrainMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, routes=(DEFAULT_ROUTE,)):
        self.registry = r = registry or CollectorRegistry()
        self.runs = Counter("dae_retrain_runs_total", "Retraining runs by outcome and route", ["outcome", "route"],
                            registry=r)
        self.duration = Histogram("dae_retrain_duration_seconds", "Wall time of one retraining run",
                                  buckets=RETRAIN_BUCKETS, registry=r)
        self.data_span = Gauge("dae_retrain_data_span_seconds", "Seconds of signal the route's last run trained "
                               "on (longest stream)", ["route"], registry=r)
        self.gain = Gauge("dae_retrain_gain_db", "Held-out SNR gain of the route's last run's models",
                          ["model", "route"], registry=r)
        self.last_run = Gauge("dae_retrain_last_run_timestamp_seconds", "Unix time the route's last run ended",
                              ["route"], registry=r)
        self.drift_triggers = Counter("dae_retrain_drift_triggers_total",
                                      "Drift events that started a run of the route early", ["route"], registry=r)
        self.current = Info("dae_registry_current", "Version the registry serves on the route", ["route"],
                            registry=r)
        for route in routes:
            self.add_route(route)

    def add_route(self, route: str) -> None:
        """Zeros for a route's counters, so that rate() and absent() work before its first run."""
        for outcome in ("promoted", "rejected", "failed"):
            self.runs.labels(outcome, route)
        self.drift_triggers.labels(route)

    def record(self, result) -> None:
        route = getattr(result, "route", DEFAULT_ROUTE)
        self.runs.labels(result.outcome, route).inc()
        self.duration.observe(result.seconds)
        self.last_run.labels(route).set(time.time())
        if result.data.get("span_seconds") is not None:
            self.data_span.labels(route).set(result.data["span_seconds"])
        for model, key in (("candidate", "candidate_gain_db"), ("current", "current_gain_db")):
            if key in result.figures:
                self.gain.labels(model, route).set(result.figures[key])
        serving = result.candidate if result.outcome == "promoted" else result.current
        if serving:
            self.current.labels(route).info({"version": str(serving)})

    def write_textfile(self, path) -> None:
        write_to_textfile(str(path), self.registry)


def _header(headers, name: str) -> str | None:
    for k, v in headers or ():
        if k == name and v is not None:
            return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)
    return None


def drift_route(body, headers, current_version, routes) -> str | None:
    """The route a message of the alerts topic asks to retrain, or None: a drift event (``type``
    ``dae.drift``) of a scheduled route (its ``dae.route`` header; none: the default route, as from
    a worker without routes) naming that route's current version (its ``dae.model`` header, else the
    body's ``model_version``). ``current_version(route)`` reads the registry."""
    if not isinstance(body, dict) or body.get("type") != DRIFT_EVENT:
        return None
    route = _header(headers, "dae.route") or DEFAULT_ROUTE
    if route not in routes:
        log.info("drift event of route %s ignored: this scheduler retrains %s", route, ", ".join(routes))
        return None
    version = _header(headers, "dae.model") or body.get("model_version")
    serving = current_version(route)
    if version != serving:
        log.info("drift event of route %s for %s ignored: the route's current version is %s", route, version, serving)
        return None
    return route


class DriftInbox:
    """Drift events waiting for a run, at most one per route (the latest). ``offer`` files a message
    of the alerts topic (:func:`drift_route` decides); ``take(timeout)`` returns and clears what is
    waiting, waiting up to ``timeout`` for something to arrive. No Kafka: :class:`DriftListener` feeds it."""

    def __init__(self, current_version, routes, ready: threading.Event | None = None):
        self._current_version = current_version  # callable route -> str | None
        self.routes = tuple(routes)
        self.ready = ready or threading.Event()  # set once events are being followed
        self._cond = threading.Condition()
        self._pending: dict[str, dict] = {}

    def offer(self, body, headers=()) -> str | None:
        route = drift_route(body, headers, self._current_version, self.routes)
        if route is not None:
            with self._cond:
                self._pending[route] = body
                self._cond.notify_all()
        return route

    def take(self, timeout: float) -> dict[str, dict]:
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout)
            got, self._pending = self._pending, {}
            return got

    def close(self) -> None:
        pass


class DriftListener(DriftInbox):
    """Follows the alerts topic in a background thread and offers every message to the inbox."""

    def __init__(self, s: Settings, current_version, routes=(DEFAULT_ROUTE,), ready: threading.Event | None = None):
        from pipeline.kafka.clients import ensure_topics, make_consumer

        super().__init__(current_version, routes, ready)
        self._stop = threading.Event()
        # The topic must exist before the subscription: a consumer subscribed to a missing topic
        # sees it appear only at its next metadata refresh (metadata.max.age.ms, 5 min), and with
        # offsets reset to "latest" the drift events published meanwhile would never be read.
        ensure_topics(s.kafka, [s.kafka.alerts_topic])
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
                    self.offer(body, m.headers)
            if records:
                self._consumer.commit_async()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close(autocommit=False)


def _route_runner(runner, s: Settings, kw: dict):
    """``runner(route)`` -> RetrainResult. An injected ``runner()`` without a parameter (the form
    for one route, from before routes) is called as it is."""
    if runner is None:
        from pipeline.retrain.run import retrain_once

        return lambda route: retrain_once(s, route=route, **kw)
    try:
        inspect.signature(runner).bind(DEFAULT_ROUTE)
    except TypeError:
        return lambda route: runner()
    except ValueError:  # no signature to read (a builtin): assume the route form
        pass
    return runner


def _not_retrainable(reg, name: str, version: str | None, routed: bool) -> str | None:
    """Why the all-routes scheduler leaves a route out this time (None: retrain it). A configured
    route without a version yet; with routes configured, a rate-generic model (the recommended
    default route's: a retrain learns one rate, so it would fail every time). A lone default route
    keeps today's behaviour: its run fails and says why."""
    if version is None:
        return None if name == DEFAULT_ROUTE else f"no current version (dae models promote V --route {name})"
    if routed:
        try:
            meta = reg.meta(version)
        except Exception:  # the run itself reports an unreadable version
            return None
        if meta.rate_range is not None:
            return f"its current version {version} serves {meta.rates_label()}: a retrain learns one rate"
    return None


# 81 lines: the wait loop (interval, drift events, min gap, stop) reads best as one piece.
def run_every(s: Settings, interval_s: float, jitter: float = 0.1, stop: threading.Event | None = None,
              drift: bool = True, min_gap_s: float = 600.0, metrics: RetrainMetrics | None = None,
              run_at_start: bool = False, ready: threading.Event | None = None, runner=None,
              route: str | None = None, inbox: DriftInbox | None = None, **kw) -> None:
    """Run ``retrain_once`` for each route every ``interval_s`` (± jitter) and early on the route's
    drift; never two runs at once.

    ``route``: that route alone; None: the default route and every route of ``model.routes`` (one
    without a current version is skipped until it has one). The first run of a route comes one
    interval after the start (a restarted scheduler does not retrain at once) unless
    ``run_at_start``; ``ready`` is set once drift events are being followed. ``runner(route)``
    replaces ``retrain_once`` (tests); ``inbox`` replaces the alerts-topic listener (tests)."""
    from models.registry import ModelRegistry
    from pipeline.retrain.run import route_name, training_lock

    reg = ModelRegistry(s.model.registry)

    def current(name: str) -> str | None:
        return reg.current(None if name == DEFAULT_ROUTE else name)

    routes = [route_name(route)] if route is not None else [DEFAULT_ROUTE, *(r.name for r in s.model.routes)]
    call = _route_runner(runner, s, kw)
    stop = stop or threading.Event()
    rng = np.random.default_rng()
    if metrics is not None:
        for name in routes:
            metrics.add_route(name)
    own_inbox = inbox is None and drift
    if own_inbox:
        inbox = DriftListener(s, current, routes, ready).start()
    elif ready is not None:
        ready.set()

    def next_after(t: float) -> float:
        return t + interval_s * (1 + rng.uniform(-jitter, jitter))

    start = time.monotonic()
    due = {name: start if run_at_start else next_after(start) for name in routes}  # the periodic runs
    earliest = dict.fromkeys(routes, start)  # no run yet: a drift event may start one at once
    pending: dict[str, dict] = {}  # drift events waiting for their route's min gap
    try:
        while not stop.is_set():
            now = time.monotonic()
            # The next thing to do: a route's periodic run, or a waiting drift event's run.
            when, name, ev = min([(due[n], n, None) for n in routes]
                                 + [(earliest[n], n, e) for n, e in pending.items()], key=lambda c: c[0])
            if when > now:
                if inbox is None:
                    stop.wait(min(when - now, 1.0))
                    continue
                for n, e in inbox.take(min(when - now, 1.0)).items():
                    if n not in pending and earliest[n] > time.monotonic():
                        log.info("drift event on route %s: retraining in %.0f s (min gap %.0f s after its last run)",
                                 n, earliest[n] - time.monotonic(), min_gap_s)
                    pending[n] = e
                continue
            pending.pop(name, None)  # a run now covers any drift event waiting for this route
            if ev is not None:
                if ev.get("model_version") != current(name):
                    log.info("drift event of route %s for %s dropped: the route now serves %s", name,
                             ev.get("model_version"), current(name))
                    continue
                print(f"drift event on route {name} (error median {ev.get('ratio', float('nan')):.2f}x the "
                      f"reference of {ev.get('model_version')}): retraining now", flush=True)
                if metrics is not None:
                    metrics.drift_triggers.labels(name).inc()
            why = None if route is not None else _not_retrainable(reg, name, current(name), bool(s.model.routes))
            if why:
                log.info("route %s not retrained: %s", name, why)
                due[name] = next_after(now)
                continue
            started = time.monotonic()
            with training_lock(s.model.registry):
                r = call(name)
            print(r.summary(), flush=True)
            if metrics is not None:
                metrics.record(r)
            due[name], earliest[name] = next_after(started), started + min_gap_s
    finally:
        if own_inbox:
            inbox.close()
