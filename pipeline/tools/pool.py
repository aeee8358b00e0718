"""`dae worker --processes N`: N consumer-group members started by one command on one host.

Why processes: one kafka-python consumer and the per-window Python work of one worker keep about
one core busy (docs/bench.md); a host with more cores, or a GPU that one process cannot feed,
needs several members. Each child is a plain ``dae worker`` (the same settings, the same model
files: the registry is shared, each child loads and hot-swaps on its own), so a child behaves
exactly like a worker started by hand: it joins the group, gets its share of the partitions,
commits behind its acknowledged outputs.

- Metrics: one endpoint per child, on ``metrics.port + i`` (child 0 on the configured port); scrape
  them all (docs/deploy.md). Ports instead of prometheus-client's multiprocess mode: every child's
  metrics stay exact, gauges included, and nothing shares a directory.
- Static membership: with ``kafka.group_instance_id`` set, child i uses ``<id>-<i>`` (instance ids
  must be unique in a group).
- Threads: each child gets ``max(1, cores // N)`` intra-op threads (``OMP_NUM_THREADS``), so N
  children do not oversubscribe the cores. On CUDA hosts child i sees GPU ``i % gpus``.
- SIGTERM/SIGINT: forwarded to every child; each finishes its in-flight batch, flushes, commits and
  exits; the pool exits once all have (code 0 only if every child exited 0).
- A child that dies: restarted (with its index, port and instance id) if it had run for at least
  ``MIN_UPTIME_S``; a child that dies sooner is a configuration or start-up error, and the pool
  stops the others and exits with its code rather than loop.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# A child that exits (non-zero) sooner than this after its start is not restarted: a start-up error.
MIN_UPTIME_S = 10.0
# Between two checks of the children.
POLL_S = 0.2


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - no torch CUDA runtime
        return 0


# Worker processes per GPU under ``auto``: each process is bound by its CPU side (the Kafka client
# and the alert engine), not by the GPU. Measured on one H200 with 16 cores (docs/bench.md, GPU):
# 4 processes served 1.9x one, 8 no more than 4. So up to this many per GPU, one per 4 cores.
PROCS_PER_GPU_MAX = 4
CORES_PER_GPU_PROC = 4


def resolve_processes(value: str, device: str, *, cores: int | None = None, gpus: int | None = None) -> int:
    """``N`` (>= 1) or ``auto``: with the model on CUDA, per GPU one process per
    :data:`CORES_PER_GPU_PROC` cores, 1 .. :data:`PROCS_PER_GPU_MAX`; else one per core. ``cores`` and
    ``gpus`` default to this host's."""
    if value == "auto":
        cores = cpu_count() if cores is None else cores
        if device not in ("auto", "cuda"):
            gpus = 0
        elif gpus is None:
            gpus = gpu_count()
        if gpus:
            per_gpu = cores // (CORES_PER_GPU_PROC * gpus)
            return gpus * max(1, min(PROCS_PER_GPU_MAX, per_gpu))
        return max(1, cores)
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--processes must be a number >= 1 or 'auto', got {value!r}") from None
    if n < 1:
        raise ValueError(f"--processes must be >= 1 or 'auto', got {n}")
    return n


def child_env(base: dict, i: int, n: int, *, metrics_port: int, instance_id: str | None, cores: int,
              gpus: int) -> dict:
    """The environment of child ``i`` of ``n`` (settings travel as DAE_* variables)."""
    env = dict(base)
    env["DAE_METRICS__PORT"] = str(metrics_port + i)
    if instance_id:
        env["DAE_KAFKA__GROUP_INSTANCE_ID"] = f"{instance_id}-{i}"
    env["OMP_NUM_THREADS"] = str(max(1, cores // n))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
    env["DAE_POOL_CHILD"] = str(i)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Child:
    index: int
    proc: subprocess.Popen
    started: float
    restarts: int = 0


@dataclass
class Pool:
    """Runs ``argv`` (a ``dae worker`` command line without ``--processes``) N times."""

    argv: list[str]
    n: int
    metrics_port: int
    instance_id: str | None = None
    env: dict = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def _spawn(self, i: int) -> subprocess.Popen:
        env = child_env(self.env, i, self.n, metrics_port=self.metrics_port, instance_id=self.instance_id,
                        cores=cpu_count(), gpus=gpu_count())
        return subprocess.Popen(self.argv, env=env)

    def start(self) -> None:
        for i in range(self.n):
            self.children.append(Child(i, self._spawn(i), time.monotonic()))
        log.info("pool: %d workers started (pids %s), metrics on ports %d-%d", self.n,
                 ", ".join(str(c.proc.pid) for c in self.children), self.metrics_port, self.metrics_port + self.n - 1)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask every child to stop cleanly (each commits)."""
        self.stopping.set()
        for c in self.children:
            if c.proc.poll() is None:
                c.proc.send_signal(signum)

    def install_signal_handlers(self) -> None:
        def _stop(signum, _frame):
            log.info("pool: signal %s: stopping %d workers cleanly", signum, self.n)
            self.stop(signal.SIGTERM)

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self) -> int:
        """Supervise until every child has exited after a stop (or a start-up failure); the exit code."""
        if not self.children:
            self.start()
        failed = 0
        while True:
            alive = 0
            for c in self.children:
                rc = c.proc.poll()
                if rc is None:
                    alive += 1
                    continue
                if self.stopping.is_set():
                    if rc != 0:
                        failed = failed or rc
                    continue
                up = time.monotonic() - c.started
                if rc == 0:  # it stopped on its own (e.g. --max-seconds): the pool stops with it
                    log.info("pool: worker %d exited cleanly; stopping the others", c.index)
                    self.stop()
                    continue
                if up < MIN_UPTIME_S:
                    log.error("pool: worker %d exited with code %d after %.1f s (a start-up error): stopping "
                              "the others", c.index, rc, up)
                    failed = rc
                    self.stop()
                    continue
                log.error("pool: worker %d (pid %d) died with code %d after %.0f s: restarting it", c.index,
                          c.proc.pid, rc, up)
                c.proc, c.started, c.restarts = self._spawn(c.index), time.monotonic(), c.restarts + 1
                alive += 1
            if not alive and (self.stopping.is_set() or all(c.proc.poll() is not None for c in self.children)):
                return failed
            time.sleep(POLL_S)


def worker_argv(args: list[str]) -> list[str]:
    """This interpreter running ``dae worker`` with ``args``."""
    return [sys.executable, "-m", "pipeline.cli.app", "worker", *args]
