"""Helpers to run real workers (thread or subprocess) against the test broker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

from pipeline.inference.engine import InferenceEngine
from pipeline.worker import Worker


@contextmanager
def worker_thread(settings, **worker_kw):
    engine = InferenceEngine.from_source(settings.model.registry, settings.model.version, device="cpu")
    w = Worker(settings, engine, **worker_kw)
    w.start()
    errors: list[BaseException] = []

    def target():
        try:
            w.run()
        except BaseException as exc:  # surfaced in the test below
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield w
    finally:
        w.stop_event.set()
        t.join(timeout=30)
    assert not t.is_alive(), "worker did not stop within 30 s"
    if errors:
        raise errors[0]


def worker_env(settings) -> dict:
    k = settings.kafka
    env = os.environ.copy()
    env.update(
        {
            "DAE_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
            "DAE_KAFKA__RAW_TOPICS": '["' + '","'.join(k.raw_topics) + '"]',
            "DAE_KAFKA__CLEAN_TOPIC": k.clean_topic,
            "DAE_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
            "DAE_KAFKA__ALERTS_TOPIC": k.alerts_topic,
            "DAE_KAFKA__GROUP_ID": k.group_id,
            "DAE_MODEL__REGISTRY": str(settings.model.registry),
            "DAE_MODEL__DEVICE": "cpu",
            "DAE_METRICS__ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def worker_process(settings, log_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.app", "worker"],
        env=worker_env(settings),
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
