"""`dae evaluate-alerts`: alert quality on injected anomalies and on the Numenta Anomaly Benchmark."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import ModelOpt, RegistryOpt, VerboseOpt, input_path, settings
from pipeline.cli.errors import CommandError

app = typer.Typer()

NAB_LABELS = Path("labels") / "combined_windows.json"


@app.command("evaluate-alerts")
def evaluate_alerts(
    json_path: Optional[Path] = typer.Option(None, "--json", show_default="OUT/evaluate_alerts.json",
                                             help="Results JSON"),
    out: Path = typer.Option(Path("runs/evaluate-alerts"), "--out", help="Directory for the JSON, the PNG "
                             "timeline and the cached NAB model"),
    nab: bool = typer.Option(True, "--nab/--no-nab", help="Also score the Numenta Anomaly Benchmark series"),
    registry: Optional[Path] = RegistryOpt,
    model: Optional[str] = ModelOpt,
    nab_dir: Optional[Path] = typer.Option(None, "--nab-dir", show_default="../shared/data/nab, skipped when "
                                           "absent", help="NAB checkout with data/ and labels/"),
    quick: bool = typer.Option(False, "--quick", help="Short streams, one per family and kind (smoke test, "
                               "figures not meaningful)"),
    seed: Optional[int] = typer.Option(None, show_default="the held-out seed of docs/alerts.md",
                                       help="Root seed of the synthetic streams"),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
    verbose: bool = VerboseOpt,
):
    """Alert quality: injected anomalies in held-out synthetic streams (~10 dB SNR) and NAB."""
    s = settings(None, registry)
    if nab and nab_dir is not None:
        input_path(nab_dir, "a NAB checkout (with data/ and labels/), or pass --no-nab", directory_ok=True)
        if not (nab_dir / NAB_LABELS).is_file():
            raise CommandError(f"{nab_dir} is not a NAB checkout (no {NAB_LABELS}): clone numenta/NAB there, "
                               "or pass --no-nab")
    if model is not None and ("/" in model or Path(model).suffix):
        input_path(Path(model), "a checkpoint directory or a registry version (e.g. v3)", directory_ok=True)
    from pipeline.inference.engine import InferenceEngine
    from pipeline.tools.alert_eval.evaluate import SyntheticConfig, run

    engine = InferenceEngine.from_source(s.model.registry, model, device="cpu")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    synthetic = SyntheticConfig()
    if quick:
        synthetic = SyntheticConfig(anomaly_streams_per_family=1, clean_streams_per_family=1,
                                    anomaly_seconds=60.0, clean_seconds=60.0, anomalies_per_stream=2)
    if seed is not None:
        synthetic = dataclasses.replace(synthetic, seed=seed)
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("evaluating the alert path (synthetic streams, then NAB)"):
        result = run(out, json_path=json_path, nab=nab, nab_dir=nab_dir, settings=s.alerts,
                     synthetic=synthetic, engine=engine, log=typer.echo)
    if not result["synthetic"]["target"]["met"]:
        typer.echo("note: the issue-4 target (recall >= 0.9, <= 1 false alarm per stream-hour) is not met "
                   "with this model and these settings", err=True)
