"""`dae retrain` on a real topic: a better candidate is promoted, a worse one is rejected."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from models.registry import ModelRegistry
from models.train import TrainConfig, train_synthetic
from pipeline.engine import InferenceEngine
from pipeline.retrain import EXIT_PROMOTED, EXIT_REJECTED, parse_duration, retrain_once
from pipeline.signals import snr_db
from pipeline.simulate import simulate
from pipeline.windowing import denoise_offline

pytestmark = pytest.mark.kafka


def gain_vs_truth(registry, version, sim):
    e = InferenceEngine.from_source(registry, version, device="cpu")
    gains = []
    for sid, clean in sim.clean.items():
        y = denoise_offline(sim.noisy[sid], lambda b: e.infer(b).outputs, e.window, e.hop)
        gains.append(snr_db(clean, y) - snr_db(clean, sim.noisy[sid]))
    return float(np.mean(gains))


def test_retrain_promotes_a_better_model_and_rejects_a_worse_one(make_settings, tmp_path):
    registry = tmp_path / "registry"
    reg = ModelRegistry(registry)
    # The model in service was trained on other shapes only (slow drifts).
    old, old_meta = train_synthetic(TrainConfig(sample_rate=1000.0, families=("drift",), steps=400, seed=3,
                                                max_seconds=20), progress=False)
    v1 = reg.publish(old, old_meta, promote=True)
    s = make_settings(model={"registry": registry})
    # Live data: noisy vibration streams; the clean truth is known only to this test.
    sim = simulate(s.kafka, streams=4, sample_rate=1000.0, seconds=40.0, snr_db=10.0, seed=17,
                   families=("vibration",))
    r = retrain_once(s, last_seconds=3600, max_seconds=45, seed=1)
    print(r.summary())
    assert r.outcome == "promoted" and r.exit_code == EXIT_PROMOTED, r.summary()
    assert reg.current() == r.candidate != v1
    before, after = gain_vs_truth(registry, v1, sim), gain_vs_truth(registry, r.candidate, sim)
    print(f"against the truth: {v1} {before:+.2f} dB -> {r.candidate} {after:+.2f} dB")
    assert after > before + 1.0
    # A deliberately worse candidate (two training steps) is rejected and never becomes current.
    bad = retrain_once(s, last_seconds=3600, steps=2, seed=2)
    assert bad.outcome == "rejected" and bad.exit_code == EXIT_REJECTED, bad.summary()
    assert reg.current() == r.candidate and bad.candidate in reg.versions()
    assert reg.meta(bad.candidate).training["retrain"]["decision"] == "rejected"
    log = [json.loads(line) for line in (registry / "retrain-log.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in log] == ["promoted", "rejected"]


def test_parse_duration():
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900 and parse_duration("6h") == 21600
    with pytest.raises(ValueError, match="6x"):
        parse_duration("6x")
