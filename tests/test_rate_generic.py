"""The rate-generic fallback model (issue 14): ModelMeta.rate_range and serves_rate, the log-uniform
rate draws, the sampler's equal-stream mode, and a tiny `dae train --rate-generic` run whose
checkpoint serves any rate of its range."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.archs import build_model
from models.checkpoint import META, CheckpointError, ModelMeta, load_checkpoint, meta_for, read_meta, save_checkpoint
from models.training import TrainConfig, log_uniform_rates, rate_generic_config, train_arrays, train_synthetic
from models.training import sampler as sampler_mod
from models.training.sampler import WindowSampler, stream_length, synthetic_streams_across_rates


def _meta(**kw) -> ModelMeta:
    model = build_model("mlp", {"window": 32, "hidden": 16})
    base = dict(window=32, hop=16, sample_rates=[1000.0], normalisation="window_standardize", corruption={},
                training={}, metrics={}, error_quantiles={}, created="2026-12-02T00:00:00+00:00")
    return meta_for(model, "mlp", **{**base, **kw}), model


def test_rate_range_round_trips_and_old_files_load(tmp_path):
    meta, model = _meta(sample_rates=[50.0, 20000.0], rate_range=(50.0, 20000.0))
    saved = save_checkpoint(tmp_path / "new", model, meta)
    assert saved.rate_range == [50.0, 20000.0]
    _, loaded = load_checkpoint(tmp_path / "new")
    assert loaded.rate_range == [50.0, 20000.0] and loaded.sample_rates == [50.0, 20000.0]
    assert loaded == saved

    # A model.json written before the field existed: no "rate_range" key at all.
    meta, model = _meta()
    save_checkpoint(tmp_path / "old", model, meta)
    raw = json.loads((tmp_path / "old" / META).read_text())
    del raw["rate_range"]
    (tmp_path / "old" / META).write_text(json.dumps(raw))
    _, old = load_checkpoint(tmp_path / "old")
    assert old.rate_range is None and old.serves_rate(1000.0) and not old.serves_rate(1001.0)


@pytest.mark.parametrize("bad", [[100.0, 50.0], [0.0, 10.0], [-5.0, 10.0], [10.0], [10.0, 20.0, 30.0], "50:20000",
                                 [10.0, math.inf], [True, 20.0], {"lo": 1, "hi": 2}, [10.0, 10.0]])
def test_a_bad_rate_range_is_refused_naming_the_field(tmp_path, bad):
    meta, _ = _meta()
    d = {**meta.to_dict(), "rate_range": bad}
    with pytest.raises(CheckpointError, match="rate_range"):
        ModelMeta.from_dict(d)


def test_serves_rate_listed_rates_with_the_engines_tolerance_and_any_rate_in_the_range():
    dedicated, _ = _meta(sample_rates=[100.0, 1000.0])
    assert dedicated.serves_rate(100.0) and dedicated.serves_rate(1000.0)
    assert dedicated.serves_rate(1000.0 * (1 + 0.9e-6)) and not dedicated.serves_rate(1000.0 * (1 + 2e-6))
    assert dedicated.serves_rate(100.0 + 5e-5) and not dedicated.serves_rate(360.0)
    assert dedicated.serves_rate(0.5 + 0.9e-6) is False  # absolute tolerance below 1 Hz, and 0.5 is not listed
    assert dedicated.rates_label() == "100, 1000 Hz"

    generic, _ = _meta(sample_rates=[50.0, 20000.0], rate_range=[50.0, 20000.0])
    for r in (50.0, 123.4, 360.0, 1000.0, 15000.0, 20000.0, 20000.0 * (1 + 0.5e-6), 50.0 * (1 - 0.5e-6)):
        assert generic.serves_rate(r), r
    for r in (49.9, 20000.1, 44100.0, 1.0):
        assert not generic.serves_rate(r), r
    assert generic.rates_label() == "50-20000 Hz (rate-generic)"


def test_listed_rates_of_a_rate_generic_model_are_what_a_hot_swap_candidate_must_cover():
    # pipeline/inference/hotswap.validate_candidate refuses a candidate that does not serve every
    # listed rate of the serving model; a rate-generic model lists its range's ends, so (a range
    # being an interval) a candidate is accepted exactly when it covers the serving range.
    serving, _ = _meta(sample_rates=[50.0, 20000.0], rate_range=[50.0, 20000.0])
    wider, _ = _meta(sample_rates=[20.0, 24000.0], rate_range=[20.0, 24000.0])
    narrower, _ = _meta(sample_rates=[100.0, 20000.0], rate_range=[100.0, 20000.0])
    dedicated, _ = _meta(sample_rates=[1000.0])

    def accepted(candidate, current):
        return all(candidate.serves_rate(float(r)) for r in current.sample_rates)

    assert accepted(wider, serving) and not accepted(narrower, serving) and not accepted(dedicated, serving)
    assert accepted(serving, dedicated)  # a fallback may replace a model for one rate inside its range


def test_log_uniform_rates_within_range_stratified_and_seeded():
    lo, hi, n = 50.0, 20000.0, 2000
    a = log_uniform_rates(lo, hi, n, np.random.default_rng(7))
    assert a.shape == (n,) and np.all((a >= lo) & (a <= hi)) and np.all(np.diff(a) > 0)
    # Log-uniform: every tenth of the log-range holds a tenth of the rates (stratified: exactly).
    counts, _ = np.histogram(np.log(a), bins=10, range=(math.log(lo), math.log(hi)))
    assert np.all(np.abs(counts - n / 10) <= 1), counts
    # ... and not uniform in Hz: half of them lie below the geometric centre (1 kHz), far below 10 kHz.
    assert abs(np.mean(a < math.sqrt(lo * hi)) - 0.5) < 0.01
    assert np.array_equal(a, log_uniform_rates(lo, hi, n, np.random.default_rng(7)))
    assert not np.array_equal(a, log_uniform_rates(lo, hi, n, np.random.default_rng(8)))
    # A few streams still cover the range: one per slice of log-rate.
    few = log_uniform_rates(lo, hi, 4, np.random.default_rng(0))
    edges = np.exp(np.linspace(math.log(lo), math.log(hi), 5))
    assert np.all((few >= edges[:-1]) & (few <= edges[1:]))


def test_streams_across_rates_are_deterministic_and_sized_for_their_rate():
    cfg = TrainConfig(sample_rate=1000.0, window=32, families=("ecg", "drift"), rate_range=(50.0, 20000.0))
    streams, fam, rates = synthetic_streams_across_rates(cfg, 6, np.random.SeedSequence(3))
    assert len(streams) == 12 and list(fam) == [0] * 6 + [1] * 6
    assert np.all((rates >= 50.0) & (rates <= 20000.0))
    assert [len(s) for s in streams] == [stream_length(32, r) for r in rates]
    assert not np.array_equal(rates[:6], rates[6:])  # each family draws its own rates
    again, _, rates2 = synthetic_streams_across_rates(cfg, 6, np.random.SeedSequence(3))
    assert np.array_equal(rates, rates2) and all(np.array_equal(x, y) for x, y in zip(streams, again))


def test_equal_streams_weighs_a_short_stream_like_a_long_one_and_the_default_is_unchanged():
    short, long_ = np.arange(40, dtype=np.float32), np.arange(4000, dtype=np.float32) + 1e5
    eq = WindowSampler([short, long_], 8, equal_streams=True)
    w, s = eq.sample(np.random.default_rng(0), 4000)
    assert abs(np.mean(s == 0) - 0.5) < 0.03
    assert torch.equal(w[:, 1:] - w[:, :-1], torch.ones(4000, 7))  # whole windows of one stream
    by_pos = WindowSampler([short, long_], 8)
    _, s = by_pos.sample(np.random.default_rng(0), 4000)
    assert np.mean(s == 0) < 0.03  # default: uniform over positions, so the short stream is rare
    # The default path draws exactly what it drew before the equal-stream mode existed.
    rng = np.random.default_rng(5)
    u = rng.integers(0, int(by_pos.cum[-1]), size=16)
    idx = np.searchsorted(by_pos.cum, u, side="right")
    starts = by_pos.offsets[idx] + u - (by_pos.cum[idx] - by_pos.positions[idx])
    got, _ = by_pos.sample(np.random.default_rng(5), 16)
    assert torch.equal(got, torch.from_numpy(by_pos.flat[starts[:, None] + np.arange(8)]))


def test_train_config_checks_the_rate_range():
    with pytest.raises(ValueError, match="rate_range"):
        TrainConfig(sample_rate=1000.0, rate_range=(2000.0, 100.0))
    with pytest.raises(ValueError, match="rate_range"):
        TrainConfig(sample_rate=30000.0, rate_range=(50.0, 20000.0))
    cfg = rate_generic_config((100.0, 10000.0), recipe=False)
    assert cfg.sample_rate == pytest.approx(1000.0) and cfg.rate_range == (100.0, 10000.0)
    with pytest.raises(ValueError, match="synthetic"):
        train_arrays(cfg, [np.zeros(4096, dtype=np.float32)], progress=False)


def test_tiny_rate_generic_training_serves_any_rate_of_its_range(tmp_path, monkeypatch):
    monkeypatch.setattr(sampler_mod, "_SAMPLES_PER_FAMILY", 100_000)  # 16 streams per family: fast
    cfg = rate_generic_config((50.0, 20000.0), window=64, arch_config={"channels": [4, 8], "kernel": 5},
                              families=("ecg", "vibration"), steps=6, batch_size=16, val_streams=2, eval_every=3)
    model, meta = train_synthetic(cfg, progress=False)
    assert meta.rate_range == [50.0, 20000.0] and meta.sample_rates == [50.0, 20000.0]
    assert meta.serves_rate(123.4) and meta.serves_rate(15000.0)
    assert not meta.serves_rate(30000.0) and not meta.serves_rate(10.0)
    data = meta.training["data"]
    assert data["rate_range"] == [50.0, 20000.0] and 50.0 <= data["train_rate_min"] < 200.0
    assert 5000.0 < data["train_rate_max"] <= 20000.0
    saved = save_checkpoint(tmp_path / "ckpt", model, meta)
    assert read_meta(tmp_path / "ckpt").serves_rate(123.4) and saved.rate_range == [50.0, 20000.0]


def test_dae_train_rate_generic_publishes_a_fallback_to_the_registry(tmp_path, monkeypatch):
    from models.registry import ModelRegistry
    from pipeline.cli.app import app

    monkeypatch.setattr(sampler_mod, "_SAMPLES_PER_FAMILY", 100_000)  # a small data set: fast
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--rate-generic", "--arch", "mlp", "--window", "64", "--steps", "3",
                              "--registry", str(tmp_path / "reg"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "50-20000 Hz (rate-generic)" in res.output
    reg = ModelRegistry(tmp_path / "reg")
    meta = reg.meta(reg.current())
    assert meta.rate_range == [50.0, 20000.0] and meta.serves_rate(123.4) and meta.serves_rate(15000.0)

    res = runner.invoke(app, ["train", "--sample-rate-range", "100:4000", "--arch", "mlp", "--window", "64",
                              "--steps", "2", "--registry", str(tmp_path / "reg"), "--no-promote", "--quiet"])
    assert res.exit_code == 0, res.output
    assert reg.meta(reg.versions()[-1]).rate_range == [100.0, 4000.0]


@pytest.mark.parametrize("args,says", [
    ([], "--rate-generic"),
    (["--sample-rate", "100", "--rate-generic"], "exclude each other"),
    (["--sample-rate-range", "4000:100"], "LO:HI"),
    (["--sample-rate-range", "abc"], "LO:HI"),
])
def test_dae_train_refuses_missing_or_contradictory_rate_flags(tmp_path, args, says):
    from pipeline.cli.app import app

    res = CliRunner().invoke(app, ["train", *args, "--registry", str(tmp_path / "reg")])
    assert res.exit_code == 2 and says in res.output, res.output


def _publish_generic(root) -> str:
    from models.registry import ModelRegistry

    meta, model = _meta(sample_rates=[50.0, 20000.0], rate_range=[50.0, 20000.0])
    return ModelRegistry(root).publish(model, meta, promote=True)


def test_the_demo_uses_a_current_rate_generic_model_for_its_rate(tmp_path, monkeypatch):
    from pipeline.settings import load_settings
    from pipeline.tools import demo

    version = _publish_generic(tmp_path / "reg")
    def no_training(*a, **k):
        raise AssertionError("the demo trained a model although the current one serves its rate")

    monkeypatch.setattr("models.training.train_synthetic", no_training)
    assert demo.ensure_model(load_settings(model={"registry": tmp_path / "reg"}), 1000.0) == version


def test_retrain_refuses_a_rate_generic_current_model_saying_why(tmp_path):
    from pipeline.retrain.run import retrain_once
    from pipeline.settings import load_settings

    _publish_generic(tmp_path / "reg")
    r = retrain_once(load_settings(model={"registry": tmp_path / "reg", "device": "cpu"}))
    assert r.outcome == "failed" and "rate-generic" in r.error and "dae train --sample-rate" in r.error
