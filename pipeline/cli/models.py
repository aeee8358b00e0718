"""Model commands for the ``dae`` app: ``evaluate``, ``denoise`` and the ``models`` registry group.

``pipeline.cli.app`` calls :func:`register` on its Typer app. Imports of torch and the model code stay
inside the commands so that ``dae --help`` is fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

RegistryOpt = typer.Option(None, "--registry", help="Model registry directory [DAE_MODEL__REGISTRY]")


def _registry_path(registry: Path | None) -> Path:
    if registry is not None:
        return registry
    from pipeline.settings import Settings

    return Settings().model.registry


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(msg, err=True)
    raise typer.Exit(code)


def load_model(model: str | None, registry: Path | None):
    """(model, meta, label) from a checkpoint directory, a registry version, or the current version."""
    from models.checkpoint import CheckpointError, load_checkpoint
    from models.registry import ModelRegistry, RegistryError

    try:
        if model is not None and Path(model).is_dir():
            m, meta = load_checkpoint(Path(model))
            return m, meta, str(model)
        reg = ModelRegistry(_registry_path(registry))
        m, meta = reg.load(model)
        return m, meta, meta.version or str(model)
    except (CheckpointError, RegistryError, ValueError) as exc:
        _fail(f"cannot load model: {exc}")


def offline_denoiser(model, meta):
    """``dae evaluate``'s denoiser factory (``models.evaluation.DenoiserFactory``): a whole signal
    through exactly the worker's path (``pipeline.stream.denoiser.denoise_signal``: its windowing,
    overlap-add and inference engine on the CPU)."""
    from pipeline.inference.engine import InferenceEngine
    from pipeline.stream.denoiser import denoise_signal

    engine = InferenceEngine(model, meta, device="cpu")

    def run(x):
        return denoise_signal(engine, x)

    return run


def register(app: typer.Typer) -> None:
    """Add ``evaluate``, ``denoise`` and the ``models`` group to ``app``."""
    models_app = _models_group(app)

    @app.command()
    def evaluate(
        out: Path = typer.Option(Path("runs/evaluate"), help="Directory for the trained suite, JSON and figure"),
        model: Optional[list[str]] = typer.Option(
            None, "--model", help="NAME=CHECKPOINT_DIR to evaluate (repeatable); default: the standard suite "
            "(mlp, mlp_overcomplete, conv, conv_n2n), trained into OUT/models when missing"),
        data: Optional[list[Path]] = typer.Option(None, "--data", help="Evaluate on these files/folders "
                                                  "(.npy/.wav/.csv, treated as clean references) instead of synthetic signals"),
        json_path: Optional[Path] = typer.Option(None, "--json", help="Results JSON (default OUT/evaluate.json)"),
        figure: Optional[Path] = typer.Option(None, help="PNG figure (default OUT/evaluate.png)"),
        sample_rate: float = typer.Option(1000.0, help="Sample rate of the synthetic signals and the suite"),
        signals: int = typer.Option(6, help="Test signals per family"),
        length: int = typer.Option(16384, help="Samples per test signal"),
        retrain: bool = typer.Option(False, help="Retrain the suite even if OUT/models has it"),
        quick: bool = typer.Option(False, help="A few training steps only (smoke test, meaningless numbers)"),
        throughput: bool = typer.Option(True, help="Measure CPU samples/s at 512 windows per model"),
        families: str = typer.Option("all", help="Synthetic families to score: all | seen | heldout (never "
                                     "used in training) | a comma-separated list; each family's test signals "
                                     "are the same whatever else is selected"),
        suite: Optional[str] = typer.Option(None, help="Comma-separated subset of the standard suite to "
                                            "train/load (default: all of mlp, mlp_overcomplete, conv, conv_n2n)"),
    ):
        """SNR gain of each model and each tuned classical filter, per family and noise level."""
        from models.checkpoint import CheckpointError, load_checkpoint
        from models.evaluation import SUITE, EvalConfig, evaluate as run, format_table, parse_families, plot, train_suite, write_json

        try:
            fams = parse_families(families)
        except ValueError as exc:
            _fail(f"--families: {exc}")
        names = SUITE
        if suite:
            names = tuple(n.strip() for n in suite.split(",") if n.strip())
            bad = [n for n in names if n not in SUITE]
            if bad or not names:
                _fail(f"--suite: unknown {bad or 'empty'}; valid: {', '.join(SUITE)}")

        if model:
            models = {}
            for spec in model:
                name, sep, path = spec.partition("=")
                if not sep:
                    name, path = Path(spec).name, spec
                try:
                    models[name] = load_checkpoint(Path(path))
                except CheckpointError as exc:
                    _fail(f"--model {spec}: {exc}")
        else:
            models = train_suite(out / "models", sample_rate=sample_rate, names=names, retrain=retrain, quick=quick,
                                 log=typer.echo)
        files = None
        if data:
            from pipeline.tools.fileio import SUPPORTED, read_training_files

            files = {}
            for p in data:
                paths = sorted(f for f in p.rglob("*") if f.suffix.lower() in SUPPORTED) if p.is_dir() else [p]
                for f in paths:
                    sigs, _ = read_training_files([f])
                    x = sigs[0]
                    for c in range(x.shape[1]):
                        files[f.stem if x.shape[1] == 1 else f"{f.stem}:{c}"] = x[:, c]
        cfg = EvalConfig(sample_rate=sample_rate, signals_per_family=signals, length=length, families=fams)
        results, examples = run(models, cfg, data=files, denoiser_factory=offline_denoiser, log=typer.echo,
                                measure_throughput=throughput)
        typer.echo(format_table(results))
        json_path = json_path or out / "evaluate.json"
        figure = figure or out / "evaluate.png"
        write_json(results, json_path)
        plot(results, examples, figure)
        typer.echo(f"wrote {json_path} and {figure}")

    @app.command()
    def denoise(
        input: Path = typer.Argument(..., help="Recorded signal (.npy, .wav, .csv)"),
        output: Path = typer.Argument(..., help="Cleaned signal (.npy, .wav, .csv)"),
        model: Optional[str] = typer.Option(None, "--model", help="Registry version or checkpoint directory "
                                            "(default: the registry's current version)"),
        registry: Optional[Path] = RegistryOpt,
        sample_rate: Optional[float] = typer.Option(None, help="The input's rate when the file does not say (WAV does)"),
        column: Optional[str] = typer.Option(None, help="CSV column to clean (default: every numeric column)"),
    ):
        """Clean a recording through exactly the worker's path: its windowing, overlap-add and engine."""
        import numpy as np

        from pipeline.inference.engine import InferenceEngine
        from pipeline.stream.denoiser import denoise_signal
        from pipeline.tools.fileio import read_signal, write_signal

        try:
            x, rate = read_signal(input, sample_rate=sample_rate, column=column)
        except (ValueError, OSError) as exc:
            _fail(f"cannot read {input}: {exc}")
        m, meta, label = load_model(model, registry)
        engine = InferenceEngine(m, meta, device="cpu", version=label)
        if rate is not None and not engine.serves_rate(rate):
            typer.echo(f"warning: {input} is at {rate:g} Hz but model {label} was trained for "
                       f"{', '.join(f'{r:g}' for r in meta.sample_rates)} Hz", err=True)
        y = denoise_signal(engine, x)
        try:
            write_signal(output, y, sample_rate=rate)
        except ValueError as exc:
            _fail(f"cannot write {output}: {exc}")
        typer.echo(f"{output}: {y.shape[0]} frames x {y.shape[1]} channel(s) cleaned with {label} "
                   f"(window {meta.window}, hop {meta.hop}); rms change {float(np.sqrt(np.mean((y - x) ** 2))):.4g}")

    _ = models_app


