"""Training denoising autoencoders: from the synthetic generator (``pipeline.signals``) or from arrays/files.

Clean-target objective (``objective="clean"``, the DAE of the seed): corrupt a clean window x into
x̃ ~ q(x̃|x), standardise x̃ with its own mean/std (exactly what inference does with the windows it
receives), apply the *same* mean/std to x, and minimise ``MSE(model(x̃n), xn)`` — the target is always
the clean window (``training_loss``).

Noisy-target objective (``objective="noisier2noise"``, for recordings without a clean version): the
data y is already noisy. Standardise y, corrupt it again, z = yn + σ·n, standardise z and fit the
noisy yn in z's units (``noisier2noise_loss``). The trained net is wrapped in
``models.dae.Noisier2NoiseDAE``, whose forward returns the mean over fixed draws of 2·f(z) − z.

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
from models.dae import ARCHITECTURES, NORMALISATION, build_model, make_config, model_config, standardize
from models.noise import Corruption, GaussianNoise
from pipeline.signals import FAMILIES, generate

EVAL_INPUT_SNR_DB = 10.0
QUANTILES = {"q50": 0.5, "q90": 0.9, "q99": 0.99, "q999": 0.999}
# The architecture `dae train` uses when none is named: the best on quality in docs/models.md
# (TrainConfig keeps "mlp" as its default so that existing callers keep their fast seed model).
DEFAULT_ARCH = "conv"
OBJECTIVES = ("clean", "noisier2noise")
# Samples of training signal per family: enough distinct streams that the model cannot memorise
# their frequencies, small enough to generate in ~1 s on 2 cores.
_SAMPLES_PER_FAMILY = 2_000_000
_EVAL_EVERY = 100  # steps between validation passes (one pass costs ~ a few training steps)
_PATIENCE = 8  # validation passes without a 0.5 % improvement before stopping early
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

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sample_rate) and self.sample_rate > 0):
            raise ValueError(f"TrainConfig.sample_rate must be > 0 Hz, got {self.sample_rate!r}")
        if self.window < 8:
            raise ValueError(f"TrainConfig.window must be >= 8, got {self.window}")
        if self.hop is None:
            self.hop = self.window // 2
        if not (1 <= self.hop <= self.window):
            raise ValueError(f"TrainConfig.hop must be in [1, window={self.window}], got {self.hop}")
        for name in ("steps", "batch_size", "val_streams", "n2n_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise ValueError(f"TrainConfig.families: unknown {bad or 'empty'}; valid: {', '.join(FAMILIES)}")
        if not self.max_seconds > 0:
            raise ValueError(f"TrainConfig.max_seconds must be > 0, got {self.max_seconds}")
        GaussianNoise(self.sigma, self.sigma_log_uniform)  # validates the range, naming what is wrong
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
    model: nn.Module, clean: torch.Tensor, corruption: Corruption, generator: torch.Generator | None
) -> torch.Tensor:
    """DAE loss for one batch: MSE between model(standardised x̃) and the clean x in x̃'s units."""
    noisy = corruption(clean, generator)
    xn, mean, scale = standardize(noisy)
    target = (clean - mean) / scale
    return F.mse_loss(model(xn), target)


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

    def __call__(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        u = rng.integers(0, int(self.cum[-1]), size=n)
        s = np.searchsorted(self.cum, u, side="right")
        starts = self.offsets[s] + u - (self.cum[s] - self.positions[s])
        return torch.from_numpy(self.flat[starts[:, None] + np.arange(self.window)[None, :]])

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
    from pipeline.fileio import SUPPORTED, read_signal

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
    input_snr_db: float = EVAL_INPUT_SNR_DB,
) -> dict[str, float]:
    """Mean per-window SNR gain (dB) at ``input_snr_db``; windows with (near-)silent clean signal skipped."""
    sigma = 10.0 ** (-input_snr_db / 20.0)
    noisy = GaussianNoise(sigma)(clean, generator)
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
                cfg.families, s_batches, data, progress, t0)


