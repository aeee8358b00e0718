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


def ensure_broker(s: Settings) -> None:
    """Reuse a broker that answers at kafka.bootstrap_servers, else start the local one there."""
    from pipeline.tools import kafka_local
    from pipeline.kafka.clients import wait_for_broker

    try:
        wait_for_broker(s.kafka, timeout_s=3)
        return
    except ConnectionError:
        pass
    host, _, port = s.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise ConnectionError(f"no broker answers at {s.kafka.bootstrap_servers}")
    console.print(f"starting the local Kafka broker on port {port} (first run resolves its jars with Maven)")
    kafka_local.start(int(port))
    wait_for_broker(s.kafka, timeout_s=60)


def ensure_model(s: Settings, sample_rate: float) -> str:
    """The registry's current version if it serves ``sample_rate``, else train and promote one."""
    from models.registry import ModelRegistry
    from models.training import TrainConfig, train_synthetic

    reg = ModelRegistry(s.model.registry)
    cur = reg.current()
    if cur is not None and any(abs(r - sample_rate) < 1e-6 for r in reg.meta(cur).sample_rates):
        return cur
    console.print(f"no model for {sample_rate:g} Hz in {s.model.registry}: training one (< 1 min)")
    model, meta = train_synthetic(TrainConfig(sample_rate=sample_rate), progress=True)
    return reg.publish(model, meta, promote=True)


def run_demo(s: Settings, *, streams: int, seconds: float, sample_rate: float, snr_db: float, out: Path) -> bool:
    from pipeline.tools.capture import capture
    from pipeline.inference.engine import InferenceEngine
    from models.signals.families import snr_db as snr
    from pipeline.tools.simulate import simulate
    from pipeline.worker import Worker

    ensure_broker(s)
    version = ensure_model(s, sample_rate)
    tag = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    k = s.kafka.model_copy(update={
        "raw_topics": (f"dae.demo.{tag}.raw",),
        "clean_topic": f"dae.demo.{tag}.clean",
        "dead_letter_topic": f"dae.demo.{tag}.deadletter",
        "alerts_topic": f"dae.demo.{tag}.alerts",
        "group_id": f"dae-demo-{tag}",
    })
    s = s.model_copy(update={"kafka": k})
    engine = InferenceEngine.from_source(s.model.registry, version, device=s.model.device, dtype=s.model.dtype)
    console.print(f"model {version} ({engine.meta.arch}, window {engine.window}, hop {engine.hop}) on {engine.device}")
    w = Worker(s, engine)
    w.keep_latencies = True
    w.start()
    thread = threading.Thread(target=w.run, name="worker", daemon=True)
    thread.start()

    t0 = time.perf_counter()
    sim = simulate(k, streams=streams, sample_rate=sample_rate, seconds=seconds, snr_db=snr_db, seed=7)
    expected = {sid: len(x) for sid, x in sim.clean.items()}
    rep = capture(k, idle_s=10.0, max_seconds=120.0, expected=expected, out_dir=out / "captured")
    wall = time.perf_counter() - t0
    w.stop_event.set()
    thread.join(timeout=30)

    table = Table(title=f"dae demo: {streams} streams x {seconds:g} s at {sample_rate:g} Hz, model {version}")
    for col in ("stream", "family", "samples", "input SNR dB", "output SNR dB", "gain dB", "gaps", "dups"):
        table.add_column(col, justify="right" if col not in ("stream", "family") else "left")
    gains, ok = [], True
    from models.signals.families import FAMILIES

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
    total = sum(expected.values())
    lat = np.array(w.latencies) if w.latencies else np.array([np.nan])
    console.print(
        f"mean gain {np.nanmean(gains):+.2f} dB | {total} samples published, denoised and captured in "
        f"{wall:.2f} s wall ({total / wall:,.0f} samples/s; includes the {s.window.idle_flush_s:g} s idle wait "
        f"before stream tails are released) | latency to ack "
        f"p50 {np.percentile(lat, 50) * 1000:.1f} ms, p99 {np.percentile(lat, 99) * 1000:.1f} ms"
    )
    try:
        png = plot_excerpts(sim, rep, out / "demo.png", sample_rate)
        console.print(f"plot: {png}   captured streams: {out / 'captured'}")
    except PlottingUnavailable as exc:
        console.print(f"no plot ({exc}); captured streams: {out / 'captured'}")
    if not ok:
        console.print("[red]some streams came back incomplete[/red]")
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