def _models_group(app: typer.Typer) -> typer.Typer:
    """The app's existing ``models`` group if it has one, else a new one added to it."""
    for info in getattr(app, "registered_groups", []):
        if info.name == "models" and info.typer_instance is not None:
            group = info.typer_instance
            break
    else:
        group = typer.Typer(no_args_is_help=True, help="The model registry: versions and the current pointer.")
        app.add_typer(group, name="models")

    @group.command("list")
    def list_(registry: Optional[Path] = RegistryOpt):
        """Published versions, the current one marked with '*'."""
        from models.registry import ModelRegistry

        reg = ModelRegistry(_registry_path(registry))
        current = reg.current()
        versions = reg.versions()
        if not versions:
            typer.echo(f"no versions in {reg.root}")
            return
        for v in versions:
            try:
                meta = reg.meta(v)
                gain = meta.metrics.get("snr_gain_db")
                desc = (f"{meta.arch:<16} window {meta.window:<5} hop {meta.hop:<5} "
                        f"{','.join(f'{r:g}' for r in meta.sample_rates)} Hz  "
                        + (f"gain {gain:+.2f} dB  " if isinstance(gain, (int, float)) else "")
                        + meta.created)
            except Exception as exc:  # a broken version must not hide the others
                desc = f"unreadable: {exc}"
            typer.echo(f"{'*' if v == current else ' '} {v:<6} {desc}")

    @group.command("show")
    def show(version: str = typer.Argument(..., help="Version, e.g. v3, or 'current'"),
             registry: Optional[Path] = RegistryOpt):
        """The version's metadata (model.json) as JSON."""
        from models.registry import ModelRegistry, RegistryError
        from models.checkpoint import CheckpointError

        reg = ModelRegistry(_registry_path(registry))
        try:
            if version == "current":
                version = reg.current() or _fail(f"registry {reg.root} has no current version")
            meta = reg.meta(version)
        except (RegistryError, CheckpointError) as exc:
            _fail(str(exc))
        d = meta.to_dict()
        d["version"] = version
        d["current"] = version == reg.current()
        typer.echo(json.dumps(d, indent=2, sort_keys=True))

    @group.command("promote")
    def promote(version: str, registry: Optional[Path] = RegistryOpt):
        """Make VERSION current (atomic pointer swap; workers pick it up between batches)."""
        from models.registry import ModelRegistry, RegistryError

        reg = ModelRegistry(_registry_path(registry))
        try:
            reg.promote(version)
        except RegistryError as exc:
            _fail(str(exc))
        typer.echo(f"current: {version}")

    @group.command("rollback")
    def rollback(registry: Optional[Path] = RegistryOpt):
        """Re-point current to the previous version in the promotion history."""
        from models.registry import ModelRegistry, RegistryError

        reg = ModelRegistry(_registry_path(registry))
        try:
            v = reg.rollback()
        except RegistryError as exc:
            _fail(str(exc))
        typer.echo(f"current: {v}")

    return group
