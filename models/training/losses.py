"""Training objectives, all in the noisy window's standardised units (what the network sees).

Clean target (``training_loss``, the DAE of the seed): corrupt a clean window x into x̃ ~ q(x̃|x),
standardise x̃ with its own mean/std (exactly what inference does with the windows it receives),
apply the *same* mean/std to x, and fit ``model(x̃n) ≈ xn``.

Noisy target (``noisier2noise_loss``, for recordings without a clean version): standardise the noisy
y, corrupt it again, z = yn + σ·n, standardise z and fit the noisy yn in z's units. The trained net
is wrapped in ``models.archs.Noisier2NoiseDAE``, whose forward returns the mean over fixed draws of
2·f(z) − z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.forward import standardize
from models.noise import Corruption, FieldMix, GaussianNoise

# TrainConfig.loss → the power of the noise variance each window's squared error is divided by
# (False: plain MSE; 1.0: "nmse", by the variance; 0.5: "wmse", by the std).
LOSS_POWER: dict[str, bool | float] = {"mse": False, "nmse": True, "wmse": 0.5}


def training_loss(
    model: nn.Module, clean: torch.Tensor, corruption: Corruption, generator: torch.Generator | None,
    ref_rms: torch.Tensor | None = None, normalise: bool | float = False,
) -> torch.Tensor:
    """DAE loss for one batch: MSE between model(standardised x̃) and the clean x in x̃'s units.

    ``ref_rms``: each window's stream RMS, for ``reference="stream"`` (``GaussianNoise``, ``FieldMix``).
    ``normalise``: divide each window's squared error by its noise variance (the ``nmse`` loss;
    ``normalise=0.5`` divides by the noise std, the ``wmse`` loss); the target is the clean window
    either way.
    """
    if isinstance(corruption, (GaussianNoise, FieldMix)):  # they give the noise RMS they drew
        noisy, std = corruption.sample(clean, generator, ref_rms)
    else:
        noisy = corruption(clean, generator)
        std = (noisy - clean).pow(2).mean(dim=1, keepdim=True).sqrt()
    xn, mean, scale = standardize(noisy)
    target = (clean - mean) / scale
    if not normalise:
        return F.mse_loss(model(xn), target)
    return nmse(model(xn), target, std / scale, 1.0 if normalise is True else float(normalise))


def nmse(pred: torch.Tensor, target: torch.Tensor, noise_std: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Mean over windows of (window MSE / noise variance ** power), both in standardised units."""
    per_window = (pred.float() - target).pow(2).mean(dim=1, keepdim=True)
    # Floor: a (near-)silent window under window-relative noise has ~no noise to normalise by.
    return (per_window / noise_std.pow(2).clamp_min(1e-4).pow(power)).mean()


def noisier2noise_inputs(
    noisy: torch.Tensor, sigma: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(zn, target): the doubly-noisy standardised input and the noisy window in zn's units."""
    yn, _, _ = standardize(noisy)
    n = torch.randn(yn.shape, generator=generator, device=yn.device, dtype=yn.dtype)
    z = yn + sigma * n
    zn, mean, scale = standardize(z)
    return zn, (yn - mean) / scale


def noisier2noise_loss(
    model: nn.Module, noisy: torch.Tensor, sigma: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Noisy-target loss: fit the (standardised) noisy window from a re-corrupted copy of it."""
    zn, target = noisier2noise_inputs(noisy, sigma, generator)
    return F.mse_loss(model(zn), target)