def train_arrays(
    cfg: TrainConfig, signals: Sequence[np.ndarray], progress: bool = True, source: str = "arrays"
) -> tuple[nn.Module, ModelMeta]:
    """Train on recorded signals ((n,) or (n, C) float arrays; channels become separate streams).

    ``objective="clean"`` treats the signals as clean and corrupts them with ``cfg.sigma``;
    ``objective="noisier2noise"`` treats them as noisy and needs no clean version.
    """
    t0 = time.perf_counter()
    root = np.random.SeedSequence(cfg.seed)
    _, s_val, s_batches = root.spawn(3)
    streams = as_streams(signals)
    train, val, how = split_streams(streams, cfg.val_fraction, cfg.window, cfg.seed)
    train_s, val_s = WindowSampler(train, cfg.window), WindowSampler(val, cfg.window)
    per_stream = max(_VAL_WINDOWS_PER_STREAM, -(-1024 // val_s.n_streams))
    val_windows, _ = val_s.fixed(np.random.default_rng(s_val), per_stream)
    data = {
        "source": source,
        "split": how,
        "train_streams": train_s.n_streams,
        "val_streams": val_s.n_streams,
        "train_samples": train_s.samples,
        "val_samples": val_s.samples,
        "val_windows": int(val_windows.shape[0]),
    }
    fam = np.zeros(val_windows.shape[0], dtype=int)
    return _fit(cfg, train_s, val_windows, fam, (source,), s_batches, data, progress, t0)


def train_files(cfg: TrainConfig, paths: Sequence[Path], progress: bool = True) -> tuple[nn.Module, ModelMeta]:
    """``train_arrays`` on .npy/.wav/.csv files or folders of them."""
    signals, rate = read_training_files(paths, cfg.sample_rate)
    if rate is not None and abs(rate - cfg.sample_rate) > 1e-9 * rate:
        raise ValueError(f"training files are at {rate:g} Hz but TrainConfig.sample_rate is {cfg.sample_rate:g}")
    model, meta = train_arrays(cfg, signals, progress, source="files")
    meta.training["data"]["files"] = [str(p) for p in paths]
    return model, meta


def _fit(cfg: TrainConfig, sampler: WindowSampler, val_windows: torch.Tensor, val_fam: np.ndarray,
         families, s_batches, data: dict, progress: bool, t0: float) -> tuple[nn.Module, ModelMeta]:
    dev = _device(cfg.device)
    autocast = dev.type == "cuda"
    batch_rng = np.random.default_rng(s_batches)
    noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    n2n = cfg.objective == "noisier2noise"
    corruption = GaussianNoise(cfg.sigma, cfg.sigma_log_uniform)

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
    wrapper.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    # Cosine decay to 5 % of lr over cfg.steps: late steps refine instead of bouncing.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )

    # Fixed validation inputs (same noise every pass) so passes are comparable.
    if n2n:
        val_xn, val_target = noisier2noise_inputs(val_windows, cfg.n2n_sigma, eval_gen)
    else:
        val_noisy = corruption(val_windows, eval_gen)
        val_xn, mean, scale = standardize(val_noisy)
        val_target = (val_windows - mean) / scale
    val_xn, val_target = val_xn.to(dev), val_target.to(dev)

    def val_loss() -> float:
        net.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            v = sum(
                float(F.mse_loss(net(val_xn[i : i + 4096]).float(), val_target[i : i + 4096], reduction="sum"))
                for i in range(0, val_xn.shape[0], 4096)
            ) / val_target.numel()
        net.train()
        return v

    best, best_state, best_step, stale = math.inf, None, 0, 0
    stop_reason, step, seen = "steps", 0, 0
    bar = _Progress(progress, cfg.steps)
    t_loop, running = time.perf_counter(), None
    try:
        net.train()
        for step in range(1, cfg.steps + 1):
            batch = sampler(batch_rng, cfg.batch_size).to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                if n2n:
                    loss = noisier2noise_loss(net, batch, cfg.n2n_sigma, noise_gen)
                else:
                    loss = training_loss(net, batch, corruption, noise_gen)
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
                    best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
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
        net.load_state_dict(best_state)
    model = wrapper.cpu().eval()

    val_xn, val_target = val_xn.cpu(), val_target.cpu()
    identity = float(F.mse_loss(val_xn, val_target))
    metrics = {"val_loss": best, "val_loss_identity": identity, "objective": cfg.objective}
    if not n2n:  # the clean truth is known: report the SNR gain at 10 dB input SNR
        gains = snr_gain_by_family(model, val_windows, val_fam, families, eval_gen)
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
            "device": dev.type,
        },
        metrics=metrics,
        error_quantiles={k: float(np.quantile(errs, q)) for k, q in QUANTILES.items()},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sha256="",
    )
    return model, meta
