"""Corruption processes q(x̃|x) for denoising-autoencoder training.

Each process maps a (B, W) float batch to a corrupted copy (the input is never modified), drawing all
randomness from the ``torch.Generator`` passed in, so training is reproducible. ``to_dict`` /
``corruption_from_dict`` round-trip a process through a checkpoint's JSON. Field noise (mains hum,
pink/brown, impulsive spikes, dropouts) is in ``models/noise_real.py``, registered here too.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from models.noise_base import Corruption, _check_batch, _check_fraction, _pick  # re-exported
from models.noise_real import REAL_KINDS, real_from_dict


class GaussianNoise(Corruption):
    """Additive white Gaussian noise with std ``sigma`` times a reference RMS.

    ``sigma`` is a float, or a ``(lo, hi)`` range from which each window draws its own σ uniformly
    (``log_uniform=True``: uniformly in log σ, so low noise levels get as many windows as high ones).

    ``reference="window"`` (the default): σ is relative to each window's own RMS, so every window
    has the same SNR and a window of zeros stays zeros. ``reference="stream"``: σ is relative to
    the RMS of the *stream* the window was cut from, passed as ``ref_rms`` (B, 1) — a sensor's noise
    floor does not follow the signal's envelope, so quiet stretches (silences between bursts) get
    the same absolute noise as loud ones, which is what the evaluation (and a real sensor) does.
    """

    kind = "gaussian"
    REFERENCES = ("window", "stream")

    def __init__(self, sigma: float | tuple[float, float], log_uniform: bool = False, reference: str = "window"):
        if reference not in self.REFERENCES:
            raise ValueError(f"GaussianNoise: reference must be one of {self.REFERENCES}, got {reference!r}")
        self.reference = reference
        self.log_uniform = bool(log_uniform)
        if isinstance(sigma, (tuple, list)):
            if len(sigma) != 2:
                raise ValueError(f"GaussianNoise: sigma range must be (lo, hi), got {sigma!r}")
            lo, hi = float(sigma[0]), float(sigma[1])
            if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
                raise ValueError(f"GaussianNoise: need finite 0 <= lo <= hi, got sigma={sigma!r}")
            if self.log_uniform and lo <= 0.0:
                raise ValueError(f"GaussianNoise: a log-uniform range needs lo > 0, got sigma={sigma!r}")
            self.sigma: float | tuple[float, float] = (lo, hi)
        else:
            s = float(sigma)
            if not (math.isfinite(s) and s >= 0.0):
                raise ValueError(f"GaussianNoise: sigma must be finite and >= 0, got {sigma!r}")
            self.sigma = s

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 ref_rms: torch.Tensor | None = None) -> torch.Tensor:
        return self.sample(x, generator, ref_rms)[0]

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None,
               ref_rms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy copy, the (B, 1) noise std used for each row, in x's units)."""
        _check_batch(x, "GaussianNoise")
        b = x.shape[0]
        if self.reference == "stream":
            if ref_rms is None:
                raise ValueError("GaussianNoise(reference='stream') needs each window's stream RMS (ref_rms)")
            rms = torch.as_tensor(ref_rms, device=x.device, dtype=x.dtype).reshape(b, 1)
        else:
            rms = x.pow(2).mean(dim=1, keepdim=True).sqrt()
        if isinstance(self.sigma, tuple):
            lo, hi = self.sigma
            u = torch.rand((b, 1), generator=generator, device=x.device, dtype=x.dtype)
            if self.log_uniform:
                sig = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
            else:
                sig = lo + (hi - lo) * u
        else:
            sig = torch.full((b, 1), self.sigma, device=x.device, dtype=x.dtype)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        std = sig * rms
        return x + noise * std, std

    def to_dict(self) -> dict:
        s = list(self.sigma) if isinstance(self.sigma, tuple) else self.sigma
        d = {"type": self.kind, "sigma": s}
        if self.log_uniform and isinstance(self.sigma, tuple):
            d["log_uniform"] = True
        if self.reference != "window":
            d["reference"] = self.reference
        return d


class MaskingNoise(Corruption):
    """Sets exactly round(fraction*W) randomly chosen samples of each window to 0."""

    kind = "masking"

    def __init__(self, fraction: float):
        self.fraction = _check_fraction(fraction, "MaskingNoise")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(x, "MaskingNoise")
        return x.masked_fill(_pick(x, self.fraction, generator), 0.0)

    def to_dict(self) -> dict:
        return {"type": self.kind, "fraction": self.fraction}


class SaltPepperNoise(Corruption):
    """Sets exactly round(fraction*W) samples of each window to that window's min or max (50/50)."""

    kind = "salt_pepper"

    def __init__(self, fraction: float):
        self.fraction = _check_fraction(fraction, "SaltPepperNoise")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(x, "SaltPepperNoise")
        if x.numel() == 0:
            return x.clone()
        hit = _pick(x, self.fraction, generator)
        salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
        lo = x.amin(dim=1, keepdim=True).expand_as(x)
        hi = x.amax(dim=1, keepdim=True).expand_as(x)
        return torch.where(hit, torch.where(salt, hi, lo), x)

    def to_dict(self) -> dict:
        return {"type": self.kind, "fraction": self.fraction}


class Compose(Corruption):
    """Applies corruptions in order (an empty Compose is the identity, returning a copy)."""

    kind = "compose"

    def __init__(self, corruptions: Sequence[Corruption]):
        items = list(corruptions)
        for c in items:
            if not isinstance(c, Corruption):
                raise TypeError(f"Compose: {c!r} is not a Corruption")
        self.corruptions = items

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(x, "Compose")
        out = x.clone()
        for c in self.corruptions:
            out = c(out, generator)
        return out

    def to_dict(self) -> dict:
        return {"type": self.kind, "items": [c.to_dict() for c in self.corruptions]}


_KINDS = {c.kind: c for c in (GaussianNoise, MaskingNoise, SaltPepperNoise, Compose)}


def corruption_from_dict(d: dict) -> Corruption:
    """Rebuild a corruption from ``to_dict()`` output."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"corruption spec must be a dict with a 'type' key, got {d!r}")
    kind = d["type"]
    if kind in REAL_KINDS:
        return real_from_dict(d)
    if kind not in _KINDS:
        raise ValueError(f"unknown corruption type {kind!r}; known: {', '.join(sorted({**_KINDS, **REAL_KINDS}))}")
    try:
        if kind == "gaussian":
            s = d["sigma"]
            return GaussianNoise(tuple(s) if isinstance(s, list) else s, bool(d.get("log_uniform", False)),
                                 d.get("reference", "window"))
        if kind == "compose":
            return Compose([corruption_from_dict(i) for i in d["items"]])
        return _KINDS[kind](d["fraction"])
    except KeyError as e:
        raise ValueError(f"corruption spec {d!r} is missing key {e.args[0]!r}") from None
