"""`dae kafka start|stop|status`: the project's local single-node KRaft broker (deploy/kafka)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka.sh"
DEFAULT_PORT = 19092


def _run(cmd: str, port: int | None, check: bool = True) -> subprocess.CompletedProcess:
    if not SCRIPT.exists():
        raise FileNotFoundError(f"{SCRIPT} not found: run from a checkout of the project")
    args = ["bash", str(SCRIPT), cmd] + ([str(port)] if port else [])
    return subprocess.run(args, check=check, stdout=subprocess.PIPE, text=True, env=os.environ.copy())


def start(port: int | None = None) -> str:
    """Start (or reuse) the local broker; returns its bootstrap address."""
    return _run("start", port).stdout.strip().splitlines()[-1]


def stop(port: int | None = None) -> None:
    _run("stop", port)


def status(port: int | None = None) -> str | None:
    res = _run("status", port, check=False)
    return res.stdout.strip() if res.returncode == 0 else None
