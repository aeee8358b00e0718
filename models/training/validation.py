"""Validation: fixed windows with fixed noise (every pass is comparable), the loss that drives early
stopping, and the checkpoint's metrics: the SNR gain at 10 dB input SNR when the clean truth is known,
and the reconstruction-error quantiles that alerting starts from. The metrics go through the one
forward path (``models.forward.denoise_rows``), exactly as the worker will run the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.forward import denoise_rows, standardize
from models.noise import FieldMix, GaussianNoise
from models.training.losses import nmse, noisier2noise_inputs

EVAL_INPUT_SNR_DB = 10.0
QUANTILES = {"q50": 0.5, "q90": 0.9, "q99": 0.99, "q999": 0.999}
VAL_WINDOWS_PER_STREAM = 32
CHUNK = 4096  # validation windows per forward pass
ERROR_CHUNK = 1024  # windows per forward pass for the error quantiles


@dataclass(frozen=True)
class ValidationSet:
    """The fixed validation windows, as the data gives them (clean, or noisy for noisier2noise)."""

    windows: torch.Tensor  # (N, W) float32
    family: np.ndarray  # (N,) index into ``families``
    families: tuple[str, ...]
    ref_rms: torch.Tensor  # (N, 1) std of the stream each window comes from


@dataclass(frozen=True)
class ValidationInputs:
    """The network's fixed inputs and targets in standardised units, on the training device."""

    xn: torch.Tensor
    target: torch.Tensor
    noise_std: torch.Tensor  # (N, 1) noise std in standardised units (the nmse/wmse losses)

    @classmethod
    def clean_target(cls, val: ValidationSet, corruption: GaussianNoise | FieldMix, generator: torch.Generator,
                     stream_ref: bool, device: torch.device) -> "ValidationInputs":
        noisy, std = corruption.sample(val.windows, generator, val.ref_rms if stream_ref else None)
        xn, mean, scale = standardize(noisy)
        target = (val.windows - mean) / scale
        return cls(xn.to(device), target.to(device), (std / scale).to(device))

    @classmethod
    def noisy_target(cls, val: ValidationSet, sigma: float, generator: torch.Generator,
                     device: torch.device) -> "ValidationInputs":
        xn, target = noisier2noise_inputs(val.windows, sigma, generator)
        return cls(xn.to(device), target.to(device), torch.ones(val.windows.shape[0], 1).to(device))

    @torch.no_grad()
    def loss(self, net: nn.Module, power: bool | float, autocast_bf16: bool) -> float:
        """The training loss of ``net`` on these inputs (``power`` as ``losses.LOSS_POWER``)."""
        with torch.autocast(self.xn.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            parts = [(net(self.xn[i : i + CHUNK]).float(), self.target[i : i + CHUNK], self.noise_std[i : i + CHUNK])
                     for i in range(0, self.xn.shape[0], CHUNK)]
            if power:
                p = 1.0 if power is True else float(power)
                return sum(float(nmse(y, t, sd, p)) * y.shape[0] for y, t, sd in parts) / self.target.shape[0]
            return sum(float(F.mse_loss(y, t, reduction="sum")) for y, t, _ in parts) / self.target.numel()

    def identity_loss(self) -> float:
        """The MSE of returning the input unchanged (what the network has to beat)."""
        return float(F.mse_loss(self.xn.cpu(), self.target.cpu()))


@torch.no_grad()
def snr_gain_by_family(
    model: nn.Module, clean: torch.Tensor, fam: np.ndarray, families, generator: torch.Generator,
    input_snr_db: float = EVAL_INPUT_SNR_DB, ref_rms: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean per-window SNR gain (dB) at ``input_snr_db``; windows with (near-)silent clean signal skipped.

    The noise is relative to each window's RMS, or to ``ref_rms`` (each window's stream RMS) when given."""
    sigma = 10.0 ** (-input_snr_db / 20.0)
    noisy = GaussianNoise(sigma, reference="window" if ref_rms is None else "stream")(clean, generator, ref_rms)
    est = torch.from_numpy(denoise_rows(model, noisy.numpy(), batch=CHUNK))
    noise_e = ((noisy - clean) ** 2).sum(dim=1).double()
    resid_e = ((est - clean) ** 2).sum(dim=1).double().clamp_min(1e-30)
    rms = clean.pow(2).mean(dim=1).sqrt()
    gain = (10.0 * torch.log10(noise_e.clamp_min(1e-30) / resid_e)).numpy()
    ok = (rms > 1e-3).numpy()
    out = {}
    for i, name in enumerate(families):
        sel = ok & (fam == i)
        out[name] = float(gain[sel].mean()) if sel.any() else float("nan")
    return out


def error_quantiles(model: nn.Module, windows: torch.Tensor) -> dict[str, float]:
    """Quantiles (``QUANTILES``) of the per-window reconstruction error of ``model`` on ``windows``:
    the alerting baseline stored in the checkpoint."""
    _, errors = denoise_rows(model, windows.numpy(), batch=ERROR_CHUNK, with_error=True)
    return {k: float(np.quantile(errors, q)) for k, q in QUANTILES.items()}
