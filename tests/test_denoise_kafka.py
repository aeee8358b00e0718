"""Offline equals streaming, end to end: one stream through the worker on a real broker and the
same samples through `dae denoise` with the same model give the same cleaned samples."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.tools.capture import capture
from pipeline.tools.simulate import simulate
from tests.workers import worker_thread

pytestmark = pytest.mark.kafka


def test_worker_on_kafka_equals_dae_denoise(make_settings, model_registry, tmp_path):
    s = make_settings(model={"registry": model_registry}, window={"idle_flush_s": 1.0})
    with worker_thread(s):
        # One stream, 4 s at 1 kHz, chunks of 1..700 samples (random sizes, fixed by the seed).
        sim = simulate(s.kafka, streams=1, sample_rate=1000.0, seconds=4.0, snr_db=10.0, chunk=(1, 700), seed=17)
        (sid, noisy), = sim.noisy.items()
        rep = capture(s.kafka, idle_s=5.0, max_seconds=90, expected={sid: len(noisy)})
    assert rep.start[sid] == 0 and rep.gaps[sid] == [] and rep.duplicates.get(sid, 0) == 0
    streamed = rep.streams[sid][:, 0]
    assert streamed.shape == noisy.shape

    src, dst = tmp_path / "noisy.npy", tmp_path / "clean.npy"
    np.save(src, noisy.astype(np.float32))
    res = CliRunner().invoke(app, ["denoise", str(src), str(dst), "--registry", str(model_registry),
                                   "--sample-rate", "1000"])
    assert res.exit_code == 0, res.output
    offline = np.load(dst).reshape(-1)
    assert offline.shape == noisy.shape
    assert not np.allclose(offline, noisy, atol=1e-3)  # the model changed the signal
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=1e-6)
    print(f"max |worker - dae denoise| = {np.abs(streamed - offline).max():.2e} over {len(noisy)} samples")
