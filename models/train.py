"""Training the denoising autoencoder on synthetic signals (``pipeline.signals``).

Denoising-autoencoder objective: corrupt a clean window x into x̃ ~ q(x̃|x), standardise x̃ with its
own mean/std (exactly what inference does with the windows it receives), apply the *same* mean/std to
x, and minimise ``MSE(model(x̃n), xn)`` — the target is always the clean window (``training_loss``).

Data: per family, independent training and validation streams (split by stream, different seeds);
each step draws random windows from random training streams. Validation uses fixed windows and fixed
noise, drives early stopping, and yields the checkpoint's metrics (SNR gain at 10 dB input SNR) and
reconstruction-error quantiles on clean windows (the alerting baseline).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import ModelMeta
from models.dae import NORMALISATION, build_model, model_config, standardize
from models.noise import Corruption, GaussianNoise
from pipeline.signals import FAMILIES, generate

EVAL_INPUT_SNR_DB = 10.0
QUANTILES = {"q50": 0.5, "q90": 0.9, "q99": 0.99, "q999": 0.999}
# Samples of training signal per family: enough distinct streams that the model cannot memorise
# their frequencies, small enough to generate in ~1 s on 2 cores.
_SAMPLES_PER_FAMILY = 2_000_000
_EVAL_EVERY = 100  # steps between validation passes (one pass costs ~ a few training steps)
_PATIENCE = 8  # validation passes without a 0.5 % improvement before stopping early
_VAL_WINDOWS_PER_STREAM = 32


@dataclass
class TrainConfig:
    sample_rate: float
    window: int = 256
    hop: int | None = None  # default window // 2
    hidden: int = 256
    steps: int = 2500
    batch_size: int = 512
    lr: float = 3e-3
    sigma: tuple[float, float] = (0.05, 0.5)
    families: tuple[str, ...] = FAMILIES
    seed: int = 0
    max_seconds: float = 50.0
    val_streams: int = 16  # per family
    log_every: int = field(default=25, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sample_rate) and self.sample_rate > 0):
            raise ValueError(f"TrainConfig.sample_rate must be > 0 Hz, got {self.sample_rate!r}")
        if self.window < 8:
            raise ValueError(f"TrainConfig.window must be >= 8, got {self.window}")
        if self.hop is None:
            self.hop = self.window // 2
        if not (1 <= self.hop <= self.window):
            raise ValueError(f"TrainConfig.hop must be in [1, window={self.window}], got {self.hop}")
        for name in ("steps", "batch_size", "val_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise ValueError(f"TrainConfig.families: unknown {bad or 'empty'}; valid: {', '.join(FAMILIES)}")
        if not self.max_seconds > 0:
            raise ValueError(f"TrainConfig.max_seconds must be > 0, got {self.max_seconds}")
        GaussianNoise(self.sigma)  # validates the range, naming what is wrong
        self.sigma = tuple(float(s) for s in self.sigma)
        self.families = tuple(self.families)


def training_loss(
    model: nn.Module, clean: torch.Tensor, corruption: Corruption, generator: torch.Generator | None
) -> torch.Tensor:
    """DAE loss for one batch: MSE between model(standardised x̃) and the clean x in x̃'s units."""
    noisy = corruption(clean, generator)
    xn, mean, scale = standardize(noisy)
    target = (clean - mean) / scale
    return F.mse_loss(model(xn), target)


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
            rows.append(generate(family, length, cfg.sample_rate, rng))
            fam.append(i)
    return np.stack(rows), np.asarray(fam)


