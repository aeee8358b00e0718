"""Training on field noise (TrainConfig.field_noise, models.noise.FieldMix, `dae train --field-noise`,
the suite's conv_fieldmix): validation, what each window gets, determinism, the clean target, the
checkpoint's metadata, and the default (no field noise) left exactly as it was."""

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st
from typer.testing import CliRunner

from models.forward import standardize
from models.noise import (
    DROPOUT_FRACTION,
    FIELD_KINDS,
    FieldMix,
    GaussianNoise,
    corruption_from_dict,
    parse_field_noise,
)
from models.training import TrainConfig, best_config, train_synthetic, training_loss
from models.training.validation import ValidationInputs, ValidationSet

W = 256
RATE = 1000.0
# A tiny recipe run: the recipe's corruption and loss, a small conv, two families, a few steps.
TINY = dict(window=64, arch_config={"channels": [4, 8], "kernel": 5}, families=("ecg", "vibration"),
            steps=5, batch_size=16, val_streams=1, eval_every=5)


def signals(b: int, w: int = W, seed: int = 0) -> torch.Tensor:
    """(B, W) smooth, never-zero rows (a dropout is the only way a sample becomes 0)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(w, dtype=torch.float32)
    phase = torch.rand((b, 1), generator=g) * 6.28
    return 3.0 + torch.sin(0.05 * t + phase) + 0.3 * torch.randn((b, 1), generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kw, message", [
    ({"field_noise": ("white", "thunder")}, r"unknown kind\(s\) \['thunder'\]; valid: white, hum"),
    ({"field_noise": ("hum", "hum")}, "hum listed more than once"),
    ({"field_noise": "all,hum"}, "'all' stands alone"),
    ({"field_noise": "white:x"}, "'white:x': the weight after ':' must be a number"),
    ({"field_noise": ("white", "hum"), "field_noise_weights": (1.0,)}, r"1 weight\(s\) for 2 kind\(s\)"),
    ({"field_noise": ("white", "hum"), "field_noise_weights": (1.0, 0.0)}, "the weight of hum must be a finite"),
    ({"field_noise": "white:nan,hum"}, "the weight of white must be a finite"),
    ({"field_noise_weights": (1.0,)}, "field_noise_weights needs field_noise"),
    ({"field_noise": "white:2", "field_noise_weights": (1.0,)}, "not both"),
    ({"field_noise": "all", "objective": "noisier2noise"}, "needs the clean objective"),
    ({"field_noise": "all", "sample_rate": 100.0}, r"hum needs sample_rate above 121 Hz.*got 100 Hz"),
    ({"field_noise": "all", "sample_rate": 1000.0, "rate_range": (50.0, 20000.0)}, "hum is defined in Hz"),
])
def test_config_refuses_bad_field_noise_naming_the_problem(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"sample_rate": RATE, **kw})


def test_config_parses_the_cli_form_into_fixed_order_and_keeps_rate_free_kinds_across_rates():
    assert TrainConfig(sample_rate=RATE, field_noise="all").field_noise == FIELD_KINDS
    cfg = TrainConfig(sample_rate=RATE, field_noise="impulsive, white:3 ,hum")
    assert cfg.field_noise == ("white", "hum", "impulsive") and cfg.field_noise_weights == (3.0, 1.0, 1.0)
    # Equal weights are the uniform draw (the same random numbers as no weights).
    assert TrainConfig(sample_rate=RATE, field_noise="white:2,pink:2").field_noise_weights is None
    assert TrainConfig(sample_rate=RATE, field_noise=["pink", "white"]).field_noise == ("white", "pink")
    # Without hum nothing is defined in Hz: fine at a low rate and across rates.
    TrainConfig(sample_rate=100.0, field_noise="white,impulsive,dropouts")
    TrainConfig(sample_rate=1000.0, rate_range=(50.0, 20000.0), field_noise="white,pink,brown")
    assert parse_field_noise("all") == (FIELD_KINDS, None)


def test_default_config_is_white_noise_exactly_as_before():
    for cfg in (TrainConfig(sample_rate=RATE), best_config(RATE)):
        assert cfg.field_noise == () and cfg.field_noise_weights is None
        c = cfg.corruption()
        assert type(c) is GaussianNoise
        assert c == GaussianNoise(cfg.sigma, cfg.sigma_log_uniform, cfg.noise_reference)
    _, meta = train_synthetic(best_config(RATE, **TINY), progress=False)
    assert meta.corruption == {"type": "gaussian", "sigma": [0.03, 0.6], "log_uniform": True, "reference": "stream"}
    assert "field_noise" not in meta.training


# ------------------------------------------------------------------------------- corruption
def _signature_ok(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row: does the noise look like ``kind``? (B,) bool."""
    n = (y - x).double()
    if kind == "impulsive":  # round(0.005 * 256) = 1 spike
        return (n != 0).sum(dim=1) == 1
    if kind == "dropouts":  # exactly the fraction zeroed, the rest untouched
        k = round(DROPOUT_FRACTION * x.shape[1])
        return ((y == 0).sum(dim=1) == k) & torch.all((y == x) | (y == 0), dim=1)
    p = torch.fft.rfft(n, dim=1).abs().pow(2)[:, 1:]
    if kind == "hum":  # the strongest bin at the mains (50 or 60 Hz, 3.9 Hz bins)
        f = torch.fft.rfftfreq(x.shape[1], 1 / RATE)[1:][p.argmax(dim=1)]
        return ((f - 50).abs() < 4) | ((f - 60).abs() < 4)
    # share of the power below 12 of 128 bins; measured per row over 10,625 rows of each kind (103 seeds):
    # white 0.023-0.227, pink 0.187-0.831 (0.257 at the 0.1 % quantile), brown 0.626-0.995
    low = p[:, :12].sum(dim=1) / p.sum(dim=1)
    return {"white": low < 0.3, "pink": low > 0.15, "brown": low > 0.5}[kind]


