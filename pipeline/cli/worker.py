"""`dae worker`: one consumer-group member (raw chunks in, cleaned chunks out)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import (
    BootstrapOpt,
    RegistryOpt,
    VerboseOpt,
    require_broker,
    settings,
    setting_help,
    setup_logging,
)
from pipeline.cli.errors import CommandError

app = typer.Typer()


@app.command("worker")
def worker(
    bootstrap: Optional[str] = BootstrapOpt,
    registry: Optional[Path] = RegistryOpt,
    model: Optional[str] = typer.Option(None, show_default="the registry's current version, followed as it "
                                        "changes", help="Serve this registry version or checkpoint directory "
                                        "(env DAE_MODEL__VERSION)"),
    raw_topic: Optional[list[str]] = typer.Option(None, help=setting_help("Raw topic to consume, repeatable; the "
                                                  "variable takes a JSON list", "kafka.raw_topics")),
    clean_topic: Optional[str] = typer.Option(None, help=setting_help("Topic of the cleaned chunks",
                                                                      "kafka.clean_topic")),
    group_id: Optional[str] = typer.Option(None, help=setting_help("Consumer group", "kafka.group_id")),
    max_batch: Optional[int] = typer.Option(None, help=setting_help("Windows per micro-batch", "batch.max_batch")),
    max_delay_ms: Optional[float] = typer.Option(None, help=setting_help("Longest wait for a batch to fill, ms",
                                                                         "batch.max_delay_ms")),
    device: Optional[str] = typer.Option(None, help=setting_help("auto | cpu | cuda", "model.device")),
    metrics_port: Optional[int] = typer.Option(None, help=setting_help("Prometheus endpoint port",
                                                                       "metrics.port")),
    max_seconds: Optional[float] = typer.Option(None, show_default="run until SIGTERM/SIGINT",
                                                help="Stop cleanly after this many seconds (tests, demos)"),
    processes: str = typer.Option("1", "--processes", help="Consumer-group members to start on this host: a "
                                  "number, or 'auto' (a CUDA model: one per 4 cores per GPU, 1-4 per GPU; else "
                                  "one per core); each serves metrics on --metrics-port + its index; SIGTERM "
                                  "stops all cleanly"),
    verbose: bool = VerboseOpt,
):
    """Consume raw chunks, denoise them, publish cleaned chunks; SIGTERM or Ctrl-C stops it cleanly."""
    setup_logging(verbose)
    s = settings(
        bootstrap,
        registry,
        kafka={"raw_topics": tuple(raw_topic) if raw_topic else None, "clean_topic": clean_topic, "group_id": group_id},
        model={"version": model, "device": device},
        batch={"max_batch": max_batch, "max_delay_ms": max_delay_ms},
        metrics={"port": metrics_port},
    )
    require_broker(s.kafka)
    from pipeline.tools.pool import resolve_processes

    try:
        n = resolve_processes(processes, s.model.device)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if n > 1:
        args = [a for flag, v in (("--bootstrap", bootstrap), ("--registry", registry), ("--model", model),
                                  ("--clean-topic", clean_topic), ("--group-id", group_id), ("--max-batch", max_batch),
                                  ("--max-delay-ms", max_delay_ms), ("--device", device), ("--max-seconds", max_seconds))
                if v is not None for a in (flag, str(v))]
        args += [a for t in raw_topic or () for a in ("--raw-topic", t)] + (["--verbose"] if verbose else [])
        raise typer.Exit(_run_pool(args, n, s))
    from pipeline.inference.engine import InferenceEngine
    from pipeline.worker import Worker

    try:
        engine = InferenceEngine.from_source(s.model.registry, s.model.version, device=s.model.device,
                                             dtype=s.model.dtype)
    except RuntimeError as exc:
        if "CUDA" not in str(exc):
            raise
        raise CommandError(f"{exc}: use --device cpu (env DAE_MODEL__DEVICE)") from exc
    try:
        w = Worker(s, engine)
    except ValueError as exc:  # settings that contradict the model, e.g. window.window
        raise CommandError(f"{exc} (unset DAE_WINDOW__WINDOW to take the model's)") from exc
    w.install_signal_handlers()
    w.start()
    logging.getLogger(__name__).info(
        "worker: model %s (window %d, hop %d) on %s, topics %s -> %s",
        engine.version, w.window, w.hop, engine.device, ",".join(s.kafka.raw_topics), s.kafka.clean_topic,
    )
    w.run(max_seconds=max_seconds)


def _run_pool(args: list[str], n: int, s) -> int:
    from pipeline.tools.pool import Pool, worker_argv

    pool = Pool(worker_argv(args), n, metrics_port=s.metrics.port, instance_id=s.kafka.group_instance_id)
    pool.install_signal_handlers()
    pool.start()
    return pool.run()
