"""Conv / overcomplete / noisy-target architectures: shapes, configs, checkpoint round-trips,
the Noisier2Noise wrapper's determinism and correction, training from arrays."""

import json
import math

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, meta_for, save_checkpoint
from models.archs import (
    ARCHITECTURES,
    ConvConfig,
    ConvDAE,
    Noisier2NoiseDAE,
    OvercompleteDAE,
    build_model,
    model_config,
)
from models.forward import denoise_rows, denoise_windows, standardize
from models.training import (
    TrainConfig,
    WindowSampler,
    noisier2noise_inputs,
    split_streams,
    train_arrays,
)
from models.signals.families import generate


def _meta(model, arch, window):
    return meta_for(model, arch, window=window, hop=window // 2, sample_rates=[1000.0],
                    normalisation="window_standardize", corruption={}, training={}, metrics={},
                    error_quantiles={}, created="2024-01-01T00:00:00+00:00")


@pytest.mark.parametrize("window", [64, 100, 256])
def test_conv_shapes_and_padding(window):
    m = build_model("conv", {"window": window, "channels": [8, 16, 32], "kernel": 5})
    assert isinstance(m, ConvDAE) and m.config.channels == (8, 16, 32)
    x = torch.randn(3, window)
    assert m(x).shape == (3, window)
    with pytest.raises(ValueError, match=rf"\(B, {window}\)"):
        m(torch.randn(3, window + 1))


def test_conv_config_validation():
    for bad in ({"kernel": 4}, {"channels": []}, {"channels": [8, 0]}, {"skip": 1}):
        with pytest.raises(ValueError):
            build_model("conv", {"window": 64, **bad})
    with pytest.raises(ValueError, match="levels need window"):
        ConvConfig(window=8, channels=(1, 2, 4, 8, 16))


def test_overcomplete_latent_is_wider_than_the_window():
    m = build_model("mlp_overcomplete", {"window": 32})
    assert isinstance(m, OvercompleteDAE) and m.config.latent == 64
    assert m.encode(torch.randn(2, 32)).shape == (2, 64)
    assert m(torch.randn(2, 32)).shape == (2, 32)
    with pytest.raises(ValueError, match="latent"):
        build_model("mlp_overcomplete", {"window": 32, "latent": 16})


def test_registry_of_architectures():
    assert {"mlp", "conv", "mlp_overcomplete", "noisier2noise"} <= set(ARCHITECTURES)


@pytest.mark.parametrize(
    "arch,config",
    [
        ("conv", {"window": 64, "channels": [8, 16], "kernel": 5, "skip": False, "residual": False}),
        ("mlp_overcomplete", {"window": 64, "latent": 96}),
        ("noisier2noise", {"window": 64, "inner_arch": "conv", "inner": {"channels": [4, 8]}, "draws": 3, "seed": 5}),
    ],
)
def test_checkpoint_round_trip_bit_exact(tmp_path, arch, config):
    torch.manual_seed(0)
    model = build_model(arch, config)
    saved = save_checkpoint(tmp_path, model, _meta(model, arch, 64))
    json.loads((tmp_path / "model.json").read_text())  # plain JSON
    loaded, meta = load_checkpoint(tmp_path)
    assert meta.arch == arch and meta.config == saved.config
    assert model_config(loaded) == model_config(model)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(20, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_noisier2noise_noise_is_a_saved_buffer(tmp_path):
    a = build_model("noisier2noise", {"window": 32, "inner_arch": "mlp", "draws": 4, "seed": 1})
    b = build_model("noisier2noise", {"window": 32, "inner_arch": "mlp", "draws": 4, "seed": 2})
    assert isinstance(a, Noisier2NoiseDAE) and a.noise.shape == (4, 32)
    assert "noise" in a.state_dict() and not torch.equal(a.noise, b.noise)
    assert a.config.inner == {"window": 32, "hidden": 256}
    save_checkpoint(tmp_path, a, _meta(a, "noisier2noise", 32))
    loaded, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded.noise, a.noise)


