"""Field noise (models/noise_real.py) and the classical baselines fitted to it: purity, determinism,
serialisation, levels and fractions as requested, spectra, and the notch/median filters' effect."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from models.evaluation import baselines
from models.noise import Compose, GaussianNoise, corruption_from_dict
from models.noise_real import ColoredNoise, Dropouts, ImpulsiveNoise, PowerlineHum, brown, pink
from models.signals.families import snr_db


def batch(b=32, w=512, seed=0, scale=3.0, offset=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn((b, w), generator=g) + offset


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def rms(x):
    return x.pow(2).mean(dim=1).sqrt()


ALL = [
    PowerlineHum(1000.0, 0.3),
    PowerlineHum(360.0, (0.1, 0.5), mains_hz=60.0, harmonics=5, decay=0.7, drift_hz=0.2, drift_period_s=3.0),
    pink(0.3),
    brown((0.05, 0.5)),
    ColoredNoise(0.2, exponent=0.5),
    ImpulsiveNoise(0.01),
    ImpulsiveNoise(0.2, scale=2.0, alpha=1.5),
    Dropouts(0.1),
    Dropouts(0.3, mean_length=4.0, fill="hold"),
    Compose([pink(0.1), PowerlineHum(1000.0, 0.1), Dropouts(0.05), GaussianNoise(0.1)]),
]


@pytest.mark.parametrize("corruption", ALL, ids=repr)
def test_input_untouched_deterministic_and_round_trips(corruption):
    x = batch()
    before = x.clone()
    y1 = corruption(x, gen(5))
    y2 = corruption(x, gen(5))
    assert torch.equal(x, before)
    assert y1.data_ptr() != x.data_ptr()
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, corruption(x, gen(6)))  # the generator, not a fixed pattern, decides
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert torch.isfinite(y1).all()
    again = corruption_from_dict(corruption.to_dict())
    assert again == corruption
    assert torch.equal(again(x, gen(5)), y1)
    # float64 batches and one-row (whole-signal) batches work too
    assert corruption(x.double()[:1], gen(5)).dtype == torch.float64


levels = st.one_of(st.floats(0.0, 5.0), st.tuples(st.floats(0.0, 1.0), st.floats(1.0, 5.0)))
specs = st.one_of(
    st.builds(PowerlineHum, st.floats(130.0, 48000.0), levels, st.sampled_from([50.0, 60.0]), st.integers(1, 9),
              st.floats(0.05, 1.0), st.floats(0.0, 2.0), st.floats(0.1, 100.0)),
    st.builds(ColoredNoise, levels, st.floats(0.0, 4.0)),
    st.builds(ImpulsiveNoise, st.floats(0.0, 1.0), st.floats(0.1, 50.0), st.floats(0.1, 10.0)),
    st.builds(Dropouts, st.floats(0.0, 1.0), st.floats(1.0, 500.0), st.sampled_from(Dropouts.FILLS)),
)


@settings(max_examples=40)
@given(c=specs, seed=st.integers(0, 2**31))
def test_any_valid_spec_round_trips_through_checkpoint_json(c, seed):
    again = corruption_from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and repr(again) == repr(c)
    x = batch(b=3, w=300)
    assert torch.equal(again(x, gen(seed)), c(x, gen(seed)))


@settings(max_examples=20)
@given(level=st.floats(0.0, 3.0), w=st.integers(64, 600), seed=st.integers(0, 10_000),
       scale=st.floats(1e-3, 1e3), which=st.sampled_from(["hum", "pink", "brown", "white"]))
def test_additive_noise_has_exactly_the_requested_rms(level, w, seed, scale, which):
    c = {"hum": PowerlineHum(1000.0, level, mains_hz=60.0), "pink": pink(level), "brown": brown(level),
         "white": ColoredNoise(level, exponent=0.0)}[which]
    x = batch(b=8, w=w, seed=seed, scale=scale, offset=0.3 * scale)
    y = c(x, gen(seed))
    ratio = rms(y - x) / rms(x)
    assert torch.allclose(ratio, torch.full_like(ratio, level), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("c", [PowerlineHum(500.0, (0.1, 0.4)), ColoredNoise((0.1, 0.4), 1.0)], ids=repr)
def test_level_range_is_drawn_per_window(c):
    x = batch(b=2000, w=128)
    ratio = rms(c(x, gen()) - x) / rms(x)
    assert ratio.min() >= 0.1 - 1e-4 and ratio.max() <= 0.4 + 1e-4
    assert ratio.mean().item() == pytest.approx(0.25, abs=0.01)
    assert ratio.std().item() == pytest.approx(0.3 / 12**0.5, rel=0.1)


def test_stream_reference_and_zero_windows():
    x = batch(b=4, w=256)
    ref = torch.full((4, 1), 10.0)
    for c in (PowerlineHum(1000.0, 0.5), pink(0.5), ImpulsiveNoise(0.0)):
        zeros = torch.zeros((3, 64))
        assert torch.equal(c(zeros, gen()), zeros)
    y = pink(0.5)(x, gen(), ref_rms=ref)
    assert torch.allclose(rms(y - x), torch.full((4,), 5.0), rtol=1e-4)


@settings(max_examples=30)
@given(fraction=st.floats(0.0, 1.0), w=st.integers(1, 400), mean_length=st.floats(1.0, 50.0),
       seed=st.integers(0, 10_000))
def test_dropouts_drop_exactly_the_fraction_in_separate_runs(fraction, w, mean_length, seed):
    x = batch(b=6, w=w, seed=seed, offset=20.0)  # no sample is 0 before the dropouts
    d = Dropouts(fraction, mean_length)
    y = d(x, gen(seed))
    dropped = y == 0
    k = round(fraction * w)
    assert torch.all(dropped.sum(dim=1) == k)
    assert torch.equal(y[~dropped], x[~dropped])
    starts = (dropped[:, 1:] & ~dropped[:, :-1]).sum(dim=1) + dropped[:, 0].long()
    if 0 < k < w:
        n = max(1, min(round(k / mean_length), k, w - k))
        # Runs never merge: n stretches, or n + 1 where one run crosses the window's edge.
        crossing = dropped[:, 0] & dropped[:, -1]
        assert torch.all(starts == n + crossing.long())


def test_dropout_lengths_vary_and_positions_cover_the_window():
    m = Dropouts(0.1, mean_length=8.0).mask(3000, 160, gen())
    assert torch.all(m.sum(dim=1) == 16)
    assert (m.float().mean(dim=0) - 0.1).abs().max() < 0.025  # every position is as likely, edges too
    runs = _runs(m[:300])
    crossing = (m[:300, 0] & m[:300, -1]).tolist()
    assert all(len(r) == 2 + c for r, c in zip(runs, crossing))  # round(16 / 8) runs
    assert 0 < sum(crossing) < 300
    assert len({n for r, c in zip(runs, crossing) if not c for n in r}) >= 12  # lengths 1..15 all occur


def _runs(m):
    out = []
    for row in m.int().tolist():
        lengths, cur = [], 0
        for v in row + [0]:
            if v:
                cur += 1
            elif cur:
                lengths.append(cur)
                cur = 0
        out.append(lengths)
    return out


@settings(max_examples=30)
@given(fraction=st.floats(0.0, 1.0), w=st.integers(1, 200), seed=st.integers(0, 10_000))
def test_dropouts_hold_the_last_kept_sample(fraction, w, seed):
    d = Dropouts(fraction, mean_length=5.0, fill="hold")
    x = batch(b=4, w=w, seed=seed)
    y = d(x, gen(seed))
    drop = d.mask(4, w, gen(seed))  # the same draws as the call
    for r in range(4):
        kept = (~drop[r]).nonzero().flatten().tolist()
        for i in range(w):
            if not drop[r, i]:
                assert y[r, i] == x[r, i]
            elif not kept:
                assert y[r, i] == 0
            else:
                before = [j for j in kept if j < i]
                src = before[-1] if before else kept[0]
                assert y[r, i] == x[r, src]


@settings(max_examples=30)
@given(fraction=st.floats(0.0, 1.0), scale=st.floats(0.5, 10.0), alpha=st.floats(0.5, 6.0),
       seed=st.integers(0, 10_000))
def test_impulsive_hits_exactly_the_fraction_with_bounded_heavy_tailed_spikes(fraction, scale, alpha, seed):
    x = batch(b=8, w=300, seed=seed)
    y = ImpulsiveNoise(fraction, scale, alpha)(x, gen(seed))
    spikes = y - x
    hit = spikes != 0
    assert torch.all(hit.sum(dim=1) == round(fraction * 300))
    size = spikes.abs() / rms(x)[:, None]
    assert torch.all(size[hit] >= scale * (1 - 1e-4)) and torch.all(size[hit] <= 20 * scale * (1 + 1e-4))


def test_impulsive_spikes_are_symmetric_and_heavy_tailed():
    x = torch.ones((400, 500))
    s = (ImpulsiveNoise(0.05, scale=1.0, alpha=3.0)(x, gen()) - x)
    s = s[s != 0]
    assert (s > 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    # Pareto(3): mean 1.5, P(> 2) = 1/8; a Gaussian tail would make big spikes far rarer.
    assert s.abs().mean().item() == pytest.approx(1.5, rel=0.05)
    assert (s.abs() > 2).float().mean().item() == pytest.approx(0.125, abs=0.015)


def _band_power(x: np.ndarray, fs: float, bands) -> tuple[float, float]:
    """(power inside the bands, total power) of the rows' mean Hann-windowed periodogram."""
    spec = (np.abs(np.fft.rfft(x * np.hanning(x.shape[1]), axis=1)) ** 2).mean(axis=0)
    f = np.fft.rfftfreq(x.shape[1], 1 / fs)
    inside = np.zeros_like(f, dtype=bool)
    for lo, hi in bands:
        inside |= (f >= lo) & (f <= hi)
    return float(spec[inside].sum()), float(spec.sum())


