"""`dae denoise`: clean a recording offline through exactly the worker's path."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import RECORDINGS, ModelOpt, RegistryOpt, VerboseOpt, input_path, say, settings
from pipeline.cli.errors import CommandError
from pipeline.cli.models import load_model, train_hint

app = typer.Typer()


def _rates(meta) -> str:
    return meta.rates_label()


@app.command("denoise")
def denoise(
    input: Path = typer.Argument(..., help=f"Recorded signal ({RECORDINGS})"),
    output: Path = typer.Argument(..., help=f"Cleaned signal ({RECORDINGS}); a CSV keeps the input's column "
                                  "names"),
    model: Optional[str] = ModelOpt,
    registry: Optional[Path] = RegistryOpt,
    sample_rate: Optional[float] = typer.Option(None, show_default="the WAV header's", help="The input's sample "
                                                "rate, Hz, when the file does not say (.npy, .csv)"),
    column: Optional[str] = typer.Option(None, show_default="every numeric column", help="CSV column to clean, "
                                         "by name (or 0-based number without a header)"),
    force: bool = typer.Option(False, "--force", help="Denoise even when the model was not trained for the "
                               "input's sample rate (the output is then unreliable)"),
    verbose: bool = VerboseOpt,
):
    """Clean a recording through exactly the worker's path: its windowing, overlap-add and engine.

    Refuses an input whose sample rate the model does not serve (exit code 2, and the dae train
    command for that rate) unless --force."""
    s = settings(None, registry)
    input_path(input)
    import numpy as np

    from pipeline.inference.engine import InferenceEngine
    from pipeline.stream.denoiser import denoise_signal
    from pipeline.tools.fileio import read_signal_columns, write_signal

    x, rate, names = read_signal_columns(input, sample_rate=sample_rate, column=column)
    m, meta, label = load_model(model, s.model.registry, rate)
    engine = InferenceEngine(m, meta, device="cpu", version=label)
    if rate is not None and not engine.serves_rate(rate):
        msg = (f"{input} is at {rate:g} Hz but model {label} serves {_rates(meta)}: train one for this rate with "
               f"{train_hint(rate)} (or pass --force)")
        if not force:
            raise CommandError(msg)
        say(f"warning (--force): {msg}")
    y = denoise_signal(engine, x)
    write_signal(output, y, sample_rate=rate, names=names)
    typer.echo(f"{output}: {y.shape[0]} frames x {y.shape[1]} channel(s) cleaned with {label} "
               f"(window {meta.window}, hop {meta.hop}); rms change {float(np.sqrt(np.mean((y - x) ** 2))):.4g}")
