"""`dae kafka start|stop|status`: the project's local single-node KRaft broker (deploy/kafka)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

from pipeline.settings import KafkaSettings

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka.sh"
DEFAULT_PORT = 19092
# What deploy/kafka/pom.xml resolves from Maven Central (Kafka 4.1 and its runtime dependencies).
JARS_MB = 45


def _run(cmd: str, port: int | None, check: bool = True) -> subprocess.CompletedProcess:
    if not SCRIPT.exists():
        raise FileNotFoundError(f"{SCRIPT} not found: run from a checkout of the project")
    args = ["bash", str(SCRIPT), cmd] + ([str(port)] if port else [])
    return subprocess.run(args, check=check, stdout=subprocess.PIPE, text=True, env=os.environ.copy())


def check_broker(k: KafkaSettings, timeout_s: float = 10.0) -> None:
    """``verify_connection`` (ConnectionError naming the address when no broker answers) without
    kafka-python's own log lines about the failed attempt: the caller reports it once."""
    from pipeline.kafka.clients import verify_connection

    conn_log = logging.getLogger("kafka.conn")
    propagate, conn_log.propagate = conn_log.propagate, False
    try:
        verify_connection(k, timeout_s=timeout_s)
    finally:
        conn_log.propagate = propagate


def jar_cache() -> Path:
    """Where kafka.sh keeps the broker's jars (DAE_KAFKA_HOME, else ~/.cache/dae/kafka-<version>)."""
    home = os.environ.get("DAE_KAFKA_HOME")
    if home:
        return Path(home)
    m = re.search(r"<kafka.version>(.*?)</kafka.version>", (SCRIPT.parent / "pom.xml").read_text())
    return Path.home() / ".cache" / "dae" / f"kafka-{m.group(1) if m else 'unknown'}"


def jars_cached() -> bool:
    """True once kafka.sh has resolved the jars (it marks the cache complete)."""
    return (jar_cache() / ".complete").is_file()


def start(port: int | None = None) -> str:
    """Start (or reuse) the local broker; returns its bootstrap address."""
    return _run("start", port).stdout.strip().splitlines()[-1]


def stop(port: int | None = None) -> None:
    _run("stop", port)


def clean(port: int | None = None) -> None:
    """Stop the broker and delete its data directory (a throwaway broker: the tests' own)."""
    _run("clean", port)


def status(port: int | None = None) -> str | None:
    res = _run("status", port, check=False)
    return res.stdout.strip() if res.returncode == 0 else None