def test_noisier2noise_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    m = build_model("noisier2noise", {"window": 64, "inner_arch": "conv", "inner": {"channels": [4, 8]}, "draws": 4}).eval()
    rows = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    y1 = denoise_rows(m, rows)
    y2 = denoise_rows(m, rows)
    assert np.array_equal(y1, y2)
    # Same window alone, in a batch of 17 or of 40: same output (a replay re-batches windows).
    alone = np.concatenate([denoise_rows(m, rows[i : i + 1]) for i in range(0, 40, 7)])
    np.testing.assert_allclose(alone, y1[::7], rtol=0, atol=1e-5)


def test_noisier2noise_applies_the_correction():
    """forward == mean_k (2 f(z_k) − z_k) with z_k = x + σ n_k; an identity inner net gives back x."""
    torch.manual_seed(0)
    m = build_model("noisier2noise", {"window": 32, "inner_arch": "mlp", "inner": {"hidden": 16},
                                      "sigma": 0.4, "draws": 5}).eval()
    x = torch.randn(6, 32)
    with torch.no_grad():
        z = x[:, None, :] + 0.4 * m.noise[None]
        zn, mean, scale = standardize(z.reshape(-1, 32))
        fy = (m.inner(zn) * scale + mean).reshape(6, 5, 32)
        expected = (2 * fy - z).mean(dim=1)
        torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(m(x), (fy).mean(dim=1), atol=1e-3)  # the plain average is not used
        m.inner = torch.nn.Identity()  # f(z) = z  ⇒  2z − z = z, averaged: x + σ·mean(n_k)
        torch.testing.assert_close(m(x), x + 0.4 * m.noise.mean(dim=0), rtol=1e-5, atol=1e-5)


def test_noisier2noise_training_pairs():
    noisy = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)) * 3 + 2
    zn, target = noisier2noise_inputs(noisy, 0.5, torch.Generator().manual_seed(0))
    yn, _, _ = standardize(noisy)
    assert torch.allclose(zn.std(dim=1, correction=0), torch.ones(8), atol=1e-5)
    # target is yn in zn's units: yn ≈ target·std(z) + mean(z), and z − yn is the added noise (σ≈0.5)
    added = zn - target
    assert 0.3 < float(added.std()) < 0.6


def test_denoise_windows_is_per_channel():
    m = build_model("conv", {"window": 32, "channels": [4, 8]}).eval()
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 2, 32)).astype(np.float32)
    w[:, 1] = 100 + 10 * w[:, 1]  # the other channel at another scale and offset
    out = denoise_windows(m, w)
    assert out.shape == (5, 2, 32)
    np.testing.assert_array_equal(out[:, 0], denoise_rows(m, w[:, 0]))
    np.testing.assert_allclose(out[:, 1], denoise_rows(m, w[:, 1]), rtol=1e-6)


def test_window_sampler_and_stream_split():
    streams = [np.arange(100, dtype=np.float32), 1000 + np.arange(50, dtype=np.float32)]
    s = WindowSampler(streams + [np.zeros(5, np.float32)], 16)  # too-short stream dropped
    assert s.n_streams == 2
    b = s(np.random.default_rng(0), 500).numpy()
    assert b.shape == (500, 16)
    assert np.all(np.diff(b, axis=1) == 1)  # never straddles two streams
    train, val, how = split_streams([np.zeros(100, np.float32) + i for i in range(10)], 0.2, 16, seed=0)
    assert how == "by stream" and len(train) == 8 and len(val) == 2
    assert not {float(v[0]) for v in val} & {float(t[0]) for t in train}
    one_t, one_v, how = split_streams([np.arange(1000, dtype=np.float32)], 0.2, 16, seed=0)
    assert how.startswith("single") and one_t[0][-1] < one_v[0][0]


