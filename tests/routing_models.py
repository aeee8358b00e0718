"""Small untrained models for the routing tests: what matters there is which model served a
stream (the output header) and that no sample is lost, not how well it denoises."""

from __future__ import annotations

import torch

from models.archs import NORMALISATION, build_model
from models.checkpoint import ModelMeta


def tiny_model(window: int, rates: list[float], seed: int = 0, hidden: int = 16,
               rate_range: tuple[float, float] | None = None):
    """``rate_range``: a rate-generic model (its range's ends are its listed rates)."""
    torch.manual_seed(seed)
    model = build_model("mlp", {"window": window, "hidden": hidden})
    meta = ModelMeta(
        arch="mlp", config={"window": window, "hidden": hidden}, window=window, hop=window // 2,
        sample_rates=[float(r) for r in (rate_range or rates)], normalisation=NORMALISATION,
        rate_range=list(rate_range) if rate_range else None,
        corruption={"type": "gaussian", "sigma": [0.05, 0.5]},
        training={"data": {"source": "synthetic"}, "steps": 0, "seconds": 0.0, "seed": seed},
        metrics={}, error_quantiles={"q50": 0.5, "q90": 1.0, "q99": 2.0, "q999": 4.0},
        created="2026-12-02T00:00:00+00:00", sha256="",
    )
    return model, meta
