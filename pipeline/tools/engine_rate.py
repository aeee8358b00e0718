"""What the model itself serves on a device, without Kafka: samples/s of the worker's forward path.

`dae bench` measures the whole worker through a broker; on a GPU host the broker and the Python
client bound that long before the device does. This measures the ceiling beside it, for registry
versions at several micro-batch sizes:

- ``engine``: :meth:`InferenceEngine.infer` exactly as the worker calls it, numpy windows in and out
  (host → pinned buffer → device → host, standardisation and reconstruction error included);
- ``device``: the same forward path on windows already on the device (no copies), float32 and,
  on CUDA, bf16 autocast.

Samples/s counts each new sample once: windows/s × the model's hop (each sample sits in
window/hop windows). ``procs`` > 1 runs that many processes at once, each with its own engine on
the same device, and sums their rates (several workers sharing one GPU). Each figure is the
median of timed repeats after a warm-up; a repeat runs whole passes for at least ``min_s`` seconds.

    python -m pipeline.tools.engine_rate --registry R --versions v1,v2 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from models.forward import forward_rows
from pipeline.inference.engine import InferenceEngine

BATCHES = (512, 4096, 32768)
REPEATS = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step, windows: int, hop: int, device: torch.device, min_s: float) -> float:
    """Median samples/s of ``step()`` (one pass over ``windows`` windows) over REPEATS timed repeats."""
    step()
    _sync(device)  # warm-up: allocations, kernel selection, pinned buffers
    rates = []
    for _ in range(REPEATS):
        n, t0 = 0, time.perf_counter()
        while True:
            step()
            n += 1
            _sync(device)
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        rates.append(n * windows * hop / dt)
    return statistics.median(rates)


def measure(registry: Path, version: str, device: str, batches=BATCHES, min_s: float = 0.2) -> list[dict]:
    """Rows of ``{version, arch, mode, batch, samples_per_s}`` for one registry version."""
    eng = InferenceEngine.from_source(registry, version, device=device)
    w, hop, dev = eng.window, eng.hop, eng.device
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        host = rng.standard_normal((b, 1, w)).astype(np.float32)
        rows.append({"mode": "engine", "batch": b,
                     "samples_per_s": _rate(lambda: eng.infer(host), b, hop, dev, min_s)})
        on_dev = torch.from_numpy(host.reshape(b, w)).to(dev)
        for bf16 in (False, True) if dev.type == "cuda" else (False,):
            def step(x=on_dev, bf16=bf16):
                with torch.inference_mode():
                    forward_rows(eng.model, x, autocast_bf16=bf16)
            rows.append({"mode": "device-bf16" if bf16 else "device", "batch": b,
                         "samples_per_s": _rate(step, b, hop, dev, min_s)})
    for r in rows:
        r.update(version=version, arch=eng.meta.arch, window=w, hop=hop, device=str(dev))
    return rows


def _engine_worker(args) -> tuple[float, float, float]:
    registry, version, device, batch, seconds, start_at = args
    torch.set_num_threads(1)
    eng = InferenceEngine.from_source(Path(registry), version, device=device)
    host = np.random.default_rng(0).standard_normal((batch, 1, eng.window)).astype(np.float32)
    eng.infer(host)  # warm-up before the common start
    while time.time() < start_at:
        time.sleep(0.001)
    n, t0, wall0 = 0, time.perf_counter(), time.time()
    while time.perf_counter() - t0 < seconds:
        eng.infer(host)
        n += 1
    return n * batch * eng.hop / (time.perf_counter() - t0), wall0, time.time()


def measure_procs(registry: Path, version: str, device: str, procs: int, batch: int = 4096,
                  seconds: float = 3.0) -> dict:
    """Summed samples/s of ``procs`` processes running the worker's engine path at once."""
    ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    start_at = time.time() + 8.0 + procs  # every process loaded and warm before the clock starts
    with ctx.Pool(procs) as pool:
        res = pool.map(_engine_worker, [(str(registry), version, device, batch, seconds, start_at)] * procs)
    rates = [r for r, _, _ in res]
    # The sum is a shared-device rate only if the processes ran at the same time: the fraction of
    # the timed window all of them were running (1.0 when every one was ready before start_at).
    overlap = min(1.0, max(0.0, min(t1 for _, _, t1 in res) - max(t0 for _, t0, _ in res)) / seconds)
    return {"version": version, "mode": "engine", "batch": batch, "procs": procs,
            "samples_per_s": float(sum(rates)), "per_process": [float(r) for r in rates],
            "overlap": round(overlap, 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--registry", type=Path, required=True)
    p.add_argument("--versions", required=True, help="comma-separated registry versions")
    p.add_argument("--device", default="auto")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--procs", default="", help="comma-separated process counts for the shared-device run")
    p.add_argument("--min-s", type=float, default=0.2)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    versions = [v for v in a.versions.split(",") if v]
    batches = [int(b) for b in a.batches.split(",") if b]
    report: dict = {"torch": torch.__version__, "rows": [], "procs": []}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    for v in versions:
        for r in measure(a.registry, v, a.device, batches, a.min_s):
            report["rows"].append(r)
            print(f"{r['version']} ({r['arch']}) {r['mode']:>11} batch {r['batch']:>6}: "
                  f"{r['samples_per_s'] / 1e6:10.2f} M samples/s", flush=True)
        for n in [int(x) for x in a.procs.split(",") if x]:
            r = measure_procs(a.registry, v, a.device, n)
            report["procs"].append(r)
            print(f"{v} engine, {n} processes, batch {r['batch']}: {r['samples_per_s'] / 1e6:.2f} M samples/s "
                  f"(all running together {100 * r['overlap']:.0f} % of the time)", flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
