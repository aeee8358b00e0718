"""What the alert engine emits: events (the JSON of the alerts topic) and per-window diagnostics.

A leaf of the alerts package: numpy and the settings' vocabulary only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.settings import ALERT_FEATURES, ALERT_SLOWABLE

EVENT_TYPE = "dae.alert"
# Every term a window is scored on: the features, then the slow means of the slowable ones.
TERMS = ALERT_FEATURES + tuple(f + "_slow" for f in ALERT_SLOWABLE)


@dataclass
class AlertEvent:
    kind: str  # "raised" | "resolved"
    stream: str
    start: int  # first sample index of the anomalous range
    end: int  # one past its last sample index
    peak_score: float
    threshold: float  # the threshold crossed: raise_threshold (raised), resolve_threshold (resolved)
    model_version: str
    time: float  # unix seconds
    # What raised it: "score" (the window score) or a sequential test ("cusum_level+", "spike", ...)
    detector: str = "score"

    def to_dict(self) -> dict:
        return {"type": EVENT_TYPE, **asdict(self)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class WindowScores:
    """Per-window diagnostics of one ``AlertEngine.update_batch`` (or ``update_scored``) call."""

    starts: np.ndarray  # (N,) int64
    score: np.ndarray  # (N,) float64: the voting max |z|, capped; compare with the thresholds
    terms: dict[str, np.ndarray]  # term name -> (N,) signed z (0 where unavailable); see TERMS
    active: np.ndarray  # (N,) bool: the stream has a raised alert after this window
    raise_threshold: float
    resolve_threshold: float
