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


def _data_files(data: list[Path]) -> dict:
    """name -> single-channel clean reference, from files or folders of recordings."""
    from pipeline.tools.fileio import SUPPORTED, read_training_files

    files = {}
    for p in data:
        paths = sorted(f for f in p.rglob("*") if f.suffix.lower() in SUPPORTED) if p.is_dir() else [p]
        if not paths:
            raise CommandError(f"{p} holds no recording ({RECORDINGS})")
        for f in paths:
            sigs, _ = read_training_files([f])
            x = sigs[0]
            for c in range(x.shape[1]):
                files[f.stem if x.shape[1] == 1 else f"{f.stem}:{c}"] = x[:, c]
    return files


def _models(model: list[str] | None, out: Path, sample_rate: float, suite: str | None, retrain: bool,
            quick: bool) -> dict:
    """name -> (model, meta): the --model checkpoints, else the standard suite (trained when missing)."""
    from models.checkpoint import load_checkpoint
    from models.evaluation import SUITE, train_suite

    if model:
        specs = {}
        for spec in model:
            name, sep, path = spec.partition("=")
            if not sep:
                name, path = Path(spec).name, spec
            specs[name] = input_path(Path(path), "a checkpoint directory (NAME=DIR)", directory_ok=True)
        return {name: load_checkpoint(path) for name, path in specs.items()}
    names = SUITE
    if suite:
        names = tuple(n.strip() for n in suite.split(",") if n.strip())
        bad = [n for n in names if n not in SUITE]
        if bad or not names:
            raise CommandError(f"--suite: unknown {bad or 'empty'}; valid: {', '.join(SUITE)}")
    return train_suite(out / "models", sample_rate=sample_rate, names=names, retrain=retrain, quick=quick,
                       log=typer.echo)


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
                                    "windows per model"),
    families: str = typer.Option("all", help="Synthetic families to score: all | seen | heldout (never used in "
                                 "training) | a comma-separated list; each family's test signals are the same "
                                 "whatever else is selected"),
    suite: Optional[str] = typer.Option(None, show_default="mlp,mlp_overcomplete,conv,conv_n2n",
                                        help="Comma-separated subset of the standard suite to train or load"),
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
    files = _data_files(data) if data else None
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
