"""`dae retrain`: a candidate trained on recent raw data, promoted only if it is not worse."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import BootstrapOpt, RegistryOpt, VerboseOpt, require_broker, settings, setup_logging
from pipeline.cli.errors import CommandError

app = typer.Typer()


@app.command("retrain")
def retrain(
    route: Optional[str] = typer.Option(None, "--route", show_default="default (with --every: every route)",
                                        help="Model route (model.routes; docs/routing.md): learn from its streams "
                                        "only, compare with and promote its current version only"),
    topic: Optional[str] = typer.Option(None, show_default="the first raw topic", help="Raw topic to learn from"),
    last_seconds: Optional[float] = typer.Option(3600.0, help="Use the data of the last N seconds"),
    last_samples: Optional[int] = typer.Option(None, help="Or the last N samples per partition (instead of "
                                               "--last-seconds)"),
    arch: str = typer.Option("conv", help="Candidate architecture: mlp | mlp_overcomplete | conv"),
    warm_start: bool = typer.Option(True, "--warm-start/--from-scratch", help="Start the candidate from the "
                                    "serving model's weights (same architecture) or from a fresh init"),
    steps: Optional[int] = typer.Option(None, show_default="the retraining run's budget", help="Training steps "
                                        "of the candidate"),
    max_seconds: Optional[float] = typer.Option(None, show_default="no limit", help="Wall-clock limit of the "
                                                "candidate's training, seconds (a cut run says so)"),
    margin_db: float = typer.Option(0.0, help="Promote unless the candidate's gain is more than this many dB "
                                    "below the current model's"),
    every: Optional[str] = typer.Option(None, help="Run periodically (e.g. 6h, 30m), in this process, never "
                                        "overlapping"),
    drift: bool = typer.Option(True, "--drift/--no-drift", help="With --every: also run early when the worker "
                               "publishes a drift event for the serving model"),
    min_gap: str = typer.Option("10m", help="With --every: never start a drift-triggered run sooner than this "
                                "after the previous run"),
    metrics_file: Optional[Path] = typer.Option(None, help="Write the run's metrics as a Prometheus textfile "
                                                "(node-exporter textfile collector); --every serves them instead"),
    bootstrap: Optional[str] = BootstrapOpt,
    registry: Optional[Path] = RegistryOpt,
    verbose: bool = VerboseOpt,
):
    """Train a candidate on recent raw data; promote it only if it is not worse than the current model.

    "Not worse": its SNR gain on held-out recent data is at least the current model's minus
    --margin-db. Exit code: 0 promoted, 10 rejected, 1 failed, 2 could not start; one summary line.
    With --every and no --route: the default route and every configured route with a current
    version, each on its own schedule and drift trigger, one run at a time."""
    setup_logging(verbose)
    s = settings(bootstrap, registry)
    from pipeline.retrain.run import RouteError, check_route, parse_duration, route_name

    try:
        interval = parse_duration(every) if every else None
        gap = parse_duration(min_gap)
    except ValueError as exc:
        raise CommandError(f"{exc} (e.g. --every 6h --min-gap 10m)") from exc
    if route is not None:  # before the broker: a typo or a route without a model is the user's to fix
        from models.registry import ModelRegistry, RegistryError

        try:
            check_route(s, route, ModelRegistry(s.model.registry))
        except (RouteError, RegistryError) as exc:
            raise CommandError(str(exc)) from exc
    require_broker(s.kafka)
    from pipeline.retrain.run import retrain_once
    from pipeline.retrain.schedule import RetrainMetrics, run_every

    kw = dict(topic=topic, last_seconds=None if last_samples else last_seconds, last_samples=last_samples,
              arch=arch, warm_start=warm_start, steps=steps, margin_db=margin_db)
    if max_seconds is not None:
        kw["max_seconds"] = max_seconds
    if interval is not None:
        metrics = RetrainMetrics(routes=())  # run_every adds the routes it schedules
        if s.metrics.enabled:
            from pipeline.monitor.metrics import serve

            serve(metrics.registry, s.metrics.host, s.metrics.port)
        run_every(s, interval, drift=drift, min_gap_s=gap, metrics=metrics, route=route, **kw)
        return
    metrics = RetrainMetrics(routes=(route_name(route),))
    r = retrain_once(s, route=route, **kw)
    metrics.record(r)
    if metrics_file is not None:
        metrics.write_textfile(metrics_file)
    typer.echo(r.summary())
    raise typer.Exit(r.exit_code)
