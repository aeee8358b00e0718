"""Signal families the models never see in training, for evaluation only. Pure numpy.

Like ``models.signals.families`` every family is defined in cycles per *sample* (a 256-sample window holds
a few periods of its structure), is float32, zero-mean and unit RMS. They differ in morphology from
the training families on purpose:

- ``chirp``: 1-3 sinusoids whose frequency sweeps (log-linearly) across much of the band, with a
  second harmonic; no stationary tone the way ``vibration`` has.
- ``square``: band-limited square / sawtooth waves (harmonics up to 0.2·fs): sharp edges and flat
  tops, the shape that smoothing filters blur most.
- ``impacts``: sparse exponentially decaying resonances (knocks on a structure) at random times,
  each with its own frequency and decay, over silence.
"""

from __future__ import annotations

import math

import numpy as np

HELDOUT_FAMILIES = ("chirp", "square", "impacts")
_REF = 256


def _lu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def _chirp(n: int, rng: np.random.Generator) -> np.ndarray:
    x = np.zeros(n)
    t = np.arange(n)
    for _ in range(int(rng.integers(1, 4))):
        f0, f1 = _lu(rng, 3.0 / _REF, 0.08), _lu(rng, 3.0 / _REF, 0.08)
        period = _lu(rng, 8 * _REF, 64 * _REF)  # sweep back and forth between f0 and f1
        inst = np.exp(math.log(f0) + (math.log(f1) - math.log(f0)) * 0.5 * (1 - np.cos(2 * np.pi * t / period)))
        phase = 2 * np.pi * np.cumsum(inst) + rng.uniform(0, 2 * np.pi)
        x += rng.uniform(0.4, 1.0) * (np.sin(phase) + rng.uniform(0.0, 0.4) * np.sin(2 * phase))
    return x


def _square(n: int, rng: np.random.Generator) -> np.ndarray:
    f0 = _lu(rng, 2.0 / _REF, 0.03)
    saw = rng.random() < 0.5
    t = np.arange(n)
    inst = f0 * (1.0 + 0.02 * np.sin(2 * np.pi * t / _lu(rng, 16 * _REF, 64 * _REF)))
    phase = 2 * np.pi * np.cumsum(inst) + rng.uniform(0, 2 * np.pi)
    x = np.zeros(n)
    k = 1
    while k * f0 * 1.02 < 0.2:
        if saw:
            x += (-1) ** (k + 1) * np.sin(k * phase) / k
        elif k % 2:
            x += np.sin(k * phase) / k
        k += 1
    return x


def _impacts(n: int, rng: np.random.Generator) -> np.ndarray:
    x = np.zeros(n)
    pos = int(rng.integers(0, _REF))
    while pos < n:
        f = _lu(rng, 4.0 / _REF, 0.15)
        tau = _lu(rng, 10.0, 0.5 * _REF)  # decay time constant, samples
        m = min(n - pos, int(8 * tau) + 1)
        tt = np.arange(m)
        x[pos : pos + m] += rng.uniform(0.3, 1.0) * np.exp(-tt / tau) * np.sin(2 * np.pi * f * tt + rng.uniform(0, 2 * np.pi))
        pos += m + int(_lu(rng, 0.25 * _REF, 2.0 * _REF))
    return x


def generate_heldout(family: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if family not in HELDOUT_FAMILIES:
        raise ValueError(f"unknown held-out family {family!r}; valid: {', '.join(HELDOUT_FAMILIES)}")
    x = {"chirp": _chirp, "square": _square, "impacts": _impacts}[family](int(n), rng)
    if family != "impacts":  # impacts keep their silences exactly 0 (like audio)
        x = x - x.mean()
    rms = math.sqrt(float(np.mean(x * x))) if n else 0.0
    return (x / rms if rms > 0 else x).astype(np.float32)
