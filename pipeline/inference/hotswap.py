"""Hot model swap: watch the registry's pointers (one per route), load and validate a new version
in the background, and hand it to the worker, which switches that route between two batches.

Validation before a version may serve: it loads (checksum verified by the checkpoint loader), its
window/hop contract equals the serving model's (the stream state is kept across the switch), it
serves every sample rate the serving model serves, and a canary batch gives finite outputs of the
right shape. A version that fails is refused, logged and counted; the old one keeps serving and
the refused version is not retried until the pointer moves again.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from pipeline.inference.engine import InferenceEngine

log = logging.getLogger(__name__)


class ModelRefused(ValueError):
    pass


def validate_candidate(candidate: InferenceEngine, serving: InferenceEngine, canary_windows: int = 32, *,
                       rates: list[float] | None = None, geometry: bool = True) -> None:
    """Raise ModelRefused naming what is wrong with ``candidate`` as a replacement for ``serving``;
    ``rates``: the rates it must serve (default: every rate ``serving`` lists); ``geometry``: its
    window/hop must equal ``serving``'s (False for a route's first version: its streams move to it
    at a segment boundary)."""
    if geometry and (candidate.window, candidate.hop) != (serving.window, serving.hop):
        raise ModelRefused(
            f"{candidate.version}: window/hop {candidate.window}/{candidate.hop} differ from the serving "
            f"model's {serving.window}/{serving.hop}"
        )
    need = serving.meta.sample_rates if rates is None else rates
    missing = [r for r in need if not candidate.serves_rate(float(r))]
    if missing:
        raise ModelRefused(f"{candidate.version}: does not serve sample rate(s) {missing} that the serving model serves")
    rng = np.random.default_rng(0)
    t = np.arange(candidate.window) / candidate.window
    canary = (np.sin(2 * np.pi * rng.uniform(1, 8, (canary_windows, 1, 1)) * t)
              + 0.3 * rng.standard_normal((canary_windows, 1, candidate.window))).astype(np.float32)
    out = candidate.infer(canary)
    if out.outputs.shape != canary.shape:
        raise ModelRefused(f"{candidate.version}: canary output shape {out.outputs.shape}, expected {canary.shape}")
    if not (np.isfinite(out.outputs).all() and np.isfinite(out.errors).all()):
        raise ModelRefused(f"{candidate.version}: canary batch gave NaN/Inf outputs")


class ModelWatcher:
    """Polls the registry pointer of every route the worker serves, every ``interval_s``, in a
    daemon thread.

    ``take()`` (called by the worker between batches) returns the validated engines (each with its
    ``route``) once, or an empty list. A route's candidate is validated against the engine that
    serves the route's streams now (its own, or the default route's until it has one); a route
    without its own version only needs the new one to serve the rates the route is configured for.
    """

    def __init__(self, registry: Path, models, *, interval_s: float, device: str, dtype: str,
                 warm_rows: int = 0, on_refused=None):
        self.registry = Path(registry)
        self.warm_rows = warm_rows  # a validated model is warmed up here (InferenceEngine.warm), off the hot path
        self.interval_s = interval_s
        self.device, self.dtype = device, dtype
        self._models = models  # pipeline.inference.routing.ModelSet; read only here
        # Last pointer value acted on, per route; a route without a version yet starts at None.
        self._seen: dict[str, str | None] = {r: (models.engines[r].version if r in models.engines else None)
                                             for r in models.names()}
        self._ready: dict[str, InferenceEngine] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_refused = on_refused
        self._thread = threading.Thread(target=self._loop, name="dae-model-watch", daemon=True)

    def start(self) -> "ModelWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> list[InferenceEngine]:
        with self._lock:
            ready, self._ready = list(self._ready.values()), {}
        return ready

    def check_once(self) -> None:
        from models.registry import ModelRegistry

        reg = ModelRegistry(self.registry)
        for route in list(self._seen):
            try:
                current = reg.current(route)
            except Exception as exc:  # a broken pointer file must not stop serving
                log.error("reading the registry pointer of route %s failed: %s", route, exc)
                continue
            if current is None or current == self._seen[route]:
                continue
            self._seen[route] = current
            self._check(route, current)

    def _check(self, route: str, version: str) -> None:
        own = self._models.engines.get(route)
        serving = own or self._models.default
        try:
            candidate = InferenceEngine.from_source(self.registry, version, device=self.device, dtype=self.dtype,
                                                    route=route)
            if own is not None:
                validate_candidate(candidate, serving)
            else:  # the route's first version: it must serve the route's rates
                spec = self._models.route_spec(route)
                validate_candidate(candidate, serving, rates=list(spec.rates or ()) if spec else [], geometry=False)
            if self.warm_rows:
                candidate.warm(self.warm_rows)
        except Exception as exc:
            log.error("model %s refused for route %s, still serving %s: %s", version, route, serving.version, exc)
            if self._on_refused is not None:
                self._on_refused(version, exc)
            return
        log.info("model %s validated for route %s; switching from %s at the next batch", version, route,
                 serving.version)
        with self._lock:
            self._ready[route] = candidate

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_once()


def load_route_engines(registry: Path, routes, *, device: str, dtype: str) -> dict[str, InferenceEngine]:
    """The engines of the configured routes that have a current version (the others are served by
    the default route's model until they get one). A pointer naming a version that does not load
    stops the start with the route in the message."""
    from models.registry import ModelRegistry

    reg = ModelRegistry(registry)
    out: dict[str, InferenceEngine] = {}
    for r in routes:
        version = reg.current(r.name)
        if version is None:
            log.info("route %s has no version in %s yet: the default route's model serves its streams", r.name,
                     registry)
            continue
        try:
            out[r.name] = InferenceEngine.from_source(registry, version, device=device, dtype=dtype, route=r.name)
        except Exception as exc:
            raise RuntimeError(f"route {r.name}: its current version {version} does not load: {exc}") from exc
    return out
