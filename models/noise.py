"""Corruption processes q(x̃|x) for denoising-autoencoder training.

Each process maps a (B, W) float batch to a corrupted copy (the input is never modified), drawing all
randomness from the ``torch.Generator`` passed in, so training is reproducible. ``to_dict`` /
``corruption_from_dict`` round-trip a process through a checkpoint's JSON. Field noise (mains hum,
pink/brown, impulsive spikes, dropouts) is in ``models/noise_real.py``, registered here too;
``FieldMix`` (training on field noise: one noise type per window) combines them with ``GaussianNoise``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from models.noise_base import Corruption, _check_batch, _check_fraction, _pick  # re-exported
from models.noise_real import REAL_KINDS, ColoredNoise, Dropouts, ImpulsiveNoise, PowerlineHum, real_from_dict


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


# The noise types FieldMix draws from, in the order it synthesises them (the order fixes which random
# numbers each uses, so a subset listed in any order trains the same model).
FIELD_KINDS = ("white", "hum", "pink", "brown", "impulsive", "dropouts")
# Each type's fixed parameters: those of the experiment docs/models.md measured (`conv_fieldmix`) and,
# for hum, pink, brown and dropouts, those `dae evaluate --noise` scores with.
HUM_MAINS_HZ = (50.0, 60.0)  # drawn once per batch, each with probability 1/2
IMPULSIVE_FRACTION = 0.005  # share of the samples hit by a spike (ImpulsiveNoise's scale 5, alpha 3)
DROPOUT_FRACTION = 0.1  # share of the samples zeroed, in runs of 16 samples on average
# The lowest rate that carries a 60 Hz hum with PowerlineHum's ±0.5 Hz wander below Nyquist.
HUM_MIN_RATE = 2 * (max(HUM_MAINS_HZ) + 0.5)


class FieldMix(Corruption):
    """Each window corrupted by one noise type drawn from ``kinds`` (uniformly, or by ``weights``).

    Every window first draws its σ exactly as ``GaussianNoise(sigma, log_uniform, reference)`` (σ × the
    window's or, ``reference="stream"``, the stream's RMS, passed as ``ref_rms``), then:

    - ``white``: that Gaussian noise;
    - ``hum`` (``PowerlineHum`` at ``sample_rate``, 3 harmonics, ±0.5 Hz wander; mains 50 or 60 Hz, one
      draw per batch), ``pink``, ``brown`` (``ColoredNoise`` with exponent 1, 2) and ``impulsive``
      (``ImpulsiveNoise``: 0.5 % of the samples, Pareto-tailed): each row's noise rescaled to the same
      RMS as the white noise would have (σ × reference RMS); a row whose noise is all zeros (a silent
      window) gets none;
    - ``dropouts``: 10 % of the samples zeroed in runs (``Dropouts``), not rescaled: its "noise" is
      minus the lost samples.

    Every listed type is synthesised for every window and one is kept per window, so the random
    numbers drawn do not depend on which one a window keeps. ``sample`` returns the noisy batch and
    each row's noise RMS (what the ``nmse``/``wmse`` losses divide by); the target stays the clean
    window. With all six types, uniform, this is exactly the corruption of the `conv_fieldmix`
    experiment of docs/models.md (the same random numbers in the same order, so the same model).
    """

    kind = "field_mix"

    def __init__(self, kinds, sigma, log_uniform: bool = False, reference: str = "window",
                 sample_rate: float | None = None, weights=None):
        self.kinds, self.weights = check_field_kinds(kinds, weights)
        self.white = GaussianNoise(sigma, log_uniform, reference)
        self.sample_rate = None if sample_rate is None else float(sample_rate)
        self.hums: tuple[PowerlineHum, ...] = ()
        if "hum" in self.kinds:
            if self.sample_rate is None:
                raise ValueError("FieldMix: hum needs the sample rate (sample_rate=Hz): mains hum is defined in Hz")
            if not (math.isfinite(self.sample_rate) and self.sample_rate > HUM_MIN_RATE):
                raise ValueError(f"FieldMix: hum needs a sample rate above {HUM_MIN_RATE:g} Hz (a {max(HUM_MAINS_HZ):g} Hz "
                                 f"hum below Nyquist), got {sample_rate!r}")
            self.hums = tuple(PowerlineHum(self.sample_rate, 1.0, mains_hz=m) for m in HUM_MAINS_HZ)
        self.pink, self.brown = ColoredNoise(1.0, 1.0), ColoredNoise(1.0, 2.0)
        self.impulsive = ImpulsiveNoise(IMPULSIVE_FRACTION)
        self.dropouts = Dropouts(DROPOUT_FRACTION)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 ref_rms: torch.Tensor | None = None) -> torch.Tensor:
        return self.sample(x, generator, ref_rms)[0]

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None,
               ref_rms: torch.Tensor | None = None, with_choice: bool = False):
        """(noisy copy, the (B, 1) noise RMS of each row); ``with_choice``: and the (B,) index into
        ``kinds`` of the type each row got."""
        _check_batch(x, "FieldMix")
        white, sigma = self.white.sample(x, generator, ref_rms)  # sigma: (B, 1) noise RMS wanted

        def unit(c: Corruption) -> torch.Tensor:  # c's noise at RMS 1 per row (zeros stay zeros)
            n = c(x, generator) - x
            r = n.pow(2).mean(dim=1, keepdim=True).sqrt()
            return torch.where(r > 0, n / r.clamp_min(1e-12), torch.zeros_like(n))

        parts = []
        for kind in self.kinds:  # FIELD_KINDS order: the random numbers' order
            if kind == "white":
                parts.append(white - x)
            elif kind == "hum":
                pick = torch.rand((), generator=generator, device=x.device) < 0.5
                parts.append(unit(self.hums[0] if pick else self.hums[1]) * sigma)
            elif kind in ("pink", "brown", "impulsive"):
                parts.append(unit(getattr(self, kind)) * sigma)
            else:  # dropouts
                parts.append(self.dropouts(x, generator) - x)
        b = x.shape[0]
        if self.weights is None:
            k = torch.randint(0, len(parts), (b, 1), generator=generator, device=x.device)
        else:
            p = torch.tensor(self.weights, dtype=torch.float64, device=x.device)
            k = torch.multinomial((p / p.sum()).expand(b, -1), 1, replacement=True, generator=generator)
        noise = torch.zeros_like(x)
        for i, part in enumerate(parts):
            noise = torch.where(k == i, part, noise)
        std = noise.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)
        if with_choice:
            return x + noise, std, k.reshape(b)
        return x + noise, std

    def to_dict(self) -> dict:
        w = self.white.to_dict()
        d = {"type": self.kind, "kinds": list(self.kinds), "sigma": w["sigma"],
             "log_uniform": bool(w.get("log_uniform", False)), "reference": self.white.reference}
        if self.weights is not None:
            d["weights"] = list(self.weights)
        if self.sample_rate is not None:
            d["sample_rate"] = self.sample_rate
        # The fixed parameters, for a reader of the metadata (not needed to rebuild).
        parts = {"white": w}
        if self.hums:
            parts["hum"] = {**self.hums[0].to_dict(), "mains_hz": list(HUM_MAINS_HZ), "mains_choice": "per batch",
                            "level": "sigma"}
        for kind in ("pink", "brown", "impulsive"):
            parts[kind] = {**getattr(self, kind).to_dict(), "level": "sigma"}
        parts["dropouts"] = self.dropouts.to_dict()
        d["parts"] = {k: parts[k] for k in self.kinds}
        d["choice"] = "one kind per window, " + ("uniform" if self.weights is None else "by weight")
        return d


def check_field_kinds(kinds, weights=None) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """(kinds in ``FIELD_KINDS`` order, their weights or None for uniform), refusing unknown or
    repeated kinds and weights that are not positive and finite or do not match the kinds."""
    if isinstance(kinds, str):
        raise ValueError(f"field noise kinds must be a sequence of names, got the string {kinds!r} "
                         f"(parse_field_noise reads 'all' or 'white,hum:2,...')")
    kinds = list(kinds)
    bad = [k for k in kinds if k not in FIELD_KINDS]
    if bad or not kinds:
        raise ValueError(f"field noise: unknown kind(s) {bad or 'none given'}; valid: {', '.join(FIELD_KINDS)}")
    dup = sorted({k for k in kinds if kinds.count(k) > 1})
    if dup:
        raise ValueError(f"field noise: {', '.join(dup)} listed more than once")
    if weights is not None:
        weights = list(weights)
        if len(weights) != len(kinds):
            raise ValueError(f"field noise: {len(weights)} weight(s) for {len(kinds)} kind(s) {kinds}")
        for k, v in zip(kinds, weights):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"field noise: the weight of {k} must be a finite number > 0, got {v!r}")
    order = sorted(range(len(kinds)), key=lambda i: FIELD_KINDS.index(kinds[i]))
    out_kinds = tuple(kinds[i] for i in order)
    if weights is None or len({float(v) for v in weights}) == 1:  # equal weights: uniform, the same draws
        return out_kinds, None
    return out_kinds, tuple(float(weights[i]) for i in order)


def parse_field_noise(spec: str) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """``"all"`` or ``"white,hum,..."``, each kind optionally ``KIND:WEIGHT`` (others weigh 1), e.g.
    ``"white:3,hum,impulsive"``: (kinds, weights or None), as :func:`check_field_kinds`."""
    items = [i.strip() for i in str(spec).split(",") if i.strip()]
    if items == ["all"]:
        return FIELD_KINDS, None
    kinds, weights = [], []
    for item in items:
        name, sep, w = item.partition(":")
        try:
            weights.append(float(w) if sep else 1.0)
        except ValueError:
            raise ValueError(f"field noise: {item!r}: the weight after ':' must be a number") from None
        kinds.append(name.strip())
    if "all" in kinds:
        raise ValueError(f"field noise: 'all' stands alone (it means {','.join(FIELD_KINDS)}), got {spec!r}")
    return check_field_kinds(kinds, weights)


_KINDS = {c.kind: c for c in (GaussianNoise, MaskingNoise, SaltPepperNoise, Compose, FieldMix)}


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
        if kind == "field_mix":
            s = d["sigma"]
            return FieldMix(d["kinds"], tuple(s) if isinstance(s, list) else s, bool(d.get("log_uniform", False)),
                            d.get("reference", "window"), d.get("sample_rate"), d.get("weights"))
        if kind == "compose":
            return Compose([corruption_from_dict(i) for i in d["items"]])
        return _KINDS[kind](d["fraction"])
    except KeyError as e:
        raise ValueError(f"corruption spec {d!r} is missing key {e.args[0]!r}") from None