@settings(max_examples=15, deadline=None)
@given(kinds=st.sets(st.sampled_from(FIELD_KINDS), min_size=1), seed=st.integers(0, 10_000),
       reference=st.sampled_from(["window", "stream"]))
@example(kinds={"white", "pink"}, seed=423, reference="window")  # a pink row at 0.187 (CI, 2026-12-05)
def test_each_window_gets_one_listed_kind_and_every_kind_is_drawn(kinds, seed, reference):
    x = signals(300, seed=seed)
    ref = x.pow(2).mean(dim=1, keepdim=True).sqrt() * 1.5 if reference == "stream" else None
    fm = FieldMix(sorted(kinds), (0.05, 0.5), True, reference, RATE)
    y, std, k = fm.sample(x, gen(seed), ref, with_choice=True)
    assert torch.equal(x, signals(300, seed=seed))  # input untouched
    assert fm.kinds == tuple(c for c in FIELD_KINDS if c in kinds)
    counts = torch.bincount(k, minlength=len(fm.kinds))
    assert torch.all(counts > 0), dict(zip(fm.kinds, counts.tolist()))  # 300 windows: each kind drawn
    # The noise RMS returned is the noise added; every additive kind is at the white noise's σ.
    noise_rms = (y - x).pow(2).mean(dim=1, keepdim=True).sqrt()
    assert torch.allclose(std, noise_rms.clamp_min(1e-6), rtol=1e-5)
    _, want = GaussianNoise((0.05, 0.5), True, reference).sample(x, gen(seed), ref)  # σ is drawn first
    for i, kind in enumerate(fm.kinds):
        rows = k == i
        assert torch.all(_signature_ok(kind, x[rows], y[rows])), kind
        if kind == "white":  # the realised RMS of 256 Gaussian samples: within ~4 % of σ per row
            assert torch.allclose(std[rows], want[rows], rtol=0.25), kind
        elif kind != "dropouts":  # rescaled to exactly σ (× the reference RMS)
            assert torch.allclose(std[rows], want[rows], rtol=1e-4), kind
    if {"white", "pink", "brown"} <= kinds:  # the spectra order as they should
        p = torch.fft.rfft((y - x).double(), dim=1).abs().pow(2)[:, 1:]
        low = p[:, :12].sum(dim=1) / p.sum(dim=1)
        mean = {c: float(low[k == fm.kinds.index(c)].mean()) for c in ("white", "pink", "brown")}
        assert mean["white"] < mean["pink"] < mean["brown"], mean


