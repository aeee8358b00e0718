"""Classical denoisers (scipy.signal) with their parameter tuned on a validation split.

Each filter runs over a whole signal ((frames,) or (frames, channels), channels filtered
independently), not window by window: that is how a user would apply it, and it gives the
filters every sample of context they could want.

- ``moving_average``: centred boxcar of odd length L (reflect-padded ends); L = 1 is the identity.
- ``savgol``: Savitzky–Golay, odd length L and polynomial order p (``mode="interp"`` at the ends).
- ``wiener``: scipy's local-statistics Wiener filter over odd length L (noise power estimated
  from the signal, as a user without a noise model would run it).

``tune`` picks the grid point with the highest mean SNR gain over (clean, noisy) validation pairs,
the fairest comparison a user could make: each filter gets the parameter that suits the data best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
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


def apply(name: str, x: np.ndarray, **params) -> np.ndarray:
    if name not in FILTERS:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(FILTERS)}")
    return FILTERS[name](x, **params)


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
) -> TunedBaseline:
    """Grid search for the parameter maximising the mean SNR gain over (clean, noisy) pairs."""
    if name not in FILTERS:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(FILTERS)}")
    if len(clean) != len(noisy) or not clean:
        raise ValueError(f"tune: need equally many clean and noisy signals (>= 1), got {len(clean)} and {len(noisy)}")
    grid = list(GRIDS[name] if grid is None else grid)
    scores = []
    for params in grid:
        gains = [snr_gain_db(c, y, apply(name, y, **params)) for c, y in zip(clean, noisy)]
        scores.append((dict(params), float(np.mean(gains))))
    best_params, best = max(scores, key=lambda s: (s[1] if math.isfinite(s[1]) else -math.inf))
    return TunedBaseline(name, best_params, best, scores)


def tune_all(clean: Sequence[np.ndarray], noisy: Sequence[np.ndarray]) -> dict[str, TunedBaseline]:
    return {name: tune(name, clean, noisy) for name in FILTERS}
