"""`dae demo` (the whole path on a local default) and `dae bench` (throughput against raw Kafka)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import BootstrapOpt, RegistryOpt, VerboseOpt, settings, setup_logging

app = typer.Typer()


@app.command("demo")
def demo(
    streams: int = typer.Option(8, min=1, help="Synthetic streams to publish"),
    seconds: float = typer.Option(10.0, help="Seconds of signal per stream"),
    sample_rate: float = typer.Option(1000.0, help="Sample rate, Hz (a model for it is trained when the "
                                      "registry has none)"),
    snr_db: float = typer.Option(10.0, help="Input SNR of the noisy streams, dB"),
    out: Path = typer.Option(Path("runs/demo"), help="Where the plot and captured streams go"),
    bootstrap: Optional[str] = BootstrapOpt,
    registry: Optional[Path] = RegistryOpt,
    verbose: bool = VerboseOpt,
):
    """Broker → model → simulate → worker → capture, then a per-stream SNR table and a plot.

    Reuses a broker that answers at --bootstrap; when none does at the default address it starts the
    local one, which keeps running afterwards (stop it with: dae kafka stop). Prints each stage's
    time. Exit code 1 when a stream comes back incomplete."""
    setup_logging(verbose)
    s = settings(bootstrap, registry, metrics={"enabled": False})
    from pipeline.tools.demo import run_demo

    if not run_demo(s, streams=streams, seconds=seconds, sample_rate=sample_rate, snr_db=snr_db, out=out):
        raise typer.Exit(1)


@app.command("bench")
def bench(
    streams: int = typer.Option(8, min=1, help="Streams in the input"),
    seconds: float = typer.Option(150.0, help="Seconds of signal per stream (the default run takes about "
                                  "3 minutes on a 2-core machine; 1000 for the long figures of docs/bench.md)"),
    sample_rate: float = typer.Option(1000.0, help="Rate in the headers, Hz (the model must serve it)"),
    chunk: int = typer.Option(512, min=1, help="Frames per message"),
    live_rate: float = typer.Option(200_000.0, help="Input rate of the latency phase, samples/s in total"),
    model: Optional[str] = typer.Option(None, "--model", help="Registry version to bench (default: the current "
                                        "one); the seed MLP runs beside it as its own leg"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (env DAE_MODEL__DEVICE)"),
    processes: int = typer.Option(2, "--processes", min=0, help="Processes of the leg running `dae worker "
                                  "--processes N` (b-procs); 0 or 1 skips it"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the figures as JSON to this file"),
    many: int = typer.Option(0, "--many", min=0, help="Instead of the legs: the many-streams leg, rounds of "
                             "this many new stream ids with one chunk each (e.g. 20000; docs/bench.md)"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Rounds of the many-streams leg"),
    state_ttl: float = typer.Option(20.0, "--state-ttl", help="Alert-state timeout of the many-streams leg, s "
                                    "(shortened from the worker's default so the leg ends in minutes)"),
    warmup: int = typer.Option(1000, "--warmup", min=0, help="Streams of the many-streams leg's warm-up round, "
                               "after which its second idle RSS is taken (0: none)"),
    keep_topics: bool = typer.Option(False, "--keep-topics", help="Keep the topics the run created (by default "
                                     "deleted at its end: dae.bench.<run>.*; they hold gigabytes)"),
    bootstrap: Optional[str] = BootstrapOpt,
    registry: Optional[Path] = RegistryOpt,
    verbose: bool = VerboseOpt,
):
    """Raw Kafka ceiling vs the worker (the served model, and the seed MLP) vs the naive
    one-message-at-a-time loop, same broker; per-stage latency of the worker legs (docs/bench.md)."""
    setup_logging(verbose)
    s = settings(bootstrap, registry, metrics={"enabled": False}, model={"device": device})
    from pipeline.tools.bench_topics import run_topics

    with run_topics(s.kafka, keep=keep_topics, say=typer.echo):
        if many:
            import json

            from pipeline.tools.bench_many import run_many
            from pipeline.tools.demo import ensure_broker, ensure_model

            ensure_broker(s)
            ensure_model(s, sample_rate)
            report = run_many(s, streams=many, rounds=rounds, sample_rate=sample_rate, state_ttl_s=state_ttl,
                              model=model, warmup=warmup, say=typer.echo)
            if json_path is not None:
                json_path.parent.mkdir(parents=True, exist_ok=True)
                json_path.write_text(json.dumps(report, indent=2))
            return
        from pipeline.tools.bench import run_bench

        run_bench(s, streams=streams, seconds=seconds, sample_rate=sample_rate, chunk=chunk, live_rate=live_rate,
                  json_path=json_path, model=model, processes=processes)
