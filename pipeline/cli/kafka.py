"""`dae kafka start|stop|status`: the local single-node KRaft broker of deploy/kafka (no Docker)."""

from __future__ import annotations

import subprocess

import typer

from pipeline.cli.common import VerboseOpt, say, settings
from pipeline.cli.errors import CommandError
from pipeline.tools import kafka_local

app = typer.Typer(no_args_is_help=True, help="The local single-node KRaft broker (deploy/kafka; Java 17+ and "
                  "Maven on the PATH, no Docker).")

PortOpt = typer.Option(kafka_local.DEFAULT_PORT, "--port", help="Broker port (the controller uses port+1)")


def _script(cmd: str, port: int, call):
    try:
        return call(port)
    except subprocess.CalledProcessError as exc:
        raise CommandError(f"deploy/kafka/kafka.sh {cmd} {port} failed (exit {exc.returncode}); "
                           "its messages are above") from exc


@app.command("start")
def start(port: int = PortOpt, verbose: bool = VerboseOpt):
    """Start the local broker, or reuse the one running on PORT, and print its bootstrap address."""
    settings()
    if not kafka_local.jars_cached():
        say(f"first start: resolving Kafka's jars (~{kafka_local.JARS_MB} MB) from Maven Central into "
            f"{kafka_local.jar_cache()} (once; a minute or two)")
    typer.echo(_script("start", port, kafka_local.start))


@app.command("stop")
def stop(port: int = PortOpt, verbose: bool = VerboseOpt):
    """Stop the local broker on PORT (SIGTERM, then SIGKILL after a grace period)."""
    settings()
    _script("stop", port, kafka_local.stop)


@app.command("status")
def status(port: int = PortOpt, verbose: bool = VerboseOpt):
    """Print the local broker's bootstrap address; exit code 3 when none runs on PORT."""
    settings()
    addr = _script("status", port, kafka_local.status)
    if addr is None:
        raise CommandError(f"no local broker on port {port}: start one with `dae kafka start --port {port}`",
                           code=3)
    typer.echo(addr)