@pytest.mark.parametrize("mains,fs,harmonics", [(50.0, 1000.0, 3), (60.0, 360.0, 5)])
def test_hum_power_sits_at_the_fundamental_and_harmonics(mains, fs, harmonics):
    c = PowerlineHum(fs, 1.0, mains_hz=mains, harmonics=harmonics, decay=0.6, drift_hz=0.5)
    hum = c.hum(64, 4096, gen()).numpy()
    orders = c.orders()
    assert orders == [k for k in range(1, harmonics + 1) if k * (mains + 0.5) < fs / 2]
    bands = [(k * (mains - 0.5) - 1.5, k * (mains + 0.5) + 1.5) for k in orders]
    inside, total = _band_power(hum, fs, bands)
    assert inside / total > 0.98
    # Amplitudes fall by `decay` per harmonic: the power shares follow decay^(2(k-1)).
    shares = np.array([_band_power(hum, fs, [b])[0] for b in bands]) / inside
    want = np.array([0.6 ** (2 * (k - 1)) for k in orders])
    np.testing.assert_allclose(shares, want / want.sum(), atol=0.02)


def _fundamental(h: np.ndarray, fs: float) -> np.ndarray:
    """Each row's peak frequency, from a 16x zero-padded spectrum."""
    n = 16 * h.shape[1]
    spec = np.abs(np.fft.rfft(h * np.hanning(h.shape[1]), n=n, axis=1))
    return np.fft.rfftfreq(n, 1 / fs)[spec.argmax(axis=1)]


