"""Synthetic sensor signals for training, tests and the simulator. Pure numpy, no I/O.

Every family is built so that a 256-sample window holds a few periods of its structure whatever the
sample rate, which is what makes one small MLP per sample rate able to denoise it. Frequencies are
therefore chosen in cycles per *sample* (relative to ``sample_rate``), except for ``ecg``, whose heart
rate is physical (50-100 bpm) and so scales with the sample rate in seconds.

All outputs are float32, zero-mean (audio: mean ≈ 0 and silences stay exactly 0) and unit RMS.
"""

from __future__ import annotations

import math

import numpy as np

FAMILIES = ("vibration", "drift", "ecg", "audio")

# Reference window (samples) the frequency ranges are chosen for: "a few periods per window".
_REF_WINDOW = 256


def _check(n: int, sample_rate: float) -> None:
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not (isinstance(sample_rate, (int, float, np.floating, np.integer)) and math.isfinite(sample_rate)):
        raise ValueError(f"sample_rate must be a finite number, got {sample_rate!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def _lowpass_noise(n: int, cutoff: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian process with a Gaussian spectrum of width ``cutoff`` cycles/sample, unit std."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    spec *= np.exp(-0.5 * (f / cutoff) ** 2)
    out = np.fft.irfft(spec, n)
    s = out.std()
    return out / s if s > 0 else out


def _vibration(n: int, rng: np.random.Generator) -> np.ndarray:
    """2-4 sinusoids from ~3 periods/window up to 0.1*fs, amplitudes and frequencies drifting slowly."""
    x = np.zeros(n)
    for _ in range(rng.integers(2, 5)):
        f = _log_uniform(rng, 3.0 / _REF_WINDOW, 0.1)
        amp = rng.uniform(0.3, 1.0) * (1.0 + 0.3 * _lowpass_noise(n, 0.5 / _REF_WINDOW, rng))
        # Frequency wander of ~1 %: the phase is the running sum of the instantaneous frequency.
        inst = f * (1.0 + 0.01 * _lowpass_noise(n, 0.25 / _REF_WINDOW, rng))
        phase = 2 * np.pi * np.cumsum(inst) + rng.uniform(0, 2 * np.pi)
        x += np.clip(amp, 0.0, None) * np.sin(phase)
    return x


def _drift(n: int, rng: np.random.Generator) -> np.ndarray:
    """Low-pass filtered random walk (1/f spectrum cut off at 1-4 cycles per window) + slow sines."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    fc = _log_uniform(rng, 1.0 / _REF_WINDOW, 4.0 / _REF_WINDOW)
    f_lo = 0.25 / _REF_WINDOW  # flattens the walk below a quarter cycle per window (bounded variance)
    spec *= np.exp(-0.5 * (f / fc) ** 2) / np.maximum(f, f_lo)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    s = x.std()
    x = x / s if s > 0 else x
    t = np.arange(n)
    for _ in range(rng.integers(1, 3)):
        fs = _log_uniform(rng, 0.3 / _REF_WINDOW, 2.0 / _REF_WINDOW)
        x += rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * fs * t + rng.uniform(0, 2 * np.pi))
    return x


# P, Q, R, S, T waves: (centre offset from R in s, width sigma in s, amplitude in units of R).
_ECG_WAVES = (
    (-0.20, 0.025, 0.15),
    (-0.030, 0.010, -0.15),
    (0.0, 0.012, 1.0),
    (0.030, 0.010, -0.25),
    (0.26, 0.050, 0.30),
)


# Narrowest wave (Gaussian sigma, samples): at low rates a real front end's anti-aliasing filter
# smooths the QRS complex to a few samples, and so do we (keeps 100 Hz ECG learnable).
_ECG_MIN_WIDTH = 2.0


def _ecg(n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Pulse train of Gaussian P-QRS-T bumps at 50-100 bpm with ~3 % beat-to-beat variability."""
    hr = rng.uniform(50.0, 100.0)
    rr = 60.0 / hr * sample_rate  # samples per beat
    scale = rng.uniform(0.85, 1.15)  # per-subject morphology scale
    wmin = _ECG_MIN_WIDTH / sample_rate
    lo = min(c * scale - 4 * max(w * scale, wmin) for c, w, _ in _ECG_WAVES) * sample_rate
    hi = max(c * scale + 4 * max(w * scale, wmin) for c, w, _ in _ECG_WAVES) * sample_rate
    lo_i, hi_i = int(math.floor(lo)), int(math.ceil(hi))
    x = np.zeros(n)
    r = rng.uniform(0, rr) + lo_i  # first R peak
    while r + lo_i < n:
        r_int = int(math.floor(r))
        frac = r - r_int
        k = np.arange(lo_i, hi_i + 1)
        ts = (k - frac) / sample_rate  # seconds from this R peak
        beat = np.zeros(k.size)
        for c, w, a in _ECG_WAVES:
            amp = a * (1.0 + 0.05 * rng.standard_normal())
            width = max(w * scale, _ECG_MIN_WIDTH / sample_rate)
            beat += amp * np.exp(-0.5 * ((ts - c * scale) / width) ** 2)
        a0, a1 = r_int + lo_i, r_int + hi_i + 1
        s0, s1 = max(a0, 0), min(a1, n)
        if s1 > s0:
            x[s0:s1] += beat[s0 - a0 : s1 - a0]
        r += rr * (1.0 + 0.03 * rng.standard_normal())
    # Respiratory baseline wander (0.15-0.4 Hz), small next to the R wave.
    t = np.arange(n) / sample_rate
    x += rng.uniform(0.0, 0.1) * np.sin(2 * np.pi * rng.uniform(0.15, 0.4) * t + rng.uniform(0, 2 * np.pi))
    return x


def _raised_cosine(e: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.pi * (np.arange(e) + 0.5) / e)


def _audio(n: int, rng: np.random.Generator) -> np.ndarray:
    """Harmonic tone bursts (chirped, amplitude-modulated, smooth on/off envelopes), below 0.25*fs."""
    x = np.zeros(n)
    pos = int(rng.integers(0, _REF_WINDOW // 2 + 1))
    while pos < n:
        dur = int(_log_uniform(rng, 1.0 * _REF_WINDOW, 8.0 * _REF_WINDOW))
        end = min(pos + dur, n)
        m = end - pos
        tt = np.arange(m)
        f0 = _log_uniform(rng, 3.0 / _REF_WINDOW, 0.06)
        chirp = rng.uniform(-0.3, 0.3)
        inst = f0 * (1.0 + chirp * tt / max(dur, 1))
        phase = 2 * np.pi * np.cumsum(inst) + rng.uniform(0, 2 * np.pi)
        n_harm = int(min(rng.integers(1, 6), max(1, math.floor(0.24 / (f0 * (1 + max(chirp, 0)))))))
        tone = np.zeros(m)
        for h in range(1, n_harm + 1):
            tone += rng.uniform(0.3, 1.0) / h * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
        am_f = _log_uniform(rng, 0.3 / _REF_WINDOW, 2.0 / _REF_WINDOW)
        tone *= 1.0 + rng.uniform(0.0, 0.5) * np.sin(2 * np.pi * am_f * tt + rng.uniform(0, 2 * np.pi))
        # Raised-cosine attack and release, each 5-30 % of the burst.
        env = np.ones(m)
        attack = min(m, max(1, int(rng.uniform(0.05, 0.3) * dur)))
        release = min(m, max(1, int(rng.uniform(0.05, 0.3) * dur)))
        env[:attack] *= _raised_cosine(attack)
        if m == dur:  # burst not cut off by the end of the stream: release it
            env[m - release :] *= _raised_cosine(release)[::-1]
        x[pos:end] += rng.uniform(0.4, 1.0) * tone * env
        pos = end + int(rng.uniform(0.0, 1.0) * _REF_WINDOW)  # silent gap, below one window
    return x


def generate(family: str, n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """A clean float32 signal of ``n`` samples from ``family`` (one of FAMILIES), RMS 1, mean 0."""
    if family not in FAMILIES:
        raise ValueError(f"unknown signal family {family!r}; valid families: {', '.join(FAMILIES)}")
    _check(n, sample_rate)
    n = int(n)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    if family == "vibration":
        x = _vibration(n, rng)
    elif family == "drift":
        x = _drift(n, rng)
    elif family == "ecg":
        x = _ecg(n, float(sample_rate), rng)
    else:
        x = _audio(n, rng)
    if family != "audio":  # audio is zero-mean by construction; keep its silences exactly 0
        x = x - x.mean()
    rms = math.sqrt(float(np.mean(x * x)))
    if rms > 0:
        x = x / rms
    return x.astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``x`` plus white Gaussian noise whose power is ``snr_db`` below x's mean power (float32)."""
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db!r}")
    x = np.asarray(x, dtype=np.float32)
    power = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
    sigma = math.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (x + sigma * rng.standard_normal(x.shape)).astype(np.float32)


def snr_db(clean: np.ndarray, estimate: np.ndarray) -> float:
    """10*log10(sum(clean²) / sum((clean - estimate)²)); +inf for a perfect estimate."""
    c = np.asarray(clean, dtype=np.float64)
    e = np.asarray(estimate, dtype=np.float64)
    if c.shape != e.shape:
        raise ValueError(f"snr_db: clean shape {c.shape} != estimate shape {e.shape}")
    sig = float(np.sum(c * c))
    err = float(np.sum((c - e) ** 2))
    if err == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / err)
