"""Conv / overcomplete / noisy-target architectures: shapes, configs, checkpoint round-trips,
the Noisier2Noise wrapper's determinism and correction, training from arrays."""

import json

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, meta_for, save_checkpoint
from models.dae import (
    ARCHITECTURES,
    ConvConfig,
    ConvDAE,
    Noisier2NoiseDAE,
    OvercompleteDAE,
    build_model,
    denoise_rows,
    denoise_windows_nc,
    model_config,
    standardize,
)
from models.train import (
    TrainConfig,
    WindowSampler,
    noisier2noise_inputs,
    split_streams,
    train_arrays,
)
from pipeline.signals import generate


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


def test_denoise_windows_nc_is_per_channel():
    m = build_model("conv", {"window": 32, "channels": [4, 8]}).eval()
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 2, 32)).astype(np.float32)
    w[:, 1] = 100 + 10 * w[:, 1]  # the other channel at another scale and offset
    out = denoise_windows_nc(m, w)
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
                      objective=objective, steps=20, batch_size=32, max_seconds=20.0, n2n_draws=2)
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
        from models.train import train_synthetic

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
