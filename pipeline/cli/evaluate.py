"""`dae evaluate`: SNR gain of each model and each tuned classical filter, per family and noise level."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import RECORDINGS, VerboseOpt, input_path, settings
from pipeline.cli.errors import CommandError
from pipeline.cli.models import offline_denoiser

app = typer.Typer()


class EvalProgress:
    """A rich progress bar (with ETA) over the denoised test signals, on stderr; ``factory`` wraps
    the offline denoiser so that every signal a model cleans advances the bar."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=Console(stderr=True))
        self.task = self.bar.add_task("tuning the filters", total=total)

    def __enter__(self) -> "EvalProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def log(self, line: str) -> None:
        self.bar.console.print(line, highlight=False, markup=False)
        self.bar.update(self.task, description="denoising")

    def factory(self, model, meta):
        run = offline_denoiser(model, meta)

        def counted(x):
            y = run(x)
            self.bar.advance(self.task)
            return y

        return counted


def _file_rate(f: Path, header_rate: float | None, default: float) -> float:
    """A recording's rate: the WAV header's, else a sidecar ``<stem>.json``'s ``fs_hz`` or
    ``sample_rate`` (MIT-BIH's ``mitdb100.json`` has ``fs_hz``), else ``default`` (--sample-rate)."""
    import json

    if header_rate is not None:
        return float(header_rate)
    side = f.with_suffix(".json")
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            meta = None
        if isinstance(meta, dict):
            for key in ("fs_hz", "sample_rate"):
                if isinstance(meta.get(key), (int, float)) and meta[key] > 0:
                    return float(meta[key])
    return float(default)


def _data_files(data: list[Path], sample_rate: float = 1000.0) -> dict:
    """name -> (single-channel clean reference, its sample rate), from files or folders of recordings."""
    from pipeline.tools.fileio import SUPPORTED, read_signal

    files = {}
    for p in data:
        paths = sorted(f for f in p.rglob("*") if f.suffix.lower() in SUPPORTED) if p.is_dir() else [p]
        if not paths:
            raise CommandError(f"{p} holds no recording ({RECORDINGS})")
        for f in paths:
            x, header_rate = read_signal(f)
            rate = _file_rate(f, header_rate, sample_rate)
            for c in range(x.shape[1]):
                files[f.stem if x.shape[1] == 1 else f"{f.stem}:{c}"] = (x[:, c], rate)
    return files


def suite_dir(out: Path, sample_rate: float) -> Path:
    """Where the suite for ``sample_rate`` is cached: OUT/models at 1000 Hz (as before rates were
    kept apart), OUT/models-<rate>hz otherwise."""
    return out / "models" if float(sample_rate) == 1000.0 else out / f"models-{float(sample_rate):g}hz"


def _models(model: list[str] | None, out: Path, sample_rate: float, suite: str | None, retrain: bool,
            quick: bool) -> dict:
    """name -> (model, meta): the --model checkpoints, else the standard suite (trained when missing)."""
    from models.checkpoint import load_checkpoint
    from models.evaluation import SUITE, train_suite
    from models.evaluation.suite import DEFAULT_SUITE

    if model:
        specs = {}
        for spec in model:
            name, sep, path = spec.partition("=")
            if not sep:
                name, path = Path(spec).name, spec
            specs[name] = input_path(Path(path), "a checkpoint directory (NAME=DIR)", directory_ok=True)
        return {name: load_checkpoint(path) for name, path in specs.items()}
    names = DEFAULT_SUITE
    if suite:
        names = tuple(n.strip() for n in suite.split(",") if n.strip())
        bad = [n for n in names if n not in SUITE]
        if bad or not names:
            raise CommandError(f"--suite: unknown {bad or 'empty'}; valid: {', '.join(SUITE)}")
    try:
        return train_suite(suite_dir(out, sample_rate), sample_rate=sample_rate, names=names, retrain=retrain,
                           quick=quick, log=typer.echo)
    except ValueError as exc:  # a cached checkpoint trained for another rate
        raise CommandError(str(exc)) from exc


