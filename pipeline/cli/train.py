"""`dae train`: train a DAE on the synthetic generator and publish it to the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import RegistryOpt, VerboseOpt, settings
from pipeline.cli.errors import CommandError

app = typer.Typer()


@app.command("train")
def train(
    sample_rate: float = typer.Option(..., help="Sample rate (Hz) the model will serve, e.g. 16000 for 16 kHz "
                                      "audio"),
    arch: str = typer.Option("conv", help="Network: mlp (the fast seed MLP) | mlp_overcomplete | conv (the "
                             "recommended recipe of docs/models.md)"),
    objective: str = typer.Option("clean", help="clean (synthetic clean targets) | noisier2noise"),
    window: int = typer.Option(256, help="Window length W in samples"),
    hop: Optional[int] = typer.Option(None, show_default="W/2", help="Hop H in samples"),
    steps: Optional[int] = typer.Option(None, show_default="the architecture's recipe", help="Training steps: "
                                        "the budget, so a busy machine takes longer rather than training less"),
    max_seconds: Optional[float] = typer.Option(None, show_default="no limit", help="Wall-clock limit in "
                                                "seconds; a run it cuts says so (and then depends on the "
                                                "machine's load)"),
    seed: int = typer.Option(0, help="Random seed (same seed and settings: same model)"),
    registry: Optional[Path] = RegistryOpt,
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Make the new version current"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar"),
    verbose: bool = VerboseOpt,
):
    """Train a DAE on the synthetic generator, publish it to the registry and make it current."""
    s = settings(None, registry)
    from models.registry import ModelRegistry
    from models.training import DEFAULT_ARCH, TrainConfig, best_config, train_synthetic

    kw = {"window": window, "hop": hop, "seed": seed, "objective": objective}
    if steps is not None:
        kw["steps"] = steps
    if max_seconds is not None:
        kw["max_seconds"] = max_seconds
    try:
        if arch == DEFAULT_ARCH:  # the recommended recipe (docs/models.md), not bare defaults
            cfg = best_config(sample_rate, **kw)
        else:
            cfg = TrainConfig(sample_rate=sample_rate, arch=arch, **kw)
    except ValueError as exc:  # TrainConfig names the bad value
        raise CommandError(f"{exc} (see dae train --help)") from exc
    model, meta = train_synthetic(cfg, progress=not quiet)
    version = ModelRegistry(s.model.registry).publish(model, meta, promote=promote)
    gain = meta.metrics.get("snr_gain_db")
    typer.echo(f"{version}: window {meta.window}, hop {meta.hop}, {sample_rate:g} Hz"
               + (f", validation SNR gain {gain:.2f} dB" if gain is not None else "")
               + (f", {meta.training['stop_detail']}" if meta.training.get("stop_detail") else "")
               + (" (current)" if promote else ""))
