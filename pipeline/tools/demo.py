"""`dae demo`: the whole path on a local default, end to end, with a report a person can read.

broker (reused or started) → model (trained if the registry has none for the rate) → simulate
noisy streams → worker (in this process) → capture the cleaned topic → per-stream SNR table,
throughput, latency, and a PNG of noisy / clean / denoised excerpts.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings
from pipeline.tools.plotting import PlottingUnavailable, pyplot

log = logging.getLogger(__name__)
console = Console()


def ensure_broker(s: Settings) -> bool:
    """Reuse a broker that answers at kafka.bootstrap_servers, else start the project's local one when
    that is its default address. True when this call started it (it keeps running afterwards)."""
    from pipeline.kafka.clients import wait_for_broker
    from pipeline.tools import kafka_local

    addr = s.kafka.bootstrap_servers
    try:
        kafka_local.check_broker(s.kafka, timeout_s=5)
        console.print(f"reusing the Kafka broker already running at {addr}")
        return False
    except ConnectionError:
        host, _, port = addr.split(",")[0].strip().rpartition(":")
        if host not in ("127.0.0.1", "localhost") or port != str(kafka_local.DEFAULT_PORT):
            raise  # not the local default: starting a broker elsewhere is the user's call
    note = "" if kafka_local.jars_cached() else (
        f"; first start: resolving its jars (~{kafka_local.JARS_MB} MB) from Maven Central once")
    console.print(f"no broker at {addr}: starting the local Kafka broker on port {port}{note}")
    kafka_local.start(int(port))
    wait_for_broker(s.kafka, timeout_s=60)
    return True


def ensure_model(s: Settings, sample_rate: float) -> str:
    """The registry's current version if it serves ``sample_rate``, else train and promote one."""
    from models.registry import ModelRegistry
    from models.training import TrainConfig, train_synthetic

    reg = ModelRegistry(s.model.registry)
    cur = reg.current()
    if cur is not None and reg.meta(cur).serves_rate(sample_rate):  # a rate-generic model too
        return cur
    # One thread: the seed MLP comes out the same as with two, and next to other busy processes a
    # 2-thread run was many times slower (over 17 min at load ~9, where one thread took 108 s).
    cfg = TrainConfig(sample_rate=sample_rate, cpu_threads=1)
    console.print(f"no model for {sample_rate:g} Hz in {s.model.registry}: training the seed MLP once "
                  f"({cfg.steps:,} steps, about a minute on a quiet 2-core CPU, longer on a busy one)")
    model, meta = train_synthetic(cfg, progress=True)
    return reg.publish(model, meta, promote=True)


def demo_settings(s: Settings) -> Settings:
    """``s`` with topics and a consumer group of their own, so every demo starts from empty topics."""
    tag = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    k = s.kafka.model_copy(update={
        "raw_topics": (f"dae.demo.{tag}.raw",),
        "clean_topic": f"dae.demo.{tag}.clean",
        "dead_letter_topic": f"dae.demo.{tag}.deadletter",
        "alerts_topic": f"dae.demo.{tag}.alerts",
        "group_id": f"dae-demo-{tag}",
    })
    return s.model_copy(update={"kafka": k})


