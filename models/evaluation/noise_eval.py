"""Per-noise-type evaluation (issue 14, items 4-5): each model's SNR gain at 10 dB input SNR under
each kind of field noise, next to the classical baseline that fits that noise, tuned two ways.

Noise types (:data:`NOISE_TYPES`), each added to a whole signal (one ``(1, N)`` row of the
``models/noise_real.py`` corruptions) and set to 10 dB input SNR against the signal's RMS:

- ``white``: white Gaussian noise, exactly the σ = 0.316 noise of the white-noise evaluation
  (``signal_sets.noisy_copy`` with the same keys), so its figures match that table's 10 dB column;
- ``hum``: 50 Hz mains with 3 harmonics (amplitudes 1, 0.5, 0.25), its frequency wandering ±0.5 Hz
  over 10 s (:class:`~models.noise_real.PowerlineHum` defaults); needs a rate above 101 Hz;
- ``pink``, ``brown``: 1/f and 1/f² Gaussian noise (:class:`~models.noise_real.ColoredNoise`) over the
  whole signal (so brown noise is mostly a slow baseline wander);
- ``impulsive``: 0.5 % of samples hit by Pareto-tailed spikes (:class:`~models.noise_real.ImpulsiveNoise`),
  the spikes then scaled together to 10 dB input SNR;
- ``dropouts``: 10 % of samples lost in runs of 16 samples on average, read as zeros
  (:class:`~models.noise_real.Dropouts`); a zero-filled loss of 10 % of the samples is 10 dB input
  SNR on average (the measured figure is reported).

Baselines: for each noise type, the filters ``baselines.FITS`` lists for its kind (:data:`FIT_KIND`):
notch for hum, median for impulses, Savitzky–Golay / Wiener (and median for dropouts) otherwise.

- **validation-tuned** (``baseline_val``): every fitting filter tuned on separate validation signals
  of the same family (or a recording's first third) with the same noise, and the best of them on
  validation applied to the test signals: what a user who knows the sensor and its noise can set up;
- **per-signal tuned** (``baseline_oracle``): every fitting filter's grid tried on each test signal
  against its clean answer, the best kept: the yardstick users hold up. It can never be below the
  validation-tuned filter on the same signal (the same filters and grids; ``tests`` check it).

Cost: µs per window of each model (``models.cost.time_per_window``, measured side by side now at the
worker's batch), FLOPs per window, for a gain-vs-cost (Pareto) table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.checkpoint import ModelMeta
from models.evaluation import baselines
from models.evaluation.signal_sets import (
    EVAL_SEED,
    LEVELS,
    VAL_SEED,
    family_index,
    noisy_copy,
    parse_names,
    signal_set,
)
from models.noise_real import ColoredNoise, Dropouts, ImpulsiveNoise, PowerlineHum
from models.signals.families import FAMILIES, snr_db
from models.signals.heldout import HELDOUT_FAMILIES

NOISE_TYPES = ("white", "hum", "pink", "brown", "impulsive", "dropouts")
# Noise type -> the noise kind whose fitting baselines (baselines.FITS) compete.
FIT_KIND = {"white": "gaussian", "hum": "hum", "pink": "colored", "brown": "colored",
            "impulsive": "impulsive", "dropouts": "dropouts"}
SIGMA = LEVELS[1]  # 0.3162: noise RMS / signal RMS, 10 dB input SNR
INPUT_SNR_DB = -20.0 * math.log10(SIGMA)
MAINS_HZ = 50.0
IMPULSE_FRACTION = 0.005
DROPOUT_FRACTION = 0.1  # zero-filled: ≈ 10 dB input SNR (lost power / total power ≈ the fraction)
DROPOUT_RUN = 16.0

Denoiser = Callable[[np.ndarray], np.ndarray]
DenoiserFactory = Callable[[nn.Module, ModelMeta], Denoiser]


def parse_noises(spec: str) -> tuple[str, ...]:
    """``"all"`` or a comma-separated list of :data:`NOISE_TYPES`."""
    return parse_names(spec, NOISE_TYPES, {"all": NOISE_TYPES}, "noise type")


def applicable(noise: str, sample_rate: float) -> bool:
    """Hum needs its fundamental and drift below Nyquist; every other type fits any rate."""
    return noise != "hum" or MAINS_HZ + 0.5 < sample_rate / 2


def _generator(key: Sequence[int]) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def add_field_noise(clean: np.ndarray, noise: str, sample_rate: float, key: Sequence[int]) -> np.ndarray:
    """``clean`` (1-D) with noise type ``noise`` at 10 dB input SNR, reproducible from ``key``."""
    x = np.asarray(clean, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"add_field_noise: expected a 1-D signal, got shape {x.shape}")
    idx = NOISE_TYPES.index(noise)
    if noise == "white":  # the white-noise evaluation's σ = 0.316 noise, same keys: same numbers
        return noisy_copy(x, SIGMA, key)
    if not applicable(noise, sample_rate):
        raise ValueError(f"noise {noise!r} does not fit a {sample_rate:g} Hz signal")
    row = torch.from_numpy(x.astype(np.float64)).unsqueeze(0)
    g = _generator([*key, 1000 + idx])
    if noise == "hum":
        y = PowerlineHum(sample_rate, SIGMA, mains_hz=MAINS_HZ)(row, g)
    elif noise in ("pink", "brown"):
        y = ColoredNoise(SIGMA, exponent=1.0 if noise == "pink" else 2.0)(row, g)
    elif noise == "impulsive":
        n = ImpulsiveNoise(IMPULSE_FRACTION)(row, g) - row
        rms_x, rms_n = float(row.pow(2).mean().sqrt()), float(n.pow(2).mean().sqrt())
        y = row + (n * (SIGMA * rms_x / rms_n) if rms_n > 0 else n)
    else:
        y = Dropouts(DROPOUT_FRACTION, mean_length=DROPOUT_RUN, fill="zero")(row, g)
    return y.squeeze(0).numpy().astype(np.float32)


def fitting(noise: str) -> tuple[str, ...]:
    """The baselines that fit noise type ``noise``."""
    return baselines.FITS[FIT_KIND[noise]]


def tune_validation(noise: str, clean: Sequence[np.ndarray], noisy: Sequence[np.ndarray],
                    sample_rate: float) -> baselines.TunedBaseline:
    """Every fitting filter tuned on the validation pairs; the best of them on validation."""
    tuned = baselines.tune_for(FIT_KIND[noise], clean, noisy, sample_rate=sample_rate)
    return max(tuned.values(), key=lambda t: t.val_gain_db if math.isfinite(t.val_gain_db) else -math.inf)


def tune_per_signal(noise: str, clean: np.ndarray, noisy: np.ndarray, sample_rate: float) -> baselines.TunedBaseline:
    """Every fitting filter's whole grid tried on this one signal against its answer; the best."""
    return tune_validation(noise, [clean], [noisy], sample_rate)


