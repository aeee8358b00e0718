"""One line per failure: the exceptions a user can do something about, mapped to a sentence that
names the setting, file or broker and says what to do.

The root group of the ``dae`` app (:class:`DaeGroup`) catches them around every command, prints
``error: <one line>`` on stderr and exits with code 2 (1 for a failure during the run, e.g. a worker
that lost its broker). ``--verbose`` prints the traceback first. Exceptions not listed here are bugs
and keep their traceback.

Exception classes of modules that were never imported cannot have been raised, so they are looked
up in ``sys.modules`` instead of importing torch or kafka just to handle an error.
"""

from __future__ import annotations

import errno
import sys
import traceback

import typer
from typer.core import TyperGroup

KAFKA_START = "`dae kafka start`"


class Invocation:
    """What the running command told the error handler: --verbose, and the settings it loaded (to
    name the broker). Reset by :class:`DaeGroup` before each command; one command runs at a time."""

    verbose: bool = False
    settings = None

    @classmethod
    def reset(cls) -> None:
        cls.verbose, cls.settings = False, None


class CommandError(Exception):
    """A failure the user can fix; the message says what and how (exit code 2 unless ``code``)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class BrokerUnreachable(ConnectionError):
    """No Kafka broker answered at ``bootstrap``; ``reason`` is the short cause, if known."""

    def __init__(self, bootstrap: str, reason: str = ""):
        super().__init__(broker_message(bootstrap, reason))
        self.bootstrap = bootstrap


def broker_message(bootstrap: str, reason: str = "") -> str:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    start = KAFKA_START
    if host in ("127.0.0.1", "localhost") and port.isdigit():
        from pipeline.tools.kafka_local import DEFAULT_PORT

        if int(port) != DEFAULT_PORT:
            start = f"`dae kafka start --port {port}`"
    return (f"no Kafka broker answers at {bootstrap}{f' ({reason})' if reason else ''}: start the local one "
            f"with {start}, or point --bootstrap (env DAE_KAFKA__BOOTSTRAP_SERVERS) at a running broker")


def short_reason(exc: BaseException) -> str:
    """A few words for why a connection failed, from kafka-python's wordy messages."""
    text = str(exc)
    for needle, words in (("ECONNREFUSED", "connection refused"), ("DNS lookup failed", "unknown host"),
                          ("timed out", "timed out"), ("NoBrokersAvailable", "no broker available")):
        if needle in text or needle == type(exc).__name__:
            return words
    return ""


def settings_message(exc) -> str:
    """A pydantic ValidationError of the settings as one line: each field, its variable, the problem."""
    parts = []
    for e in exc.errors():
        name = ".".join(str(p) for p in e["loc"])
        var = "DAE_" + name.upper().replace(".", "__")
        got = e.get("input")
        got = f" = {got!r}" if isinstance(got, (str, int, float)) else ""
        parts.append(f"{name}{got} (env {var}): {e['msg']}")
    return ("invalid setting " + "; ".join(parts)
            + " - fix or unset it (environment, .env file or the matching flag)")


def _cls(module: str, name: str):
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _isinstance(exc: BaseException, *names: tuple[str, str]) -> bool:
    return any(c is not None and isinstance(exc, c) for c in (_cls(m, n) for m, n in names))


def describe(exc: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for an exception a user can act on, else None (a bug: keep the traceback)."""
    if isinstance(exc, CommandError):
        return str(exc), exc.code
    if _isinstance(exc, ("pydantic", "ValidationError"), ("pydantic_core", "ValidationError")):
        return settings_message(exc), 2
    if _isinstance(exc, ("pipeline.kafka.clients", "KafkaAuthError")):
        return str(exc), 2
    settings = Invocation.settings
    bootstrap = settings.kafka.bootstrap_servers if settings is not None else "the configured address"
    if isinstance(exc, BrokerUnreachable):
        return str(exc), 2
    if _isinstance(exc, ("kafka.errors", "NoBrokersAvailable"), ("kafka.errors", "KafkaConnectionError"),
                   ("kafka.errors", "KafkaTimeoutError")) or isinstance(exc, ConnectionError):
        return broker_message(bootstrap, short_reason(exc)), 2
    if _isinstance(exc, ("models.registry", "RegistryError")):
        return str(exc), 2
    if _isinstance(exc, ("models.checkpoint", "CheckpointError")):
        return f"model checkpoint: {exc}", 2
    if _isinstance(exc, ("pipeline.tools.fileio", "SignalFileError"),
                   ("pipeline.tools.simulate", "SimulateError")):
        return str(exc), 2
    if _isinstance(exc, ("pipeline.kafka.producer", "FatalWorkerError")):
        return f"stopped: {exc}", 1
    if isinstance(exc, OSError):
        return _os_message(exc)
    return None


def _os_message(exc: OSError) -> tuple[str, int] | None:
    if exc.errno == errno.EADDRINUSE:
        return (f"the metrics port is taken ({exc.strerror}): choose another with --metrics-port or "
                "DAE_METRICS__PORT, or turn the endpoint off with DAE_METRICS__ENABLED=false"), 2
    if isinstance(exc, FileNotFoundError) and exc.filename is None:
        return str(exc), 2  # the project's own "not found" messages say what to do
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}", 2
    return None


class DaeGroup(TyperGroup):
    """The root group: runs the command and turns a known exception into one line on stderr."""

    def invoke(self, ctx):
        Invocation.reset()
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # usage errors (click's) are no match below and pass through
            known = describe(exc)
            if known is None:
                raise
            message, code = known
            if Invocation.verbose:
                traceback.print_exc(file=sys.stderr)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code) from None
