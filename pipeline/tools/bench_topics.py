"""The topics a `dae bench` run creates for itself, removed when it ends.

A run writes its input several times over (a backlog and a paced copy per leg, and each leg's output):
gigabytes per run at the long settings, kept by the broker for its retention (24 h on the local one),
so repeated runs filled the disk. Every topic and consumer group a run creates is named under one
prefix of its own, :data:`PREFIX` (``dae.bench.<run>.``; a worker's state topic is ``<group>.state``, so
under it too), and :func:`delete_run_topics` removes exactly those: never a topic of another run or of
the service, even on a shared broker. ``dae bench --keep-topics`` keeps them.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Callable, Iterator

from pipeline.kafka.clients import make_admin
from pipeline.settings import KafkaSettings

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


@contextlib.contextmanager
def run_topics(k: KafkaSettings, *, keep: bool, say: Callable[..., None]) -> Iterator[None]:
    """Around one bench invocation: on the way out, failed or not, delete the topics it created (only
    when it named any: one process may run several benches, and a run that never reached the broker
    has nothing to delete). A failed deletion is said, never raised: the figures are out already."""
    before = named()
    try:
        yield
    finally:
        if not keep and named() > before:
            try:
                gone = delete_run_topics(k)
                say(f"deleted this run's {len(gone)} topics ({PREFIX}*; --keep-topics keeps them)")
            except Exception as exc:
                say(f"could not delete this run's topics ({PREFIX}*): {type(exc).__name__}: {exc}", err=True)
