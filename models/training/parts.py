"""Small collaborators of :class:`models.training.trainer.Trainer`: the learning-rate schedule, a
weight EMA, the CPU thread tuner, the progress bar and the device choice."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn

from models.training.config import TrainConfig


class LRSchedule:
    """The learning-rate factor of step ``s``: cosine decay to 5 % of lr over ``cfg.steps`` (late steps
    refine instead of bouncing). With ``cfg.anneal_by_time`` the decay follows whichever is further
    along, the steps or the loop's wall-clock limit (set by :meth:`start` when there is one)."""

    def __init__(self, cfg: TrainConfig):
        self.steps = cfg.steps
        self.by_time = cfg.anneal_by_time
        self.t_start, self.t_budget = 0.0, math.inf

    def start(self, t_start: float, budget_s: float) -> None:
        self.t_start, self.t_budget = t_start, budget_s

    def __call__(self, s: int) -> float:
        frac = min(s, self.steps) / self.steps
        if self.by_time and s > 0:
            frac = max(frac, min(1.0, (time.perf_counter() - self.t_start) / self.t_budget))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))


class ProgressBar:
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

    def close(self, detail: str | None = None) -> None:
        """Stop the bar; ``detail`` (how the run ended) is its last line."""
        if self.bar is not None:
            self.bar.stop()
            if detail:
                self.bar.console.print(f"train: {detail}")


class WeightEMA:
    """A frozen copy of ``net`` whose parameters track an exponential moving average of ``net``'s:
    after step s, ema ← d·ema + (1−d)·w with d = min(decay, (1+s)/(10+s)) (short memory early on)."""

    def __init__(self, net: nn.Module, decay: float):
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


class ThreadTuner:
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("TrainConfig.device=cuda but no CUDA device is available")
    return torch.device(name)
