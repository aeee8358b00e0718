"""The topics a `dae bench` run creates for itself, removed when it ends.

A run writes its input several times over (a backlog and a paced copy per leg, and each leg's output):
gigabytes per run at the long settings, kept by the broker for its retention (24 h on the local one),
so repeated runs filled the disk. Every topic and consumer group a run creates is named under one
prefix of its own, :data:`PREFIX` (``dae.bench.<run>.``; a worker's state topic is ``<group>.state``, so
under it too), and :func:`delete_run_topics` removes exactly those: never a topic of another run or of
the service, even on a shared broker. ``dae bench --keep-topics`` keeps them.
"""

from __future__ import annotations

import logging
import uuid

from pipeline.kafka.clients import make_admin
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

RUN = uuid.uuid4().hex[:8]
PREFIX = f"dae.bench.{RUN}."
_named = [0]  # names handed out by this process


def bench_name(kind: str) -> str:
    """A new topic or group name of this run, e.g. ``dae.bench.<run>.raw-1a2b3c``."""
    _named[0] += 1
    return f"{PREFIX}{kind}-{uuid.uuid4().hex[:6]}"


def named() -> int:
    """How many names this run has handed out (0: it has created nothing to delete)."""
    return _named[0]


def delete_run_topics(k: KafkaSettings, prefix: str = PREFIX) -> list[str]:
    """Delete the topics whose names start with ``prefix`` (this run's); returns their names."""
    admin = make_admin(k)
    try:
        mine = sorted(t for t in admin.list_topics() if t.startswith(prefix))
        if mine:
            admin.delete_topics(mine)
        return mine
    finally:
        admin.close()
