"""Training denoising autoencoders: from the synthetic generator (``models.signals.families``) or from arrays/files.

Clean-target objective (``objective="clean"``, the DAE of the seed): corrupt a clean window x into
x̃ ~ q(x̃|x), standardise x̃ with its own mean/std (exactly what inference does with the windows it
receives), apply the *same* mean/std to x, and minimise ``MSE(model(x̃n), xn)`` — the target is always
the clean window (``training_loss``).

Noisy-target objective (``objective="noisier2noise"``, for recordings without a clean version): the
data y is already noisy. Standardise y, corrupt it again, z = yn + σ·n, standardise z and fit the
noisy yn in z's units (``noisier2noise_loss``). The trained net is wrapped in
``models.archs.Noisier2NoiseDAE``, whose forward returns the mean over fixed draws of 2·f(z) − z.

Data: streams (1-D signals; multi-channel arrays become one stream per channel, since every model
denoises channels one at a time). Training and validation are split *by stream*, never by window, so
no validation window overlaps a training window. Each step draws random windows from random training
streams (uniform over all window positions). Validation uses fixed windows and fixed noise, drives
early stopping, and yields the checkpoint's metrics (SNR gain at 10 dB input SNR when the clean truth
is known) and reconstruction-error quantiles (the alerting baseline).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import ModelMeta
from models.archs import ARCHITECTURES, NORMALISATION, build_model, make_config, model_config
from models.forward import standardize
from models.noise import Corruption, GaussianNoise
from models.signals.families import FAMILIES, generate

EVAL_INPUT_SNR_DB = 10.0
QUANTILES = {"q50": 0.5, "q90": 0.9, "q99": 0.99, "q999": 0.999}
# The architecture `dae train` uses when none is named: the best on quality in docs/models.md
# (TrainConfig keeps "mlp" as its default so that existing callers keep their fast seed model).
DEFAULT_ARCH = "conv"
OBJECTIVES = ("clean", "noisier2noise")
LOSSES = ("mse", "nmse", "wmse")
# Samples of training signal per family: enough distinct streams that the model cannot memorise
# their frequencies, small enough to generate in ~1 s on 2 cores.
_SAMPLES_PER_FAMILY = 2_000_000
_VAL_WINDOWS_PER_STREAM = 32
_TRAINABLE = tuple(a for a in ARCHITECTURES if a != "noisier2noise")


@dataclass
class TrainConfig:
    sample_rate: float
    window: int = 256
    hop: int | None = None  # default window // 2
    hidden: int = 256  # the seed MLP's width (arch="mlp" only)
    steps: int = 2500
    batch_size: int = 512
    lr: float = 3e-3
    sigma: tuple[float, float] = (0.05, 0.5)
    families: tuple[str, ...] = FAMILIES
    seed: int = 0
    max_seconds: float = 50.0
    val_streams: int = 16  # per family (synthetic data)
    log_every: int = field(default=25, repr=False)
    arch: str = "mlp"  # see DEFAULT_ARCH for what `dae train` uses
    arch_config: dict | None = None  # architecture hyper-parameters beyond the window (non-MLP)
    objective: str = "clean"  # or "noisier2noise" (noisy data only; arrays/files)
    n2n_sigma: float = 0.3  # noisier2noise: added noise std in standardised-window units
    n2n_draws: int = 8  # noisier2noise: fixed inference draws stored with the weights
    val_fraction: float = 0.2  # arrays/files: share of streams held out for validation
    device: str = "cpu"  # cpu | cuda | auto (bf16 autocast on CUDA)
    sigma_log_uniform: bool = False  # draw each window's σ uniformly in log σ over cfg.sigma
    # σ relative to the window's RMS ("window", the seed's q(x̃|x)) or to the RMS of the stream the
    # window comes from ("stream": a constant noise floor, so quiet stretches get noisier).
    noise_reference: str = "window"
    # "mse": mean squared error in the noisy window's standardised units (the seed's loss);
    # "nmse": each window's squared error divided by its noise variance, so every noise level
    # counts alike (an error at σ=0.05 weighs as much, relative to its noise, as one at σ=0.5);
    # "wmse": divided by the noise std instead (half way between the two).
    loss: str = "mse"
    eval_every: int = 100  # steps between validation passes
    # Anneal the learning rate by whichever is further along, steps or the wall-clock budget, so a
    # run cut by max_seconds (a busy machine) still ends at a low learning rate. With headroom the
    # step fraction always leads and the run is exactly the step-scheduled, reproducible one.
    anneal_by_time: bool = False
    # CPU threads for training: None leaves torch's setting alone (bit-reproducible runs); "auto"
    # re-measures every few hundred steps whether all threads or one thread steps faster and uses
    # the faster. On a shared 2-core machine, OpenMP threads waiting at barriers while another process
    # holds a core made a step 3-6x slower with 2 threads than with 1 (measured here); thread count
    # changes the order of floating-point sums, so "auto" runs are reproducible only to rounding.
    cpu_threads: int | str | None = None
    patience: int = 8  # validation passes without a 0.5 % improvement before stopping early
    # bf16 autocast for the training steps on CPU too (CUDA always uses it). On this AVX-512-BF16
    # CPU a conv training step took ~0.6x the fp32 time; weights, validation and the saved model stay fp32.
    cpu_bf16: bool = False
    # Exponential moving average of the weights (0 = off): validation, early stopping and the saved
    # model use the averaged weights, which smooth out the last steps' minibatch noise.
    ema: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sample_rate) and self.sample_rate > 0):
            raise ValueError(f"TrainConfig.sample_rate must be > 0 Hz, got {self.sample_rate!r}")
        if self.window < 8:
            raise ValueError(f"TrainConfig.window must be >= 8, got {self.window}")
        if self.hop is None:
            self.hop = self.window // 2
        if not (1 <= self.hop <= self.window):
            raise ValueError(f"TrainConfig.hop must be in [1, window={self.window}], got {self.hop}")
        for name in ("steps", "batch_size", "val_streams", "n2n_draws", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        bad = [f for f in self.families if f not in TRAIN_FAMILIES]
        if bad or not self.families:
            raise ValueError(f"TrainConfig.families: unknown {bad or 'empty'}; valid: {', '.join(TRAIN_FAMILIES)}")
        if not self.max_seconds > 0:
            raise ValueError(f"TrainConfig.max_seconds must be > 0, got {self.max_seconds}")
        GaussianNoise(self.sigma, self.sigma_log_uniform, self.noise_reference)  # validates, naming what is wrong
        ct = self.cpu_threads
        if not (ct is None or ct == "auto" or (isinstance(ct, int) and not isinstance(ct, bool) and ct >= 1)):
            raise ValueError(f"TrainConfig.cpu_threads must be None, 'auto' or a positive integer, got {ct!r}")
        if not (0.0 <= self.ema < 1.0):
            raise ValueError(f"TrainConfig.ema must be in [0, 1), got {self.ema}")
        if self.loss not in LOSSES:
            raise ValueError(f"TrainConfig.loss: unknown {self.loss!r}; valid: {', '.join(LOSSES)}")
        self.sigma = tuple(float(s) for s in self.sigma)
        self.families = tuple(self.families)
        if self.arch not in _TRAINABLE:
            raise ValueError(f"TrainConfig.arch: unknown {self.arch!r}; valid: {', '.join(_TRAINABLE)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"TrainConfig.objective: unknown {self.objective!r}; valid: {', '.join(OBJECTIVES)}")
        if not (0.0 < self.n2n_sigma < 10.0):
            raise ValueError(f"TrainConfig.n2n_sigma must be in (0, 10), got {self.n2n_sigma}")
        if not (0.0 < self.val_fraction < 1.0):
            raise ValueError(f"TrainConfig.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"TrainConfig.device must be cpu, cuda or auto, got {self.device!r}")
        if self.arch_config is not None:
            self.arch_config = dict(self.arch_config)
        self.model_spec()  # fail now, naming the bad key, not after generating data

    def model_spec(self) -> tuple[str, dict]:
        """(arch, config) of the network that training fits (the inner net for noisier2noise)."""
        if self.arch == "mlp":
            cfg = {"window": self.window, "hidden": self.hidden, **(self.arch_config or {})}
        else:
            cfg = {**(self.arch_config or {}), "window": self.window}
        make_config(self.arch, cfg)  # validates without touching any RNG
        return self.arch, cfg


def training_loss(
    model: nn.Module, clean: torch.Tensor, corruption: Corruption, generator: torch.Generator | None,
    ref_rms: torch.Tensor | None = None, normalise: bool = False,
) -> torch.Tensor:
    """DAE loss for one batch: MSE between model(standardised x̃) and the clean x in x̃'s units.

    ``ref_rms``: each window's stream RMS, for ``GaussianNoise(reference="stream")``.
    ``normalise``: divide each window's squared error by its noise variance (the ``nmse`` loss;
    ``normalise=0.5`` divides by the noise std, the ``wmse`` loss); the target is the clean window
    either way.
    """
    if isinstance(corruption, GaussianNoise):
        noisy, std = corruption.sample(clean, generator, ref_rms)
    else:
        noisy = corruption(clean, generator)
        std = (noisy - clean).pow(2).mean(dim=1, keepdim=True).sqrt()
    xn, mean, scale = standardize(noisy)
    target = (clean - mean) / scale
    if not normalise:
        return F.mse_loss(model(xn), target)
    return _nmse(model(xn), target, std / scale, 1.0 if normalise is True else float(normalise))


def _nmse(pred: torch.Tensor, target: torch.Tensor, noise_std: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Mean over windows of (window MSE / noise variance ** power), both in standardised units."""
    per_window = (pred.float() - target).pow(2).mean(dim=1, keepdim=True)
    # Floor: a (near-)silent window under window-relative noise has ~no noise to normalise by.
    return (per_window / noise_std.pow(2).clamp_min(1e-4).pow(power)).mean()