@dataclass
class NoiseEvalConfig:
    sample_rate: float = 1000.0
    length: int = 16384
    signals_per_family: int = 6
    val_signals_per_family: int = 4
    val_length: int = 8192
    families: tuple[str, ...] = FAMILIES + HELDOUT_FAMILIES
    noises: tuple[str, ...] = NOISE_TYPES
    seed: int = EVAL_SEED


def _mean(values) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def signal_sets(cfg: NoiseEvalConfig, data: dict[str, np.ndarray] | None):
    """(families, test, val, groups, source). Synthetic: the families' test and validation signals
    (the white-noise evaluation's, validation at most ``length`` long); groups ``seen`` / ``heldout``.
    Files (name → 1-D clean reference): the first third tunes the baselines, the rest is scored; each
    recording is its own group."""
    if data is None:
        families = list(cfg.families)
        test = signal_set(families, cfg.signals_per_family, cfg.length, cfg.sample_rate, cfg.seed)
        val = signal_set(families, cfg.val_signals_per_family, min(cfg.val_length, cfg.length), cfg.sample_rate,
                         VAL_SEED)
        groups = {"seen": [f for f in families if f in FAMILIES],
                  "heldout": [f for f in families if f in HELDOUT_FAMILIES]}
        return families, test, val, {g: f for g, f in groups.items() if f}, "synthetic"
    families, test, val = [], {}, {}
    for name, x in data.items():
        x = np.asarray(x, dtype=np.float32)
        cut = x.shape[0] // 3
        families.append(name)
        val[name], test[name] = [x[:cut]], [x[cut:]]
    return families, test, val, {name: [name] for name in families}, "files"