def _cut(streams: np.ndarray, idx: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    return streams[idx[:, None], starts[:, None] + np.arange(window)[None, :]]


def _val_windows(cfg: TrainConfig, seed: np.random.SeedSequence):
    length, _ = stream_plan(cfg)
    s_streams, s_cut = seed.spawn(2)
    streams, fam = _streams(cfg, cfg.val_streams, length, s_streams)
    rng = np.random.default_rng(s_cut)
    idx = np.repeat(np.arange(streams.shape[0]), _VAL_WINDOWS_PER_STREAM)
    starts = rng.integers(0, length - cfg.window + 1, size=idx.size)
    return torch.from_numpy(_cut(streams, idx, starts, cfg.window)), fam[idx]


# --------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def denoise_windows(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Inference path on raw windows: standardise, model, destandardise."""
    xn, mean, scale = standardize(windows)
    return model(xn) * scale + mean


@torch.no_grad()
def snr_gain_by_family(
    model: nn.Module, clean: torch.Tensor, fam: np.ndarray, families, generator: torch.Generator,
    input_snr_db: float = EVAL_INPUT_SNR_DB,
) -> dict[str, float]:
    """Mean per-window SNR gain (dB) at ``input_snr_db``; windows with (near-)silent clean signal skipped."""
    sigma = 10.0 ** (-input_snr_db / 20.0)
    noisy = GaussianNoise(sigma)(clean, generator)
    est = denoise_windows(model, noisy)
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


def train_synthetic(cfg: TrainConfig, progress: bool = True) -> tuple[nn.Module, ModelMeta]:
    """Train an MLP DAE on synthetic streams at ``cfg.sample_rate``; returns (model eval/cpu, meta)."""
    t0 = time.perf_counter()
    root = np.random.SeedSequence(cfg.seed)
    s_train, s_val, s_batches = root.spawn(3)
    length, n_train = stream_plan(cfg)
    train, _ = _streams(cfg, n_train, length, s_train)
    val_clean, val_fam = _val_windows(cfg, s_val)
    batch_rng = np.random.default_rng(s_batches)
    noise_gen = torch.Generator().manual_seed(cfg.seed)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)

    corruption = GaussianNoise(cfg.sigma)
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's global RNG
        torch.manual_seed(cfg.seed)
        model = build_model("mlp", {"window": cfg.window, "hidden": cfg.hidden})
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # Cosine decay to 5 % of lr over cfg.steps: late steps refine instead of bouncing.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )

    # Fixed validation inputs (same noise every pass) so passes are comparable.
    val_noisy = corruption(val_clean, eval_gen)
    val_xn, val_mean, val_scale = standardize(val_noisy)
    val_target = (val_clean - val_mean) / val_scale

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            v = float(F.mse_loss(model(val_xn), val_target))
        model.train()
        return v

    best, best_state, best_step, stale = math.inf, None, 0, 0
    stop_reason, step, seen = "steps", 0, 0
    bar = _Progress(progress, cfg.steps)
    t_loop, running = time.perf_counter(), None
    n_streams, span = train.shape[0], length - cfg.window + 1
    try:
        model.train()
        for step in range(1, cfg.steps + 1):
            idx = batch_rng.integers(0, n_streams, size=cfg.batch_size)
            starts = batch_rng.integers(0, span, size=cfg.batch_size)
            clean = torch.from_numpy(_cut(train, idx, starts, cfg.window))
            loss = training_loss(model, clean, corruption, noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += cfg.batch_size
            lv = float(loss.detach())
            running = lv if running is None else 0.95 * running + 0.05 * lv
            if step % _EVAL_EVERY == 0 or step == cfg.steps:
                v = val_loss()
                if v < best * 0.995:
                    stale = 0
                else:
                    stale += 1
                if v < best:
                    best, best_step = v, step
                    best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
                bar.update(step, val=v)
                if stale >= _PATIENCE:
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
    loop_seconds = time.perf_counter() - t_loop

    last = val_loss()
    if last < best or best_state is None:
        best, best_step = last, step
    else:
        model.load_state_dict(best_state)
    model.eval()

    gains = snr_gain_by_family(model, val_clean, val_fam, cfg.families, eval_gen)
    cn, _, _ = standardize(val_clean)
    errs = reconstruction_error(model, cn)
    identity = float(F.mse_loss(val_xn, val_target))
    seconds = time.perf_counter() - t0
    meta = ModelMeta(
        arch="mlp",
        config=model_config(model),
        window=cfg.window,
        hop=int(cfg.hop),
        sample_rates=[float(cfg.sample_rate)],
        normalisation=NORMALISATION,
        corruption=corruption.to_dict(),
        training={
            "data": {
                "source": "synthetic",
                "families": list(cfg.families),
                "stream_length": length,
                "train_streams_per_family": n_train,
                "val_streams_per_family": cfg.val_streams,
                "val_windows": int(val_clean.shape[0]),
            },
            "steps": step,
            "best_step": best_step,
            "stop_reason": stop_reason,
            "seconds": round(seconds, 3),
            "train_samples_per_s": round(seen * cfg.window / max(loop_seconds, 1e-9), 1),
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "max_steps": cfg.steps,
        },
        metrics={
            "val_loss": best,
            "val_loss_identity": identity,
            "input_snr_db": EVAL_INPUT_SNR_DB,
            "snr_gain_db": float(np.nanmean(list(gains.values()))),
            "snr_gain_db_by_family": gains,
        },
        error_quantiles={k: float(np.quantile(errs, q)) for k, q in QUANTILES.items()},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sha256="",
    )
    return model.cpu(), meta
