"""The `dae` command: the sub-apps of this package joined under one root.

Every option also comes from the environment (DAE_ prefix, __ for nesting, e.g.
DAE_KAFKA__BOOTSTRAP_SERVERS) or a .env file; flags given on the command line win. A failure the
user can fix is one line on stderr and exit code 2 (--verbose adds the traceback).
"""

from __future__ import annotations

import sys

import typer

from pipeline.cli import alerts, demo, denoise, evaluate, kafka, models, retrain, stream, train, worker
from pipeline.cli.errors import DaeGroup

app = typer.Typer(
    cls=DaeGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold credentials (kafka.sasl_password)
    help="Real-time denoising of sensor and audio streams on Kafka. Every option also comes from the "
    "environment (DAE_ prefix, __ for nesting, e.g. DAE_KAFKA__BOOTSTRAP_SERVERS) or a .env file; flags "
    "win. A failure you can fix is one line and exit code 2; add --verbose for the traceback.",
)
for sub in (worker, train, stream, retrain, demo, evaluate, denoise, alerts):
    app.add_typer(sub.app)
app.add_typer(kafka.app, name="kafka")
app.add_typer(models.app, name="models")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
