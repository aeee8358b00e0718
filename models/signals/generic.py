"""Generic training-only signal families: broad random classes beyond ``models.signals.families``.

They widen the clean-target training distribution: random piecewise-smooth curves (steps, ramps,
plateaus), random periodic waveforms (arbitrary cycle shapes, sharp edges included), tones with random
frequency modulation, sparse transients of random shapes over silence, and random mixtures. They are
*not* the evaluation's held-out generators (``models.signals.heldout``, never imported here): each one
is a broad random class whose draws merely include shapes like theirs (an edge, a sweep, a decaying
knock). Like ``models.signals.families``, scales are in cycles (or samples) per 256-sample reference
window; every output is float32 with unit RMS, zero mean except ``events`` (silences stay exactly 0).
Pure numpy, no I/O.
"""

from __future__ import annotations

import math

import numpy as np

from models.signals.families import FAMILIES, generate

GENERIC_FAMILIES = ("piecewise", "periodic", "fm", "events", "mixture")
TRAIN_FAMILIES = FAMILIES + GENERIC_FAMILIES
_R = 256


def _lu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def _smooth(x: np.ndarray, cutoff: float) -> np.ndarray:
    """Gaussian low-pass (frequency-domain), ``cutoff`` in cycles/sample; >= 0.5 leaves x alone."""
    if cutoff >= 0.5:
        return x
    spec = np.fft.rfft(x)
    spec *= np.exp(-0.5 * (np.fft.rfftfreq(x.size) / cutoff) ** 2)
    return np.fft.irfft(spec, x.size)