def noisier2noise_inputs(
    noisy: torch.Tensor, sigma: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(zn, target): the doubly-noisy standardised input and the noisy window in zn's units."""
    yn, _, _ = standardize(noisy)
    n = torch.randn(yn.shape, generator=generator, device=yn.device, dtype=yn.dtype)
    z = yn + sigma * n
    zn, mean, scale = standardize(z)
    return zn, (yn - mean) / scale


def noisier2noise_loss(
    model: nn.Module, noisy: torch.Tensor, sigma: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Noisy-target loss: fit the (standardised) noisy window from a re-corrupted copy of it."""
    zn, target = noisier2noise_inputs(noisy, sigma, generator)
    return F.mse_loss(model(zn), target)


@torch.no_grad()
def reconstruction_error(model: nn.Module, windows_normalised, batch_size: int = 8192) -> np.ndarray:
    """Per-window mean squared error between model input and output (inputs already standardised)."""
    x = torch.as_tensor(np.asarray(windows_normalised, dtype=np.float32))
    if x.dim() != 2:
        raise ValueError(f"reconstruction_error: expected (N, W) windows, got shape {tuple(x.shape)}")
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        out.append(((model(xb) - xb) ** 2).mean(dim=1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


# ------------------------------------------------------------------ generic training-only families
# Broad signal classes that widen the clean-target training distribution beyond the four
# models.signals.families families: random piecewise-smooth curves (steps, ramps, plateaus), random periodic
# waveforms (arbitrary cycle shapes, sharp edges included), tones with random frequency modulation,
# sparse transients of random shapes over silence, and random mixtures. They are *not* the
# evaluation's held-out generators (models/heldout.py, never imported here): each one is a broad
# random class whose draws merely include shapes like theirs (an edge, a sweep, a decaying knock).
# Like models.signals.families, scales are in cycles (or samples) per 256-sample reference window;
# every output is float32 with unit RMS, zero mean except `events` (silences stay exactly 0).
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


# ------------------------------------------------------------------ the recommended configuration
# What `dae train` should train when no architecture is named, and the suite's `conv` model
# (docs/models.md has the measurements behind each choice).
CONV_BEST: dict = {"channels": [16, 32, 64], "kernel": 9, "skip": True, "residual": True, "self_ensemble": 2}
BEST_TRAINING: dict = dict(
    arch=DEFAULT_ARCH,
    families=TRAIN_FAMILIES,  # the four models.signals.families families + the generic ones
    batch_size=32,  # small batches, many steps: the best quality per CPU second measured here
    lr=4e-3,  # measured at equal wall time: 4e-3 ≥ 2e-3 (held-out +8.73 vs +8.71 dB at 10 dB)
    steps=16000,  # an upper bound: on this 2-core CPU the 270 s budget ends the run first
    max_seconds=270.0,  # the limit is 5 minutes on this 2-core CPU (final metrics come after)
    anneal_by_time=True,  # a busy machine cuts steps, not the end of the learning-rate decay
    cpu_threads="auto",  # one thread when another process holds a core (see TrainConfig)
    cpu_bf16=True,  # ~1.3-1.7x the steps per second of fp32 on this CPU, same quality at equal steps
    sigma=(0.03, 0.6),
    sigma_log_uniform=True,  # as many low-noise windows as high-noise ones
    noise_reference="stream",  # a constant noise floor: silences get noise too
    loss="wmse",  # errors relative to the noise std: low-noise windows count without dominating
    val_streams=8,  # per family: 9 families x 8 streams x 32 windows
    eval_every=500,
    patience=12,
)


def best_config(sample_rate: float, **overrides) -> TrainConfig:
    """The recommended TrainConfig for ``DEFAULT_ARCH`` (what `dae train` without --arch should use)."""
    kw = {**BEST_TRAINING, "arch_config": dict(CONV_BEST), **overrides}
    return TrainConfig(sample_rate=sample_rate, **kw)


# --------------------------------------------------------------------------------- data
def stream_plan(cfg: TrainConfig) -> tuple[int, int]:
    """(stream length, training streams per family) for this config."""
    # At least 32 windows per stream, and ~6 s so a stream at high rates still holds several heartbeats.
    length = max(32 * cfg.window, int(math.ceil(6.0 * cfg.sample_rate)))
    length = min(length, max(4 * cfg.window, 400_000))
    n_train = int(min(512, max(16, _SAMPLES_PER_FAMILY // length)))
    return length, n_train


def _streams(cfg: TrainConfig, n_per_family: int, length: int, seed: np.random.SeedSequence):
    """(F*S, L) float32 clean streams and (F*S,) family index; one child seed per family."""
    rows, fam = [], []
    for i, (family, ss) in enumerate(zip(cfg.families, seed.spawn(len(cfg.families)))):
        rng = np.random.default_rng(ss)
        for _ in range(n_per_family):
            rows.append(generate_training(family, length, cfg.sample_rate, rng))
            fam.append(i)
    return np.stack(rows), np.asarray(fam)


def _cut(streams: np.ndarray, idx: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    return streams[idx[:, None], starts[:, None] + np.arange(window)[None, :]]


class WindowSampler:
    """Uniform random windows over every window position of a set of 1-D streams of any lengths."""

    def __init__(self, streams: Sequence[np.ndarray], window: int):
        streams = [np.asarray(s, dtype=np.float32).reshape(-1) for s in streams]
        streams = [s for s in streams if s.size >= window]
        if not streams:
            raise ValueError(f"no stream holds a full window of {window} samples")
        self.window = window
        self.flat = np.concatenate(streams)
        lengths = np.array([s.size for s in streams])
        self.offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        self.positions = lengths - window + 1
        self.cum = np.cumsum(self.positions)
        self.n_streams = len(streams)
        self.samples = int(lengths.sum())
        # Each stream's std: the reference of stream-relative noise (GaussianNoise(reference="stream")).
        self.stream_std = np.array([float(np.std(s, dtype=np.float64)) for s in streams], dtype=np.float32)

    def __call__(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        return self.sample(rng, n)[0]

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """``n`` uniform random windows and the index of the stream each one comes from."""
        u = rng.integers(0, int(self.cum[-1]), size=n)
        s = np.searchsorted(self.cum, u, side="right")
        starts = self.offsets[s] + u - (self.cum[s] - self.positions[s])
        return torch.from_numpy(self.flat[starts[:, None] + np.arange(self.window)[None, :]]), s

    def ref_rms(self, idx: np.ndarray) -> torch.Tensor:
        """(len(idx), 1) stream std of the given stream indices."""
        return torch.from_numpy(self.stream_std[np.asarray(idx)].reshape(-1, 1))

    def fixed(self, rng: np.random.Generator, per_stream: int) -> tuple[torch.Tensor, np.ndarray]:
        """``per_stream`` random windows from every stream (validation), and each one's stream index."""
        s = np.repeat(np.arange(self.n_streams), per_stream)
        starts = self.offsets[s] + rng.integers(0, self.positions[s])
        return torch.from_numpy(self.flat[starts[:, None] + np.arange(self.window)[None, :]]), s


def as_streams(signals: Sequence[np.ndarray]) -> list[np.ndarray]:
    """1-D float32 streams: (n,) arrays as they are, (n, C) arrays one stream per channel."""
    out = []
    for i, s in enumerate(signals):
        a = np.asarray(s, dtype=np.float32)
        if a.ndim == 1:
            out.append(a)
        elif a.ndim == 2:
            out.extend(np.ascontiguousarray(a[:, c]) for c in range(a.shape[1]))
        else:
            raise ValueError(f"signal {i}: expected (frames,) or (frames, channels), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"signal {i}: contains NaN or Inf")
    return out


def split_streams(
    streams: list[np.ndarray], val_fraction: float, window: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Split by stream (seeded shuffle). A single stream is cut into a leading training part and a
    trailing validation part (contiguous, so no window straddles both)."""
    streams = [s for s in streams if s.size >= window]
    if not streams:
        raise ValueError(f"no signal is at least one window ({window} samples) long")
    if len(streams) == 1:
        s = streams[0]
        n_val = max(window, int(round(val_fraction * s.size)))
        if s.size - n_val < window:
            raise ValueError(f"a single signal of {s.size} samples is too short to split into training "
                             f"and validation windows of {window}; give more data")
        return [s[: s.size - n_val]], [s[s.size - n_val :]], "single stream: last part held out"
    order = np.random.default_rng(seed).permutation(len(streams))
    n_val = min(len(streams) - 1, max(1, int(round(val_fraction * len(streams)))))
    val = [streams[i] for i in sorted(order[:n_val])]
    train = [streams[i] for i in sorted(order[n_val:])]
    return train, val, "by stream"


def read_training_files(paths: Sequence[Path], sample_rate: float | None = None) -> tuple[list[np.ndarray], float | None]:
    """Signals from .npy/.wav/.csv files or folders of them (sorted), and their common sample rate."""
    from pipeline.tools.fileio import SUPPORTED, read_signal

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED))
        else:
            files.append(p)
    if not files:
        raise ValueError(f"no .npy/.wav/.csv files in {', '.join(map(str, paths))}")
    signals, rates = [], set()
    for f in files:
        x, r = read_signal(f, sample_rate=sample_rate)
        signals.append(x)
        if r is not None:
            rates.add(float(r))
    if len(rates) > 1:
        raise ValueError(f"training files have different sample rates {sorted(rates)}; train one model per rate")
    return signals, (rates.pop() if rates else sample_rate)


# --------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def denoise_windows(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Inference path on raw windows: standardise, model, destandardise."""
    xn, mean, scale = standardize(windows)
    return model(xn) * scale + mean


@torch.no_grad()
def snr_gain_by_family(
    model: nn.Module, clean: torch.Tensor, fam: np.ndarray, families, generator: torch.Generator,
    input_snr_db: float = EVAL_INPUT_SNR_DB, ref_rms: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean per-window SNR gain (dB) at ``input_snr_db``; windows with (near-)silent clean signal skipped.

    The noise is relative to each window's RMS, or to ``ref_rms`` (each window's stream RMS) when given."""
    sigma = 10.0 ** (-input_snr_db / 20.0)
    noisy = GaussianNoise(sigma, reference="window" if ref_rms is None else "stream")(clean, generator, ref_rms)
    est = torch.cat([denoise_windows(model, noisy[i : i + 4096]) for i in range(0, noisy.shape[0], 4096)])
    noise_e = ((noisy - clean) ** 2).sum(dim=1).double()
    resid_e = ((est - clean) ** 2).sum(dim=1).double().clamp_min(1e-30)
    rms = clean.pow(2).mean(dim=1).sqrt()
    gain = (10.0 * torch.log10(noise_e.clamp_min(1e-30) / resid_e)).numpy()
    ok = (rms > 1e-3).numpy()
    out = {}
    for i, name in enumerate(families):
        sel = ok & (fam == i)
        out[name] = float(gain[sel].mean()) if sel.any() else float("nan")
    return out


# --------------------------------------------------------------------------------- training
class _Progress:
    """rich progress bar with loss and samples/s, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if not enabled:
            return
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        except ImportError:  # rich is a dependency, but training must not need a terminal library
            return
        self.bar = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  val {task.fields[val]:.4f}  {task.fields[rate]:,.0f} samples/s"),
        )
        self.task = self.bar.add_task("train", total=total, loss=float("nan"), val=float("nan"), rate=0.0)
        self.bar.start()

    def update(self, step: int, **fields) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class WeightEMA:
    """A frozen copy of ``net`` whose parameters track an exponential moving average of ``net``'s:
    after step s, ema ← d·ema + (1−d)·w with d = min(decay, (1+s)/(10+s)) (short memory early on)."""

    def __init__(self, net: nn.Module, decay: float):
        import copy

        self.decay = float(decay)
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self._pairs = list(zip(self.net.parameters(), net.parameters()))

    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, p in self._pairs:
                pe.lerp_(p, 1.0 - d)


class _ThreadTuner:
    """``cpu_threads="auto"``: time ``probe`` steps with all threads and ``probe`` with one, train
    with the faster until the next check. Checks start ``period`` steps apart; each time the same
    count wins again the gap doubles (up to ``max_period``), because a losing probe is expensive:
    with another process on the second core a 2-thread step took ~5x a 1-thread step here."""

    def __init__(self, setting, device: torch.device, period: int = 400, probe: int = 8, max_period: int = 3200):
        self.saved = torch.get_num_threads()
        self.fixed = setting if isinstance(setting, int) and device.type == "cpu" else None
        self.auto = setting == "auto" and device.type == "cpu" and self.saved > 1
        self.full, self.period, self.probe, self.max_period = self.saved, period, probe, max_period
        self.gap = period
        self.times = {self.full: [], 1: []}
        self.choices: list[int] = []
        self.next_probe, self.phase_start, self._r = 1, 0, -1
        if self.fixed is not None:
            torch.set_num_threads(self.fixed)

    def before(self, step: int) -> None:
        if not self.auto:
            return
        if step == self.next_probe:
            self.times = {self.full: [], 1: []}
            torch.set_num_threads(self.full)
            self.phase_start = step
        r = step - self.phase_start  # 0 .. 2·probe while probing
        if r == self.probe:
            torch.set_num_threads(1)
        elif r == 2 * self.probe:
            best = min(self.times, key=lambda n: float(np.median(self.times[n])) if self.times[n] else math.inf)
            torch.set_num_threads(best)
            same = bool(self.choices) and self.choices[-1] == best
            self.choices.append(best)
            self.gap = min(2 * self.gap, self.max_period) if same else self.period
            self.next_probe = step + self.gap
        self._t = time.perf_counter()
        self._r = r

    def after(self) -> None:
        if self.auto and 0 <= self._r < 2 * self.probe and self._r % self.probe >= 2:  # skip the switch-over steps
            self.times[torch.get_num_threads()].append(time.perf_counter() - self._t)

    def restore(self) -> None:
        torch.set_num_threads(self.saved)

    def summary(self):
        if self.auto:
            return {"setting": "auto", "threads_chosen": {str(n): self.choices.count(n) for n in sorted(set(self.choices))}}
        return self.fixed if self.fixed is not None else self.saved


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("TrainConfig.device=cuda but no CUDA device is available")
    return torch.device(name)


def train_synthetic(cfg: TrainConfig, progress: bool = True) -> tuple[nn.Module, ModelMeta]:
    """Train a DAE (``cfg.arch``) on clean synthetic streams at ``cfg.sample_rate``; (model eval/cpu, meta)."""
    if cfg.objective != "clean":
        raise ValueError("the synthetic generator gives clean signals: train noisier2noise from arrays/files "
                         "(train_arrays) of noisy data")
    t0 = time.perf_counter()
    root = np.random.SeedSequence(cfg.seed)
    s_train, s_val, s_batches = root.spawn(3)
    length, n_train = stream_plan(cfg)
    train, _ = _streams(cfg, n_train, length, s_train)
    v_streams, v_cut = s_val.spawn(2)
    val, val_fam_s = _streams(cfg, cfg.val_streams, length, v_streams)
    val_sampler = WindowSampler(list(val), cfg.window)
    val_windows, val_stream = val_sampler.fixed(np.random.default_rng(v_cut), _VAL_WINDOWS_PER_STREAM)
    data = {
        "source": "synthetic",
        "families": list(cfg.families),
        "stream_length": length,
        "train_streams_per_family": n_train,
        "val_streams_per_family": cfg.val_streams,
        "val_windows": int(val_windows.shape[0]),
    }
    return _fit(cfg, WindowSampler(list(train), cfg.window), val_windows, val_fam_s[val_stream],
                cfg.families, s_batches, data, progress, t0, val_sampler.ref_rms(val_stream))


def train_arrays(
    cfg: TrainConfig, signals: Sequence[np.ndarray], progress: bool = True, source: str = "arrays",
    init_from: nn.Module | None = None, init_version: str | None = None,
) -> tuple[nn.Module, ModelMeta]:
    """Train on recorded signals ((n,) or (n, C) float arrays; channels become separate streams).

    ``objective="clean"`` treats the signals as clean and corrupts them with ``cfg.sigma``;
    ``objective="noisier2noise"`` treats them as noisy and needs no clean version.
    ``init_from`` warm-starts from a model of the same network (for a noisier2noise model its
    inner net is used, on either side): its weights are copied before the first step.
    """
    t0 = time.perf_counter()
    root = np.random.SeedSequence(cfg.seed)
    _, s_val, s_batches = root.spawn(3)
    streams = as_streams(signals)
    train, val, how = split_streams(streams, cfg.val_fraction, cfg.window, cfg.seed)
    train_s, val_s = WindowSampler(train, cfg.window), WindowSampler(val, cfg.window)
    per_stream = max(_VAL_WINDOWS_PER_STREAM, -(-1024 // val_s.n_streams))
    val_windows, val_stream = val_s.fixed(np.random.default_rng(s_val), per_stream)
    data = {
        "source": source,
        "split": how,
        "train_streams": train_s.n_streams,
        "val_streams": val_s.n_streams,
        "train_samples": train_s.samples,
        "val_samples": val_s.samples,
        "val_windows": int(val_windows.shape[0]),
    }
    if init_from is not None:
        data["init_from"] = init_version or "a model"
    fam = np.zeros(val_windows.shape[0], dtype=int)
    return _fit(cfg, train_s, val_windows, fam, (source,), s_batches, data, progress, t0, val_s.ref_rms(val_stream),
                init_from=init_from)


def train_files(cfg: TrainConfig, paths: Sequence[Path], progress: bool = True) -> tuple[nn.Module, ModelMeta]:
    """``train_arrays`` on .npy/.wav/.csv files or folders of them."""
    signals, rate = read_training_files(paths, cfg.sample_rate)
    if rate is not None and abs(rate - cfg.sample_rate) > 1e-9 * rate:
        raise ValueError(f"training files are at {rate:g} Hz but TrainConfig.sample_rate is {cfg.sample_rate:g}")
    model, meta = train_arrays(cfg, signals, progress, source="files")
    meta.training["data"]["files"] = [str(p) for p in paths]
    return model, meta


def warm_start(net: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s weights into ``net`` (the inner nets of noisier2noise wrappers), refusing a
    different architecture or shape with a message that says which."""
    src = getattr(source, "inner", source)
    src_cfg, dst_cfg = getattr(src, "config", None), getattr(net, "config", None)
    if type(src) is not type(net) or src_cfg != dst_cfg:
        raise ValueError(f"cannot warm-start a {type(net).__name__}({dst_cfg}) from a "
                         f"{type(src).__name__}({src_cfg}): architecture or hyper-parameters differ")
    net.load_state_dict(src.state_dict(), strict=True)


def _fit(cfg: TrainConfig, sampler: WindowSampler, val_windows: torch.Tensor, val_fam: np.ndarray,
         families, s_batches, data: dict, progress: bool, t0: float,
         val_ref: torch.Tensor, init_from: nn.Module | None = None) -> tuple[nn.Module, ModelMeta]:
    dev = _device(cfg.device)
    autocast = dev.type == "cuda"
    step_autocast = autocast or (dev.type == "cpu" and cfg.cpu_bf16)
    batch_rng = np.random.default_rng(s_batches)
    noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    n2n = cfg.objective == "noisier2noise"
    corruption = GaussianNoise(cfg.sigma, cfg.sigma_log_uniform, cfg.noise_reference)
    stream_ref = cfg.noise_reference == "stream"
    nmse = {"mse": False, "nmse": True, "wmse": 0.5}[cfg.loss] if not n2n else False

    arch, inner_cfg = cfg.model_spec()
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's global RNG
        torch.manual_seed(cfg.seed)
        if n2n:
            wrapper = build_model("noisier2noise", {
                "window": cfg.window, "inner_arch": arch, "inner": inner_cfg,
                "sigma": cfg.n2n_sigma, "draws": cfg.n2n_draws, "seed": cfg.seed,
            })
            net = wrapper.inner
        else:
            wrapper = net = build_model(arch, inner_cfg)
    if init_from is not None:
        warm_start(net, init_from)
    wrapper.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    # Cosine decay to 5 % of lr over cfg.steps: late steps refine instead of bouncing.
    t_budget = [math.inf]  # seconds for the loop, set when it starts (anneal_by_time)
    t_start = [0.0]

    def lr_factor(s: int) -> float:
        frac = min(s, cfg.steps) / cfg.steps
        if cfg.anneal_by_time and s > 0:
            frac = max(frac, min(1.0, (time.perf_counter() - t_start[0]) / t_budget[0]))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    # Fixed validation inputs (same noise every pass) so passes are comparable.
    if n2n:
        val_xn, val_target = noisier2noise_inputs(val_windows, cfg.n2n_sigma, eval_gen)
        val_std = torch.ones(val_windows.shape[0], 1)
    else:
        val_noisy, val_std = corruption.sample(val_windows, eval_gen, val_ref if stream_ref else None)
        val_xn, mean, scale = standardize(val_noisy)
        val_target = (val_windows - mean) / scale
        val_std = val_std / scale  # noise std in standardised units (the nmse loss)
    val_xn, val_target, val_std = val_xn.to(dev), val_target.to(dev), val_std.to(dev)

    ema = WeightEMA(net, cfg.ema) if cfg.ema > 0 else None
    ema_net = ema.net if ema is not None else None
    scored = ema_net if ema_net is not None else net  # the weights validation and the checkpoint use

    def val_loss() -> float:
        net.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            parts = [(scored(val_xn[i : i + 4096]).float(), val_target[i : i + 4096], val_std[i : i + 4096])
                     for i in range(0, val_xn.shape[0], 4096)]
            if nmse:
                power = 1.0 if nmse is True else float(nmse)
                v = sum(float(_nmse(p, t, sd, power)) * p.shape[0] for p, t, sd in parts) / val_target.shape[0]
            else:
                v = sum(float(F.mse_loss(p, t, reduction="sum")) for p, t, _ in parts) / val_target.numel()
        net.train()
        return v

    best, best_state, best_step, stale = math.inf, None, 0, 0
    stop_reason, step, seen = "steps", 0, 0
    bar = _Progress(progress, cfg.steps)
    tuner = _ThreadTuner(cfg.cpu_threads, dev)
    t_loop, running = time.perf_counter(), None
    t_start[0] = t_loop
    # Keep ~4 % of the budget for the final validation, metrics and error quantiles.
    t_budget[0] = max(1e-3, 0.96 * cfg.max_seconds - (t_loop - t0))
    try:
        net.train()
        for step in range(1, cfg.steps + 1):
            tuner.before(step)
            batch, idx = sampler.sample(batch_rng, cfg.batch_size)
            batch = batch.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=step_autocast):
                if n2n:
                    loss = noisier2noise_loss(net, batch, cfg.n2n_sigma, noise_gen)
                else:
                    ref = sampler.ref_rms(idx).to(dev) if stream_ref else None
                    loss = training_loss(net, batch, corruption, noise_gen, ref, normalise=nmse)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(step)
            tuner.after()
            seen += cfg.batch_size
            lv = float(loss.detach())
            running = lv if running is None else 0.95 * running + 0.05 * lv
            if step % cfg.eval_every == 0 or step == cfg.steps:
                v = val_loss()
                if v < best * 0.995:
                    stale = 0
                else:
                    stale += 1
                if v < best:
                    best, best_step = v, step
                    best_state = {k: t.detach().clone() for k, t in scored.state_dict().items()}
                bar.update(step, val=v)
                if stale >= cfg.patience:
                    stop_reason = "early_stopping"
                    break
            if step % cfg.log_every == 0:
                rate = seen * cfg.window / max(time.perf_counter() - t_loop, 1e-9)
                bar.update(step, loss=running, rate=rate)
            if time.perf_counter() - t0 > cfg.max_seconds:
                stop_reason = "max_seconds"
                break
    finally:
        bar.close()
        tuner.restore()
    loop_seconds = time.perf_counter() - t_loop

    last = val_loss()
    if last < best or best_state is None:
        best, best_step = last, step
        if ema_net is not None:
            net.load_state_dict(ema_net.state_dict())
    else:
        net.load_state_dict(best_state)
    model = wrapper.cpu().eval()

    val_xn, val_target = val_xn.cpu(), val_target.cpu()
    identity = float(F.mse_loss(val_xn, val_target))
    metrics = {"val_loss": best, "val_loss_identity": identity, "objective": cfg.objective}
    if not n2n:  # the clean truth is known: report the SNR gain at 10 dB input SNR
        gains = snr_gain_by_family(model, val_windows, val_fam, families, eval_gen,
                                   ref_rms=val_ref if stream_ref else None)
        metrics.update({
            "input_snr_db": EVAL_INPUT_SNR_DB,
            "snr_gain_db": float(np.nanmean(list(gains.values()))),
            "snr_gain_db_by_family": gains,
        })
    # Alert baseline: errors on validation windows as the data gives them (clean for the clean
    # objective; the recordings themselves, noisy, for noisier2noise).
    wn, _, _ = standardize(val_windows)
    with torch.no_grad():
        errs = reconstruction_error(model, wn, batch_size=1024)
    seconds = time.perf_counter() - t0
    corr = corruption.to_dict() if not n2n else {
        "type": "noisier2noise", "sigma": cfg.n2n_sigma, "draws": cfg.n2n_draws, "relative_to": "window_std",
    }
    meta = ModelMeta(
        arch="noisier2noise" if n2n else arch,
        config=model_config(model),
        window=cfg.window,
        hop=int(cfg.hop),
        sample_rates=[float(cfg.sample_rate)],
        normalisation=NORMALISATION,
        corruption=corr,
        training={
            "data": data,
            "objective": cfg.objective,
            "steps": step,
            "best_step": best_step,
            "stop_reason": stop_reason,
            "seconds": round(seconds, 3),
            "train_samples_per_s": round(seen * cfg.window / max(loop_seconds, 1e-9), 1),
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "max_steps": cfg.steps,
            "max_seconds": cfg.max_seconds,
            "device": dev.type,
            "loss": "mse" if n2n else cfg.loss,
            "anneal_by_time": cfg.anneal_by_time,
            "bf16_autocast": bool(step_autocast),
            "ema": cfg.ema,
            "cpu_threads": tuner.summary(),
        },
        metrics=metrics,
        error_quantiles={k: float(np.quantile(errs, q)) for k, q in QUANTILES.items()},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sha256="",
    )
    return model, meta
