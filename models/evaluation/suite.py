"""The standard model suite of ``dae evaluate``: how each model is trained, and training (or loading)
the suite into a directory of checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from models.archs import model_config, one_pass as one_pass_net
from models.checkpoint import load_checkpoint, save_checkpoint
from models.evaluation.signal_sets import LEVELS, N2N_SEED, noisy_copy, signal_set
from models.noise import FIELD_KINDS
from models.signals.heldout import HELDOUT_FAMILIES
from models.training import TrainConfig, best_config, train_arrays, train_synthetic
from models.training.distill import DistilConfig, distil

# conv_n2n_distilled: conv_n2n (8 network passes per window) distilled into one pass of its conv.
# conv_1pass: the conv's own weights without its self-ensemble (one pass instead of two: half the
# cost); derived from conv when loaded, never trained or saved. Since `dae train`'s recipe publishes
# one pass (TrainConfig.publish_one_pass, 2026-12-06) it is the same network as a newly trained conv;
# with a conv checkpoint trained before, a point on the gain-vs-cost front.
# conv_fieldmix: the conv recipe trained on field noise (every noise type of FIELD_KINDS, one per
# window); opt-in (`--suite ...,conv_fieldmix`): not in DEFAULT_SUITE, what `dae evaluate` trains unasked.
DEFAULT_SUITE = ("mlp", "mlp_overcomplete", "conv", "conv_n2n", "conv_n2n_distilled", "conv_1pass")
SUITE = DEFAULT_SUITE + ("conv_fieldmix",)


def suite_config(name: str, sample_rate: float, quick: bool) -> TrainConfig:
    """The TrainConfig of suite model ``name`` (``quick``: a few steps, for smoke tests)."""
    q = dict(steps=60, val_streams=2) if quick else {}
    if name == "mlp":  # the seed model exactly as `dae train --arch mlp` trains it
        return TrainConfig(sample_rate=sample_rate, arch="mlp", **q)
    if name == "mlp_overcomplete":  # 1,700 steps: what its former 60 s limit reached (docs/models.md)
        return TrainConfig(sample_rate=sample_rate, **{"arch": "mlp_overcomplete", "lr": 1e-3, "steps": 1700, **q})
    conv = dict(arch="conv", batch_size=64, lr=2e-3, steps=2000, cpu_threads=1)
    if name == "conv":  # exactly what `dae train` trains by default (models.training.best_config)
        return best_config(sample_rate, **q)
    if name == "conv_fieldmix":  # exactly `dae train --sample-rate R --field-noise all`
        return best_config(sample_rate, field_noise=FIELD_KINDS, **q)
    if name == "conv_n2n":
        return TrainConfig(sample_rate=sample_rate, objective="noisier2noise", n2n_sigma=0.3, n2n_draws=8,
                           **{**conv, **q})
    raise ValueError(f"unknown suite model {name!r}; known: {', '.join(SUITE)}")


def n2n_training_data(sample_rate: float, sigma: float = LEVELS[1], streams_per_family: int = 24,
                      length: int = 16384) -> list[np.ndarray]:
    """Noisy recordings of the held-out families (own seeds, never the test ones) at σ≈0.316 (10 dB):
    all the noisy-target model ever sees (the clean versions are discarded)."""
    clean = signal_set(HELDOUT_FAMILIES, streams_per_family, length, sample_rate, N2N_SEED)
    return [noisy_copy(c, sigma, (N2N_SEED, f, i)) for f, fam in enumerate(HELDOUT_FAMILIES)
            for i, c in enumerate(clean[fam])]


def train_suite(out_dir: Path, sample_rate: float = 1000.0, names: Sequence[str] = DEFAULT_SUITE, retrain: bool = False,
                quick: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train (or load from ``out_dir/<name>``) the standard models; name → (model, meta)."""
    out_dir = Path(out_dir)
    models: dict = {}

    def get(name: str):
        if name in models:
            return models[name]
        path = out_dir / name
        if name == "conv_1pass":
            models[name] = one_pass(*get("conv"))
            return models[name]
        if path.is_dir() and not retrain:
            models[name] = load_checkpoint(path)
            if not serves(models[name][1], sample_rate):
                raise ValueError(f"{path} holds a model for {models[name][1].sample_rates} Hz, not {sample_rate:g} Hz: "
                                 "keep each rate's suite in its own directory, or retrain it")
            log(f"{name}: loaded {path} (trained in {models[name][1].training.get('seconds', float('nan')):.0f} s)")
            return models[name]
        if name == "conv_n2n_distilled":
            teacher, teacher_meta = get("conv_n2n")
            log(f"{name}: distilling conv_n2n into one pass of its conv")
            dcfg = DistilConfig(steps=30, pool=256, val_windows=64) if quick else DistilConfig()
            model, meta = distil(teacher, teacher_meta, n2n_training_data(sample_rate), dcfg, progress=progress)
        else:
            model, meta = _train(name, sample_rate, quick, progress, log)
        meta = save_checkpoint(path, model, meta)
        if "distilled" in meta.training:
            d = meta.training["distilled"]
            log(f"{name}: distilled in {d['seconds']:.0f} s, {d['steps']} steps (val MSE to the teacher "
                f"{d['val_mse_to_teacher']:.4g})")
        else:
            log(f"{name}: {meta.training['seconds']:.0f} s, {meta.training['steps']} steps ({meta.training['stop_reason']})")
        models[name] = (model, meta)
        return models[name]

    return {name: get(name) for name in names}


def one_pass(model, meta):
    """(model, meta) of a self-ensembled conv run as one pass of the same weights."""
    if meta.arch != "conv":
        raise ValueError(f"one_pass: needs a conv checkpoint, got {meta.arch!r}")
    single = one_pass_net(model)
    return single, dataclasses.replace(meta, config=model_config(single), cost=None)


def serves(meta, rate: float) -> bool:
    """Whether a checkpoint serves ``rate`` (a listed rate, or inside a rate-generic model's range)."""
    if getattr(meta, "rate_range", None):
        return meta.rate_range[0] <= rate <= meta.rate_range[1]
    return any(abs(float(r) - rate) <= 1e-9 * rate for r in meta.sample_rates)


def _train(name: str, sample_rate: float, quick: bool, progress: bool, log: Callable[[str], None]):
    cfg = suite_config(name, sample_rate, quick)
    log(f"{name}: training ({cfg.arch}, objective {cfg.objective}, {cfg.steps:,} steps)")
    if cfg.objective == "noisier2noise":
        return train_arrays(cfg, n2n_training_data(sample_rate), progress=progress,
                            source="synthetic-noisy:" + ",".join(HELDOUT_FAMILIES))
    return train_synthetic(cfg, progress=progress)
