"""What every ``dae`` command shares: its options, the settings loader, logging, the broker check
and the input-file check. Failures are raised as exceptions and turned into one line by
``pipeline.cli.errors.DaeGroup``; commands never print their own error lines.

Only pydantic settings are imported here: torch, kafka and the model code are imported inside the
commands, so ``dae --help`` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.errors import BrokerUnreachable, CommandError, Invocation, short_reason
from pipeline.settings import KafkaSettings, Settings, load_settings

# How long the up-front broker check waits for a TCP connection (a refused one fails at once).
BROKER_CHECK_S = 10.0
RECORDINGS = ".npy, .wav or .csv"


def setting_help(text: str, name: str) -> str:
    """``text`` plus the setting's variable and default, for an option that overrides setting ``name``
    (e.g. "kafka.bootstrap_servers"); the option itself defaults to None so the environment applies."""
    section, field = name.split(".")
    value = Settings.model_fields[section].annotation.model_fields[field].default
    value = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else value
    return f"{text} (env DAE_{section.upper()}__{field.upper()}; default {value})"


def _verbose(value: bool) -> bool:
    if value:
        Invocation.verbose = True
        setup_logging(True)
    return value


BootstrapOpt = typer.Option(
    None, "--bootstrap", help=setting_help("Kafka bootstrap servers, HOST:PORT[,HOST:PORT]", "kafka.bootstrap_servers"))
RegistryOpt = typer.Option(None, "--registry", help=setting_help("Model registry directory", "model.registry"))
ModelOpt = typer.Option(
    None, "--model", show_default="the registry's current version",
    help="Registry version (e.g. v3) or a checkpoint directory")
VerboseOpt = typer.Option(
    False, "--verbose", "-v", callback=_verbose, is_eager=True,
    help="Debug logging, and the full traceback when the command fails")


def settings(bootstrap: Optional[str] = None, registry: Optional[Path] = None, **sections) -> Settings:
    """Settings from the environment and ``.env`` with the command's flags on top (unset flags are
    None and leave the environment's value). Remembered for the error messages of this command."""
    s = load_settings(
        kafka={"bootstrap_servers": bootstrap, **sections.pop("kafka", {})},
        model={"registry": registry, **sections.pop("model", {})},
        **sections,
    )
    Invocation.settings = s
    return s


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with --verbose) on stderr; kafka-python's own chatter from WARNING only."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("kafka").setLevel(logging.INFO if verbose else logging.WARNING)


def require_broker(k: KafkaSettings) -> None:
    """Fail at once, naming the address, when no broker answers (before any long work)."""
    from pipeline.tools.kafka_local import check_broker

    try:
        check_broker(k, timeout_s=BROKER_CHECK_S)
    except ConnectionError as exc:
        raise BrokerUnreachable(k.bootstrap_servers, short_reason(exc)) from exc


def input_path(path: Path, what: str = f"a recording ({RECORDINGS})", directory_ok: bool = False) -> Path:
    """``path`` if it exists (a file, or a folder when ``directory_ok``), else a one-line error."""
    if not path.exists():
        raise CommandError(f"{path} does not exist: give the path of {what}")
    if path.is_dir() and not directory_ok:
        raise CommandError(f"{path} is a directory: give the path of {what}")
    return path


def say(message: str) -> None:
    """A progress line for the user, on stderr (stdout stays for results)."""
    typer.echo(message, err=True)
