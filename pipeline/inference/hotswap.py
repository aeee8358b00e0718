"""Hot model swap: watch the registry's current pointer, load and validate a new version in the
background, and hand it to the worker, which switches between two batches.

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


def validate_candidate(candidate: InferenceEngine, serving: InferenceEngine, canary_windows: int = 32) -> None:
    """Raise ModelRefused naming what is wrong with ``candidate`` as a replacement for ``serving``."""
    if (candidate.window, candidate.hop) != (serving.window, serving.hop):
        raise ModelRefused(
            f"{candidate.version}: window/hop {candidate.window}/{candidate.hop} differ from the serving "
            f"model's {serving.window}/{serving.hop}"
        )
    missing = [r for r in serving.meta.sample_rates if not candidate.serves_rate(float(r))]
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
    """Polls the registry pointer every ``interval_s`` in a daemon thread.

    ``take()`` (called by the worker between batches) returns a validated engine once, or None.
    """

    def __init__(self, registry: Path, serving: InferenceEngine, *, interval_s: float, device: str, dtype: str,
                 on_refused=None):
        self.registry = Path(registry)
        self.interval_s = interval_s
        self.device, self.dtype = device, dtype
        self._serving = serving
        self._seen = serving.version  # last pointer value acted on
        self._ready: InferenceEngine | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_refused = on_refused
        self._thread = threading.Thread(target=self._loop, name="dae-model-watch", daemon=True)

    def start(self) -> "ModelWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> InferenceEngine | None:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            self._serving = ready
        return ready

    def check_once(self) -> None:
        from models.registry import ModelRegistry

        try:
            current = ModelRegistry(self.registry).current()
        except Exception as exc:  # a broken pointer file must not stop serving
            log.error("reading the registry pointer failed: %s", exc)
            return
        if current is None or current == self._seen:
            return
        self._seen = current
        try:
            candidate = InferenceEngine.from_source(self.registry, current, device=self.device, dtype=self.dtype)
            validate_candidate(candidate, self._serving)
        except Exception as exc:
            log.error("model %s refused, still serving %s: %s", current, self._serving.version, exc)
            if self._on_refused is not None:
                self._on_refused(current, exc)
            return
        log.info("model %s validated; switching from %s at the next batch", current, self._serving.version)
        with self._lock:
            self._ready = candidate

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_once()
