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
    sample_rate: Optional[float] = typer.Option(None, show_default="required unless --rate-generic",
                                                help="Sample rate (Hz) the model will serve, e.g. 16000 for 16 "
                                                "kHz audio"),
    rate_generic: bool = typer.Option(False, "--rate-generic", help="Train one model across a range of sample "
                                      "rates (each training stream at its own rate, log-uniform over the "
                                      "range; default 50-20000 Hz) that serves any rate in it: a fallback for "
                                      "streams whose rate has no model of its own"),
    sample_rate_range: Optional[str] = typer.Option(None, "--sample-rate-range", metavar="LO:HI",
                                                    show_default="50:20000 with --rate-generic",
                                                    help="The range of a rate-generic model in Hz, e.g. 100:4000 "
                                                    "(implies --rate-generic)"),
    arch: str = typer.Option("conv", help="Network: mlp (the fast seed MLP) | mlp_overcomplete | conv (the "
                             "recommended recipe of docs/models.md)"),
    channels: Optional[str] = typer.Option(
        None, "--channels", metavar="C0,C1,...", show_default="16,16,32, the recipe's",
        help="conv only: feature channels per level (full resolution first; each further entry halves the "
        "resolution). More or fewer channels trade serving cost for gain: 16,32,64 (the recipe before "
        "2026-12-06, 2x the forward pass's cost) gained at most 0.1 dB more on the held-out families "
        "(mean of 3 seeds); 8,16,32 runs ~1.3x faster than the default and lost up to 0.6 dB, varying "
        "with the seed (docs/models.md, \"The narrower default conv\")"),
    objective: str = typer.Option("clean", help="clean (synthetic clean targets) | noisier2noise"),
    window: int = typer.Option(256, help="Window length W in samples"),
    hop: Optional[int] = typer.Option(None, show_default="W/2", help="Hop H in samples"),
    steps: Optional[int] = typer.Option(None, show_default="the architecture's recipe", help="Training steps: "
                                        "the budget, so a busy machine takes longer rather than training less"),
    max_seconds: Optional[float] = typer.Option(None, show_default="no limit", help="Wall-clock limit in "
                                                "seconds; a run it cuts says so (and then depends on the "
                                                "machine's load)"),
    seed: int = typer.Option(0, help="Random seed (same seed and settings: same model)"),
    field_noise: Optional[str] = typer.Option(
        None, "--field-noise", metavar="all|KIND[:WEIGHT],...", show_default="white Gaussian noise only",
        help="Train on field noise: each window corrupted by one of these noise types, drawn per window "
        "(all = white,hum,pink,brown,impulsive,dropouts; KIND:WEIGHT weighs a kind, others weigh 1, e.g. "
        "white:3,hum,impulsive), at the recipe's noise levels; the target stays the clean signal. hum "
        "needs a rate above 121 Hz and one rate (not --rate-generic)"),
    registry: Optional[Path] = RegistryOpt,
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Make the new version current"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar"),
    verbose: bool = VerboseOpt,
):
    """Train a DAE on the synthetic generator, publish it to the registry and make it current.

    One sample rate (--sample-rate), or every rate of a range (--rate-generic, --sample-rate-range):
    a rate-generic model serves any rate in its range."""
    s = settings(None, registry)
    rate_range = _rate_range(sample_rate, rate_generic, sample_rate_range)
    from models.registry import ModelRegistry
    from models.training import DEFAULT_ARCH, TrainConfig, best_config, rate_generic_config, train_synthetic

    kw = {"window": window, "hop": hop, "seed": seed, "objective": objective}
    if field_noise is not None:
        kw["field_noise"] = field_noise  # TrainConfig parses and validates it
    if steps is not None:
        kw["steps"] = steps
    if max_seconds is not None:
        kw["max_seconds"] = max_seconds
    if channels is not None:
        kw["arch_config"] = _conv_channels(arch, channels)
    try:
        if rate_range is not None:  # the recipe for the default architecture, as for one rate
            extra = {} if arch == DEFAULT_ARCH else {"arch": arch}
            cfg = rate_generic_config(rate_range, recipe=arch == DEFAULT_ARCH, **extra, **kw)
        elif arch == DEFAULT_ARCH:  # the recommended recipe (docs/models.md), not bare defaults
            cfg = best_config(sample_rate, **kw)
        else:
            cfg = TrainConfig(sample_rate=sample_rate, arch=arch, **kw)
    except ValueError as exc:  # TrainConfig names the bad value
        raise CommandError(f"{exc} (see dae train --help)") from exc
    model, meta = train_synthetic(cfg, progress=not quiet)
    version = ModelRegistry(s.model.registry).publish(model, meta, promote=promote)
    gain = meta.metrics.get("snr_gain_db")
    typer.echo(f"{version}: window {meta.window}, hop {meta.hop}, {meta.rates_label()}"
               + (f", validation SNR gain {gain:.2f} dB" if gain is not None else "")
               + (f", {meta.training['stop_detail']}" if meta.training.get("stop_detail") else "")
               + (f", field noise {','.join(meta.training['field_noise']['kinds'])}"
                  if meta.training.get("field_noise") else "")
               + (" (current)" if promote else ""))


def _conv_channels(arch: str, spec: str) -> dict:
    """The recipe's conv configuration with ``spec``'s channels (the values are ConvConfig's to check)."""
    from models.training.config import CONV_BEST, DEFAULT_ARCH

    if arch != DEFAULT_ARCH:
        raise CommandError(f"--channels sets the conv's widths; --arch {arch} has none (drop --channels, or "
                           f"train --arch {DEFAULT_ARCH})")
    try:
        widths = [int(c) for c in spec.split(",")]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise CommandError(f"--channels {spec!r}: give positive integers separated by commas, e.g. 8,16,32")
    return {**CONV_BEST, "channels": widths}


def _rate_range(sample_rate: float | None, rate_generic: bool, spec: str | None) -> tuple[float, float] | None:
    """The range of a rate-generic run (None: one rate), refusing contradictory or missing flags."""
    from models.training.config import DEFAULT_RATE_RANGE

    if spec is None and not rate_generic:
        if sample_rate is None:
            raise CommandError("dae train needs --sample-rate HZ (a model for one rate) or --rate-generic "
                               "(one model for a range of rates, --sample-rate-range LO:HI)")
        return None
    if sample_rate is not None:
        raise CommandError("--sample-rate and --rate-generic/--sample-rate-range exclude each other: a "
                           "rate-generic model serves its whole range (choose it with --sample-rate-range LO:HI)")
    if spec is None:
        return DEFAULT_RATE_RANGE
    parts = spec.split(":")
    try:
        lo, hi = (float(x) for x in parts)
    except ValueError:
        lo = hi = float("nan")
    if len(parts) != 2 or not (0 < lo < hi < float("inf")):
        raise CommandError(f"--sample-rate-range {spec!r}: give LO:HI in Hz with 0 < LO < HI, e.g. 50:20000")
    return lo, hi