def test_weights_set_the_share_of_each_kind():
    fm = FieldMix(("white", "impulsive"), 0.3, weights=(3.0, 1.0))
    _, _, k = fm.sample(signals(4000), gen(1), with_choice=True)
    assert float((k == 0).float().mean()) == pytest.approx(0.75, abs=0.03)


def test_deterministic_from_the_seed_and_round_trips():
    fm = FieldMix(FIELD_KINDS, (0.03, 0.6), True, "stream", RATE)
    x = signals(64)
    ref = torch.full((64, 1), 2.0)
    a, b, c = (fm.sample(x, gen(s), ref) for s in (7, 7, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    back = corruption_from_dict(json.loads(json.dumps(fm.to_dict())))
    assert back == fm and torch.equal(back.sample(x, gen(7), ref)[0], a[0])
    weighted = FieldMix(("white", "hum"), 0.2, sample_rate=RATE, weights=(2.0, 1.0))
    assert corruption_from_dict(weighted.to_dict()) == weighted


class _Experiment(GaussianNoise):
    """The uncommitted experiment's corruption (runs/evaluate/experiments/train_field.py), verbatim but
    for the rate argument: what docs/models.md's conv_fieldmix figures were trained with."""

    def __init__(self, rate, *a, **k):
        super().__init__(*a, **k)
        self.rate = rate

    def sample(self, clean, generator=None, ref_rms=None):
        from models.noise_real import ColoredNoise, Dropouts, ImpulsiveNoise, PowerlineHum

        b, w = clean.shape
        white, std = super().sample(clean, generator, ref_rms)
        sigma = std

        def unit(c):
            n = c(clean, generator) - clean
            r = n.pow(2).mean(dim=1, keepdim=True).sqrt()
            return torch.where(r > 0, n / r.clamp_min(1e-12), torch.zeros_like(n))
        parts = [white - clean]
        parts.append(unit(PowerlineHum(self.rate, 1.0, mains_hz=50.0 if torch.rand((), generator=generator) < 0.5
                                       else 60.0)) * sigma)
        parts.append(unit(ColoredNoise(1.0, 1.0)) * sigma)
        parts.append(unit(ColoredNoise(1.0, 2.0)) * sigma)
        parts.append(unit(ImpulsiveNoise(0.005)) * sigma)
        parts.append(Dropouts(0.1)(clean, generator) - clean)
        k = torch.randint(0, len(parts), (b, 1), generator=generator, device=clean.device)
        noise = torch.zeros_like(clean)
        for i, p in enumerate(parts):
            noise = torch.where(k == i, p, noise)
        std = noise.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)
        return clean + noise, std


@pytest.mark.parametrize("rate", [360.0, 1000.0, 16000.0])
def test_all_kinds_is_the_experiments_corruption_draw_for_draw(rate):
    x, ref = signals(96), torch.rand((96, 1), generator=gen(3)) + 0.5
    g1, g2 = gen(11), gen(11)
    fm = best_config(rate, field_noise="all").corruption()
    exp = _Experiment(rate, (0.03, 0.6), True, "stream")
    for _ in range(3):  # successive batches from one generator, as in training
        (a, sa), (b, sb) = fm.sample(x, g1, ref), exp.sample(x, g2, ref)
        assert torch.equal(a, b) and torch.equal(sa, sb)


# ----------------------------------------------------------------------------------- training
class _Echo(torch.nn.Module):
    """Returns its input: the loss is then exactly the distance from the input to the target."""

    def forward(self, x):
        return x


@pytest.mark.parametrize("normalise", [False, 0.5])
def test_the_loss_fits_the_clean_window(normalise):
    fm = FieldMix(FIELD_KINDS, (0.05, 0.5), True, "window", RATE)
    clean = signals(128)
    loss = training_loss(_Echo(), clean, fm, gen(5), None, normalise=normalise)
    noisy, std = fm.sample(clean, gen(5))
    xn, mean, scale = standardize(noisy)
    target = (clean - mean) / scale
    if normalise:
        per = (xn - target).pow(2).mean(dim=1, keepdim=True)
        want = (per / (std / scale).pow(2).clamp_min(1e-4).pow(0.5)).mean()
    else:
        want = F.mse_loss(xn, target)
    assert torch.allclose(loss, want, rtol=1e-6) and float(loss) > 0
    # Validation inputs too: the fixed corrupted windows, the clean windows as the target.
    val = ValidationSet(clean, torch.zeros(128, dtype=torch.long).numpy(), ("x",), torch.ones(128, 1))
    vi = ValidationInputs.clean_target(val, fm, gen(5), False, torch.device("cpu"))
    assert torch.equal(vi.xn, xn) and torch.equal(vi.target, target)


def _same_weights(a, b) -> bool:
    return all(ka == kb and torch.equal(va, vb)
               for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()))


