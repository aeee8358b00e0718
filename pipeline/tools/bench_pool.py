"""`dae bench`'s leg (b-procs): ``dae worker --processes N`` (pipeline.tools.pool) on the same input
as the single-process worker leg (b), as a separate command would run it.

The pool's children are separate processes, so this leg measures from the outside: a reader on the
cleaned topic counts the output samples, and the rate comes from the records' own timestamps (set
by the workers' producers when each was sent): the samples of every record after the first
millisecond's over the span from the first record's timestamp to the last one's. So the group
join and the first batch are excluded, as in the other legs, and the reader's polling does not
count (reading the time of arrival instead, a small input that arrives in one poll measured a
span of nearly zero: 1.7 G samples/s in a dry run). A span under MIN_SPAN_S cannot be timed: NaN.
Latency is not measured here (the input record of an output is the worker's knowledge; leg (b)
measures it for the same code): the leg has no latency phase and reports NaN.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

from pipeline.kafka.clients import ensure_topics, make_consumer
from pipeline.settings import Settings
from pipeline.tools.bench_topics import bench_name

# A pool's SIGTERM-to-exit allowance (each child finishes its batch, flushes and commits).
STOP_TIMEOUT_S = 60.0
# Output timestamps have millisecond resolution: a shorter span says nothing about the rate.
MIN_SPAN_S = 0.2


class PoolLeg:
    measures_latency = False  # see the module docstring
    def __init__(self, s: Settings, topic: str, n_samples: int, n_streams: int, processes: int,
                 name: str | None = None):
        from models.registry import ModelRegistry

        self.name = name or f"worker, {processes} processes (b-procs)"
        tag = uuid.uuid4().hex[:6]
        self.clean = f"{topic}.clean-{tag}"
        ensure_topics(s.kafka, [self.clean])
        self.model = s.model.version or ModelRegistry(s.model.registry).current()
        window = ModelRegistry(s.model.registry).meta(self.model).window
        env = dict(os.environ)
        env.update({
            "DAE_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "DAE_KAFKA__RAW_TOPICS": json.dumps([topic]),
            "DAE_KAFKA__CLEAN_TOPIC": self.clean,
            "DAE_KAFKA__GROUP_ID": bench_name("g-pool"),
            "DAE_MODEL__REGISTRY": str(s.model.registry),
            "DAE_MODEL__VERSION": self.model,
            "DAE_MODEL__DEVICE": s.model.device,
            "DAE_METRICS__ENABLED": "false",
        })
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.app", "worker", "--processes",
                                      str(processes)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.reader = make_consumer(s.kafka, self.clean, group_id=None)
        self.target = n_samples - n_streams * window  # stream tails wait for the idle flush
        self.out = 0
        self.first_records: float | None = None
        self._stamps: list[tuple[int, int]] = []  # (record timestamp in ms, samples) of each output
        self.lat: list[float] = []

    def pump(self) -> int:
        if self.proc.poll() is not None:
            raise RuntimeError(f"dae worker --processes exited with code {self.proc.returncode}")
        got = 0
        for recs in self.reader.poll(timeout_ms=50).values():
            for m in recs:
                got += 1
                n = len(m.value) // 4
                self.out += n
                self._stamps.append((m.timestamp, n))
        if got and self.first_records is None:
            self.first_records = time.perf_counter()
        return got

    def done(self) -> bool:
        return self.out >= self.target

    def timed(self) -> tuple[int, float]:
        """(samples, seconds) between the first output record's timestamp and the last one's;
        seconds is NaN when the span is under MIN_SPAN_S."""
        return timed_span(self._stamps)

    def close(self) -> None:
        self.reader.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError("dae worker --processes did not stop within 60 s of SIGTERM") from None


def timed_span(stamps: list[tuple[int, int]]) -> tuple[int, float]:
    """(samples after the first millisecond, span in seconds) of ``(timestamp_ms, samples)`` pairs;
    the span is NaN when it is under MIN_SPAN_S (too short to time)."""
    if not stamps:
        return 0, float("nan")
    first = min(t for t, _ in stamps)
    last = max(t for t, _ in stamps)
    after = sum(n for t, n in stamps if t > first)
    span = (last - first) / 1000.0
    return after, span if span >= MIN_SPAN_S else float("nan")