def model_costs(models: dict[str, tuple[nn.Module, ModelMeta]]) -> dict:
    """name → {us_per_window, flops_per_window, window, threads}, timed side by side per window size."""
    from models.cost import flops_per_window, time_per_window

    out: dict = {}
    for window in sorted({meta.window for _, meta in models.values()}):
        group = {n: m for n, (m, meta) in models.items() if meta.window == window}
        us = time_per_window(group, window)
        for n, m in group.items():
            out[n] = {"us_per_window": round(us[n], 3), "flops_per_window": flops_per_window(m, window),
                      "window": window, "threads": torch.get_num_threads()}
    return out


def evaluate_noises(
    models: dict[str, tuple[nn.Module, ModelMeta]],
    cfg: NoiseEvalConfig | None = None,
    data: dict[str, np.ndarray] | None = None,
    *,
    denoiser_factory: DenoiserFactory,
    log: Callable[[str], None] = print,
    measure_cost: bool = True,
) -> dict:
    """Every (family, noise type): the models' gains, the fitting baseline tuned on validation and
    tuned per signal; rows per (signal set, noise type, model). JSON-ready."""
    cfg = cfg or NoiseEvalConfig()
    families, test, val, groups, source = signal_sets(cfg, data)
    noises = [n for n in cfg.noises if applicable(n, cfg.sample_rate)]
    skipped = [n for n in cfg.noises if n not in noises]
    if skipped:
        log(f"{cfg.sample_rate:g} Hz: skipping {', '.join(skipped)} (does not fit the rate)")
    runs = {name: denoiser_factory(model, meta) for name, (model, meta) in models.items()}
    per_family: dict = {}  # noise → family → record
    t0 = time.perf_counter()
    for noise in noises:
        per_family[noise] = {}
        for f in families:
            fi = family_index(f, families)
            vn = [add_field_noise(c, noise, cfg.sample_rate, (VAL_SEED, fi, 1, i)) for i, c in enumerate(val[f])]
            chosen = tune_validation(noise, val[f], vn, cfg.sample_rate)
            rec = {"input_snr_db": [], "baseline_val": [], "baseline_oracle": [], "oracle_choice": [],
                   "models": {name: [] for name in models}}
            for i, c in enumerate(test[f]):
                y = add_field_noise(c, noise, cfg.sample_rate, (cfg.seed, fi, 1, i))
                rec["input_snr_db"].append(snr_db(c, y))
                rec["baseline_val"].append(baselines.snr_gain_db(c, y, chosen(y)))
                oracle = tune_per_signal(noise, c, y, cfg.sample_rate)
                rec["baseline_oracle"].append(oracle.val_gain_db)
                rec["oracle_choice"].append(oracle.label)
                for name, run in runs.items():
                    rec["models"][name].append(baselines.snr_gain_db(c, y, run(y)))
            rec["baseline_val_choice"] = chosen.label
            rec["baseline_val_on_validation"] = chosen.val_gain_db
            per_family[noise][f] = rec
        log(f"{noise}: scored ({time.perf_counter() - t0:.0f} s so far)")
    costs = model_costs(models) if measure_cost and models else {}
    rows = []
    for gname, fams in groups.items():
        for noise in noises:
            recs = [per_family[noise][f] for f in fams]
            fam_mean = lambda key: _mean(_mean(r[key]) for r in recs)  # noqa: E731 (mean of family means)
            val_g, orc_g = fam_mean("baseline_val"), fam_mean("baseline_oracle")
            choices = sorted({r["baseline_val_choice"].split("(")[0] for r in recs})
            for name in models:
                g = _mean(_mean(r["models"][name]) for r in recs)
                rows.append({
                    "set": gname, "noise": noise, "model": name, "input_snr_db": fam_mean("input_snr_db"),
                    "model_gain_db": g, "baseline": "/".join(choices), "baseline_val_db": val_g,
                    "baseline_oracle_db": orc_g, "margin_val_db": g - val_g, "margin_oracle_db": g - orc_g,
                    "us_per_window": costs.get(name, {}).get("us_per_window"),
                })
    return {
        "source": source,
        "sample_rate": cfg.sample_rate,
        "input_snr_db_target": round(INPUT_SNR_DB, 2),
        "noises": noises,
        "skipped_noises": skipped,
        "families": families,
        "groups": groups,
        "fits": {n: list(fitting(n)) for n in noises},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "per_family": per_family,
        "rows": rows,
        "models": {name: {"arch": meta.arch, "parameters": int(sum(p.numel() for p in m.parameters())),
                          "window": meta.window, "hop": meta.hop, "sample_rates": list(meta.sample_rates),
                          "train_steps": meta.training.get("steps"), **costs.get(name, {})}
                   for name, (m, meta) in models.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def pareto(rows: list[dict]) -> list[dict]:
    """Per (signal set, model): mean gain and margins over the noise types, µs/window, and whether
    no other model of that set is at least as good on both (gain, cost) and better on one."""
    out = []
    for s in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == s]
        pts = []
        for m in dict.fromkeys(r["model"] for r in mine):
            rs = [r for r in mine if r["model"] == m]
            pts.append({"set": s, "model": m, "noises": len(rs), "mean_gain_db": _mean(r["model_gain_db"] for r in rs),
                        "mean_margin_oracle_db": _mean(r["margin_oracle_db"] for r in rs),
                        "min_margin_oracle_db": min((r["margin_oracle_db"] for r in rs), default=float("nan")),
                        "us_per_window": rs[0]["us_per_window"]})
        for p in pts:
            c = p["us_per_window"]
            p["pareto"] = c is not None and not any(
                q is not p and q["us_per_window"] is not None and q["us_per_window"] <= c
                and q["mean_gain_db"] >= p["mean_gain_db"]
                and (q["us_per_window"] < c or q["mean_gain_db"] > p["mean_gain_db"]) for q in pts)
        out.extend(pts)
    return out


def format_noise_table(results: dict | list[dict]) -> str:
    """The rows table and the Pareto table (one results dict, or several merged, e.g. one per rate)."""
    from models.evaluation.report import _grid

    parts = results if isinstance(results, list) else [results]
    rows = [r for res in parts for r in res["rows"]]
    if not rows:
        return "no rows (no model, or no noise type fits the signals' rate)"
    t = [["set", "noise", "in dB", "model", "gain", "fitting filter", "val-tuned", "per-signal",
          "vs val", "vs per-signal", "µs/window"]]
    for r in rows:
        us = r["us_per_window"]
        t.append([r["set"], r["noise"], f"{r['input_snr_db']:.2f}", r["model"], f"{r['model_gain_db']:+.2f}",
                  r["baseline"], f"{r['baseline_val_db']:+.2f}", f"{r['baseline_oracle_db']:+.2f}",
                  f"{r['margin_val_db']:+.2f}", f"{r['margin_oracle_db']:+.2f}", f"{us:.1f}" if us else "-"])
    p = [["set", "model", "µs/window", "mean gain", "mean vs per-signal", "worst vs per-signal", "Pareto"]]
    for q in pareto(rows):
        us = q["us_per_window"]
        p.append([q["set"], q["model"], f"{us:.1f}" if us else "-", f"{q['mean_gain_db']:+.2f}",
                  f"{q['mean_margin_oracle_db']:+.2f}", f"{q['min_margin_oracle_db']:+.2f}", "yes" if q["pareto"] else ""])
    return ("SNR gain (dB) at 10 dB input SNR per noise type; baselines fit the noise (val-tuned: on validation "
            "signals; per-signal: on each test signal's answer)\n" + _grid(t)
            + "\n\ngain vs cost over the noise types (Pareto: no other model is both cheaper and better)\n" + _grid(p))
