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
            f"{meta.rates_label()}  "
            + (f"gain {gain:+.2f} dB  " if isinstance(gain, (int, float)) else "")
            + meta.created)


RouteOpt = typer.Option(None, "--route", show_default="default (the registry's current pointer)",
                        help="Model route (model.routes; docs/routing.md)")


def _route_note(s, route: str | None) -> str:
    """A warning when ``route`` is not configured in this environment's settings (workers with the
    same settings would not serve it)."""
    if route in (None, "default") or any(r.name == route for r in s.model.routes):
        return ""
    have = ", ".join(r.name for r in s.model.routes) or "none"
    return f" (note: route {route!r} is not in this environment's model.routes: {have})"


@app.command("list")
def list_(registry: Optional[Path] = RegistryOpt, verbose: bool = VerboseOpt):
    """Published versions, the default route's current one marked with '*', and the routes each
    version serves."""
    root = settings(None, registry).model.registry
    from models.registry import ModelRegistry

    reg = ModelRegistry(root)
    current = reg.current()
    versions = reg.versions()
    if not versions:
        typer.echo(f"no versions in {reg.root}: train one with {train_hint()}")
        return
    serving: dict[str, list[str]] = {}
    for route in reg.routes():
        v = reg.current(route)
        if v is not None:
            serving.setdefault(v, []).append(route)
    for v in versions:
        routes = f"  routes: {','.join(serving[v])}" if v in serving else ""
        typer.echo(f"{'*' if v == current else ' '} {v:<6} {_describe(reg, v)}{routes}")


@app.command("show")
def show(version: str = typer.Argument(..., help="Version, e.g. v3, or 'current' (of --route)"),
         route: Optional[str] = RouteOpt, registry: Optional[Path] = RegistryOpt, verbose: bool = VerboseOpt):
    """The version's metadata (model.json) as JSON, with the routes it is current for."""
    root = settings(None, registry).model.registry
    from models.registry import ModelRegistry

    reg = ModelRegistry(root)
    if version == "current":
        version = reg.current(route)
        if version is None:
            where = f" for route {route!r}" if route else ""
            raise CommandError(f"registry {reg.root} has no current version{where}: train one with {train_hint()}"
                               + (f" and `dae models promote V --route {route}`" if route else ""))
    d = reg.meta(version).to_dict()
    d["version"] = version
    d["current"] = version == reg.current()
    d["routes"] = [r for r in reg.routes() if reg.current(r) == version]
    typer.echo(json.dumps(d, indent=2, sort_keys=True))


@app.command("promote")
def promote(version: str = typer.Argument(..., help="Version to make current, e.g. v3"),
            route: Optional[str] = RouteOpt, registry: Optional[Path] = RegistryOpt, verbose: bool = VerboseOpt):
    """Make VERSION current for a route (atomic pointer swap; workers pick it up between batches,
    for that route's streams only)."""
    s = settings(None, registry)
    from models.registry import ModelRegistry

    ModelRegistry(s.model.registry).promote(version, route=route)
    typer.echo(f"current{f' ({route})' if route else ''}: {version}{_route_note(s, route)}")


@app.command("rollback")
def rollback(route: Optional[str] = RouteOpt, registry: Optional[Path] = RegistryOpt, verbose: bool = VerboseOpt):
    """Re-point a route's current to the previous version in its promotion history."""
    s = settings(None, registry)
    from models.registry import ModelRegistry

    v = ModelRegistry(s.model.registry).rollback(route=route)
    typer.echo(f"current{f' ({route})' if route else ''}: {v}{_route_note(s, route)}")
