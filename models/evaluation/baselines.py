"""Classical denoisers (scipy.signal) with their parameter tuned on a validation split.

Each filter runs over a whole signal ((frames,) or (frames, channels), channels filtered
independently), not window by window: that is how a user would apply it, and it gives the
filters every sample of context they could want.

- ``moving_average``: centred boxcar of odd length L (reflect-padded ends); L = 1 is the identity.
- ``savgol``: Savitzky–Golay, odd length L and polynomial order p (``mode="interp"`` at the ends).
- ``wiener``: scipy's local-statistics Wiener filter over odd length L (noise power estimated
  from the signal, as a user without a noise model would run it).

Fitted to one kind of field noise (``models/noise_real.py``; ``FITS`` says which fits which):

- ``notch``: cascaded ``scipy.signal.iirnotch`` at ``mains_hz`` and its harmonics 2..``harmonics``
  (those below Nyquist), quality factor ``q`` (bandwidth = frequency / q), run forward and backward
  (``filtfilt``: zero phase, twice the attenuation). Needs the signal's ``sample_rate`` (Hz).
  Cascaded notches, not ``iircomb``: a comb needs sample_rate / mains_hz to be an integer (60 Hz at
  1 kHz is not) and also notches DC, which would remove the signal's offset.
- ``median``: running median of odd length L (``scipy.ndimage.median_filter``, reflected ends):
  removes spikes shorter than L/2 samples and keeps edges.

``tune`` picks the grid point with the highest mean SNR gain over (clean, noisy) validation pairs,
the fairest comparison a user could make: each filter gets the parameter that suits the data best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage
from scipy import signal as sps

from models.signals.families import snr_db

_LENGTHS = (3, 5, 7, 9, 11, 15, 21, 27, 35, 45, 61, 81, 101, 131)


def _per_channel(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        return fn(a).astype(np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a signal shaped (frames,) or (frames, channels), got {a.shape}")
    return np.stack([fn(a[:, c]) for c in range(a.shape[1])], axis=1).astype(np.float32)


def _odd_length(length: int, n: int) -> int:
    length = int(length)
    if length < 1 or length % 2 == 0:
        raise ValueError(f"filter length must be an odd positive integer, got {length}")
    return min(length, n if n % 2 else n - 1)  # never longer than the signal


def moving_average(x: np.ndarray, length: int) -> np.ndarray:
    def one(v: np.ndarray) -> np.ndarray:
        L = _odd_length(length, v.size)
        if L <= 1:
            return v.copy()
        h = L // 2
        padded = np.pad(v, h, mode="reflect")
        return sps.oaconvolve(padded, np.full(L, 1.0 / L), mode="valid")

    return _per_channel(one, x)


def savgol(x: np.ndarray, length: int, polyorder: int = 3) -> np.ndarray:
    def one(v: np.ndarray) -> np.ndarray:
        L = _odd_length(length, v.size)
        if L <= polyorder:
            return v.copy()
        return sps.savgol_filter(v, L, polyorder, mode="interp")

    return _per_channel(one, x)


def wiener(x: np.ndarray, length: int) -> np.ndarray:
    def one(v: np.ndarray) -> np.ndarray:
        L = _odd_length(length, v.size)
        if L <= 1:
            return v.copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            out = sps.wiener(v, L)
        return np.where(np.isfinite(out), out, v)  # a constant stretch has zero local variance

    return _per_channel(one, x)


def notch(x: np.ndarray, sample_rate: float, mains_hz: float = 50.0, harmonics: int = 3, q: float = 30.0) -> np.ndarray:
    fs, f0, q = float(sample_rate), float(mains_hz), float(q)
    if not (math.isfinite(fs) and fs > 0):
        raise ValueError(f"notch: sample_rate must be a finite number > 0 Hz, got {sample_rate!r}")
    if not (math.isfinite(f0) and f0 > 0):
        raise ValueError(f"notch: mains_hz must be a finite number > 0 Hz, got {mains_hz!r}")
    if int(harmonics) != harmonics or harmonics < 1:
        raise ValueError(f"notch: harmonics must be an integer >= 1, got {harmonics!r}")
    if not (math.isfinite(q) and q > 0):
        raise ValueError(f"notch: q must be a finite number > 0, got {q!r}")
    stages = [sps.iirnotch(k * f0, q, fs=fs) for k in range(1, int(harmonics) + 1) if k * f0 < fs / 2]

    def one(v: np.ndarray) -> np.ndarray:
        out = v.copy()
        for b, a in stages:
            if out.size <= 3 * max(len(a), len(b)):  # too short for filtfilt's padding
                break
            out = sps.filtfilt(b, a, out)
        return out

    return _per_channel(one, x)


def median(x: np.ndarray, length: int) -> np.ndarray:
    def one(v: np.ndarray) -> np.ndarray:
        L = _odd_length(length, v.size)
        return v.copy() if L <= 1 else ndimage.median_filter(v, size=L, mode="reflect")

    return _per_channel(one, x)


FILTERS: dict[str, Callable[..., np.ndarray]] = {
    "moving_average": moving_average,
    "savgol": savgol,
    "wiener": wiener,
}

GRIDS: dict[str, list[dict]] = {
    "moving_average": [{"length": 1}] + [{"length": L} for L in _LENGTHS],
    "savgol": [{"length": L, "polyorder": p} for p in (2, 3, 4) for L in _LENGTHS if L > p + 1],
    "wiener": [{"length": L} for L in _LENGTHS],
}


# Fitted to one noise kind; not in FILTERS, so ``tune_all`` (the white-noise evaluation) is unchanged.
SPECIFIC: dict[str, Callable[..., np.ndarray]] = {"notch": notch, "median": median}
_Q = (5.0, 10.0, 20.0, 35.0, 50.0)  # a hum drifting ±0.5 Hz needs a notch ≥ 1 Hz wide: q ≤ 50 at 50 Hz
GRIDS["notch"] = [{"mains_hz": f, "harmonics": h, "q": q} for f in (50.0, 60.0) for h in (1, 3, 5) for q in _Q]
GRIDS["median"] = [{"length": L} for L in _LENGTHS[:9]]
_ALL = {**FILTERS, **SPECIFIC}
# Noise kind (``Corruption.kind``) -> the baselines that fit it.
FITS: dict[str, tuple[str, ...]] = {
    "hum": ("notch",),
    "impulsive": ("median",),
    "dropouts": ("median", "savgol", "wiener"),
    "colored": ("savgol", "wiener"),
    "gaussian": ("savgol", "wiener"),
}
NEEDS_RATE = ("notch",)


def apply(name: str, x: np.ndarray, **params) -> np.ndarray:
    if name not in _ALL:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(_ALL)}")
    return _ALL[name](x, **params)


def snr_gain_db(clean: np.ndarray, noisy: np.ndarray, estimate: np.ndarray) -> float:
    """SNR of the estimate minus SNR of the noisy input, in dB (both against ``clean``)."""
    return snr_db(clean, estimate) - snr_db(clean, noisy)


@dataclass(frozen=True)
class TunedBaseline:
    name: str
    params: dict
    val_gain_db: float
    scores: list = field(default_factory=list, repr=False)  # (params, mean gain) for the whole grid

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return apply(self.name, x, **self.params)

    @property
    def label(self) -> str:
        return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"


def tune(
    name: str,
    clean: Sequence[np.ndarray],
    noisy: Sequence[np.ndarray],
    grid: Sequence[dict] | None = None,
    sample_rate: float | None = None,
) -> TunedBaseline:
    """Grid search for the parameter maximising the mean SNR gain over (clean, noisy) pairs.
    ``sample_rate`` (Hz) is required by the filters in ``NEEDS_RATE`` and kept in their params."""
    if name not in _ALL:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(_ALL)}")
    if len(clean) != len(noisy) or not clean:
        raise ValueError(f"tune: need equally many clean and noisy signals (>= 1), got {len(clean)} and {len(noisy)}")
    if name in NEEDS_RATE and sample_rate is None:
        raise ValueError(f"tune: baseline {name!r} needs the signals' sample_rate")
    fixed = {"sample_rate": float(sample_rate)} if name in NEEDS_RATE else {}
    grid = [{**fixed, **p} for p in (GRIDS[name] if grid is None else grid)]
    scores = []
    for params in grid:
        gains = [snr_gain_db(c, y, apply(name, y, **params)) for c, y in zip(clean, noisy)]
        scores.append((dict(params), float(np.mean(gains))))
    best_params, best = max(scores, key=lambda s: (s[1] if math.isfinite(s[1]) else -math.inf))
    return TunedBaseline(name, best_params, best, scores)


def tune_all(clean: Sequence[np.ndarray], noisy: Sequence[np.ndarray]) -> dict[str, TunedBaseline]:
    return {name: tune(name, clean, noisy) for name in FILTERS}


def tune_for(kind: str, clean: Sequence[np.ndarray], noisy: Sequence[np.ndarray],
             sample_rate: float | None = None) -> dict[str, TunedBaseline]:
    """The baselines that fit noise ``kind`` (``FITS``), each tuned on the (clean, noisy) pairs."""
    if kind not in FITS:
        raise ValueError(f"tune_for: no baselines listed for noise kind {kind!r}; known: {', '.join(FITS)}")
    return {name: tune(name, clean, noisy, sample_rate=sample_rate) for name in FITS[kind]}
