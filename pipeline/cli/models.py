"""`dae models list|show|promote|rollback` (the registry), and loading a model for the offline
commands (`dae denoise`, `dae evaluate`) through the worker's path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import RegistryOpt, VerboseOpt, settings
from pipeline.cli.errors import CommandError

app = typer.Typer(no_args_is_help=True, help="The model registry: immutable versions and the current pointer "
                  "that workers follow.")


def train_hint(rate: float | None = None) -> str:
    return f"`dae train --sample-rate {f'{rate:g}' if rate else 'HZ'}`"


def load_model(model: str | None, registry: Path, rate: float | None = None):
    """(model, meta, label) from a checkpoint directory, a registry version, or the current version;
    ``rate`` (the input's) only improves the hint when there is no model."""
    if model is not None and not Path(model).is_dir() and ("/" in model or Path(model).suffix):
        raise CommandError(f"{model} does not exist: give a registry version (e.g. v3) or a checkpoint directory")
    from models.checkpoint import load_checkpoint
    from models.registry import ModelRegistry

    if model is not None and Path(model).is_dir():
        m, meta = load_checkpoint(Path(model))
        return m, meta, str(model)
    reg = ModelRegistry(registry)
    if model is None and reg.current() is None:
        raise CommandError(f"registry {registry} has no current model: train one with {train_hint(rate)}, "
                           "or pass --registry / --model")
    m, meta = reg.load(model)
    return m, meta, meta.version or str(model)


def offline_denoiser(model, meta):
    """`dae evaluate`'s denoiser factory (models.evaluation.DenoiserFactory): a whole signal
    through exactly the worker's path (pipeline.stream.denoiser.denoise_signal: its windowing,
    overlap-add and inference engine on the CPU)."""
    from pipeline.inference.engine import InferenceEngine
    from pipeline.stream.denoiser import denoise_signal

    engine = InferenceEngine(model, meta, device="cpu")

    def run(x):
        return denoise_signal(engine, x)

    return run


def _describe(reg, version: str) -> str:
    try:
        meta = reg.meta(version)
    except Exception as exc:  # a broken version must not hide the others
        return f"unreadable: {exc}"
    gain = meta.metrics.get("snr_gain_db")
    return (f"{meta.arch:<16} window {meta.window:<5} hop {meta.hop:<5} "
            f"{','.join(f'{r:g}' for r in meta.sample_rates)} Hz  "
            + (f"gain {gain:+.2f} dB  " if isinstance(gain, (int, float)) else "")
            + meta.created)


@app.command("list")
def list_(registry: Optional[Path] = RegistryOpt, verbose: bool = VerboseOpt):
    """Published versions, the current one marked with '*'."""
    root = settings(None, registry).model.registry
    from models.registry import ModelRegistry

    reg = ModelRegistry(root)
    current = reg.current()
    versions = reg.versions()
    if not versions:
        typer.echo(f"no versions in {reg.root}: train one with {train_hint()}")
        return
    for v in versions:
        typer.echo(f"{'*' if v == current else ' '} {v:<6} {_describe(reg, v)}")


@app.command("show")
def show(version: str = typer.Argument(..., help="Version, e.g. v3, or 'current'"),
         registry: Optional[Path] = RegistryOpt, verbose: bool = VerboseOpt):
    """The version's metadata (model.json) as JSON."""
    root = settings(None, registry).model.registry
    from models.registry import ModelRegistry

    reg = ModelRegistry(root)
    if version == "current":
        version = reg.current()
        if version is None:
            raise CommandError(f"registry {reg.root} has no current version: train one with {train_hint()}")
    d = reg.meta(version).to_dict()
    d["version"] = version
    d["current"] = version == reg.current()
    typer.echo(json.dumps(d, indent=2, sort_keys=True))


@app.command("promote")
def promote(version: str = typer.Argument(..., help="Version to make current, e.g. v3"),
            registry: Optional[Path] = RegistryOpt, verbose: bool = VerboseOpt):
    """Make VERSION current (atomic pointer swap; workers pick it up between batches)."""
    root = settings(None, registry).model.registry
    from models.registry import ModelRegistry

    ModelRegistry(root).promote(version)
    typer.echo(f"current: {version}")


@app.command("rollback")
def rollback(registry: Optional[Path] = RegistryOpt, verbose: bool = VerboseOpt):
    """Re-point current to the previous version in the promotion history."""
    root = settings(None, registry).model.registry
    from models.registry import ModelRegistry

    v = ModelRegistry(root).rollback()
    typer.echo(f"current: {v}")
