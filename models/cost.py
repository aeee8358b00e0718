"""A model's serving cost, part of its contract: FLOPs per window (counted by torch's flop counter
from the shapes, so the same on every machine) and microseconds per window measured through the one
forward path (:func:`models.forward.forward_rows`, standardisation included) at batch
:data:`COST_BATCH` on this machine. Training records it in the checkpoint (``ModelMeta.cost``);
``dae retrain`` compares a candidate with the serving model measured side by side.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.forward import forward_rows

COST_BATCH = 512  # windows per timed forward pass: the worker's default max_batch
# Each timed model runs at least this many passes and this long; the fastest pass counts (a pass
# another process interrupted is slower, never faster, so the minimum is the least load-dependent).
_MIN_PASSES = 3
_MIN_SECONDS = 0.3


def flops_per_window(model: nn.Module, window: int) -> int:
    """Floating-point operations of one window's forward pass in eval mode (matmuls and convolutions,
    self-ensembles and noisy-target draws included; each multiply-add counts 2)."""
    was_training = model.training
    model.eval()
    x = torch.randn(16, window, generator=torch.Generator().manual_seed(0))  # the caller's global RNG left alone
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // x.shape[0]


def _one_pass(model: nn.Module, x: torch.Tensor) -> float:
    t = time.perf_counter()
    forward_rows(model, x)
    return time.perf_counter() - t


def time_per_window(models: dict[str, nn.Module], window: int, seed: int = 0) -> dict[str, float]:
    """Microseconds per window of each model, the fastest of interleaved passes at batch
    :data:`COST_BATCH` (interleaved, so a change of load affects every model alike). Each model runs
    until it has had its own :data:`_MIN_PASSES` and :data:`_MIN_SECONDS`: a fast model's many short
    passes do not make a slow one repeat its long ones (a conv beside a seed MLP ran ~80 passes of
    0.1-0.25 s each for the MLP's 0.3 s before: 10.4 s per comparison, now 2.5 s)."""
    x = torch.randn(COST_BATCH, window, generator=torch.Generator().manual_seed(seed))
    for m in models.values():
        m.eval()
    best = {name: float("inf") for name in models}
    spent = {name: 0.0 for name in models}
    passes = {name: 0 for name in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up: first-call allocations and kernel selection
            forward_rows(m, x)
        while due := [n for n in models if passes[n] < _MIN_PASSES or spent[n] < _MIN_SECONDS]:
            for name in due:
                dt = _one_pass(models[name], x)
                best[name] = min(best[name], dt)
                spent[name] += dt
                passes[name] += 1
    return {name: 1e6 * t / COST_BATCH for name, t in best.items()}


def measure_cost(model: nn.Module, window: int) -> dict:
    """The checkpoint's ``cost`` record of ``model`` on this machine (CPU, torch's thread count)."""
    return {
        "flops_per_window": flops_per_window(model, window),
        "us_per_window": round(time_per_window({"m": model}, window)["m"], 3),
        "batch": COST_BATCH,
        "device": "cpu",
        "threads": torch.get_num_threads(),
    }


def compare_cost(candidate: nn.Module, current: nn.Module, window: int) -> dict:
    """Both models' FLOPs and µs per window, measured now side by side, and the candidate's ratios."""
    us = time_per_window({"candidate": candidate, "current": current}, window)
    fl = {"candidate": flops_per_window(candidate, window), "current": flops_per_window(current, window)}
    return {
        "candidate_flops_per_window": fl["candidate"],
        "current_flops_per_window": fl["current"],
        "candidate_us_per_window": round(us["candidate"], 3),
        "current_us_per_window": round(us["current"], 3),
        "flops_ratio": fl["candidate"] / max(fl["current"], 1),
        "time_ratio": us["candidate"] / max(us["current"], 1e-9),
        "threads": torch.get_num_threads(),
    }
