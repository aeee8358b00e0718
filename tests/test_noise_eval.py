"""`dae evaluate --noise` (models/evaluation/noise_eval.py): one row per noise type with finite numbers,
the baseline that fits each noise type, per-signal tuning never below validation tuning, and each
recording scored by the models of its own rate. No Kafka; tiny inputs."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from models.archs import build_model
from models.checkpoint import meta_for, save_checkpoint
from models.evaluation import baselines
from models.evaluation.noise_eval import (
    FIT_KIND,
    NOISE_TYPES,
    NoiseEvalConfig,
    add_field_noise,
    evaluate_noises,
    fitting,
    format_noise_table,
    parse_noises,
    pareto,
    tune_per_signal,
    tune_validation,
)
from models.evaluation.signal_sets import make_signal
from models.signals.families import snr_db
from pipeline.cli.models import offline_denoiser

FITTING = {"white": {"savgol", "wiener"}, "hum": {"notch"}, "pink": {"savgol", "wiener"},
           "brown": {"savgol", "wiener"}, "impulsive": {"median"}, "dropouts": {"median", "savgol", "wiener"}}


def _checkpoint(tmp_path, name, rate):
    torch.manual_seed(0)
    model = build_model("mlp", {"window": 64, "hidden": 16}).eval()
    meta = meta_for(model, "mlp", window=64, hop=32, sample_rates=[rate], normalisation="window_standardize",
                    corruption={}, training={"seconds": 1.0, "objective": "clean"}, metrics={},
                    error_quantiles={}, created="2024-01-01T00:00:00+00:00")
    save_checkpoint(tmp_path / name, model, meta)
    return model, meta


def test_parse_noises():
    assert parse_noises("all") == NOISE_TYPES
    assert parse_noises("hum, impulsive,hum") == ("hum", "impulsive")
    with pytest.raises(ValueError, match="unknown noise type 'thermal'"):
        parse_noises("white,thermal")


def test_each_noise_type_has_its_fitting_baseline():
    assert set(NOISE_TYPES) == set(FIT_KIND) == set(FITTING)
    for noise in NOISE_TYPES:
        assert set(fitting(noise)) == FITTING[noise]


@pytest.mark.parametrize("noise", NOISE_TYPES)
def test_field_noise_is_reproducible_and_near_10_db(noise):
    clean = make_signal("chirp", 4096, 1000.0, np.random.default_rng(3))
    y = add_field_noise(clean, noise, 1000.0, (1, 2, 3))
    assert np.array_equal(y, add_field_noise(clean, noise, 1000.0, (1, 2, 3)))
    assert not np.array_equal(y, add_field_noise(clean, noise, 1000.0, (1, 2, 4)))
    # additive field noises are set to exactly 10 dB; white noise has σ = 0.316 × RMS (the white-noise
    # evaluation's, so a random variance); zero-filled dropouts of 10 % of the samples are ~10 dB
    tol = {"white": 0.3, "dropouts": 1.5}.get(noise, 0.01)
    assert snr_db(clean, y) == pytest.approx(10.0, abs=tol)


def test_hum_is_refused_below_its_nyquist():
    with pytest.raises(ValueError, match="does not fit a 100 Hz signal"):
        add_field_noise(np.ones(1000, np.float32), "hum", 100.0, (0,))


def test_per_noise_evaluation_one_row_per_noise_type_with_the_fitting_baseline(tmp_path):
    model, meta = _checkpoint(tmp_path, "m", 1000.0)
    cfg = NoiseEvalConfig(length=1024, signals_per_family=1, val_signals_per_family=1, families=("chirp", "impacts"))
    res = evaluate_noises({"m": (model, meta)}, cfg, denoiser_factory=offline_denoiser, log=lambda s: None)
    assert [(r["set"], r["noise"]) for r in res["rows"]] == [("heldout", n) for n in NOISE_TYPES]
    for r in res["rows"]:
        for key in ("input_snr_db", "model_gain_db", "baseline_val_db", "baseline_oracle_db", "margin_val_db",
                    "margin_oracle_db", "us_per_window"):
            assert math.isfinite(r[key]), (r["noise"], key)
        assert set(r["baseline"].split("/")) <= FITTING[r["noise"]]
        assert r["baseline_oracle_db"] >= r["baseline_val_db"] - 1e-9
    # the chosen filters, per family: the fitting ones, and the impulse and hum filters are median and notch
    for noise, fams in res["per_family"].items():
        for rec in fams.values():
            assert rec["baseline_val_choice"].split("(")[0] in FITTING[noise]
            assert all(c.split("(")[0] in FITTING[noise] for c in rec["oracle_choice"])
    assert res["per_family"]["hum"]["chirp"]["baseline_val_choice"].startswith("notch(")
    assert res["per_family"]["impulsive"]["chirp"]["baseline_val_choice"].startswith("median(")
    # hum and impulses are what their filters are made for: they gain far more than the identity-ish net
    assert res["per_family"]["impulsive"]["chirp"]["baseline_val"][0] > 10
    assert res["per_family"]["hum"]["chirp"]["baseline_val"][0] > 5
    table = format_noise_table(res)
    assert "dropouts" in table and "Pareto" in table
    assert [p["pareto"] for p in pareto(res["rows"])] == [True]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noise=st.sampled_from(NOISE_TYPES), family=st.sampled_from(["chirp", "square", "impacts", "ecg", "audio"]),
       seed=st.integers(0, 2**31), rate=st.sampled_from([360.0, 1000.0]))
def test_per_signal_tuning_is_never_below_validation_tuning_on_the_same_signal(noise, family, seed, rate):
    rng = np.random.default_rng(seed)
    val = [make_signal(family, 1024, rate, rng)]
    test = make_signal(family, 1024, rate, rng)
    vn = [add_field_noise(val[0], noise, rate, (seed, 0))]
    y = add_field_noise(test, noise, rate, (seed, 1))
    chosen = tune_validation(noise, val, vn, rate)
    oracle = tune_per_signal(noise, test, y, rate)
    assert chosen.name in FITTING[noise] and oracle.name in FITTING[noise]
    assert oracle.val_gain_db >= baselines.snr_gain_db(test, y, chosen(y)) - 1e-9


def test_cli_noise_quick_run(tmp_path):
    """--quick trains a 60-step seed MLP; one row per noise type, finite, in the table and the JSON."""
    from pipeline.cli.app import app

    r = CliRunner().invoke(app, ["evaluate", "--quick", "--noise", "all", "--suite", "mlp", "--families", "square",
                                 "--signals", "1", "--length", "1024", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "ev" / "evaluate-noise.json").read_text())["noise_evaluation"]
    assert len(res) == 1 and [row["noise"] for row in res[0]["rows"]] == list(NOISE_TYPES)
    assert all(math.isfinite(row["model_gain_db"]) and math.isfinite(row["margin_oracle_db"]) for row in res[0]["rows"])
    assert (tmp_path / "ev" / "models" / "mlp").is_dir()


def test_cli_noise_on_recordings_uses_each_rates_model(tmp_path):
    """Recordings at two rates (a sidecar JSON's fs_hz, else --sample-rate): each scored by the --model
    serving its rate; hum is skipped at 100 Hz, where 50 Hz is above Nyquist."""
    from pipeline.cli.app import app
    from pipeline.tools.fileio import write_signal

    _checkpoint(tmp_path, "m100", 100.0)
    _checkpoint(tmp_path, "m1000", 1000.0)
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    write_signal(tmp_path / "slow.npy", (np.sin(2 * np.pi * t / 50) + 0.1 * rng.standard_normal(3000)).astype(np.float32))
    (tmp_path / "slow.json").write_text(json.dumps({"fs_hz": 100}))
    write_signal(tmp_path / "fast.npy", np.sin(2 * np.pi * t / 20).astype(np.float32)[:, None].repeat(2, axis=1))
    r = CliRunner().invoke(app, ["evaluate", "--noise", "hum,impulsive", "--data", str(tmp_path / "slow.npy"),
                                 "--data", str(tmp_path / "fast.npy"), "--model", f"a={tmp_path / 'm100'}",
                                 "--model", f"b={tmp_path / 'm1000'}", "--out", str(tmp_path / "ev"),
                                 "--no-throughput"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "ev" / "evaluate-noise-data.json").read_text())["noise_evaluation"]
    by_rate = {x["sample_rate"]: x for x in res}
    assert set(by_rate) == {100.0, 1000.0}
    assert by_rate[100.0]["skipped_noises"] == ["hum"]
    assert {(row["set"], row["noise"], row["model"]) for row in by_rate[100.0]["rows"]} == {("slow", "impulsive", "a")}
    assert {(row["set"], row["noise"], row["model"]) for row in by_rate[1000.0]["rows"]} == {
        (s, n, "b") for s in ("fast:0", "fast:1") for n in ("hum", "impulsive")}
    # a rate no --model serves is a clear error
    r = CliRunner().invoke(app, ["evaluate", "--noise", "white", "--data", str(tmp_path / "slow.npy"),
                                 "--model", f"b={tmp_path / 'm1000'}", "--out", str(tmp_path / "ev2")])
    assert r.exit_code != 0 and "no --model serves 100 Hz" in r.output


def test_conv_1pass_is_the_convs_weights_without_the_self_ensemble(tmp_path):
    from models.evaluation.suite import SUITE, one_pass

    torch.manual_seed(0)
    conv = build_model("conv", {"window": 64, "channels": [4, 8], "self_ensemble": 2}).eval()
    meta = meta_for(conv, "conv", window=64, hop=32, sample_rates=[1000.0], normalisation="window_standardize",
                    corruption={}, training={}, metrics={}, error_quantiles={}, created="2024-01-01T00:00:00+00:00")
    single, smeta = one_pass(conv, meta)
    assert "conv_1pass" in SUITE and smeta.config["self_ensemble"] == 1 and meta.config["self_ensemble"] == 2
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(single(x), conv._net(x))
        torch.testing.assert_close(conv(x), (conv._net(x) - conv._net(-x)) / 2)
