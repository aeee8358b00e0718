"""The raw-sample tests of one alert engine (pure numpy): the record outlier test (``outliers.py``)
and the isolated-sample test (``isolated.py``). Which of them the settings turn on, the features each
reads (made from the raw windows when the caller did not pass them), their update over an engine
call, and the streams whose alert of each is up."""

from __future__ import annotations

import numpy as np

from pipeline.monitor.alerts.events import AlertEvent
from pipeline.monitor.alerts.isolated import FEATURE as ISOLATED_FEATURE
from pipeline.monitor.alerts.isolated import IsolatedPlan, IsolatedTest, isolated_features
from pipeline.monitor.alerts.outliers import FEATURES as OUTLIER_FEATURES
from pipeline.monitor.alerts.outliers import OutlierPlan, OutlierTest, record_features


class RawTests:
    def __init__(self):
        self.active: dict[str, set[str]] = {"outlier": set(), "isolated": set()}  # streams with an alert up
        self.out: OutlierTest | None = None
        self.iso: IsolatedTest | None = None
        self._on: list = []

    def build(self, cfg, window: int, hop: int, p_win: float) -> None:
        """The tests ``cfg`` turns on, each with ``p_win`` (its share of the false-alarm budget, per window)."""
        out = OutlierPlan.build(cfg, hop, p_win)
        self.out = OutlierTest(out) if out is not None else None
        iso = IsolatedPlan.build(cfg, window, hop, p_win)
        self.iso = IsolatedTest(iso) if iso is not None else None
        # each with the features it reads, how they are made from the raw windows, and its open alerts
        self._on = [(t, keys, make, self.active[name]) for t, keys, make, name in (
            (self.out, OUTLIER_FEATURES, record_features, "outlier"),
            (self.iso, (ISOLATED_FEATURE,), isolated_features, "isolated")) if t is not None]

    def warm(self, window: int, hop: int) -> None:
        """The tests' compiled parts compiled now (:meth:`~pipeline.monitor.alerts.engine.AlertEngine._warm`)."""
        for test, *_ in self._on:
            test.warm(window, hop)

    def features(self, features: dict, windows: np.ndarray | None, hop: int) -> dict:
        """``features`` with those of the tests that are on, made from ``windows`` where missing."""
        for _, keys, make, _ in self._on:
            if keys[0] not in features and windows is not None:
                features = {**features, **make(windows, hop)}
        return features

    def update(self, tab, ids, slots, first, n_u, starts, window, features, order, ts, model_version,
               events: list[AlertEvent], ev_win: list[int]) -> None:
        """Each test that is on and has its features, over the call's windows (grouped by stream, in
        ``order`` when not None); their events after the others'."""
        for test, keys, _, active in self._on:
            if keys[0] not in features:
                continue
            feats = {k: features[k] if order is None else np.asarray(features[k])[order] for k in keys}
            evs: list[AlertEvent] = []
            test.update(tab, ids, slots, first, n_u, starts, window, feats, ts, model_version, evs, ev_win)
            for ev in evs:
                (active.add if ev.kind == "raised" else active.discard)(ev.stream)
            events.extend(evs)

    def discard(self, stream: str) -> None:
        for act in self.active.values():
            act.discard(stream)

    def count(self) -> int:
        return sum(map(len, self.active.values()))

    def has(self, stream: str) -> bool:
        return any(stream in act for act in self.active.values())
