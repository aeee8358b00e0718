"""Training entry points: from the synthetic generator, or from recorded signals (arrays).

Data are streams (1-D signals; multi-channel arrays become one stream per channel, since every model
denoises channels one at a time), split into training and validation by stream. Each step draws
random windows from random training streams (uniform over all window positions); validation uses
fixed windows and fixed noise (``models.training.validation``).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from torch import nn

from models.checkpoint import ModelMeta
from models.training.config import TrainConfig
from models.training.sampler import (
    WindowSampler,
    as_streams,
    split_streams,
    stream_plan,
    synthetic_streams,
    synthetic_streams_across_rates,
)
from models.training.trainer import Trainer
from models.training.validation import VAL_WINDOWS_PER_STREAM, ValidationSet

# Validation windows of recorded signals: at least this many in all, however few the streams.
_MIN_VAL_WINDOWS = 1024


def train_synthetic(cfg: TrainConfig, progress: bool = True) -> tuple[nn.Module, ModelMeta]:
    """Train a DAE (``cfg.arch``) on clean synthetic streams at ``cfg.sample_rate`` (or, with
    ``cfg.rate_range``, each stream at its own rate across the range); (model eval/cpu, meta)."""
    if cfg.objective != "clean":
        raise ValueError("the synthetic generator gives clean signals: train noisier2noise from arrays/files "
                         "(train_arrays) of noisy data")
    t0 = time.perf_counter()
    root = np.random.SeedSequence(cfg.seed)
    s_train, s_val, s_batches = root.spawn(3)
    length, n_train = stream_plan(cfg)
    v_streams, v_cut = s_val.spawn(2)
    across = cfg.rate_range is not None
    if across:
        train, _, train_rates = synthetic_streams_across_rates(cfg, n_train, s_train)
        val, val_fam_s, _ = synthetic_streams_across_rates(cfg, cfg.val_streams, v_streams)
    else:
        train, _ = synthetic_streams(cfg, n_train, length, s_train)
        val, val_fam_s = synthetic_streams(cfg, cfg.val_streams, length, v_streams)
    val_sampler = WindowSampler(list(val), cfg.window)
    val_windows, val_stream = val_sampler.fixed(np.random.default_rng(v_cut), VAL_WINDOWS_PER_STREAM)
    data = {
        "source": "synthetic",
        "families": list(cfg.families),
        "stream_length": length,
        "train_streams_per_family": n_train,
        "val_streams_per_family": cfg.val_streams,
        "val_windows": int(val_windows.shape[0]),
    }
    if across:
        lengths = [len(x) for x in train]
        data.update({
            "stream_length": f"{min(lengths)}-{max(lengths)} (mean {length}: ~6 s at each stream's rate)",
            "rate_range": list(cfg.rate_range),
            "rates": "one per stream, log-uniform over rate_range (stratified per family); streams drawn "
                     "uniformly, so batches mix rates",
            "train_rate_min": float(train_rates.min()),
            "train_rate_max": float(train_rates.max()),
        })
    vset = ValidationSet(val_windows, val_fam_s[val_stream], cfg.families, val_sampler.ref_rms(val_stream))
    sampler = WindowSampler(list(train), cfg.window, equal_streams=across)
    return Trainer(cfg, sampler, vset, s_batches, data, t0=t0).run(progress)


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
    if cfg.rate_range is not None:
        raise ValueError("TrainConfig.rate_range is for the synthetic generator (train_synthetic): recorded "
                         "signals have the rate they were recorded at")
    t0 = time.perf_counter()
    root = np.random.SeedSequence(cfg.seed)
    _, s_val, s_batches = root.spawn(3)
    streams = as_streams(signals)
    train, val, how = split_streams(streams, cfg.val_fraction, cfg.window, cfg.seed)
    train_s, val_s = WindowSampler(train, cfg.window), WindowSampler(val, cfg.window)
    per_stream = max(VAL_WINDOWS_PER_STREAM, -(-_MIN_VAL_WINDOWS // val_s.n_streams))
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
    vset = ValidationSet(val_windows, fam, (source,), val_s.ref_rms(val_stream))
    return Trainer(cfg, train_s, vset, s_batches, data, t0=t0, init_from=init_from).run(progress)