@pytest.mark.parametrize("objective", ["clean", "noisier2noise"])
def test_train_arrays_short(objective, tmp_path):
    rng = np.random.default_rng(0)
    sigs = [generate("vibration", 4096, 1000.0, rng) for _ in range(6)]
    if objective == "noisier2noise":
        sigs = [s + 0.3 * rng.standard_normal(s.shape).astype(np.float32) for s in sigs]
    sigs.append(np.stack([sigs[0], sigs[1]], axis=1))  # a 2-channel array: two streams
    cfg = TrainConfig(sample_rate=1000.0, window=64, arch="conv", arch_config={"channels": [4, 8]},
                      objective=objective, steps=20, batch_size=32, n2n_draws=2)
    model, meta = train_arrays(cfg, sigs, progress=False)
    assert meta.training["data"]["train_streams"] + meta.training["data"]["val_streams"] == 8
    assert meta.training["objective"] == objective
    assert meta.arch == ("noisier2noise" if objective == "noisier2noise" else "conv")
    if objective == "noisier2noise":
        assert meta.corruption["type"] == "noisier2noise" and meta.config["draws"] == 2
    saved = save_checkpoint(tmp_path, model, meta)
    loaded, m2 = load_checkpoint(tmp_path)
    assert m2 == saved
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    assert np.array_equal(denoise_rows(model, x), denoise_rows(loaded, x))


def test_train_config_new_fields():
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(sample_rate=100.0, arch="transformer")
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(sample_rate=100.0, objective="noise2void")
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig(sample_rate=100.0, arch="conv", arch_config={"depth": 3})
    with pytest.raises(ValueError, match="noisier2noise"):
        from models.training import train_synthetic

        train_synthetic(TrainConfig(sample_rate=100.0, objective="noisier2noise"), progress=False)


def test_log_uniform_sigma_range():
    from models.noise import GaussianNoise, corruption_from_dict

    x = torch.randn(4000, 256)
    c = GaussianNoise((0.03, 0.6), log_uniform=True)
    ratio = (c(x, torch.Generator().manual_seed(0)) - x).std(dim=1) / x.pow(2).mean(dim=1).sqrt()
    logs = ratio.log()
    # log σ uniform on [log .03, log .6]: its median is the geometric mean, ~0.134
    assert float(ratio.median()) == pytest.approx((0.03 * 0.6) ** 0.5, rel=0.08)
    assert float(logs.std()) == pytest.approx((np.log(0.6) - np.log(0.03)) / 12**0.5, rel=0.1)
    assert corruption_from_dict(c.to_dict()) == c and c.to_dict()["log_uniform"] is True
    assert "log_uniform" not in GaussianNoise((0.1, 0.2)).to_dict()
    with pytest.raises(ValueError, match="lo > 0"):
        GaussianNoise((0.0, 0.5), log_uniform=True)


# ----------------------------------------------------------- v2: U-Net knobs, training distribution
def test_conv_v1_config_rebuilds_the_v1_layout():
    """A v1 checkpoint's config (no concat/depth keys) must rebuild the very same parameters."""
    v1 = build_model("conv", {"channels": [16, 32, 64], "kernel": 9, "residual": True, "skip": True, "window": 256})
    names = {k: tuple(v.shape) for k, v in v1.state_dict().items()}
    assert names == {
        "stem.0.weight": (16, 1, 9), "stem.0.bias": (16,),
        "down.0.0.weight": (32, 16, 9), "down.0.0.bias": (32,), "down.0.2.weight": (32, 32, 9), "down.0.2.bias": (32,),
        "down.1.0.weight": (64, 32, 9), "down.1.0.bias": (64,), "down.1.2.weight": (64, 64, 9), "down.1.2.bias": (64,),
        "up.0.0.weight": (64, 32, 4), "up.0.0.bias": (32,), "up.1.0.weight": (32, 16, 4), "up.1.0.bias": (16,),
        "fuse.0.0.weight": (32, 32, 9), "fuse.0.0.bias": (32,), "fuse.1.0.weight": (16, 16, 9), "fuse.1.0.bias": (16,),
        "head.weight": (1, 16, 9), "head.bias": (1,),
    }


