"""Stream tools: `dae simulate` and `dae replay` publish raw chunks, `dae capture` reads chunks back."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import (
    RECORDINGS,
    BootstrapOpt,
    VerboseOpt,
    input_path,
    require_broker,
    say,
    setting_help,
    settings,
)
from pipeline.cli.errors import CommandError

app = typer.Typer()


@app.command("simulate")
def simulate(
    streams: int = typer.Option(8, min=0, help="Number of streams (sim-000, sim-001, ...)"),
    sample_rate: float = typer.Option(1000.0, help="Sample rate in the headers, Hz"),
    seconds: float = typer.Option(10.0, help="Seconds of signal per stream"),
    snr_db: float = typer.Option(10.0, help="Input SNR of the published noisy signal, dB"),
    chunk_min: int = typer.Option(64, min=1, help="Smallest chunk, frames per message"),
    chunk_max: int = typer.Option(1024, min=1, help="Largest chunk, frames per message (sizes are uniform "
                                  "in between)"),
    realtime: bool = typer.Option(False, "--realtime", help="Pace the chunks at the sample rate instead of "
                                  "publishing as fast as possible"),
    seed: int = typer.Option(0, help="Random seed of the signals and chunk sizes"),
    bootstrap: Optional[str] = BootstrapOpt,
    topic: Optional[str] = typer.Option(None, help=setting_help("Raw topic to publish to (the first)",
                                                                "kafka.raw_topics")),
    verbose: bool = VerboseOpt,
):
    """Publish synthetic noisy streams (vibration, drift, ECG-like, audio-like)."""
    s = settings(bootstrap)
    require_broker(s.kafka)
    from pipeline.tools.simulate import simulate as run

    dest = topic or s.kafka.raw_topics[0]
    say(f"publishing {streams} stream(s) x {seconds:g} s at {sample_rate:g} Hz to {dest} at "
        f"{s.kafka.bootstrap_servers}" + (" in real time" if realtime else ""))
    res = run(s.kafka, streams=streams, sample_rate=sample_rate, seconds=seconds, snr_db=snr_db,
              chunk=(chunk_min, chunk_max), realtime=realtime, seed=seed, topic=topic)
    typer.echo(f"published {res.samples} samples of {streams} streams in {res.messages} messages "
               f"({res.seconds:.2f} s)")


@app.command("replay")
def replay(
    file: Path = typer.Argument(..., help=f"Recorded signal ({RECORDINGS}); channels become the stream's "
                                "channels"),
    stream_id: Optional[str] = typer.Option(None, show_default="the file's name without extension",
                                            help="Stream id (the message key)"),
    sample_rate: Optional[float] = typer.Option(None, show_default="the WAV header's", help="Sample rate, Hz "
                                                "(needed for .npy and .csv)"),
    chunk: int = typer.Option(1024, min=1, help="Frames per message"),
    realtime: bool = typer.Option(False, "--realtime", help="Pace the chunks at the sample rate"),
    bootstrap: Optional[str] = BootstrapOpt,
    topic: Optional[str] = typer.Option(None, help=setting_help("Raw topic to publish to (the first)",
                                                                "kafka.raw_topics")),
    verbose: bool = VerboseOpt,
):
    """Publish a recorded signal (.npy, .wav, .csv) as one stream."""
    s = settings(bootstrap)
    input_path(file)
    from pipeline.tools.fileio import read_signal

    samples, rate = read_signal(file, sample_rate=sample_rate)
    if rate is None:
        raise CommandError(f"{file} does not say its sample rate: pass --sample-rate HZ")
    require_broker(s.kafka)
    from pipeline.tools.simulate import replay as run

    n = run(s.kafka, samples, stream_id=stream_id or file.stem, sample_rate=rate, chunk=chunk,
            realtime=realtime, topic=topic)
    typer.echo(f"published {samples.shape[0]} frames x {samples.shape[1]} channel(s) of {stream_id or file.stem} "
               f"to {topic or s.kafka.raw_topics[0]} in {n} messages")


@app.command("capture")
def capture(
    out: Path = typer.Option(Path("captured"), help="Directory for the <stream>.npy files"),
    idle_s: float = typer.Option(5.0, help="Stop after this many seconds without a message (from the start "
                                 "too, unless --wait)"),
    wait: bool = typer.Option(False, "--wait", help="Wait for the first message however long it takes "
                              "(--idle-s then counts from the last message)"),
    max_seconds: Optional[float] = typer.Option(None, show_default="no limit", help="Stop after this many "
                                                "seconds in any case"),
    bootstrap: Optional[str] = BootstrapOpt,
    topic: Optional[str] = typer.Option(None, help=setting_help("Topic to read", "kafka.clean_topic")),
    verbose: bool = VerboseOpt,
):
    """Read the cleaned topic into <stream>.npy files, reporting gaps and duplicates.

    Reads a topic of chunks (the cleaned one unless --topic) from its beginning, without a consumer
    group. Exit code 1 when a stream has a gap."""
    s = settings(bootstrap)
    require_broker(s.kafka)
    from pipeline.tools.capture import capture as run

    source = topic or s.kafka.clean_topic
    say(f"reading {source} at {s.kafka.bootstrap_servers} from the beginning; stopping after {idle_s:g} s "
        + ("without a message (waiting for the first one)" if wait else "without a message")
        + (f" or {max_seconds:g} s in all" if max_seconds is not None else ""))
    rep = run(s.kafka, topic=topic, idle_s=idle_s, max_seconds=max_seconds, out_dir=out, wait=wait)
    typer.echo(rep.summary())
    if not rep.messages:
        say(f"no message on {source} at {s.kafka.bootstrap_servers}: is a worker running (`dae worker`) and "
            "publishing there? --wait waits for the first message")
    if any(rep.gaps.values()):
        raise typer.Exit(1)