def test_field_noise_training_is_reproducible_and_differs_from_white_noise():
    cfg = best_config(RATE, field_noise="white,hum,impulsive", **TINY)
    a, meta = train_synthetic(cfg, progress=False)
    b, _ = train_synthetic(cfg, progress=False)
    white, _ = train_synthetic(best_config(RATE, **TINY), progress=False)
    assert _same_weights(a, b) and not _same_weights(a, white)
    assert meta.corruption["type"] == "field_mix" and meta.corruption["kinds"] == ["white", "hum", "impulsive"]


def test_dae_train_field_noise_writes_the_kinds_into_the_checkpoint(tmp_path):
    from pipeline.cli.app import app

    runner = CliRunner()
    reg = str(tmp_path / "reg")
    res = runner.invoke(app, ["train", "--sample-rate", "1000", "--arch", "mlp", "--window", "64", "--steps", "5",
                              "--field-noise", "dropouts,white:2,hum", "--quiet", "--registry", reg])
    assert res.exit_code == 0, res.output
    assert "field noise white,hum,dropouts" in res.output
    res = runner.invoke(app, ["models", "show", "current", "--registry", reg])
    assert res.exit_code == 0, res.output
    meta = json.loads(res.output)
    assert meta["training"]["field_noise"] == {"kinds": ["white", "hum", "dropouts"], "weights": [2.0, 1.0, 1.0]}
    c = meta["corruption"]
    assert (c["type"], c["kinds"], c["weights"], c["sample_rate"]) == ("field_mix", ["white", "hum", "dropouts"],
                                                                        [2.0, 1.0, 1.0], 1000.0)
    assert set(c["parts"]) == {"white", "hum", "dropouts"} and c["parts"]["hum"]["mains_hz"] == [50.0, 60.0]
    assert meta["training"]["steps"] == 5
    bad = runner.invoke(app, ["train", "--sample-rate", "1000", "--field-noise", "white,rain", "--registry", reg])
    assert bad.exit_code == 2 and "unknown kind(s) ['rain']" in bad.stderr, bad.output


def test_the_suite_member_is_the_recipe_with_every_field_noise():
    from models.evaluation.suite import DEFAULT_SUITE, SUITE, suite_config

    assert "conv_fieldmix" in SUITE and "conv_fieldmix" not in DEFAULT_SUITE
    assert suite_config("conv_fieldmix", 360.0, quick=False) == best_config(360.0, field_noise=FIELD_KINDS)
    assert suite_config("conv_fieldmix", 360.0, quick=True).steps == 60
