"""Distillation: a noisy-target model (``Noisier2NoiseDAE``, its network run once per fixed draw, 8
times per window by default) into a one-pass network of the same architecture as its inner net, so
a retrained model costs what the serving architecture costs.

Teacher: the wrapper's averaged correction, mean_k 2·f(z_k) − z_k, on standardised training windows.
Student: the inner architecture and config, starting from the inner net's weights, fitted by MSE to
the teacher's outputs. The teacher runs once, on a fixed pool of windows; the student's batches are
drawn from that pool. Validation windows (the last ``val_windows`` of the pool's draw) are never
trained on: the metadata records the student's mean squared distance to the teacher on them, next
to the teacher's own distance to its input (how much the teacher changes a window).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.archs import build_model, model_config
from models.checkpoint import ModelMeta
from models.cost import measure_cost
from models.forward import standardize
from models.training.parts import ProgressBar, ThreadTuner
from models.training.sampler import WindowSampler, as_streams
from models.training.trainer import warm_start
from models.training.validation import CHUNK, error_quantiles


@dataclass(frozen=True)
class DistilConfig:
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3  # a fine-tuning rate: the student starts from the teacher's inner net
    pool: int = 8192  # training windows the teacher labels once (its cost: pool x draws passes)
    val_windows: int = 1024
    seed: int = 0
    cpu_threads: int | None = 1  # as TrainConfig.cpu_threads: one thread keeps the weights reproducible

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "pool", "val_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"DistilConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"DistilConfig.lr must be > 0, got {self.lr}")


@torch.inference_mode()
def _label(teacher: nn.Module, xn: torch.Tensor) -> torch.Tensor:
    return torch.cat([teacher(xn[i : i + CHUNK]) for i in range(0, xn.shape[0], CHUNK)])


def _student(teacher: nn.Module, seed: int) -> nn.Module:
    cfg = teacher.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_model(cfg.inner_arch, dict(cfg.inner))
    warm_start(student, teacher)  # the inner net: f(z) ≈ E[y|z] is close to what the student must learn
    return student


def distil(teacher: nn.Module, teacher_meta: ModelMeta, signals: Sequence[np.ndarray],
           cfg: DistilConfig = DistilConfig(), progress: bool = False) -> tuple[nn.Module, ModelMeta]:
    """A one-pass student of ``teacher`` (a ``noisier2noise`` model) trained on windows of ``signals``
    (the teacher's training recordings); returns ``(student in eval mode on the CPU, its meta)``."""
    if teacher_meta.arch != "noisier2noise":
        raise ValueError(f"distil: the teacher must be a noisier2noise model, got {teacher_meta.arch!r}")
    t0 = time.perf_counter()
    teacher = teacher.cpu().eval()
    window = teacher_meta.window
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xD157]))
    windows, _ = WindowSampler(as_streams(signals), window).sample(rng, cfg.pool + cfg.val_windows)
    xn, _, _ = standardize(windows)
    tuner = ThreadTuner(cfg.cpu_threads, torch.device("cpu"))
    try:
        target = _label(teacher, xn)
        student = _student(teacher, cfg.seed)
        mse_to_teacher = _fit(student, xn[: cfg.pool], target[: cfg.pool], cfg, rng, progress)
        student.eval()
        val_x, val_t = xn[cfg.pool :], target[cfg.pool :]
        with torch.inference_mode():
            val_mse = float(F.mse_loss(_label(student, val_x), val_t))
        teacher_change = float(F.mse_loss(val_t, val_x))
    finally:
        tuner.restore()
    distilled = {
        "teacher": {"arch": teacher_meta.arch, "config": teacher_meta.config, "version": teacher_meta.version,
                    "cost": teacher_meta.cost},
        "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "pool": cfg.pool, "seed": cfg.seed,
        "train_mse_to_teacher": mse_to_teacher,
        "val_mse_to_teacher": val_mse,  # standardised units, on windows the student never trained on
        "val_teacher_change": teacher_change,  # the teacher's own MSE to its input, for scale
        "seconds": round(time.perf_counter() - t0, 3),
    }
    meta = dataclasses.replace(
        teacher_meta,
        arch=teacher.config.inner_arch,
        config=model_config(student),
        training={**teacher_meta.training, "distilled": distilled},
        error_quantiles=error_quantiles(student, windows[cfg.pool :]),
        cost=measure_cost(student, window),
        sha256="",
        version=None,
    )
    return student, meta


def _fit(student: nn.Module, x: torch.Tensor, target: torch.Tensor, cfg: DistilConfig,
         rng: np.random.Generator, progress: bool) -> float:
    """Adam with cosine decay to 5 % over ``cfg.steps``; the mean batch loss of the last 10 % of steps."""
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    bar = ProgressBar(progress, cfg.steps)
    tail: list[float] = []
    student.train()
    t0 = time.perf_counter()
    try:
        for step in range(1, cfg.steps + 1):
            idx = torch.from_numpy(rng.integers(0, x.shape[0], size=cfg.batch_size))
            loss = F.mse_loss(student(x[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step > 0.9 * cfg.steps:
                tail.append(float(loss.detach()))
            if step % 25 == 0 or step == cfg.steps:
                rate = step * cfg.batch_size * x.shape[1] / max(time.perf_counter() - t0, 1e-9)
                bar.update(step, loss=float(loss.detach()), rate=rate)
    finally:
        bar.close(f"distilled in {cfg.steps:,} steps")
    return float(np.mean(tail))
