"""The ``dae`` command. Every option also comes from the environment (``DAE_`` prefix, ``__`` for
nesting) or a ``.env`` file through :mod:`pipeline.settings`; flags given here win."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from pipeline.settings import Settings, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
kafka_app = typer.Typer(no_args_is_help=True, help="The local single-node KRaft broker (deploy/kafka).")
app.add_typer(kafka_app, name="kafka")

BootstrapOpt = typer.Option(None, "--bootstrap", help="Kafka bootstrap servers [DAE_KAFKA__BOOTSTRAP_SERVERS]")
RegistryOpt = typer.Option(None, "--registry", help="Model registry directory [DAE_MODEL__REGISTRY]")


def _settings(bootstrap: str | None = None, registry: Path | None = None, **sections) -> Settings:
    try:
        return load_settings(
            kafka={"bootstrap_servers": bootstrap, **sections.pop("kafka", {})},
            model={"registry": registry, **sections.pop("model", {})},
            **sections,
        )
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            name = ".".join(str(p) for p in e["loc"])
            lines.append(f"  {name} (env DAE_{name.upper().replace('.', '__')}): {e['msg']}")
        typer.echo("invalid settings:\n" + "\n".join(lines), err=True)
        raise typer.Exit(2)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)


# --------------------------------------------------------------------------------- kafka
@kafka_app.command("start")
def kafka_start(port: int = typer.Option(19092, help="Broker port (controller on port+1)")):
    """Start the local broker (idempotent) and print its bootstrap address."""
    from pipeline.tools import kafka_local

    typer.echo(kafka_local.start(port))


@kafka_app.command("stop")
def kafka_stop(port: int = typer.Option(19092)):
    from pipeline.tools import kafka_local

    kafka_local.stop(port)


@kafka_app.command("status")
def kafka_status(port: int = typer.Option(19092)):
    from pipeline.tools import kafka_local

    addr = kafka_local.status(port)
    if addr is None:
        typer.echo(f"no local broker on port {port}", err=True)
        raise typer.Exit(3)
    typer.echo(addr)


# -------------------------------------------------------------------------------- worker
@app.command()
def worker(
    bootstrap: Optional[str] = BootstrapOpt,
    registry: Optional[Path] = RegistryOpt,
    model: Optional[str] = typer.Option(None, help="Model version or checkpoint dir [DAE_MODEL__VERSION]"),
    raw_topic: Optional[list[str]] = typer.Option(None, help="Raw topic(s) [DAE_KAFKA__RAW_TOPICS]"),
    clean_topic: Optional[str] = typer.Option(None, help="Cleaned topic [DAE_KAFKA__CLEAN_TOPIC]"),
    group_id: Optional[str] = typer.Option(None, help="Consumer group [DAE_KAFKA__GROUP_ID]"),
    max_batch: Optional[int] = typer.Option(None, help="Windows per batch [DAE_BATCH__MAX_BATCH]"),
    max_delay_ms: Optional[float] = typer.Option(None, help="Batch deadline [DAE_BATCH__MAX_DELAY_MS]"),
    device: Optional[str] = typer.Option(None, help="auto|cpu|cuda [DAE_MODEL__DEVICE]"),
    metrics_port: Optional[int] = typer.Option(None, help="Metrics port [DAE_METRICS__PORT]"),
    max_seconds: Optional[float] = typer.Option(None, help="Stop after this long (tests, demos)"),
    verbose: bool = False,
):
    """Consume raw chunks, denoise, publish cleaned chunks (a consumer-group member)."""
    _logging(verbose)
    s = _settings(
        bootstrap,
        registry,
        kafka={"raw_topics": tuple(raw_topic) if raw_topic else None, "clean_topic": clean_topic, "group_id": group_id},
        model={"version": model, "device": device},
        batch={"max_batch": max_batch, "max_delay_ms": max_delay_ms},
        metrics={"port": metrics_port},
    )
    from pipeline.inference.engine import InferenceEngine
    from pipeline.worker import Worker

    try:
        engine = InferenceEngine.from_source(s.model.registry, s.model.version, device=s.model.device, dtype=s.model.dtype)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"cannot load model: {exc}", err=True)
        raise typer.Exit(2)
    w = Worker(s, engine)
    w.install_signal_handlers()
    try:
        w.start()
    except (PermissionError, ConnectionError) as exc:
        typer.echo(f"cannot start the worker: {exc}", err=True)
        raise typer.Exit(2)
    logging.getLogger(__name__).info(
        "worker: model %s (window %d, hop %d) on %s, topics %s -> %s",
        engine.version, w.window, w.hop, engine.device, ",".join(s.kafka.raw_topics), s.kafka.clean_topic,
    )
    w.run(max_seconds=max_seconds)


# --------------------------------------------------------------------------------- train
@app.command()
def train(
    sample_rate: float = typer.Option(..., help="Sample rate (Hz) the model will serve"),
    arch: str = typer.Option(None, help="mlp | mlp_overcomplete | conv (default: the best, models.training.DEFAULT_ARCH)"),
    objective: str = typer.Option("clean", help="clean (synthetic clean targets) | noisier2noise"),
    window: int = typer.Option(256, help="Window length W in samples"),
    hop: Optional[int] = typer.Option(None, help="Hop H (default W/2)"),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the trainer's)"),
    max_seconds: Optional[float] = typer.Option(None, help="Wall-clock budget"),
    seed: int = 0,
    registry: Optional[Path] = RegistryOpt,
    promote: bool = typer.Option(True, help="Make the new version current"),
    quiet: bool = False,
):
    """Train a DAE on the synthetic generator and publish it to the registry."""
    from models.registry import ModelRegistry
    from models.training import DEFAULT_ARCH, TrainConfig, best_config, train_synthetic

    s = _settings(None, registry)
    kw = {"window": window, "hop": hop, "seed": seed, "objective": objective}
    if steps is not None:
        kw["steps"] = steps
    if max_seconds is not None:
        kw["max_seconds"] = max_seconds
    if arch is None or arch == DEFAULT_ARCH:  # the recommended recipe (docs/models.md), not bare defaults
        cfg = best_config(sample_rate, **kw)
    else:
        cfg = TrainConfig(sample_rate=sample_rate, arch=arch, **kw)
    model, meta = train_synthetic(cfg, progress=not quiet)
    version = ModelRegistry(s.model.registry).publish(model, meta, promote=promote)
    gain = meta.metrics.get("snr_gain_db")
    typer.echo(f"{version}: window {meta.window}, hop {meta.hop}, {sample_rate:g} Hz"
               + (f", validation SNR gain {gain:.2f} dB" if gain is not None else "")
               + (" (current)" if promote else ""))


# ------------------------------------------------------------------------- stream tools
@app.command()
def simulate(
    streams: int = 8,
    sample_rate: float = 1000.0,
    seconds: float = 10.0,
    snr_db: float = typer.Option(10.0, help="Input SNR of the published noisy signal"),
    chunk_min: int = 64,
    chunk_max: int = 1024,
    realtime: bool = False,
    seed: int = 0,
    bootstrap: Optional[str] = BootstrapOpt,
    topic: Optional[str] = typer.Option(None, help="Raw topic (default: the first of kafka.raw_topics)"),
):
    """Publish synthetic noisy streams (vibration, drift, ECG-like, audio-like)."""
    from pipeline.tools.simulate import simulate as run

    s = _settings(bootstrap)
    res = run(s.kafka, streams=streams, sample_rate=sample_rate, seconds=seconds, snr_db=snr_db,
              chunk=(chunk_min, chunk_max), realtime=realtime, seed=seed, topic=topic)
    typer.echo(f"published {res.samples} samples of {streams} streams in {res.messages} messages "
               f"({res.seconds:.2f} s)")


@app.command()
def replay(
    file: Path,
    stream_id: Optional[str] = typer.Option(None, help="Stream id (default: the file's stem)"),
    sample_rate: Optional[float] = typer.Option(None, help="Needed unless the file says (WAV)"),
    chunk: int = 1024,
    realtime: bool = False,
    bootstrap: Optional[str] = BootstrapOpt,
    topic: Optional[str] = None,
):
    """Publish a recorded signal (.npy, .wav, .csv) as one stream."""
    from pipeline.tools.fileio import read_signal
    from pipeline.tools.simulate import replay as run

    s = _settings(bootstrap)
    samples, rate = read_signal(file, sample_rate=sample_rate)
    if rate is None:
        typer.echo(f"{file}: the file has no sample rate; pass --sample-rate", err=True)
        raise typer.Exit(2)
    n = run(s.kafka, samples, stream_id=stream_id or file.stem, sample_rate=rate, chunk=chunk,
            realtime=realtime, topic=topic)
    typer.echo(f"published {samples.shape[0]} frames x {samples.shape[1]} channel(s) in {n} messages")


@app.command()
def capture(
    out: Path = typer.Option(Path("captured"), help="Directory for <stream>.npy"),
    idle_s: float = typer.Option(5.0, help="Stop after this long without a message"),
    max_seconds: Optional[float] = None,
    bootstrap: Optional[str] = BootstrapOpt,
    topic: Optional[str] = typer.Option(None, help="Topic (default: kafka.clean_topic)"),
):
    """Read the cleaned topic into <stream>.npy files, reporting gaps and duplicates."""
    from pipeline.tools.capture import capture as run

    s = _settings(bootstrap)
    rep = run(s.kafka, topic=topic, idle_s=idle_s, max_seconds=max_seconds, out_dir=out)
    typer.echo(rep.summary())
    if any(rep.gaps.values()):
        raise typer.Exit(1)


@app.command()
def retrain(
    topic: Optional[str] = typer.Option(None, help="Raw topic to learn from (default: the first raw topic)"),
    last_seconds: Optional[float] = typer.Option(3600.0, help="Use the data of the last N seconds"),
    last_samples: Optional[int] = typer.Option(None, help="Or the last N samples per partition"),
    arch: Optional[str] = typer.Option(None, help="Candidate architecture (default: the recommended one, conv)"),
    warm_start: bool = typer.Option(True, "--warm-start/--from-scratch", help="Start the candidate from the "
                                    "serving model's weights (same architecture) or from a fresh init"),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the trainer's)"),
    max_seconds: float = typer.Option(240.0, help="Training time budget"),
    margin_db: float = typer.Option(0.0, help="Promote unless the candidate's gain is this much below the current"),
    every: Optional[str] = typer.Option(None, help="Run periodically (e.g. 6h), in this process, never overlapping"),
    drift: bool = typer.Option(True, "--drift/--no-drift", help="With --every: also run early when the worker "
                               "publishes a drift event for the serving model"),
    min_gap: str = typer.Option("10m", help="With --every: never start a drift-triggered run sooner than this "
                                "after the previous run"),
    metrics_file: Optional[Path] = typer.Option(None, help="Write the run's metrics as a Prometheus textfile "
                                                "(node-exporter textfile collector); --every serves them instead"),
    bootstrap: Optional[str] = BootstrapOpt,
    registry: Optional[Path] = RegistryOpt,
):
    """Train a candidate on recent raw data; promote it only if it beats the current model.
    Exit code: 0 promoted, 10 rejected, 1 failed; one summary line on stdout."""
    _logging(False)
    from pipeline.retrain.run import parse_duration, retrain_once
    from pipeline.retrain.schedule import RetrainMetrics, run_every

    s = _settings(bootstrap, registry)
    kw = dict(topic=topic, last_seconds=None if last_samples else last_seconds, last_samples=last_samples,
              arch=arch, warm_start=warm_start, steps=steps, max_seconds=max_seconds, margin_db=margin_db)
    metrics = RetrainMetrics()
    if every:
        try:
            interval, gap = parse_duration(every), parse_duration(min_gap)
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2)
        if s.metrics.enabled:
            from pipeline.monitor.metrics import serve

            serve(metrics.registry, s.metrics.host, s.metrics.port)
        run_every(s, interval, drift=drift, min_gap_s=gap, metrics=metrics, **kw)
        return
    r = retrain_once(s, **kw)
    metrics.record(r)
    if metrics_file is not None:
        metrics.write_textfile(metrics_file)
    typer.echo(r.summary())
    raise typer.Exit(r.exit_code)


# ------------------------------------------------------------------------ demo / bench
@app.command()
def demo(
    streams: int = 8,
    seconds: float = 10.0,
    sample_rate: float = 1000.0,
    snr_db: float = 10.0,
    out: Path = typer.Option(Path("runs/demo"), help="Where the plot and captured streams go"),
    bootstrap: Optional[str] = BootstrapOpt,
    registry: Optional[Path] = RegistryOpt,
):
    """Broker → model → simulate → worker → capture, then a per-stream SNR table and a plot."""
    _logging(False)
    from pipeline.tools.demo import run_demo

    s = _settings(bootstrap, registry, metrics={"enabled": False})
    ok = run_demo(s, streams=streams, seconds=seconds, sample_rate=sample_rate, snr_db=snr_db, out=out)
    if not ok:
        raise typer.Exit(1)


@app.command()
def bench(
    streams: int = 8,
    seconds: float = typer.Option(1000.0, help="Seconds of signal per stream"),
    sample_rate: float = typer.Option(1000.0, help="Rate in the headers (the model must serve it)"),
    chunk: int = typer.Option(512, help="Frames per message"),
    live_rate: float = typer.Option(200_000.0, help="Input rate of the latency phase, samples/s in total"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the figures as JSON"),
    bootstrap: Optional[str] = BootstrapOpt,
    registry: Optional[Path] = RegistryOpt,
):
    """Raw Kafka ceiling vs the worker vs the naive one-message-at-a-time loop, same broker."""
    _logging(False)
    from pipeline.tools.bench import run_bench

    s = _settings(bootstrap, registry, metrics={"enabled": False})
    run_bench(s, streams=streams, seconds=seconds, sample_rate=sample_rate, chunk=chunk, live_rate=live_rate,
              json_path=json_path)


from pipeline.cli.models import register as _register_models  # noqa: E402
from pipeline.cli.alerts import register as _register_alerts  # noqa: E402

_register_models(app)
_register_alerts(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
