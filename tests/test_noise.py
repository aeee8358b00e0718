"""Corruption processes: statistics, purity (input untouched), determinism, serialisation."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from models.noise import (
    Compose,
    GaussianNoise,
    MaskingNoise,
    SaltPepperNoise,
    corruption_from_dict,
)


def batch(b=64, w=256, seed=0, scale=3.0, offset=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn((b, w), generator=g) + offset


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


@settings(max_examples=25, deadline=None)
@given(sigma=st.floats(0.01, 2.0), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10_000))
def test_gaussian_sigma_is_relative_to_window_rms(sigma, scale, seed):
    x = batch(b=128, w=512, seed=seed, scale=scale, offset=0.5 * scale)
    y = GaussianNoise(sigma)(x, gen(seed))
    rms = x.pow(2).mean(dim=1).sqrt()
    ratio = (y - x).std(dim=1) / rms  # per-window noise std in units of that window's RMS
    assert ratio.mean().item() == pytest.approx(sigma, rel=0.03)
    assert torch.all((ratio - sigma).abs() < 0.25 * sigma)


def test_gaussian_sigma_range_is_drawn_per_window():
    x = batch(b=2000, w=256)
    y = GaussianNoise((0.1, 0.5))(x, gen())
    ratio = (y - x).std(dim=1) / x.pow(2).mean(dim=1).sqrt()
    assert ratio.min() > 0.1 * 0.8 and ratio.max() < 0.5 * 1.2  # 256-sample std: ~4.4 % error
    assert ratio.mean().item() == pytest.approx(0.3, abs=0.02)
    assert ratio.std().item() == pytest.approx(0.4 / 12**0.5, rel=0.15)  # uniform spread


def test_gaussian_leaves_zero_windows_at_zero():
    x = torch.zeros((4, 32))
    assert torch.equal(GaussianNoise(0.5)(x, gen()), x)


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(0.0, 1.0), w=st.integers(1, 300), seed=st.integers(0, 10_000))
def test_masking_fraction(fraction, w, seed):
    x = batch(b=8, w=w, seed=seed, offset=10.0)  # offset: no sample is 0 before masking
    y = MaskingNoise(fraction)(x, gen(seed))
    zeros = (y == 0).sum(dim=1)
    assert torch.all(zeros == round(fraction * w))
    kept = y != 0
    assert torch.equal(y[kept], x[kept])


def test_masking_positions_are_uniform():
    x = torch.ones((4000, 64))
    y = MaskingNoise(0.25)(x, gen())
    per_position = (y == 0).float().mean(dim=0)
    assert torch.all((per_position - 0.25).abs() < 0.04)


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_salt_pepper_values_are_window_min_or_max(fraction, seed):
    x = batch(b=16, w=200, seed=seed)
    y = SaltPepperNoise(fraction)(x, gen(seed))
    lo = x.min(dim=1, keepdim=True).values
    hi = x.max(dim=1, keepdim=True).values
    changed = y != x
    assert torch.all(changed.sum(dim=1) <= round(fraction * 200))
    assert torch.all((y == lo) | (y == hi) | ~changed)
    # Exactly round(fraction*W) positions are hit; a hit may coincide with the extreme it already is.
    hit = changed | (y == lo) | (y == hi)
    assert torch.all(hit.sum(dim=1) >= round(fraction * 200))


def test_salt_pepper_is_half_salt_half_pepper():
    x = batch(b=500, w=256)
    y = SaltPepperNoise(0.2)(x, gen())
    hi = (y == x.max(dim=1, keepdim=True).values) & (y != x)
    lo = (y == x.min(dim=1, keepdim=True).values) & (y != x)
    assert hi.sum().item() / (hi.sum() + lo.sum()).item() == pytest.approx(0.5, abs=0.02)
    assert (hi | lo).float().mean().item() == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize(
    "corruption",
    [
        GaussianNoise(0.3),
        GaussianNoise((0.05, 0.5)),
        MaskingNoise(0.3),
        SaltPepperNoise(0.1),
        Compose([GaussianNoise(0.1), MaskingNoise(0.2), SaltPepperNoise(0.05)]),
        Compose([]),
    ],
)
def test_input_untouched_deterministic_and_round_trips(corruption):
    x = batch()
    before = x.clone()
    y1 = corruption(x, gen(5))
    y2 = corruption(x, gen(5))
    assert torch.equal(x, before)
    assert y1.data_ptr() != x.data_ptr()
    assert torch.equal(y1, y2)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    again = corruption_from_dict(corruption.to_dict())
    assert again == corruption
    assert torch.equal(again(x, gen(5)), y1)


def test_compose_applies_in_order():
    x = batch()
    c = Compose([GaussianNoise(0.2), MaskingNoise(0.5)])
    y = c(x, gen(3))
    g = gen(3)
    expected = MaskingNoise(0.5)(GaussianNoise(0.2)(x, g), g)
    assert torch.equal(y, expected)
    assert ((y == 0).sum(dim=1) == 128).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianNoise(-0.1),
        lambda: GaussianNoise((0.5, 0.1)),
        lambda: GaussianNoise(float("inf")),
        lambda: MaskingNoise(1.5),
        lambda: SaltPepperNoise(-0.01),
        lambda: Compose(["not a corruption"]),
    ],
)
def test_bad_parameters_are_refused(make):
    with pytest.raises((ValueError, TypeError)):
        make()


def test_bad_inputs_and_specs_are_refused():
    with pytest.raises(ValueError, match=r"\(B, W\)"):
        GaussianNoise(0.1)(torch.zeros(10), gen())
    with pytest.raises(ValueError, match="unknown corruption type 'blur'"):
        corruption_from_dict({"type": "blur"})
    with pytest.raises(ValueError, match="missing key 'fraction'"):
        corruption_from_dict({"type": "masking"})
