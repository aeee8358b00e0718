"""Sensor noise seen in the field, as corruptions in the style of ``models/noise.py``.

Same conventions: a (B, W) float batch in, a corrupted copy out (the input is never modified), all
randomness from the ``torch.Generator`` passed in, ``to_dict`` / ``corruption_from_dict`` round-trip.
For training and evaluation only, never inside the worker.

Additive noises (hum, coloured, impulsive) take ``level``: the noise RMS as a multiple of the
window's RMS (what ``GaussianNoise``'s ``sigma`` is), a float, or a ``(lo, hi)`` range from which each
window draws its own level uniformly. The noise of each row is scaled to exactly that RMS, so the
input SNR is exactly ``-20·log10(level)`` dB; a window of zeros stays zeros. ``ref_rms`` (B, 1), when
given, replaces the window's RMS (a stream's RMS, as ``GaussianNoise(reference="stream")``). A whole
signal passed as one (1, N) row is scaled against its own RMS.
"""

from __future__ import annotations

import math

import torch

from models.noise_base import Corruption, _check_batch, _check_fraction, _pick

_MAX_SPIKE = 20.0  # cap on a spike's Pareto multiplier: a heavy tail, never an inf-variance blow-up


def _check_level(level, who: str) -> float | tuple[float, float]:
    if isinstance(level, (tuple, list)):
        if len(level) != 2:
            raise ValueError(f"{who}: level range must be (lo, hi), got {level!r}")
        lo, hi = float(level[0]), float(level[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
            raise ValueError(f"{who}: level range needs finite 0 <= lo <= hi, got {level!r}")
        return (lo, hi)
    v = float(level)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{who}: level must be finite and >= 0, got {level!r}")
    return v


def _positive(value, name: str, who: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{who}: {name} must be finite and > 0, got {value!r}")
    return v


def _target_rms(x: torch.Tensor, level, generator, ref_rms) -> torch.Tensor:
    """(B, 1) noise RMS wanted for each row, in x's units."""
    b = x.shape[0]
    if ref_rms is not None:
        rms = torch.as_tensor(ref_rms, device=x.device, dtype=x.dtype).reshape(b, 1)
    else:
        rms = x.pow(2).mean(dim=1, keepdim=True).sqrt()
    if isinstance(level, tuple):
        lo, hi = level
        u = torch.rand((b, 1), generator=generator, device=x.device, dtype=x.dtype)
        return rms * (lo + (hi - lo) * u)
    return rms * level


def _scaled(noise: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each row of ``noise`` rescaled to RMS ``target`` (a row of zeros stays zeros)."""
    own = noise.pow(2).mean(dim=1, keepdim=True).sqrt()
    return noise * torch.where(own > 0, target / own.clamp_min(1e-30), torch.zeros_like(own))


def _level_dict(level) -> float | list[float]:
    return list(level) if isinstance(level, tuple) else level


class PowerlineHum(Corruption):
    """Mains hum: a ``mains_hz`` fundamental and ``harmonics - 1`` overtones whose amplitudes fall by
    ``decay`` per harmonic (a_k = decay^(k-1)), each with a random phase, locked to a fundamental whose
    frequency wanders sinusoidally by ±``drift_hz`` with period ``drift_period_s`` (each window starts
    at a random point of the wander, so windows see frequencies across mains ± drift). Harmonics at or
    above Nyquist are left out (a sensor's anti-aliasing filter removes them)."""

    kind = "hum"

    def __init__(self, sample_rate: float, level, mains_hz: float = 50.0, harmonics: int = 3,
                 decay: float = 0.5, drift_hz: float = 0.5, drift_period_s: float = 10.0):
        who = "PowerlineHum"
        self.sample_rate = _positive(sample_rate, "sample_rate", who)
        self.level = _check_level(level, who)
        self.mains_hz = _positive(mains_hz, "mains_hz", who)
        if int(harmonics) != harmonics or int(harmonics) < 1:
            raise ValueError(f"{who}: harmonics must be an integer >= 1, got {harmonics!r}")
        self.harmonics = int(harmonics)
        self.decay = _positive(decay, "decay", who)
        if self.decay > 1.0:
            raise ValueError(f"{who}: decay must be in (0, 1], got {decay!r}")
        self.drift_hz = float(drift_hz)
        if not (math.isfinite(self.drift_hz) and 0.0 <= self.drift_hz < self.mains_hz):
            raise ValueError(f"{who}: drift_hz must be in [0, mains_hz), got {drift_hz!r}")
        self.drift_period_s = _positive(drift_period_s, "drift_period_s", who)
        if self.mains_hz + self.drift_hz >= self.sample_rate / 2:
            raise ValueError(f"{who}: sample_rate {self.sample_rate:g} Hz cannot carry a {self.mains_hz:g} Hz "
                             f"(± {self.drift_hz:g} Hz) hum: mains_hz + drift_hz must be below sample_rate / 2")

    def orders(self) -> list[int]:
        """The harmonic orders actually synthesised (those below Nyquist at the highest drift)."""
        top = self.mains_hz + self.drift_hz
        return [k for k in range(1, self.harmonics + 1) if k * top < self.sample_rate / 2]

    def hum(self, b: int, w: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(B, W) float64 hum before scaling (fundamental of amplitude 1), drawn from ``generator``."""
        fs, f0, d, period = self.sample_rate, self.mains_hz, self.drift_hz, self.drift_period_s
        orders = self.orders()
        t = torch.arange(w, device=device, dtype=torch.float64).unsqueeze(0) / fs  # (1, W) seconds
        u = torch.rand((b, 2 + len(orders)), generator=generator, device=device, dtype=torch.float64)
        psi = 2 * math.pi * u[:, :1]  # where in the wander this window starts
        # Phase of f(t) = f0 + d·sin(2πt/P + ψ), integrated in closed form (no cumulative-sum error).
        wander = d * period / (2 * math.pi) * (torch.cos(psi) - torch.cos(2 * math.pi * t / period + psi))
        phase = 2 * math.pi * (f0 * t + wander) + 2 * math.pi * u[:, 1:2]
        out = torch.zeros((b, w), device=device, dtype=torch.float64)
        for j, k in enumerate(orders):
            out += self.decay ** (k - 1) * torch.sin(k * phase + 2 * math.pi * u[:, 2 + j:3 + j])
        return out

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 ref_rms: torch.Tensor | None = None) -> torch.Tensor:
        _check_batch(x, "PowerlineHum")
        target = _target_rms(x, self.level, generator, ref_rms)
        noise = self.hum(x.shape[0], x.shape[1], generator, x.device).to(x.dtype)
        return x + _scaled(noise, target)

    def to_dict(self) -> dict:
        return {"type": self.kind, "sample_rate": self.sample_rate, "level": _level_dict(self.level),
                "mains_hz": self.mains_hz, "harmonics": self.harmonics, "decay": self.decay,
                "drift_hz": self.drift_hz, "drift_period_s": self.drift_period_s}


class ColoredNoise(Corruption):
    """Gaussian noise with power spectral density ∝ 1/f^``exponent``: 1 is pink, 2 is brown (a random
    walk), 0 is white. White noise shaped in the frequency domain (rfft, amplitude × f^(-exponent/2),
    irfft) per window; the DC bin is zeroed, so the noise has zero mean and no power below one cycle
    per window. A power law has no frequency scale, so no sample rate is needed."""

    kind = "colored"

    def __init__(self, level, exponent: float = 1.0):
        self.level = _check_level(level, "ColoredNoise")
        e = float(exponent)
        if not (math.isfinite(e) and 0.0 <= e <= 4.0):
            raise ValueError(f"ColoredNoise: exponent must be in [0, 4] (1 pink, 2 brown), got {exponent!r}")
        self.exponent = e

    def shape(self, white: torch.Tensor) -> torch.Tensor:
        w = white.shape[1]
        spec = torch.fft.rfft(white.to(torch.float64), dim=1)
        f = torch.fft.rfftfreq(w, device=white.device, dtype=torch.float64)
        gain = torch.zeros_like(f)
        gain[1:] = f[1:].pow(-self.exponent / 2)
        return torch.fft.irfft(spec * gain, n=w, dim=1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 ref_rms: torch.Tensor | None = None) -> torch.Tensor:
        _check_batch(x, "ColoredNoise")
        target = _target_rms(x, self.level, generator, ref_rms)
        white = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + _scaled(self.shape(white).to(x.dtype), target)

    def to_dict(self) -> dict:
        return {"type": self.kind, "level": _level_dict(self.level), "exponent": self.exponent}


def pink(level) -> ColoredNoise:
    return ColoredNoise(level, exponent=1.0)


def brown(level) -> ColoredNoise:
    return ColoredNoise(level, exponent=2.0)


class ImpulsiveNoise(Corruption):
    """Sparse additive spikes: exactly round(``fraction``·W) positions per window (uniform), each of
    random sign and magnitude ``scale`` × the window's RMS × a Pareto(``alpha``) multiplier (≥ 1, capped
    at 20; small ``alpha`` = heavier tail, mean alpha/(alpha-1) for alpha > 1). Unlike the other
    additive noises the level is set per spike, not as a total RMS: a spike is an event, and its size
    should not depend on how many others share the window."""

    kind = "impulsive"

    def __init__(self, fraction: float, scale: float = 5.0, alpha: float = 3.0):
        self.fraction = _check_fraction(fraction, "ImpulsiveNoise")
        self.scale = _positive(scale, "scale", "ImpulsiveNoise")
        self.alpha = _positive(alpha, "alpha", "ImpulsiveNoise")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 ref_rms: torch.Tensor | None = None) -> torch.Tensor:
        _check_batch(x, "ImpulsiveNoise")
        hit = _pick(x, self.fraction, generator)
        target = _target_rms(x, self.scale, generator, ref_rms)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
        sign = torch.where(torch.rand(x.shape, generator=generator, device=x.device) < 0.5, -1.0, 1.0)
        mult = (1.0 - u).pow(-1.0 / self.alpha).clamp(max=_MAX_SPIKE).to(x.dtype)  # 1 - u in (0, 1]
        return x + torch.where(hit, sign.to(x.dtype) * mult * target, torch.zeros_like(x))

    def to_dict(self) -> dict:
        return {"type": self.kind, "fraction": self.fraction, "scale": self.scale, "alpha": self.alpha}


def _compositions(b: int, total: int, parts: int, generator, device) -> torch.Tensor:
    """(B, parts) random non-negative integers summing to ``total`` per row (stars and bars)."""
    if parts == 1:
        return torch.full((b, 1), total, dtype=torch.long, device=device)
    slots = total + parts - 1
    keys = torch.rand((b, slots), generator=generator, device=device)
    bars = keys.argsort(dim=1)[:, :parts - 1].sort(dim=1).values  # positions of the parts-1 bars
    edges = torch.cat([torch.full((b, 1), -1, device=device), bars,
                       torch.full((b, 1), slots, device=device)], dim=1)
    return edges.diff(dim=1) - 1


class Dropouts(Corruption):
    """Runs of lost samples: exactly round(``fraction``·W) samples per window in
    n = max(1, round(fraction·W / ``mean_length``)) runs (capped so that runs are ≥ 1 sample and
    never touch), with random lengths (a uniform random split of the dropped total) and random gaps,
    laid on a circle and turned by a random offset: every position is equally likely to be dropped,
    and a run may cross the window's edge (seen as one run at the end and one at the start, as in a
    window cut from a stream). ``fill="zero"`` sets them to 0 (a lost packet read as zeros); ``fill="hold"``
    repeats the last sample before the run (a sample-and-hold ADC), or, for a run at the window's
    start, the first sample after it (a window has no past)."""

    kind = "dropouts"
    FILLS = ("zero", "hold")

    def __init__(self, fraction: float, mean_length: float = 16.0, fill: str = "zero"):
        self.fraction = _check_fraction(fraction, "Dropouts")
        self.mean_length = float(mean_length)
        if not (math.isfinite(self.mean_length) and self.mean_length >= 1.0):
            raise ValueError(f"Dropouts: mean_length must be finite and >= 1 sample, got {mean_length!r}")
        if fill not in self.FILLS:
            raise ValueError(f"Dropouts: fill must be one of {self.FILLS}, got {fill!r}")
        self.fill = fill

    def mask(self, b: int, w: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(B, W) bool, True where a sample is dropped."""
        k = int(round(self.fraction * w))
        if k == 0 or b == 0 or k == w:
            return torch.full((b, w), k == w and w > 0, dtype=torch.bool, device=device)
        n = max(1, min(int(round(k / self.mean_length)), k, w - k))
        lengths = _compositions(b, k - n, n, generator, device) + 1  # every run >= 1 sample
        gaps = _compositions(b, w - k - n, n, generator, device) + 1  # and >= 1 sample apart
        # Run i starts after runs and gaps 0..i-1, on a circle of W samples starting at 0 ...
        starts = torch.cat([torch.zeros((b, 1), dtype=torch.long, device=device),
                            (lengths + gaps)[:, :-1].cumsum(dim=1)], dim=1)
        edge = torch.zeros((b, w + 1), dtype=torch.long, device=device)
        edge.scatter_add_(1, starts, torch.ones_like(starts))
        edge.scatter_add_(1, starts + lengths, -torch.ones_like(starts))
        circle = edge.cumsum(dim=1)[:, :w] > 0
        # ... turned by a random offset, so every position is equally likely to be dropped.
        shift = torch.randint(0, w, (b, 1), generator=generator, device=device)
        return circle.gather(1, (torch.arange(w, device=device) - shift) % w)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(x, "Dropouts")
        drop = self.mask(x.shape[0], x.shape[1], generator, x.device)
        if self.fill == "zero":
            return x.masked_fill(drop, 0.0)
        w = x.shape[1]
        pos = torch.arange(w, device=x.device).expand_as(x)
        before = torch.where(drop, -1, pos).cummax(dim=1).values  # last kept index at or before
        after = torch.where(drop, w, pos).flip(1).cummin(dim=1).values.flip(1)  # first kept at or after
        src = torch.where(before >= 0, before, after)
        out = torch.gather(x, 1, src.clamp(max=w - 1))
        return torch.where(src < w, out, torch.zeros_like(x))  # a wholly dropped window: zeros

    def to_dict(self) -> dict:
        return {"type": self.kind, "fraction": self.fraction, "mean_length": self.mean_length, "fill": self.fill}


REAL_KINDS = {c.kind: c for c in (PowerlineHum, ColoredNoise, ImpulsiveNoise, Dropouts)}


def real_from_dict(d: dict) -> Corruption:
    """Rebuild one of this module's corruptions from ``to_dict()`` output (``d["type"]`` in REAL_KINDS)."""
    args = {k: v for k, v in d.items() if k != "type"}
    if isinstance(args.get("level"), list):
        args["level"] = tuple(args["level"])
    try:
        return REAL_KINDS[d["type"]](**args)
    except TypeError as e:
        raise ValueError(f"corruption spec {d!r} does not fit {d['type']!r}: {e}") from None
