"""Denoising autoencoder models and the window normalisation shared by training and inference.

No I/O here: a model is rebuilt from ``(arch, config)`` alone (stored in the checkpoint's JSON), the
weights come from ``models.checkpoint``.

Every window is standardised on its own (``window_standardize``): subtract the window mean, divide by
the window std. The model therefore only ever sees unit-scale rows, so one model serves sensors at any
gain or offset; ``destandardize`` maps the output back. Training standardises the *noisy* window and
applies the same mean/scale to the clean target, exactly as inference standardises what it receives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

NORMALISATION = "window_standardize"


@dataclass(frozen=True)
class MLPConfig:
    window: int
    hidden: int = 256

    def __post_init__(self) -> None:
        for name in ("window", "hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 2:
                raise ValueError(f"MLPConfig.{name} must be an integer >= 2, got {v!r}")


class DenoisingAutoencoder(nn.Module):
    """The seed MLP: window → hidden → hidden/2 (code) → hidden → window."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        w, h = config.window, config.hidden
        self.encoder = nn.Sequential(nn.Linear(w, h), nn.ReLU(), nn.Linear(h, h // 2))
        self.decoder = nn.Sequential(nn.Linear(h // 2, h), nn.ReLU(), nn.Linear(h, w))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.window:
            raise ValueError(f"expected input (B, {self.config.window}), got {tuple(x.shape)}")
        return self.decode(self.encode(x))


# name → (config dataclass, module class); a checkpoint names its arch and stores the config dict.
ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "mlp": (MLPConfig, DenoisingAutoencoder),
}


def build_model(arch: str, config: dict) -> nn.Module:
    """Instantiate ``arch`` from a plain config dict (as stored in ``model.json``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    cfg_cls, model_cls = ARCHITECTURES[arch]
    if not isinstance(config, dict):
        raise ValueError(f"config for {arch!r} must be a dict, got {type(config).__name__}")
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown config keys for {arch!r}: {unknown}; known: {sorted(known)}")
    try:
        cfg = cfg_cls(**config)
    except TypeError as e:  # e.g. a missing required field
        raise ValueError(f"bad config for {arch!r}: {e}") from None
    return model_cls(cfg)


def model_config(model: nn.Module) -> dict:
    """The config dict a model was built from (round-trips through ``build_model``)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} has no .config dataclass")
    return asdict(cfg)


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (last dim) standardisation: returns ``(xn, mean, scale)`` with ``x = xn*scale + mean``.

    ``scale`` is the population std, replaced by 1.0 where it is 0 or below
    ``1e-12 * max(1, |mean|)``, so constant windows map to (exact) zeros instead of blowing up.
    """
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, correction=0)
    tiny = (std == 0) | (std < 1e-12 * torch.clamp(mean.abs(), min=1.0))
    scale = torch.where(tiny, torch.ones_like(std), std)
    # Constant rows become exact zeros (x - mean alone would leave a rounding ulp of the offset).
    xn = torch.where(tiny, torch.zeros_like(x), (x - mean) / scale)
    return xn, mean, scale


def destandardize(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of ``standardize`` for the model's output rows."""
    return y * scale + mean
