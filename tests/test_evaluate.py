"""A tiny evaluation run: JSON keys, figure, and that models go through the overlap-add path."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.checkpoint import meta_for, save_checkpoint
from models.archs import build_model
from models.evaluation import EvalConfig, evaluate, format_table, plot, write_json
from models.signals.heldout import HELDOUT_FAMILIES, generate_heldout
from pipeline.cli.models import offline_denoiser


class Passthrough(torch.nn.Module):
    def forward(self, x):
        return x


def _checkpointed(tmp_path, name, arch, config):
    torch.manual_seed(0)
    model = build_model(arch, config).eval()
    meta = meta_for(model, arch, window=64, hop=32, sample_rates=[1000.0], normalisation="window_standardize",
                    corruption={}, training={"seconds": 1.0, "objective": "clean"}, metrics={},
                    error_quantiles={}, created="2024-01-01T00:00:00+00:00")
    return save_checkpoint(tmp_path / name, model, meta), model


@pytest.mark.parametrize("family", HELDOUT_FAMILIES)
def test_heldout_families_are_unit_rms(family):
    x = generate_heldout(family, 5000, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (5000,)
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)


def test_identity_model_through_overlap_add_gains_nothing(tmp_path):
    meta, _ = _checkpointed(tmp_path, "m", "mlp", {"window": 64, "hidden": 16})
    run = offline_denoiser(Passthrough(), meta)
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    np.testing.assert_allclose(run(x), x, rtol=1e-5, atol=1e-5)  # overlap-add of unchanged windows


def test_tiny_evaluation_produces_the_json_keys(tmp_path):
    meta, model = _checkpointed(tmp_path, "conv", "conv", {"window": 64, "channels": [4, 8]})
    cfg = EvalConfig(length=1024, signals_per_family=1, val_signals_per_family=1, val_length=1024,
                     families=("vibration", "square"), excerpt=200)
    res, ex = evaluate({"conv": (model, meta)}, cfg, denoiser_factory=offline_denoiser, log=lambda s: None,
                       measure_throughput=False)
    assert [lv["key"] for lv in res["levels"]] == ["0.05", "0.3162", "0.5"]
    assert res["groups"] == {"seen": ["vibration"], "heldout": ["square"], "all": ["vibration", "square"]}
    assert set(res["methods"]) == {"moving_average", "savgol", "wiener", "best_baseline", "conv"}
    for m in res["methods"].values():
        assert set(m["gain_db"]) == {"0.05", "0.3162", "0.5"}
        assert set(m["summary"]["0.3162"]) == {"seen", "heldout", "all"}
    assert res["methods"]["best_baseline"]["summary"]["0.3162"]["all"] > 2.0
    assert set(res["models"]["conv"]) >= {"arch", "train_seconds", "parameters", "window", "hop"}
    assert res["baseline_params"]["savgol"]["0.5"]["square"]["length"] % 2 == 1
    write_json(res, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["methods"]["conv"]["kind"] == "model"
    plot(res, ex, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "best_baseline" in format_table(res)


def test_cli_evaluate_denoise_and_models(tmp_path):
    from models.registry import ModelRegistry
    from pipeline.cli.app import app
    from pipeline.tools.fileio import read_signal, write_signal

    runner = CliRunner()
    meta, model = _checkpointed(tmp_path, "ck", "conv", {"window": 64, "channels": [4, 8]})
    sig = np.random.default_rng(0).standard_normal((700, 2)).astype(np.float32)
    write_signal(tmp_path / "in.npy", sig)
    r = runner.invoke(app, ["denoise", str(tmp_path / "in.npy"), str(tmp_path / "out.csv"), "--model", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.output
    out, _ = read_signal(tmp_path / "out.csv")
    assert out.shape == (700, 2)

    reg = ModelRegistry(tmp_path / "reg")
    reg.publish(model, meta, promote=True)
    reg.publish(model, meta, promote=True)
    r = runner.invoke(app, ["models", "list", "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0 and "* v2" in r.output and "  v1" in r.output
    r = runner.invoke(app, ["models", "rollback", "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0 and reg.current() == "v1"
    r = runner.invoke(app, ["models", "promote", "v2", "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0 and reg.current() == "v2"
    r = runner.invoke(app, ["models", "show", "v1", "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0 and json.loads(r.output)["arch"] == "conv"
    r = runner.invoke(app, ["models", "promote", "v9", "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 2
    r = runner.invoke(app, ["denoise", str(tmp_path / "in.npy"), str(tmp_path / "o.npy"), "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0, r.output

    r = runner.invoke(app, ["evaluate", "--model", f"conv={tmp_path / 'ck'}", "--data", str(tmp_path / "in.npy"),
                            "--out", str(tmp_path / "ev"), "--no-throughput"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    assert res["source"] == "files" and res["families"] == ["in:0", "in:1"]
    assert (tmp_path / "ev" / "evaluate.png").exists()
