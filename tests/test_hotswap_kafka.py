"""Hot model swap in a running worker: exact switch point, refused bad versions, rollback."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from models.registry import ModelRegistry
from models.training import TrainConfig, train_synthetic
from pipeline.tools.capture import capture
from pipeline.tools.simulate import simulate
from tests.workers import wait_for, worker_thread

pytestmark = pytest.mark.kafka


@pytest.fixture
def registry(model_registry, tmp_path):
    """A private copy of the session registry (this test promotes versions)."""
    root = tmp_path / "registry"
    shutil.copytree(model_registry, root)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def test_swap_while_streaming_has_no_gap_no_duplicate_and_refuses_bad_versions(make_settings, registry):
    s = make_settings(model={"registry": registry, "watch_interval_s": 0.3})
    reg = ModelRegistry(registry)
    model2, meta2 = train_synthetic(TrainConfig(sample_rate=1000.0, steps=150, seed=7, max_seconds=20), progress=False)
    result = {}
    producer = threading.Thread(
        target=lambda: result.update(sim=simulate(
            s.kafka, streams=6, sample_rate=1000.0, seconds=9.0, snr_db=10.0, chunk=(50, 200), realtime=True, seed=21)),
        daemon=True,
    )
    with worker_thread(s) as w:
        assert w.engine.warmed_rows == s.batch.max_batch  # warmed up before the first batch
        producer.start()
        time.sleep(3.0)
        v2 = reg.publish(model2, meta2, promote=True)
        wait_for(lambda: w.engine.version == v2, 20, 0.2, "the worker to switch to v2")
        assert w.engine.warmed_rows == s.batch.max_batch  # by the watcher, before it was swapped in
        # A tampered version is refused: the worker keeps serving v2.
        v3 = reg.publish(model2, meta2)
        weights = reg.path(v3) / "model.safetensors"
        weights.chmod(0o644)
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
        reg.promote(v3)
        wait_for(lambda: w.metrics.model_swaps.labels("refused")._value.get() >= 1, 20, 0.2, "the refusal")
        assert w.engine.version == v2
        # A half-written version (weights missing) is refused too.
        half = registry / "versions" / "v9"
        half.mkdir()
        shutil.copy(reg.path(v2) / "model.json", half / "model.json")
        reg.promote("v9")
        wait_for(lambda: w.metrics.model_swaps.labels("refused")._value.get() >= 2, 20, 0.2, "the second refusal")
        assert w.engine.version == v2
        # Rollback goes back through the same path.
        reg.rollback()
        reg.rollback()
        assert reg.current() == v2
        reg.rollback()
        assert reg.current() == "v1"
        wait_for(lambda: w.engine.version == "v1", 20, 0.2, "the rollback to v1")
        producer.join(60)
        sim = result["sim"]
        rep = capture(s.kafka, idle_s=6.0, max_seconds=90, expected={k: len(v) for k, v in sim.clean.items()})
    switched = 0
    for sid, clean in sim.clean.items():
        assert rep.gaps[sid] == [] and rep.duplicates.get(sid, 0) == 0, sid
        assert rep.streams[sid].shape[0] == len(clean)
        versions = [v for _, v in rep.models[sid]]
        assert versions[0] == "v1" and set(versions) <= {"v1", v2}, versions
        assert v3 not in versions and "v9" not in versions
        switched += v2 in versions
    assert switched == len(sim.clean), "every stream was live across the switch"