@app.command("evaluate")
def evaluate(
    out: Path = typer.Option(Path("runs/evaluate"), help="Directory for the trained suite, JSON and figure"),
    model: Optional[list[str]] = typer.Option(
        None, "--model", show_default="the standard suite, trained into OUT/models when missing",
        help="NAME=CHECKPOINT_DIR to evaluate (repeatable)"),
    data: Optional[list[Path]] = typer.Option(None, "--data", show_default="synthetic signals", help=f"Evaluate "
                                              f"on these files or folders ({RECORDINGS}, treated as clean "
                                              "references; repeatable)"),
    json_path: Optional[Path] = typer.Option(None, "--json", show_default="OUT/evaluate.json", help="Results JSON"),
    figure: Optional[Path] = typer.Option(None, show_default="OUT/evaluate.png", help="PNG figure"),
    sample_rate: float = typer.Option(1000.0, help="Sample rate of the synthetic signals and the suite, Hz"),
    signals: int = typer.Option(6, min=1, help="Test signals per family"),
    length: int = typer.Option(16384, help="Samples per test signal"),
    retrain: bool = typer.Option(False, "--retrain", help="Retrain the suite even if OUT/models has it"),
    quick: bool = typer.Option(False, "--quick", help="A few training steps only (smoke test, meaningless "
                               "numbers)"),
    throughput: bool = typer.Option(True, "--throughput/--no-throughput", help="Measure CPU samples/s at 512 "
                                    "windows per model (with --noise: µs per window, side by side)"),
    families: str = typer.Option("all", help="Synthetic families to score: all | seen | heldout (never used in "
                                 "training) | a comma-separated list; each family's test signals are the same "
                                 "whatever else is selected"),
    suite: Optional[str] = typer.Option(
        None, show_default="mlp,mlp_overcomplete,conv,conv_n2n,conv_n2n_distilled,conv_1pass",
        help="Comma-separated suite models to train or load: the default ones and conv_fieldmix (the conv "
             "recipe trained on field noise, `dae train --field-noise all`)"),
    noise: Optional[str] = typer.Option(
        None, "--noise", show_default="white noise at three levels",
        help="Per noise type at 10 dB input SNR, against the baseline that fits each (tuned on validation and "
             "per signal), with µs/window: all | a comma-separated list of white, hum, pink, brown, impulsive, "
             "dropouts. With --data, each recording is scored by models of its own rate (WAV header, a sidecar "
             "<stem>.json fs_hz, else --sample-rate), the suite cached per rate in OUT/models-<rate>hz"),
    verbose: bool = VerboseOpt,
):
    """SNR gain of each model and each tuned classical filter, per family and noise level."""
    settings()
    for p in data or []:
        input_path(p, f"a recording or a folder of them ({RECORDINGS})", directory_ok=True)
    from models.evaluation import EvalConfig, format_table, parse_families, plot, write_json
    from models.evaluation import evaluate as run

    try:
        fams = parse_families(families)
    except ValueError as exc:
        raise CommandError(f"--families: {exc}") from exc
    if noise is not None:
        _evaluate_noises(noise, out, model, data, json_path, sample_rate, signals, length, retrain, quick, throughput,
                         fams, suite)
        return
    files = {k: x for k, (x, _) in _data_files(data, sample_rate).items()} if data else None
    models = _models(model, out, sample_rate, suite, retrain, quick)
    cfg = EvalConfig(sample_rate=sample_rate, signals_per_family=signals, length=length, families=fams)
    n_signals = len(files) if files is not None else len(fams) * signals
    # Each model cleans every noisy test signal at every level, and the figure's example once more.
    with EvalProgress(len(models) * (len(cfg.levels) * n_signals + 1)) as progress:
        results, examples = run(models, cfg, data=files, denoiser_factory=progress.factory, log=progress.log,
                                measure_throughput=throughput)
    typer.echo(format_table(results))
    json_path = json_path or out / "evaluate.json"
    figure = figure or out / "evaluate.png"
    write_json(results, json_path)
    try:
        plot(results, examples, figure)
    except ImportError:  # matplotlib is the optional [plot] extra
        typer.echo(f"wrote {json_path}; no figure: plots need matplotlib (pip install 'dae-stream[plot]')")
        return
    typer.echo(f"wrote {json_path} and {figure}")


def _evaluate_noises(spec: str, out: Path, model: list[str] | None, data: list[Path] | None, json_path: Path | None,
                     sample_rate: float, signals: int, length: int, retrain: bool, quick: bool, cost: bool,
                     fams: tuple[str, ...], suite: str | None) -> None:
    """`dae evaluate --noise`: one row per (signal set, noise type, model); with --data, one pass per
    sample rate with that rate's models."""
    from models.evaluation import write_json
    from models.evaluation.suite import serves
    from models.evaluation.noise_eval import NoiseEvalConfig, applicable, evaluate_noises, format_noise_table, \
        parse_noises

    try:
        noises = parse_noises(spec)
    except ValueError as exc:
        raise CommandError(f"--noise: {exc}") from exc
    files = _data_files(data, sample_rate) if data else None
    rates = sorted({r for _, r in files.values()}) if files else [float(sample_rate)]
    given = _models(model, out, sample_rate, suite, retrain, quick) if model else None
    plan = []  # (rate, models, data of that rate or None)
    for rate in rates:
        if given is not None:
            models = {n: mm for n, mm in given.items() if serves(mm[1], rate)}
            if not models:
                raise CommandError(f"no --model serves {rate:g} Hz (the rate of "
                                   f"{', '.join(k for k, (_, r) in (files or {}).items() if r == rate) or 'the signals'})")
        else:
            models = _models(None, out, rate, suite, retrain, quick)
        group = {k: x for k, (x, r) in files.items() if r == rate} if files else None
        plan.append((rate, models, group))
    total = 0
    for rate, models, group in plan:
        n_sig = len(group) if group is not None else len(fams) * signals
        total += len(models) * n_sig * sum(applicable(n, rate) for n in noises)
    results = []
    with EvalProgress(max(total, 1)) as progress:
        for rate, models, group in plan:
            cfg = NoiseEvalConfig(sample_rate=rate, signals_per_family=signals, length=length, families=fams,
                                  noises=noises)
            progress.log(f"{rate:g} Hz: {', '.join(models)} on "
                         f"{', '.join(group) if group is not None else ', '.join(fams)}")
            results.append(evaluate_noises(models, cfg, data=group, denoiser_factory=progress.factory,
                                           log=progress.log, measure_cost=cost))
    typer.echo(format_noise_table(results))
    json_path = json_path or out / ("evaluate-noise-data.json" if files else "evaluate-noise.json")
    write_json({"noise_evaluation": results}, json_path)
    typer.echo(f"wrote {json_path}")
