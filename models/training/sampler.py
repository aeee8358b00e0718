"""Training data as streams: the synthetic streams of a config, recorded signals as streams, the
split into training and validation *by stream* (never by window, so no validation window overlaps a
training window), and uniform random windows over every window position of a set of streams."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from models.signals.generic import generate_training
from models.training.config import TrainConfig

# Samples of training signal per family: enough distinct streams that the model cannot memorise
# their frequencies, small enough to generate in ~1 s on 2 cores.
_SAMPLES_PER_FAMILY = 2_000_000


def stream_length(window: int, sample_rate: float) -> int:
    """Samples per synthetic stream at ``sample_rate``."""
    # At least 32 windows per stream, and ~6 s so a stream at high rates still holds several heartbeats.
    length = max(32 * window, int(math.ceil(6.0 * sample_rate)))
    return min(length, max(4 * window, 400_000))


def _streams_per_family(mean_length: float) -> int:
    return int(min(512, max(16, _SAMPLES_PER_FAMILY // mean_length)))


def stream_plan(cfg: TrainConfig) -> tuple[int, int]:
    """(stream length, training streams per family) for this config (one rate: ``cfg.sample_rate``;
    with ``cfg.rate_range`` the mean stream length over the range, whose streams vary in length)."""
    if cfg.rate_range is not None:
        grid = log_uniform_rates(*cfg.rate_range, 1000, np.random.default_rng(0), jitter=False)
        length = int(round(np.mean([stream_length(cfg.window, r) for r in grid])))
        return length, _streams_per_family(length)
    length = stream_length(cfg.window, cfg.sample_rate)
    return length, _streams_per_family(length)


def log_uniform_rates(lo: float, hi: float, n: int, rng: np.random.Generator, jitter: bool = True) -> np.ndarray:
    """``n`` sample rates log-uniform over [lo, hi], stratified: one in each of ``n`` equal slices of
    log-rate (uniform within its slice; its centre without ``jitter``), in ascending order. Stratified
    rather than independent draws so that a few dozen streams cover the range evenly."""
    u = (np.arange(n) + (rng.random(n) if jitter else 0.5)) / n
    return np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def synthetic_streams_across_rates(cfg: TrainConfig, n_per_family: int, seed: np.random.SeedSequence):
    """Rate-generic data (``cfg.rate_range``): ``n_per_family`` streams per family, each generated at
    its own rate (``log_uniform_rates``, drawn per family) and ``stream_length`` long at that rate;
    returns (list of float32 streams, (F*S,) family index, (F*S,) rate in Hz)."""
    if cfg.rate_range is None:
        raise ValueError("synthetic_streams_across_rates needs cfg.rate_range")
    rows, fam, rates = [], [], []
    for i, (family, ss) in enumerate(zip(cfg.families, seed.spawn(len(cfg.families)))):
        rng = np.random.default_rng(ss)
        for rate in log_uniform_rates(*cfg.rate_range, n_per_family, rng):
            rows.append(generate_training(family, stream_length(cfg.window, rate), float(rate), rng))
            fam.append(i)
            rates.append(float(rate))
    return rows, np.asarray(fam), np.asarray(rates)


def synthetic_streams(cfg: TrainConfig, n_per_family: int, length: int, seed: np.random.SeedSequence):
    """(F*S, L) float32 clean streams and (F*S,) family index; one child seed per family."""
    rows, fam = [], []
    for i, (family, ss) in enumerate(zip(cfg.families, seed.spawn(len(cfg.families)))):
        rng = np.random.default_rng(ss)
        for _ in range(n_per_family):
            rows.append(generate_training(family, length, cfg.sample_rate, rng))
            fam.append(i)
    return np.stack(rows), np.asarray(fam)


class WindowSampler:
    """Uniform random windows over every window position of a set of 1-D streams of any lengths, or
    (``equal_streams``) a uniformly chosen stream and a uniform position in it: streams of different
    lengths (rate-generic data, whose length grows with the rate) then weigh alike."""

    def __init__(self, streams: Sequence[np.ndarray], window: int, equal_streams: bool = False):
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
        self.equal_streams = equal_streams
        # Each stream's std: the reference of stream-relative noise (GaussianNoise(reference="stream")).
        self.stream_std = np.array([float(np.std(s, dtype=np.float64)) for s in streams], dtype=np.float32)

    def __call__(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        return self.sample(rng, n)[0]

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """``n`` uniform random windows and the index of the stream each one comes from."""
        if self.equal_streams:
            s = rng.integers(0, self.n_streams, size=n)
            starts = self.offsets[s] + rng.integers(0, self.positions[s])
            return torch.from_numpy(self.flat[starts[:, None] + np.arange(self.window)[None, :]]), s
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
