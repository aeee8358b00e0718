"""Helpers to run real workers (thread or subprocess) against the test broker."""

from __future__ import annotations

import json
import os
import signal
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
            "DAE_KAFKA__SESSION_TIMEOUT_MS": str(k.session_timeout_ms),
            "DAE_WORKER__DELIVERY": settings.worker.delivery,
            "DAE_WORKER__COMMIT_INTERVAL_S": str(settings.worker.commit_interval_s),
            "DAE_WINDOW__IDLE_FLUSH_S": str(settings.window.idle_flush_s),
            "DAE_MODEL__REGISTRY": str(settings.model.registry),
            "DAE_MODEL__DEVICE": "cpu",
            "DAE_METRICS__ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name, value in (("DAE_KAFKA__GROUP_INSTANCE_ID", k.group_instance_id), ("DAE_KAFKA__STATE_TOPIC", k.state_topic)):
        if value is not None:
            env[name] = value
        else:
            env.pop(name, None)
    return env


def worker_process(settings, log_path) -> subprocess.Popen:
    """``dae worker`` in a subprocess with these settings (so that it can be killed with SIGKILL)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.app", "worker"],
        env=worker_env(settings),
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


# The zygote: imports the worker's modules (torch included) once, then forks a worker process per
# request. A fork is a real process (SIGKILL kills it like any other), started in well under a
# second instead of an interpreter start and torch import (seconds, and far more on a busy machine).
_ZYGOTE = r"""
import json, os, signal, sys
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps killed workers
import pipeline.cli.app, pipeline.inference.engine, pipeline.worker  # the heavy imports, once
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["dae", "worker"]
        code = 0
        try:
            pipeline.cli.app.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
"""


class Zygote:
    """Forks ``dae worker`` processes from a warm interpreter (see ``_ZYGOTE``)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def spawn(self, settings, log_path) -> "Forked":
        self.proc.stdin.write(json.dumps({"env": worker_env(settings), "log": str(log_path)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        return Forked(int(line))

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Forked:
    """A forked worker: the subset of ``subprocess.Popen`` the tests use."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 0
        return None

    def send_signal(self, sig) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        wait_for(lambda: self.poll() is not None, timeout, 0.05, f"worker {self.pid} to exit")
        return 0


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
