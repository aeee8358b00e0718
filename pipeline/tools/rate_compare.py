"""The rate-generic fallback model against dedicated models on the same data (docs/models.md,
"Rate-generic fallback model").

For every rate R of ``--rates``: a dedicated model (``dae train --sample-rate R``'s recipe) and the
rate-generic model (``dae train --rate-generic``'s recipe), both with the same step budget, scored by
``models.evaluation.evaluate`` on the evaluation's signals generated at R (the held-out families and
the seen ones, new seeds) at one noise level (σ 0.3162, 10 dB input SNR), through the worker's
windowing and engine. The dedicated model of ``--reference-rate`` (default 1 kHz) is also scored at
every rate, as "a model for another rate" (what serving a rate without its own model means today,
``dae denoise --force``). Checkpoints are kept in ``OUT/models`` and reused when present.

    python -m pipeline.tools.rate_compare --rates 100,360,1000,16000 --steps 3000 --out runs/rate_generic
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from models.checkpoint import load_checkpoint, save_checkpoint
from models.evaluation import ALL_FAMILIES, EvalConfig, evaluate
from models.signals.families import FAMILIES
from models.signals.heldout import HELDOUT_FAMILIES
from models.training import DEFAULT_RATE_RANGE, best_config, rate_generic_config, train_synthetic

LEVEL = round(10 ** -0.5, 4)  # σ 0.3162 × the signal RMS: 10 dB input SNR


def _denoiser(model, meta):
    from pipeline.inference.engine import InferenceEngine
    from pipeline.stream.denoiser import denoise_signal

    engine = InferenceEngine(model, meta, device="cpu")
    return lambda x: denoise_signal(engine, x)


def _get(path: Path, make_cfg, log) -> tuple:
    if (path / "model.json").is_file():
        log(f"{path.name}: loaded {path}")
        return load_checkpoint(path)
    cfg = make_cfg()
    log(f"{path.name}: training {cfg.steps:,} steps"
        + (f" across {cfg.rate_range[0]:g}-{cfg.rate_range[1]:g} Hz" if cfg.rate_range else f" at {cfg.sample_rate:g} Hz"))
    model, meta = train_synthetic(cfg, progress=False)
    meta = save_checkpoint(path, model, meta)
    log(f"{path.name}: {meta.training['seconds']:.0f} s, {meta.training['stop_detail']}")
    return model, meta


def compare(rates: list[float], steps: int, out: Path, rate_range=DEFAULT_RATE_RANGE, seed: int = 0,
            reference_rate: float = 1000.0, log=print) -> dict:
    """Train (or load) the models and score them; returns the JSON-ready results."""
    models_dir = Path(out) / "models"
    generic = _get(models_dir / "generic", lambda: rate_generic_config(rate_range, steps=steps, seed=seed), log)
    dedicated = {r: _get(models_dir / f"dedicated_{r:g}", lambda r=r: best_config(r, steps=steps, seed=seed), log)
                 for r in sorted(set(rates) | {reference_rate})}
    rows = []
    for r in rates:
        t0 = time.perf_counter()
        suite = {"dedicated": dedicated[r], "generic": generic}
        if r != reference_rate:
            suite[f"dedicated_{reference_rate:g}"] = dedicated[reference_rate]
        cfg = EvalConfig(sample_rate=r, levels=(LEVEL,), families=ALL_FAMILIES)
        res, _ = evaluate(suite, cfg, denoiser_factory=_denoiser, log=lambda m: None, measure_throughput=False)
        g = {name: m["gain_db"][f"{LEVEL:g}"] for name, m in res["methods"].items()}
        row = {"rate": r, "input_snr_db": res["input_snr_db_measured"][f"{LEVEL:g}"], "gain_db": g,
               "heldout": {n: float(np.mean([v[f] for f in HELDOUT_FAMILIES])) for n, v in g.items()},
               "seen": {n: float(np.mean([v[f] for f in FAMILIES])) for n, v in g.items()}}
        rows.append(row)
        log(f"{r:g} Hz: scored in {time.perf_counter() - t0:.0f} s; held-out dedicated {row['heldout']['dedicated']:+.2f}, "
            f"generic {row['heldout']['generic']:+.2f} dB")
    return {"rates": rates, "steps": steps, "rate_range": list(rate_range), "seed": seed, "sigma": LEVEL,
            "reference_rate": reference_rate, "rows": rows,
            "models": {name: {"train_seconds": m.training["seconds"], "steps": m.training["steps"],
                              "stop_detail": m.training["stop_detail"], "rates": m.rates_label()}
                       for name, (_, m) in [("generic", generic)]
                       + [(f"dedicated_{r:g}", d) for r, d in dedicated.items()]}}


def table(results: dict) -> str:
    ref = f"dedicated_{results['reference_rate']:g}"
    head = ("rate Hz", "held-out: dedicated", "generic", "Δ", f"{ref} model", "best baseline",
            "seen: dedicated", "generic", "Δ", "ecg: dedicated", "generic", f"{ref} model")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for row in results["rows"]:
        h, s, e = row["heldout"], row["seen"], {n: v["ecg"] for n, v in row["gain_db"].items()}
        other = lambda d: d.get(ref, d["dedicated"])  # at the reference rate it is the dedicated model
        lines.append(" | ".join([f"{row['rate']:g}", f"{h['dedicated']:+.2f}", f"{h['generic']:+.2f}",
                                 f"{h['generic'] - h['dedicated']:+.2f}", f"{other(h):+.2f}",
                                 f"{h['best_baseline']:+.2f}", f"{s['dedicated']:+.2f}", f"{s['generic']:+.2f}",
                                 f"{s['generic'] - s['dedicated']:+.2f}", f"{e['dedicated']:+.2f}",
                                 f"{e['generic']:+.2f}", f"{other(e):+.2f}"]))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,360,1000,16000", help="comma-separated rates (Hz) to score at")
    ap.add_argument("--steps", type=int, default=3000, help="training steps of every model (the same budget)")
    ap.add_argument("--range", default=f"{DEFAULT_RATE_RANGE[0]:g}:{DEFAULT_RATE_RANGE[1]:g}",
                    help="the rate-generic model's range LO:HI (Hz)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/rate_generic"))
    a = ap.parse_args(argv)
    lo, hi = (float(x) for x in a.range.split(":"))
    t0 = time.perf_counter()
    results = compare([float(r) for r in a.rates.split(",")], a.steps, a.out, (lo, hi), a.seed)
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "rate_compare.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\n{a.out / 'rate_compare.json'}; {results['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
