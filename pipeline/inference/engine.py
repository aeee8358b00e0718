"""Inference engine: model placement, one batched forward pass, reconstruction error.

Windows arrive as (N, C, W) float32 from any mix of streams. Each channel is denoised on its own
(the model sees (N*C, W) rows), each row standardised by its own mean and std (the checkpoint's
``window_standardize`` normalisation), so a signal at any scale or offset is treated alike, and
the output is mapped back to the input's scale. On CUDA the batch goes through a pinned host
buffer with non-blocking copies; bf16 autocast is an option there. Everything runs under
``torch.inference_mode``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import ModelMeta, load_checkpoint
from models.forward import forward_rows, pad_rows
from models.registry import ModelRegistry

log = logging.getLogger(__name__)

def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass(frozen=True)
class Inference:
    outputs: np.ndarray  # (N, C, W) float32, input scale
    errors: np.ndarray  # (N,) float32: mean squared error in standardised units, over channels
    scales: np.ndarray  # (N,) float32: the window's standard deviation (input units), mean over channels


class InferenceEngine:
    def __init__(
        self,
        model: torch.nn.Module,
        meta: ModelMeta,
        *,
        device: str = "auto",
        dtype: str = "float32",
        version: str | None = None,
        route: str = "default",
    ):
        self.meta = meta
        self.version = version or meta.version or "unversioned"
        self.route = route  # the registry route it serves (pipeline.inference.routing)
        self.window = int(meta.window)
        self.hop = int(meta.hop)
        self.device = pick_device(device)
        self.autocast = dtype == "bfloat16" and self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        self._pinned_in: torch.Tensor | None = None
        self._pinned_out: torch.Tensor | None = None
        self.warmed_rows = 0  # the largest batch warm() ran (0: not warmed up)
        self._rates_seen: dict[float, bool] = {}

    # ------------------------------------------------------------------------- loading
    @classmethod
    def from_source(
        cls, registry: Path, version: str | None = None, *, device: str = "auto", dtype: str = "float32",
        route: str = "default",
    ) -> "InferenceEngine":
        """Load ``version`` (a registry version, or a checkpoint directory) or the route's current one."""
        if version is not None and Path(version).is_dir():
            model, meta = load_checkpoint(Path(version))
            return cls(model, meta, device=device, dtype=dtype, version=meta.version or Path(version).name, route=route)
        reg = ModelRegistry(registry)
        if version is None:
            version = reg.current(route)
            if version is None:
                hint = "" if route == "default" else f" for route {route!r} (`dae models promote V --route {route}`)"
                raise FileNotFoundError(
                    f"no current model in registry {registry}{hint}: train one with `dae train --sample-rate R`"
                )
        model, meta = reg.load(version)
        return cls(model, meta, device=device, dtype=dtype, version=version, route=route)

    def serves_rate(self, rate: float) -> bool:
        """A listed rate (within 1e-6 relative), or any rate in a rate-generic model's range. Asked
        for every message: the answers are kept per rate (a few rates per deployment; at most 256)."""
        ok = self._rates_seen.get(rate)
        if ok is None:
            if len(self._rates_seen) >= 256:
                self._rates_seen.clear()
            ok = self._rates_seen[rate] = self.meta.serves_rate(rate)
        return ok

    def rates_text(self) -> str:
        return self.meta.rates_label()

    # --------------------------------------------------------------------------- forward
    def _to_device(self, rows: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(rows)
        if self.device.type != "cuda":
            return host
        n = host.shape[0]
        if self._pinned_in is None or self._pinned_in.shape[0] < n:
            self._pinned_in = torch.empty((max(n, 64), self.window), dtype=torch.float32, pin_memory=True)
            # Outputs come back with two extra columns: reconstruction error and window scale.
            self._pinned_out = torch.empty((self._pinned_in.shape[0], self.window + 2), pin_memory=True)
        staged = self._pinned_in[:n]
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)

    def _to_host(self, y: torch.Tensor) -> np.ndarray:
        if self.device.type != "cuda":
            return y.numpy()
        out = self._pinned_out[: y.shape[0]]
        out.copy_(y, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return out.numpy().copy()

    def warm(self, rows: int) -> float:
        """One forward pass at one row and one at ``rows`` rows (the batcher's largest batch) on a fixed
        pseudo-random input, so the first micro-batch does not pay for the runtime's lazy set-up (kernel
        selection, buffers, code paged in: ~0.15 s and ~10 MiB for the seed MLP on the CPU); seconds."""
        t0 = time.perf_counter()
        x = np.random.default_rng(0).standard_normal((max(int(rows), 1), 1, self.window)).astype(np.float32)
        self.infer(x[:1])
        self.infer(x)
        self.warmed_rows = max(self.warmed_rows, x.shape[0])
        return time.perf_counter() - t0

    def infer(self, windows: np.ndarray) -> Inference:
        if windows.ndim != 3 or windows.shape[2] != self.window:
            raise ValueError(f"expected (N, C, {self.window}) windows, got {windows.shape}")
        n, c, w = windows.shape
        # Padded (models.forward.MIN_ROWS) so a window's output does not depend on its batch-mates.
        rows = pad_rows(np.ascontiguousarray(windows, dtype=np.float32).reshape(n * c, w))
        with torch.inference_mode():
            res = forward_rows(self.model, self._to_device(rows), autocast_bf16=self.autocast)
            both = torch.cat((res.denoised, res.error[:, None], res.scale[:, None].to(res.denoised.dtype)), dim=1)
            host = self._to_host(both)
        host = host[: n * c]
        out = host[:, :w].reshape(n, c, w)
        errors = host[:, w].reshape(n, c).mean(axis=1)
        scales = host[:, w + 1].reshape(n, c).mean(axis=1)
        return Inference(out, errors.astype(np.float32), scales.astype(np.float32))
