"""`dae worker --processes N` supervision (pipeline.tools.pool) without Kafka: the children are
small Python scripts standing in for workers, so restart, start-up failure and clean-stop rules
are tested exactly; tests/test_pool_kafka.py runs real workers."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from pipeline.tools import pool as pool_mod
from pipeline.tools.pool import Pool, child_env, resolve_processes


def test_resolve_processes():
    assert resolve_processes("3", "cpu") == 3
    assert resolve_processes("auto", "cpu") == pool_mod.cpu_count()
    for bad in ("0", "-2", "two", ""):
        with pytest.raises(ValueError, match="--processes"):
            resolve_processes(bad, "cpu")


@pytest.mark.parametrize("cores, gpus, device, want", [
    (16, 1, "cuda", 4),   # the measured host: 4 per GPU served 1.9x one, 8 no more
    (64, 1, "auto", 4),   # capped at PROCS_PER_GPU_MAX
    (8, 1, "cuda", 2),    # one per 4 cores
    (2, 1, "cuda", 1),    # at least one per GPU
    (16, 8, "cuda", 8),
    (16, 2, "cpu", 16),   # the model on the CPU: one per core, GPUs or not
    (6, 0, "auto", 6),
])
def test_auto_processes_per_gpu(cores, gpus, device, want):
    assert resolve_processes("auto", device, cores=cores, gpus=gpus) == want


def test_child_env_ports_instance_ids_threads_and_gpus():
    envs = [child_env({"X": "1"}, i, 3, metrics_port=9108, instance_id="w", cores=8, gpus=2) for i in range(3)]
    assert [e["DAE_METRICS__PORT"] for e in envs] == ["9108", "9109", "9110"]
    assert [e["DAE_KAFKA__GROUP_INSTANCE_ID"] for e in envs] == ["w-0", "w-1", "w-2"]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"2"} and all(e["X"] == "1" for e in envs)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    plain = child_env({"DAE_KAFKA__GROUP_INSTANCE_ID": "x"}, 1, 4, metrics_port=1, instance_id=None, cores=2, gpus=0)
    assert plain["OMP_NUM_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in plain


def _script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text("import os, signal, sys, time\ni = int(os.environ['DAE_POOL_CHILD'])\n" + body)
    return [sys.executable, str(path)]


def _run(pool: Pool, timeout: float = 90.0) -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(pool.run()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the pool did not return"
    return out[0]


def test_sigterm_reaches_every_child_and_each_exits_cleanly(tmp_path):
    argv = _script(tmp_path, """
done = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
open(f'{os.environ["OUT"]}/up-{i}', 'w').close()
while not done:
    time.sleep(0.05)
open(f'{os.environ["OUT"]}/committed-{i}', 'w').close()
""")
    p = Pool(argv, 3, metrics_port=9000, env={**os.environ, "OUT": str(tmp_path)})
    p.start()
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("up-*"))) < 3:  # every child has its SIGTERM handler
        assert time.monotonic() < deadline, "children not up after 60 s"
        time.sleep(0.05)
    threading.Timer(0.3, p.stop).start()
    assert _run(p) == 0
    assert sorted(f.name for f in tmp_path.glob("committed-*")) == ["committed-0", "committed-1", "committed-2"]


def test_a_child_dying_at_start_stops_the_pool_with_its_code(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_mod, "MIN_UPTIME_S", 60.0)  # "at start", however slow the interpreter starts
    argv = _script(tmp_path, """
if i == 1:
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
time.sleep(60)
""")
    p = Pool(argv, 2, metrics_port=9000)
    t0 = time.monotonic()
    assert _run(p) == 3
    # The pool stopped child 0 rather than wait for its 60 s sleep.
    assert time.monotonic() - t0 < 55 and all(c.proc.poll() is not None for c in p.children)
    assert all(c.restarts == 0 for c in p.children)


def test_a_child_dying_after_its_start_is_restarted(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_mod, "MIN_UPTIME_S", 0.5)
    argv = _script(tmp_path, """
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
runs = len([f for f in os.listdir(os.environ['OUT']) if f.startswith(f"run-{i}-")])
open(f"{os.environ['OUT']}/run-{i}-{time.monotonic_ns()}", 'w').close()
if i == 0 and runs == 0:
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
""")
    p = Pool(argv, 2, metrics_port=9000, env={**os.environ, "OUT": str(tmp_path)})
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(p.run()), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while (not p.children or p.children[0].restarts < 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.children[0].restarts == 1 and p.children[1].restarts == 0
    # The restarted child records its run once its interpreter is up (seconds on a busy machine).
    while len(list(tmp_path.glob("run-0-*"))) < 2 and time.monotonic() < deadline + 40:
        time.sleep(0.05)
    assert len(list(tmp_path.glob("run-0-*"))) == 2, "child 0 ran again, with its index"
    p.stop()
    t.join(20)
    assert out == [0]