@pytest.mark.parametrize("window", [64, 100, 256])
def test_conv_unet_variants(window):
    cfg = {"window": window, "channels": [8, 16, 32, 32], "kernel": 5, "concat": True, "stem_convs": 2,
           "level_convs": 3, "fuse_convs": 2, "dilations": [2, 4]}
    m = build_model("conv", cfg).eval()
    assert m.config.dilations == (2, 4) and m.fuse[0][0].in_channels == 2 * 32
    x = torch.randn(5, window)
    with torch.no_grad():
        y = m(x)
        assert y.shape == (5, window)
        # each row is processed alone: a row's output does not depend on its batch-mates
        torch.testing.assert_close(m(x[2:3]), y[2:3], rtol=1e-5, atol=1e-5)
    for bad in ({"concat": 1}, {"fuse_convs": 0}, {"dilations": [0]}, {"level_convs": 9}):
        with pytest.raises(ValueError):
            build_model("conv", {"window": 64, **bad})


def test_stream_referenced_noise_has_the_claimed_std():
    from models.noise import GaussianNoise, corruption_from_dict

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 256) * torch.linspace(0.01, 3.0, 3000)[:, None]  # windows of very different RMS
    ref = torch.full((3000, 1), 2.0)
    c = GaussianNoise(0.1, reference="stream")
    y, std = c.sample(x, g, ref)
    assert torch.allclose(std, torch.full((3000, 1), 0.2))
    noise_std = (y - x).std(dim=1)
    assert float(noise_std.mean()) == pytest.approx(0.2, rel=0.01)  # same absolute noise everywhere
    assert float(noise_std[:100].mean()) == pytest.approx(float(noise_std[-100:].mean()), rel=0.05)
    assert c.to_dict() == {"type": "gaussian", "sigma": 0.1, "reference": "stream"}
    assert corruption_from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="ref_rms"):
        c(x, g)
    with pytest.raises(ValueError, match="reference"):
        GaussianNoise(0.1, reference="global")
    w = GaussianNoise(0.1)  # window-relative: the default, unchanged
    ratio = (w(x, g) - x).std(dim=1) / x.pow(2).mean(dim=1).sqrt()
    assert float(ratio.mean()) == pytest.approx(0.1, rel=0.02)