def test_hum_frequency_drifts_within_its_range():
    fs = 1000.0
    drifting = _fundamental(PowerlineHum(fs, 1.0, harmonics=1, drift_hz=0.5).hum(300, 2000, gen()).numpy(), fs)
    steady = _fundamental(PowerlineHum(fs, 1.0, harmonics=1, drift_hz=0.0).hum(300, 2000, gen()).numpy(), fs)
    assert np.all(np.abs(steady - 50.0) < 0.05)
    assert np.all(np.abs(drifting - 50.0) < 0.55)
    assert drifting.max() - drifting.min() > 0.7  # windows see frequencies across 50 ± 0.5 Hz


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_colored_noise_has_the_requested_spectral_slope(exponent):
    w = 4096
    noise = ColoredNoise(1.0, exponent)(torch.zeros((64, w)) + 1.0, gen(3)) - 1.0
    spec = (np.abs(np.fft.rfft(noise.double().numpy(), axis=1)) ** 2).mean(axis=0)
    f = np.fft.rfftfreq(w)
    band = (f >= 8 / w) & (f <= 0.25)
    # Log-spaced points so that each octave weighs the same in the fit.
    pts = np.unique(np.geomspace(8, w // 4, 60).astype(int))
    slope = np.polyfit(np.log(f[pts]), np.log(spec[pts]), 1)[0]
    assert band.sum() > 1000
    assert slope == pytest.approx(-exponent, abs=0.15)


@pytest.mark.parametrize("make,match", [
    (lambda: PowerlineHum(0.0, 0.1), "sample_rate"),
    (lambda: PowerlineHum(100.0, 0.1), "sample_rate"),  # 50 Hz is Nyquist at 100 Hz
    (lambda: PowerlineHum(1000.0, -0.1), "level"),
    (lambda: PowerlineHum(1000.0, (0.5, 0.1)), "level"),
    (lambda: PowerlineHum(1000.0, 0.1, mains_hz=float("nan")), "mains_hz"),
    (lambda: PowerlineHum(1000.0, 0.1, harmonics=0), "harmonics"),
    (lambda: PowerlineHum(1000.0, 0.1, harmonics=2.5), "harmonics"),
    (lambda: PowerlineHum(1000.0, 0.1, decay=1.5), "decay"),
    (lambda: PowerlineHum(1000.0, 0.1, drift_hz=-1.0), "drift_hz"),
    (lambda: PowerlineHum(1000.0, 0.1, drift_period_s=0.0), "drift_period_s"),
    (lambda: ColoredNoise(float("inf")), "level"),
    (lambda: ColoredNoise(0.1, exponent=-1.0), "exponent"),
    (lambda: ImpulsiveNoise(1.5), "fraction"),
    (lambda: ImpulsiveNoise(0.1, scale=0.0), "scale"),
    (lambda: ImpulsiveNoise(0.1, alpha=-2.0), "alpha"),
    (lambda: Dropouts(-0.1), "fraction"),
    (lambda: Dropouts(0.1, mean_length=0.5), "mean_length"),
    (lambda: Dropouts(0.1, fill="nan"), "fill"),
])
def test_bad_parameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_from_dict_errors_and_batch_checks():
    with pytest.raises(ValueError, match="unknown corruption type 'blur'.*dropouts.*hum"):
        corruption_from_dict({"type": "blur"})
    with pytest.raises(ValueError, match="does not fit 'hum'"):
        corruption_from_dict({"type": "hum", "level": 0.1})  # no sample_rate
    with pytest.raises(ValueError, match=r"\(B, W\)"):
        pink(0.1)(torch.zeros(10), gen())
    with pytest.raises(ValueError, match="floating"):
        Dropouts(0.1)(torch.zeros((2, 10), dtype=torch.long), gen())


# ---- the baselines that fit each noise ---------------------------------------------------------

FS = 1000.0


def _sine(n=16384, hz=7.0):
    return (math.sqrt(2) * np.sin(2 * np.pi * hz * np.arange(n) / FS)).astype(np.float32)


def _corrupt(clean: np.ndarray, c, seed=0) -> np.ndarray:
    return c(torch.from_numpy(clean)[None], gen(seed))[0].numpy()


@pytest.mark.parametrize("mains", [50.0, 60.0])
def test_notch_removes_at_least_20_db_of_a_pure_hum(mains):
    clean = _sine()
    noisy = _corrupt(clean, PowerlineHum(FS, 1.0, mains_hz=mains, harmonics=3, drift_hz=0.0))
    out = baselines.apply("notch", noisy, sample_rate=FS, mains_hz=mains, harmonics=3, q=30.0)
    hum_in, hum_out = np.mean((noisy - clean) ** 2), np.mean((out - clean) ** 2)
    assert 10 * np.log10(hum_in / hum_out) >= 20.0
    # The 7 Hz sine passes untouched: zero phase (a one-way lfilter delays it, ~41 dB here).
    assert snr_db(clean, baselines.notch(clean, FS, mains, 3, 30.0)) > 55.0
    # The wrong mains frequency leaves the hum in: the filter is not just a low-pass.
    wrong = baselines.apply("notch", noisy, sample_rate=FS, mains_hz=110.0 - mains, harmonics=3, q=30.0)
    assert baselines.snr_gain_db(clean, noisy, wrong) < 3.0


def test_notch_tuned_on_validation_finds_the_mains_and_handles_drift():
    clean = [_sine(hz=h) for h in (3.0, 7.0)]
    noisy = [_corrupt(c, PowerlineHum(FS, 1.0, mains_hz=60.0, drift_hz=0.5), seed=i) for i, c in enumerate(clean)]
    tuned = baselines.tune_for("hum", clean, noisy, sample_rate=FS)["notch"]
    assert tuned.params["mains_hz"] == 60.0 and tuned.params["harmonics"] >= 3
    assert tuned.params["sample_rate"] == FS
    assert tuned.val_gain_db > 20.0
    test = _sine(hz=5.0)
    y = _corrupt(test, PowerlineHum(FS, 1.0, mains_hz=60.0, drift_hz=0.5), seed=9)
    assert baselines.snr_gain_db(test, y, tuned(y)) > 20.0
    with pytest.raises(ValueError, match="sample_rate"):
        baselines.tune("notch", clean, noisy)


def test_notch_parameters_and_rates():
    x = _sine(n=2000)
    with pytest.raises(ValueError, match="sample_rate"):
        baselines.notch(x, 0.0)
    with pytest.raises(ValueError, match="harmonics"):
        baselines.notch(x, FS, harmonics=0)
    with pytest.raises(ValueError, match="q"):
        baselines.notch(x, FS, q=-1.0)
    # At 100 Hz a 50 Hz hum is at Nyquist: nothing to notch, the signal passes unchanged.
    np.testing.assert_allclose(baselines.notch(x, 100.0, 50.0), x, atol=1e-6)
    two = np.stack([x, 3 * x], axis=1)
    out = baselines.notch(two, FS)
    np.testing.assert_allclose(out[:, 1], 3 * out[:, 0], rtol=1e-4, atol=1e-4)


def test_median_removes_isolated_spikes():
    clean = _sine()
    noisy = _corrupt(clean, ImpulsiveNoise(0.01, scale=5.0), seed=1)
    at = np.flatnonzero(noisy != clean)
    # Isolated for a median of 5: never 3 spikes within 5 samples (seed 0 has a burst of 3 in a row).
    assert at.size == 164 and (at[2:] - at[:-2]).min() > 4
    med = baselines.apply("median", noisy, length=5)
    assert baselines.snr_gain_db(clean, noisy, med) > 25.0
    # No spike survives: spikes are >= 5 (5 x RMS 1); what remains is the sine moving over 2-3 samples.
    assert np.abs(med - clean).max() < 0.2
    # A linear smoother of the same length spreads the spikes instead of removing them.
    sg = baselines.apply("savgol", noisy, length=5, polyorder=2)
    assert baselines.snr_gain_db(clean, noisy, med) > baselines.snr_gain_db(clean, noisy, sg) + 15.0
    tuned = baselines.tune_for("impulsive", [clean], [noisy])["median"]
    assert 3 <= tuned.params["length"] <= 15


def test_fits_names_known_baselines_and_tune_all_is_unchanged():
    known = set(baselines.FILTERS) | set(baselines.SPECIFIC)
    assert all(set(names) <= known for names in baselines.FITS.values())
    assert set(baselines.FITS) >= {c.kind for c in (PowerlineHum(FS, 0.1), pink(0.1), ImpulsiveNoise(0.1),
                                                      Dropouts(0.1))}
    assert "notch" not in baselines.FILTERS  # the white-noise evaluation's tune_all keeps its three
    with pytest.raises(ValueError, match="noise kind"):
        baselines.tune_for("thermal", [_sine()], [_sine()])


def test_the_training_loss_takes_field_noise():
    from models.archs import build_model
    from models.training.losses import training_loss

    torch.manual_seed(0)
    net = build_model("mlp", {"window": 128, "hidden": 32})
    clean = batch(b=16, w=128)
    field = Compose([PowerlineHum(1000.0, (0.05, 0.3)), pink(0.1), ImpulsiveNoise(0.01), Dropouts(0.05)])
    loss = training_loss(net, clean, field, gen(2))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert loss.item() == pytest.approx(training_loss(net, clean, field, gen(2)).item())  # same draws