class Stages:
    """Wall time of each named stage, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._t
        self._t = now

    def line(self) -> str:
        return "stages: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in self.seconds.items())


def run_demo(s: Settings, *, streams: int, seconds: float, sample_rate: float, snr_db: float, out: Path) -> bool:
    from pipeline.inference.engine import InferenceEngine
    from pipeline.tools.capture import capture
    from pipeline.tools.simulate import simulate
    from pipeline.worker import Worker

    stages = Stages()
    started = ensure_broker(s)
    stages.done("broker")
    version = ensure_model(s, sample_rate)
    engine = InferenceEngine.from_source(s.model.registry, version, device=s.model.device, dtype=s.model.dtype)
    console.print(f"model {version} ({engine.meta.arch}, window {engine.window}, hop {engine.hop}) on {engine.device}")
    stages.done("model")
    s = demo_settings(s)
    k = s.kafka
    w = Worker(s, engine)
    w.keep_latencies = True
    w.start()
    thread = threading.Thread(target=w.run, name="worker", daemon=True)
    thread.start()
    stages.done("worker start")

    t0 = time.perf_counter()
    sim = simulate(k, streams=streams, sample_rate=sample_rate, seconds=seconds, snr_db=snr_db, seed=7)
    stages.done("simulate")
    expected = {sid: len(x) for sid, x in sim.clean.items()}
    # wait: the worker may still be joining its consumer group when capture starts.
    rep = capture(k, idle_s=10.0, max_seconds=120.0, expected=expected, out_dir=out / "captured", wait=True)
    wall = time.perf_counter() - t0
    stages.done("capture")
    w.stop_event.set()
    thread.join(timeout=30)

    ok = report(sim, rep, s, version, streams=streams, seconds=seconds, sample_rate=sample_rate)
    total = sum(expected.values())
    console.print(f"{total} samples published, denoised and captured in {wall:.2f} s wall "
                  f"({total / wall:,.0f} samples/s; includes the {s.window.idle_flush_s:g} s idle wait before "
                  f"stream tails are released)")
    console.print(latency_line(w.latencies, s.window.idle_flush_s))
    console.print(stages.line() + " (capture: until every stream was back whole, the idle flush included)")
    try:
        png = plot_excerpts(sim, rep, out / "demo.png", sample_rate)
        console.print(f"plot: {png}   captured streams: {out / 'captured'}")
    except PlottingUnavailable as exc:
        console.print(f"no plot ({exc}); captured streams: {out / 'captured'}")
    if started:
        console.print(f"the Kafka broker this demo started keeps running at {k.bootstrap_servers}: "
                      "stop it with `dae kafka stop`")
    if not ok:
        console.print("[red]some streams came back incomplete[/red]")
    return ok


def latency_line(latencies: list[float], idle_flush_s: float) -> str:
    """p50/p99 of the worker's latencies, and what they include."""
    lat = np.array(latencies) if latencies else np.array([np.nan])
    p50, p99 = np.percentile(lat, 50) * 1000, np.percentile(lat, 99) * 1000
    return (f"latency (a raw chunk's timestamp to the broker's ack of its cleaned samples): p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms. Both include waits a steady real-time stream does not see: the simulator "
            "publishes everything at once, while the worker is still joining its consumer group, and each "
            f"stream's last samples wait window.idle_flush_s = {idle_flush_s:g} s of silence before their tail "
            "is released (the p99). Live figures: dae bench (docs/bench.md).")


def report(sim, rep, s: Settings, version: str, *, streams: int, seconds: float, sample_rate: float) -> bool:
    """The per-stream table and mean gain; True when every stream came back whole."""
    from models.signals.families import FAMILIES
    from models.signals.families import snr_db as snr

    table = Table(title=f"dae demo: {streams} streams x {seconds:g} s at {sample_rate:g} Hz, model {version}")
    for col in ("stream", "family", "samples", "input SNR dB", "output SNR dB", "gain dB", "gaps", "dups"):
        table.add_column(col, justify="right" if col not in ("stream", "family") else "left")
    gains, ok = [], True
    for i, (sid, clean) in enumerate(sorted(sim.clean.items())):
        got = rep.streams.get(sid)
        complete = got is not None and got.shape[0] == len(clean) and rep.start.get(sid) == 0
        ok &= complete and not rep.gaps.get(sid)
        s_in = snr(clean, sim.noisy[sid])
        s_out = snr(clean, got[:, 0]) if complete else float("nan")
        gains.append(s_out - s_in)
        table.add_row(sid, FAMILIES[i % len(FAMILIES)], str(0 if got is None else got.shape[0]),
                      f"{s_in:.2f}", f"{s_out:.2f}", f"{s_out - s_in:+.2f}",
                      str(len(rep.gaps.get(sid, []))), str(rep.duplicates.get(sid, 0)))
    console.print(table)
    console.print(f"mean gain {np.nanmean(gains):+.2f} dB")
    return ok


def plot_excerpts(sim, rep, path: Path, sample_rate: float, n_streams: int = 4, seconds: float = 1.0) -> Path:
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(sim.clean)[:n_streams]
    fig, axes = plt.subplots(len(ids), 1, figsize=(11, 2.3 * len(ids)), squeeze=False)
    n = int(seconds * sample_rate)
    for ax, sid in zip(axes[:, 0], ids):
        start = len(sim.clean[sid]) // 2
        t = np.arange(start, start + n) / sample_rate
        ax.plot(t, sim.noisy[sid][start : start + n], color="0.75", lw=0.8, label="noisy input")
        ax.plot(t, sim.clean[sid][start : start + n], color="k", lw=1.0, label="clean truth")
        if sid in rep.streams:
            ax.plot(t, rep.streams[sid][start : start + n, 0], color="tab:red", lw=1.0, label="denoised")
        ax.set_title(sid, fontsize=9, loc="left")
        ax.set_xlabel("s")
    axes[0, 0].legend(loc="upper right", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