def test_nmse_loss_targets_the_clean_window_per_noise_level():
    from models.noise import GaussianNoise
    from models.training import training_loss

    torch.manual_seed(0)
    model = build_model("conv", {"window": 64, "channels": [4, 8]})
    clean = torch.randn(16, 64)
    ref = torch.ones(16, 1)
    c = GaussianNoise((0.05, 0.5), log_uniform=True, reference="stream")
    loss = training_loss(model, clean, c, torch.Generator().manual_seed(3), ref, normalise=True)
    noisy, std = c.sample(clean, torch.Generator().manual_seed(3), ref)  # the same draw
    xn, mean, scale = standardize(noisy)
    pred = model(xn)
    per_window = (pred - (clean - mean) / scale).pow(2).mean(dim=1, keepdim=True)
    expected = (per_window / (std / scale).pow(2)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    vs_noisy = ((pred - xn).pow(2).mean(dim=1, keepdim=True) / (std / scale).pow(2)).mean()
    assert abs(loss.item() - vs_noisy.item()) > 1e-3 * loss.item()
    # An identity denoiser scores ~1 (its error is the noise itself) at every noise level.
    ident = training_loss(torch.nn.Identity(), clean, c, torch.Generator().manual_seed(3), ref, normalise=True)
    assert ident.item() == pytest.approx(1.0, rel=0.15)


def test_generic_training_families():
    from models.signals.heldout import HELDOUT_FAMILIES
    from models.signals.generic import GENERIC_FAMILIES, TRAIN_FAMILIES, generate_training

    assert not set(TRAIN_FAMILIES) & set(HELDOUT_FAMILIES)
    for fam in GENERIC_FAMILIES:
        a = generate_training(fam, 5000, 1000.0, np.random.default_rng(1))
        b = generate_training(fam, 5000, 1000.0, np.random.default_rng(1))
        assert a.dtype == np.float32 and a.shape == (5000,) and np.isfinite(a).all()
        assert np.array_equal(a, b)  # seeded
        assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
        if fam != "events":
            assert abs(float(a.mean())) < 1e-3
    cfg = TrainConfig(sample_rate=1000.0, families=TRAIN_FAMILIES)
    assert cfg.families == TRAIN_FAMILIES
    with pytest.raises(ValueError, match="chirp"):
        TrainConfig(sample_rate=1000.0, families=("chirp",))  # a held-out family is no training family


def test_window_sampler_reports_streams_and_their_std():
    streams = [np.full(100, 1.0, np.float32) + np.arange(100) % 2, 3.0 * np.arange(50, dtype=np.float32)]
    s = WindowSampler(streams, 16)
    w, idx = s.sample(np.random.default_rng(0), 200)
    assert w.shape == (200, 16) and idx.shape == (200,)
    for row, i in zip(w.numpy(), idx):  # stream 0 holds only 1s and 2s, stream 1 multiples of 3
        assert set(row.tolist()) <= {1.0, 2.0} if i == 0 else np.all(row % 3 == 0)
    np.testing.assert_allclose(s.stream_std, [np.std(streams[0]), np.std(streams[1])], rtol=1e-6)
    assert torch.equal(s(np.random.default_rng(0), 200), w)  # __call__ draws the same windows
    assert s.ref_rms(idx).shape == (200, 1)


def test_short_run_with_the_v2_training_options():
    from models.signals.generic import GENERIC_FAMILIES
    from models.training import train_synthetic

    cfg = TrainConfig(sample_rate=1000.0, window=64, arch="conv", families=("ecg",) + GENERIC_FAMILIES,
                      arch_config={"channels": [4, 8], "concat": True}, steps=30, batch_size=32, val_streams=1,
                      sigma=(0.03, 0.6), sigma_log_uniform=True, noise_reference="stream", loss="nmse",
                      eval_every=10, anneal_by_time=True, max_seconds=600.0, cpu_threads="auto")
    threads = torch.get_num_threads()
    model, meta = train_synthetic(cfg, progress=False)
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    assert meta.corruption == {"type": "gaussian", "sigma": [0.03, 0.6], "log_uniform": True, "reference": "stream"}
    assert meta.training["loss"] == "nmse" and meta.training["anneal_by_time"] is True
    assert set(meta.metrics["snr_gain_db_by_family"]) == {"ecg", *GENERIC_FAMILIES}
    assert math.isfinite(meta.metrics["val_loss"])
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(sample_rate=1000.0, loss="l1")
    with pytest.raises(ValueError, match="cpu_threads"):
        TrainConfig(sample_rate=1000.0, cpu_threads=0)


@pytest.mark.parametrize("k", [2, 4])
def test_conv_self_ensemble_is_a_deterministic_symmetric_average(k):
    torch.manual_seed(0)
    m = build_model("conv", {"window": 64, "channels": [4, 8], "self_ensemble": k}).eval()
    plain = build_model("conv", {"window": 64, "channels": [4, 8]}).eval()
    plain.load_state_dict(m.state_dict())  # same weights: the ensemble adds no parameters
    x = torch.randn(6, 64)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(m(-x), -y, rtol=1e-5, atol=1e-5)  # odd in the input
        if k == 4:
            torch.testing.assert_close(m(x.flip(1)), y.flip(1), rtol=1e-5, atol=1e-5)  # time-reversal equivariant
            expected = (plain(x) - plain(-x) + plain(x.flip(1)).flip(1) - plain(-x.flip(1)).flip(1)) / 4
        else:
            expected = (plain(x) - plain(-x)) / 2
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(m(x), y)
    m.train()  # training fits the plain net
    torch.testing.assert_close(m(x), plain.train()(x))
    with pytest.raises(ValueError, match="self_ensemble"):
        build_model("conv", {"window": 64, "self_ensemble": 3})


# ------------------------------------------------- bf16 CPU steps, evaluation subsets, `dae train`
def test_cpu_bf16_training_runs_and_is_recorded():
    from models.training import train_arrays

    t = np.arange(4000)
    sigs = [np.sin(2 * np.pi * t / p).astype(np.float32) for p in (17.0, 23.0, 31.0, 41.0, 53.0)]
    cfg = TrainConfig(sample_rate=1000.0, window=64, arch="conv", steps=20, batch_size=16,
                      arch_config={"channels": [4, 8]}, eval_every=10, cpu_bf16=True)
    model, meta = train_arrays(cfg, sigs, progress=False)
    assert meta.training["bf16_autocast"] is True
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    assert math.isfinite(meta.metrics["val_loss"])
    assert TrainConfig(sample_rate=1000.0).cpu_bf16 is False  # opt-in (the recommended recipe turns it on)


def test_evaluating_a_family_subset_draws_the_same_signals():
    from models.evaluation import ALL_FAMILIES, parse_families, signal_set

    assert parse_families("heldout") == ("chirp", "square", "impacts")
    assert parse_families("seen,impacts") == ("vibration", "drift", "ecg", "audio", "impacts")
    assert parse_families("all") == ALL_FAMILIES
    with pytest.raises(ValueError, match="unknown family"):
        parse_families("sine")
    full = signal_set(ALL_FAMILIES, 2, 512, 1000.0, 11)
    sub = signal_set(("impacts", "chirp"), 2, 512, 1000.0, 11)
    for f in ("impacts", "chirp"):
        for a, b in zip(full[f], sub[f]):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(full["chirp"][0][:100], full["square"][0][:100])


def test_heldout_only_evaluation_reports_margins_at_every_level(tmp_path):
    from models.evaluation import EvalConfig, evaluate, format_table, margins
    from pipeline.cli.models import offline_denoiser

    model = build_model("conv", {"window": 64, "channels": [4, 8]}).eval()
    from models.checkpoint import meta_for

    meta = meta_for(model, "conv", window=64, hop=32, sample_rates=[1000.0], normalisation="window_standardize",
                    corruption={}, training={"seconds": 1.0, "objective": "clean"}, metrics={},
                    error_quantiles={}, created="2024-01-01T00:00:00+00:00")
    cfg = EvalConfig(length=1024, signals_per_family=1, val_signals_per_family=1, val_length=1024,
                     families=("square", "impacts"), excerpt=100)
    res, _ = evaluate({"conv": (model, meta)}, cfg, denoiser_factory=offline_denoiser, log=lambda s: None,
                      measure_throughput=False)
    assert res["groups"] == {"heldout": ["square", "impacts"], "all": ["square", "impacts"]}
    d = margins(res, "conv")
    for lk in ("0.05", "0.3162", "0.5"):
        want = res["methods"]["conv"]["summary"][lk]["heldout"] - res["methods"]["best_baseline"]["summary"][lk]["heldout"]
        assert d[lk]["heldout"] == pytest.approx(want)
    table = format_table(res)
    for lk in ("0.05", "0.3162", "0.5"):
        assert f"per family at σ={lk}" in table
    assert "model minus best_baseline" in table


def test_dae_train_without_arch_uses_the_recommended_recipe(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import models.training as mt
    from pipeline.cli.app import app

    seen = {}

    class Stop(Exception):
        pass

    def fake(cfg, progress=True):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(mt, "train_synthetic", fake)
    r = CliRunner().invoke(app, ["train", "--sample-rate", "1000", "--registry", str(tmp_path), "--max-seconds", "120"])
    assert isinstance(r.exception, Stop), r.output
    cfg = seen["cfg"]
    want = mt.best_config(1000.0)
    assert cfg.arch == mt.DEFAULT_ARCH and cfg.arch_config == want.arch_config
    assert (cfg.batch_size, cfg.loss, cfg.families, cfg.cpu_bf16) == (want.batch_size, want.loss, want.families, want.cpu_bf16)
    assert cfg.max_seconds == 120.0  # an explicit option still wins
    r = CliRunner().invoke(app, ["train", "--sample-rate", "1000", "--registry", str(tmp_path), "--arch", "mlp"])
    assert isinstance(r.exception, Stop), r.output
    assert seen["cfg"].arch == "mlp" and seen["cfg"].batch_size == TrainConfig(sample_rate=1.0).batch_size


def test_weight_ema_is_the_exponential_average():
    from models.training import WeightEMA

    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.zero_()
    ema = WeightEMA(net, 0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)  # a step change of the live weights
    for s in range(100, 110):  # late steps: d = 0.9
        ema.update(s)
    torch.testing.assert_close(ema.net.weight, torch.full((2, 3), 1 - 0.9 ** 10))
    assert not ema.net.weight.requires_grad and net.weight.requires_grad
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(sample_rate=1000.0, ema=1.0)
    # Training with the EMA: the same seed gives the same trajectory, but another (averaged) model.
    from models.training import train_arrays

    t = np.arange(4000)
    sigs = [np.sin(2 * np.pi * t / p).astype(np.float32) for p in (17.0, 23.0, 31.0, 41.0, 53.0)]
    kw = dict(sample_rate=1000.0, window=64, arch="conv", steps=12, batch_size=8,
              arch_config={"channels": [4, 8]}, eval_every=100, patience=50)
    plain, _ = train_arrays(TrainConfig(**kw), sigs, progress=False)
    avg, meta = train_arrays(TrainConfig(ema=0.5, **kw), sigs, progress=False)
    assert meta.training["ema"] == 0.5
    diffs = [float((a - b).detach().abs().max()) for a, b in zip(plain.parameters(), avg.parameters())]
    assert max(diffs) > 0


def test_thread_tuner_backs_off_while_one_thread_keeps_winning(monkeypatch):
    from models.training import parts as mt

    clock = [0.0]
    monkeypatch.setattr(mt.time, "perf_counter", lambda: clock[0])
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t = mt.ThreadTuner("auto", torch.device("cpu"), period=10, probe=4, max_period=80)
        used = []
        for step in range(1, 400):
            t.before(step)
            n = torch.get_num_threads()
            used.append(n)
            clock[0] += 0.001 if n == 1 else 0.005  # a 2-thread step is 5x slower (a busy second core)
            t.after()
        assert set(t.choices) == {1}
        # probes at steps 1, 19 (+10), 47 (+20), 95 (+40), 183 (+80), 271 (+80), 359 (+80): 7 probes, 4 steps
        # each at 2 threads, instead of ~40 probes at a fixed period of 10
        assert len(t.choices) == 7 and used.count(2) == 7 * 4
        assert t.summary() == {"setting": "auto", "threads_chosen": {"1": 7}}
        t.restore()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("one", [False, True])
def test_publish_one_pass_keeps_the_chosen_weights_in_one_pass(one):
    """``publish_one_pass``: the ensemble chooses the weights (same steps, same choice) and the
    checkpoint holds one pass of exactly those weights, measured as such."""
    from models.training import best_config, train_synthetic

    rng = np.random.default_rng(0)
    sigs = [generate("vibration", 4096, 1000.0, rng) for _ in range(6)]
    cfg = TrainConfig(sample_rate=1000.0, window=64, arch="conv",
                      arch_config={"channels": [4, 8], "self_ensemble": 2},
                      steps=30, batch_size=16, eval_every=10, publish_one_pass=one)
    model, meta = train_arrays(cfg, sigs, progress=False)
    both = TrainConfig(**{**cfg.__dict__, "publish_one_pass": False})
    ens, ens_meta = train_arrays(both, sigs, progress=False)
    assert meta.training["best_step"] == ens_meta.training["best_step"]
    if not one:
        assert meta.config["self_ensemble"] == 2 and "published_one_pass" not in meta.training
        return
    assert meta.config["self_ensemble"] == 1 and model.config.self_ensemble == 1
    assert meta.training["published_one_pass"] == {"self_ensemble": 2, "val_loss_ensemble": ens_meta.metrics["val_loss"]}
    assert meta.metrics["val_loss"] != ens_meta.metrics["val_loss"]  # measured as published
    for a, b in zip(model.state_dict().values(), ens.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ens.train()(x))  # the plain net: what training fitted
    assert meta.cost["flops_per_window"] * 2 == ens_meta.cost["flops_per_window"]
    assert best_config(1000.0).publish_one_pass  # what `dae train` publishes
