"""What every corruption shares: the ``Corruption`` base class and the batch/fraction helpers.

Split from ``models/noise.py`` so that ``models/noise_real.py`` can build on it while ``noise.py``
registers both modules' kinds in ``corruption_from_dict`` (no import cycle).
"""

from __future__ import annotations

import torch


def _check_batch(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{who}: expected a (B, W) batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who}: expected a floating-point batch, got {x.dtype}")


def _check_fraction(fraction: float, who: str) -> float:
    f = float(fraction)
    if not (0.0 <= f <= 1.0):
        raise ValueError(f"{who}: fraction must be in [0, 1], got {fraction!r}")
    return f


def _pick(x: torch.Tensor, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    """Boolean mask with exactly round(fraction*W) True entries per row, positions uniform."""
    b, w = x.shape
    k = int(round(fraction * w))
    mask = torch.zeros((b, w), dtype=torch.bool, device=x.device)
    if k == 0 or b == 0:
        return mask
    keys = torch.rand((b, w), generator=generator, device=x.device)
    idx = keys.argsort(dim=1)[:, :k]
    return mask.scatter_(1, idx, True)


class Corruption:
    """Base class: ``__call__(x, generator) -> x_tilde``."""

    kind = "base"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"