def _slow(n: int, cutoff: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random curve of unit std (low-pass Gaussian noise)."""
    x = _smooth(rng.standard_normal(n), cutoff)
    s = x.std()
    return x / s if s > 0 else x


def _gen_piecewise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Segments of random length (constant, linear or curved) with jumps or kinks between them."""
    mean_len = _lu(rng, 12.0, 4.0 * _R)
    p_jump = rng.uniform(0.0, 1.0)
    x = np.empty(n)
    pos, level = 0, rng.standard_normal()
    while pos < n:
        m = min(n - pos, max(2, int(rng.exponential(mean_len))))
        t = np.arange(m) / m
        if rng.random() < p_jump:
            level = rng.standard_normal()
        kind = rng.random()
        if kind < 0.45:
            seg = np.full(m, level)
        elif kind < 0.8:
            seg = level + rng.standard_normal() * t
        else:
            seg = level + rng.standard_normal() * t + rng.standard_normal() * (t * t - t)
        x[pos : pos + m] = seg
        level = seg[-1]
        pos += m
    # Edges from ideal steps to a few samples of rise time.
    return _smooth(x, 0.5 if rng.random() < 0.3 else _lu(rng, 0.02, 0.45))


def _gen_periodic(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random cycle shape repeated at a slowly wandering frequency, band-limited at random."""
    f0 = _lu(rng, 2.0 / _R, 0.06)
    t = np.arange(n)
    inst = f0 * (1.0 + rng.uniform(0.0, 0.03) * _slow(n, 0.25 / _R, rng))
    cyc = (np.cumsum(inst) + rng.random()) % 1.0
    if rng.random() < 0.5:  # random Fourier series, spectrum ~ k^-alpha
        alpha = rng.uniform(0.5, 2.5)
        x = np.zeros(n)
        for k in range(1, int(min(40, 0.45 / f0)) + 1):
            x += k ** -alpha * rng.standard_normal() * np.sin(2 * np.pi * k * cyc + rng.uniform(0, 2 * np.pi))
    else:  # random piecewise-linear cycle; a repeated knot position makes a vertical edge
        k = int(rng.integers(2, 7))
        knots = np.sort(rng.random(k))
        if rng.random() < 0.7:
            knots = np.sort(np.concatenate((knots, knots[: int(rng.integers(1, k + 1))] + 1e-9)))
        vals = rng.standard_normal(knots.size)
        xp = np.concatenate((knots - 1.0, knots, knots + 1.0))
        x = np.interp(cyc, xp, np.tile(vals, 3))
    x = _smooth(x, 0.5 if rng.random() < 0.3 else _lu(rng, 0.05, 0.45))
    return x * (1.0 + rng.uniform(0.0, 0.3) * _slow(n, 0.5 / _R, rng))


def _gen_fm(n: int, rng: np.random.Generator) -> np.ndarray:
    """1-3 tones whose log-frequency follows a smooth random path, with random harmonics."""
    x = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        fc = _lu(rng, 3.0 / _R, 0.08)
        depth = rng.uniform(0.0, 1.2)  # natural-log units: up to ×3.3 either way
        logf = np.log(fc) + depth * _slow(n, _lu(rng, 0.05 / _R, 2.0 / _R), rng)
        inst = np.clip(np.exp(logf), 0.5 / _R, 0.2)
        phase = 2 * np.pi * np.cumsum(inst) + rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.3, 1.0) * np.clip(1.0 + rng.uniform(0.0, 0.5) * _slow(n, 0.5 / _R, rng), 0.0, None)
        tone = np.sin(phase)
        for h in range(2, int(rng.integers(1, 5)) + 1):
            tone += rng.uniform(0.0, 0.6) / h * np.sin(h * phase + rng.uniform(0, 2 * np.pi)) * (h * inst < 0.45)
        x += amp * tone
    return x


def _event(rng: np.random.Generator) -> np.ndarray:
    kind = int(rng.integers(0, 4))
    if kind == 0:  # oscillation under a random attack/decay envelope
        tau = _lu(rng, 3.0, 1.0 * _R)
        m = int(6 * tau) + 2
        t = np.arange(m, dtype=float)
        a = 0.0 if rng.random() < 0.5 else rng.uniform(0.3, 3.0)
        env = (t / max(a * tau, 1e-9)) ** a * np.exp(-t / tau + a) if a > 0 else np.exp(-t / tau)
        return env * np.sin(2 * np.pi * _lu(rng, 2.0 / _R, 0.2) * t + rng.uniform(0, 2 * np.pi))
    if kind == 1:  # Gaussian bump or its derivative
        w = _lu(rng, 1.0, 30.0)
        t = np.arange(-int(5 * w) - 1, int(5 * w) + 2, dtype=float) / w
        return np.exp(-0.5 * t * t) * (t * 1.6 if rng.random() < 0.4 else 1.0)
    if kind == 2:  # trapezoid pulse
        width, rise = int(_lu(rng, 2.0, 150.0)), int(_lu(rng, 1.0, 12.0))
        return np.concatenate((np.linspace(0, 1, rise + 1)[1:], np.ones(width), np.linspace(1, 0, rise + 1)[1:]))
    m = int(_lu(rng, 16.0, 2.0 * _R))  # tone burst, Hann envelope
    t = np.arange(m, dtype=float)
    return np.sin(np.pi * (t + 0.5) / m) ** 2 * np.sin(2 * np.pi * _lu(rng, 3.0 / _R, 0.2) * t + rng.uniform(0, 2 * np.pi))


def _gen_events(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sparse transients of random shapes at random times over silence (or a faint background)."""
    x = np.zeros(n)
    gap_lo = _lu(rng, 4.0, 0.5 * _R)
    gap_hi = gap_lo * _lu(rng, 1.5, 20.0)
    pos = int(rng.integers(0, _R))
    while pos < n:
        e = _event(rng) * rng.uniform(0.2, 1.0) * rng.choice((-1.0, 1.0))
        m = min(n - pos, e.size)
        x[pos : pos + m] += e[:m]
        pos += int(0.5 * e.size) + int(_lu(rng, gap_lo, gap_hi))
    if rng.random() < 0.4:  # faint background (else exact silence)
        rms = math.sqrt(float(np.mean(x * x))) or 1.0
        x += rms * _lu(rng, 0.005, 0.1) * _slow(n, _lu(rng, 0.5 / _R, 0.2), rng)
    return x


def _unit(x: np.ndarray, keep_mean: bool = False) -> np.ndarray:
    if not keep_mean:
        x = x - x.mean()
    rms = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    return (x / rms if rms > 0 else x).astype(np.float32)


def generate_training(family: str, n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """A clean training signal from one of TRAIN_FAMILIES (models.signals.families families or generic ones)."""
    if family in FAMILIES:
        return generate(family, n, sample_rate, rng)
    if family not in GENERIC_FAMILIES:
        raise ValueError(f"unknown training family {family!r}; valid: {', '.join(TRAIN_FAMILIES)}")
    n = int(n)
    if family == "mixture":  # two other families (of either kind) at a random ratio
        pool = [f for f in TRAIN_FAMILIES if f != "mixture"]
        a, b = rng.choice(len(pool), size=2, replace=False)
        x = generate_training(pool[a], n, sample_rate, rng) + rng.uniform(0.1, 1.0) * generate_training(pool[b], n, sample_rate, rng)
        return _unit(x.astype(np.float64))
    fn = {"piecewise": _gen_piecewise, "periodic": _gen_periodic, "fm": _gen_fm, "events": _gen_events}[family]
    return _unit(fn(n, rng), keep_mean=family == "events")
