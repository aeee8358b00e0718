"""Evaluation: SNR gain of each model and each tuned classical baseline, per signal family and noise level.

Signals: the four ``models.signals.families`` families with seeds never used in training ("seen"), and
the held-out families of ``models.signals.heldout`` ("heldout"), whose generators no training code imports;
or the user's files (``--data``), treated as clean references. (The suite's conv model also trains on
the generic families of ``models.training.train.GENERIC_FAMILIES`` — random steps/ramps, periodic shapes,
FM tones, transients — so its held-out families are unseen *generators*, not unseen shapes.) White Gaussian noise is added at
σ ∈ {0.05, 0.316 (≈10 dB input SNR), 0.5} × the signal's RMS.

Models run through ``pipeline.stream.windowing.denoise_offline`` with their own window and hop — the
worker's windowing and overlap-add path — with every window standardised, denoised and mapped back
exactly as ``pipeline.inference.engine`` does (``models.archs.denoise_rows``). Baselines run over the whole
signal with parameters tuned per (family, noise level) on a separate validation set.

The gain of one signal is ``snr(clean, output) − snr(clean, noisy)`` in dB; tables report means.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.evaluation import baselines
from models.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from models.forward import denoise_rows, denoise_windows
from models.signals.heldout import HELDOUT_FAMILIES, generate_heldout
from models.signals.families import FAMILIES, add_noise, generate, snr_db

LEVELS = (0.05, round(10 ** -0.5, 4), 0.5)  # noise σ relative to the signal RMS
EVAL_SEED = 7_770_001  # entropy for test signals; training uses small seeds (0, 1, ...)
VAL_SEED = 7_770_002  # baseline tuning signals
N2N_SEED = 7_770_003  # the noisy recordings the noisy-target model trains on
THROUGHPUT_BATCH = 512  # windows per forward pass: the worker's default max_batch
# The standard suite (`dae evaluate` trains it when no checkpoints are given).
SUITE = ("mlp", "mlp_overcomplete", "conv", "conv_n2n")


def level_key(sigma: float) -> str:
    return f"{sigma:g}"


def input_snr_db(sigma: float) -> float:
    return -20.0 * math.log10(sigma)


@dataclass
class EvalConfig:
    sample_rate: float = 1000.0
    length: int = 16384  # samples per test signal
    signals_per_family: int = 6
    val_signals_per_family: int = 4
    val_length: int = 8192
    levels: tuple[float, ...] = LEVELS
    families: tuple[str, ...] = FAMILIES + HELDOUT_FAMILIES
    seed: int = EVAL_SEED
    excerpt: int = 600  # samples in the figure's example excerpts


def make_signal(family: str, n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    if family in HELDOUT_FAMILIES:
        return generate_heldout(family, n, rng)
    return generate(family, n, sample_rate, rng)


ALL_FAMILIES = FAMILIES + HELDOUT_FAMILIES
FAMILY_GROUPS = {"seen": FAMILIES, "heldout": HELDOUT_FAMILIES, "all": ALL_FAMILIES}


def family_index(family: str, families: Sequence[str]) -> int:
    """A family's seed index: its place in ``ALL_FAMILIES`` (so evaluating a subset, e.g. only the
    held-out families, draws exactly the signals and noise the full evaluation draws), else its place
    in ``families`` after them (other names)."""
    if family in ALL_FAMILIES:
        return ALL_FAMILIES.index(family)
    return len(ALL_FAMILIES) + list(families).index(family)


def parse_families(spec: str) -> tuple[str, ...]:
    """``"heldout"``, ``"seen"``, ``"all"`` or a comma-separated list of family names (groups allowed)."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        names = FAMILY_GROUPS.get(part, (part,))
        for name in names:
            if name not in ALL_FAMILIES:
                raise ValueError(f"unknown family {name!r}; valid: {', '.join(FAMILY_GROUPS)}, {', '.join(ALL_FAMILIES)}")
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError("no families given")
    return tuple(out)


def signal_set(families: Sequence[str], per_family: int, n: int, sample_rate: float, seed: int) -> dict:
    """family → list of clean signals, one independent child seed per family (``family_index``)."""
    idx = [family_index(f, families) for f in families]
    seeds = np.random.SeedSequence(seed).spawn(max(idx) + 1)
    out = {}
    for family, i in zip(families, idx):
        rng = np.random.default_rng(seeds[i])
        out[family] = [make_signal(family, n, sample_rate, rng) for _ in range(per_family)]
    return out


def noisy_copy(clean: np.ndarray, sigma: float, key: Sequence[int]) -> np.ndarray:
    """clean + white noise of std σ·RMS(clean), drawn from a seed derived from ``key`` (reproducible)."""
    return add_noise(clean, input_snr_db(sigma), np.random.default_rng(np.random.SeedSequence(list(key))))


def model_denoiser(model: nn.Module, meta: ModelMeta) -> Callable[[np.ndarray], np.ndarray]:
    """A whole-signal denoiser through the worker's windowing/overlap-add path."""
    from pipeline.stream.windowing import denoise_offline

    def run(x: np.ndarray) -> np.ndarray:
        return denoise_offline(x, lambda w: denoise_windows(model, w), meta.window, meta.hop)

    return run


def throughput(model: nn.Module, window: int, batch: int = THROUGHPUT_BATCH, min_seconds: float = 1.0) -> float:
    """CPU samples/s of ``denoise_rows`` at ``batch`` single-channel windows (standardisation included)."""
    rows = np.random.default_rng(0).standard_normal((batch, window)).astype(np.float32)
    denoise_rows(model, rows)  # warm-up (allocator, kernels)
    n, t0 = 0, time.perf_counter()
    while True:
        denoise_rows(model, rows, batch=batch)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds and n >= 3:
            return n * batch * window / dt


# ----------------------------------------------------------------------------- training the suite
def _suite_config(name: str, sample_rate: float, quick: bool):
    from models.training.train import TrainConfig

    q = dict(steps=60, max_seconds=20.0, val_streams=2) if quick else {}
    if name == "mlp":  # the seed model exactly as `dae train --arch mlp` trains it
        return TrainConfig(sample_rate=sample_rate, arch="mlp", **q)
    if name == "mlp_overcomplete":
        return TrainConfig(sample_rate=sample_rate, **{"arch": "mlp_overcomplete", "lr": 1e-3, "max_seconds": 60.0, **q})
    conv = dict(arch="conv", batch_size=64, lr=2e-3, steps=2000, max_seconds=180.0)
    if name == "conv":  # exactly what `dae train` trains by default (models.training.train.best_config)
        from models.training.train import best_config

        return best_config(sample_rate, **q)
    if name == "conv_n2n":
        return TrainConfig(sample_rate=sample_rate, objective="noisier2noise", n2n_sigma=0.3, n2n_draws=8,
                           **{**conv, **q})
    raise ValueError(f"unknown suite model {name!r}; known: {', '.join(SUITE)}")


def n2n_training_data(sample_rate: float, sigma: float = LEVELS[1], streams_per_family: int = 24,
                      length: int = 16384) -> list[np.ndarray]:
    """Noisy recordings of the held-out families (own seeds, never the test ones) at σ≈0.316 (10 dB):
    all the noisy-target model ever sees (the clean versions are discarded)."""
    clean = signal_set(HELDOUT_FAMILIES, streams_per_family, length, sample_rate, N2N_SEED)
    return [noisy_copy(c, sigma, (N2N_SEED, f, i)) for f, fam in enumerate(HELDOUT_FAMILIES)
            for i, c in enumerate(clean[fam])]


def train_suite(out_dir: Path, sample_rate: float = 1000.0, names: Sequence[str] = SUITE, retrain: bool = False,
                quick: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train (or load from ``out_dir/<name>``) the standard models; name → (model, meta)."""
    from models.training.train import train_arrays, train_synthetic

    out_dir = Path(out_dir)
    models = {}
    for name in names:
        path = out_dir / name
        if path.is_dir() and not retrain:
            models[name] = load_checkpoint(path)
            log(f"{name}: loaded {path} (trained in {models[name][1].training.get('seconds', float('nan')):.0f} s)")
            continue
        cfg = _suite_config(name, sample_rate, quick)
        log(f"{name}: training ({cfg.arch}, objective {cfg.objective}, up to {cfg.max_seconds:.0f} s)")
        if cfg.objective == "noisier2noise":
            model, meta = train_arrays(cfg, n2n_training_data(sample_rate), progress=progress,
                                       source="synthetic-noisy:" + ",".join(HELDOUT_FAMILIES))
        else:
            model, meta = train_synthetic(cfg, progress=progress)
        meta = save_checkpoint(path, model, meta)
        log(f"{name}: {meta.training['seconds']:.0f} s, {meta.training['steps']} steps ({meta.training['stop_reason']})")
        models[name] = (model, meta)
    return models


# ------------------------------------------------------------------------------------ evaluation
def _mean(values) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def evaluate(
    models: dict[str, tuple[nn.Module, ModelMeta]],
    cfg: EvalConfig | None = None,
    data: dict[str, np.ndarray] | None = None,
    log: Callable[[str], None] = print,
    measure_throughput: bool = True,
) -> tuple[dict, dict]:
    """Run every model and tuned baseline; returns (results as JSON-ready dict, example excerpts)."""
    with torch.no_grad():
        return _evaluate(models, cfg or EvalConfig(), data, log, measure_throughput)


def _evaluate(models, cfg: EvalConfig, data, log, measure_throughput) -> tuple[dict, dict]:
    if data is None:
        families = list(cfg.families)
        test = signal_set(families, cfg.signals_per_family, cfg.length, cfg.sample_rate, cfg.seed)
        val = signal_set(families, cfg.val_signals_per_family, cfg.val_length, cfg.sample_rate, VAL_SEED)
        groups = {"seen": [f for f in families if f in FAMILIES], "heldout": [f for f in families if f in HELDOUT_FAMILIES]}
        groups = {g: fams for g, fams in groups.items() if fams}
        source = "synthetic"
    else:
        # Files are clean references: tune the baselines on each file's first third, test on the rest.
        families, test, val = [], {}, {}
        for name, x in data.items():
            x = np.asarray(x, dtype=np.float32)
            cut = x.shape[0] // 3
            families.append(name)
            val[name], test[name] = [x[:cut]], [x[cut:]]
        groups = {"data": families}
        source = "files"
    groups["all"] = families

    results: dict = {
        "source": source,
        "levels": [{"key": level_key(s), "sigma": s, "input_snr_db": round(input_snr_db(s), 2)} for s in cfg.levels],
        "families": families,
        "groups": groups,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "methods": {},
        "models": {},
        "baseline_params": {},
    }
    noisy = {(f, li, i): noisy_copy(c, s, (cfg.seed, family_index(f, families), li, i))
             for f in families for li, s in enumerate(cfg.levels) for i, c in enumerate(test[f])}
    examples: dict = {}
    ex_family = next((f for f in ("square", "chirp") if f in families), families[0])
    ex_level = 1 if len(cfg.levels) > 1 else 0
    ex_slice = slice(0, min(cfg.excerpt, test[ex_family][0].shape[0]))
    examples["clean"] = test[ex_family][0][ex_slice]
    examples["noisy"] = noisy[(ex_family, ex_level, 0)][ex_slice]
    examples["title"] = f"{ex_family}, σ={level_key(cfg.levels[ex_level])} ({input_snr_db(cfg.levels[ex_level]):.0f} dB input SNR)"

    def gains_of(fn) -> dict:
        return {level_key(s): {f: _mean(baselines.snr_gain_db(c, noisy[(f, li, i)], fn(f, li, noisy[(f, li, i)]))
                                        for i, c in enumerate(test[f])) for f in families}
                for li, s in enumerate(cfg.levels)}

    # ---- baselines: tuned per (family, level) on the validation signals
    t0 = time.perf_counter()
    tuned: dict = {}
    for li, s in enumerate(cfg.levels):
        for f in families:
            vn = [noisy_copy(c, s, (VAL_SEED, family_index(f, families), li, i)) for i, c in enumerate(val[f])]
            tuned[(f, li)] = baselines.tune_all(val[f], vn)
    log(f"baselines tuned in {time.perf_counter() - t0:.1f} s")
    for name in baselines.FILTERS:
        g = gains_of(lambda f, li, y, name=name: tuned[(f, li)][name](y))
        results["methods"][name] = {"kind": "baseline", "gain_db": g}
        results["baseline_params"][name] = {level_key(s): {f: tuned[(f, li)][name].params for f in families}
                                            for li, s in enumerate(cfg.levels)}
    # The best baseline per (family, level), chosen on the validation set (not on the test signals).
    choice = {(f, li): max(tuned[(f, li)].values(), key=lambda t: t.val_gain_db)
              for f in families for li in range(len(cfg.levels))}
    results["methods"]["best_baseline"] = {
        "kind": "baseline", "gain_db": gains_of(lambda f, li, y: choice[(f, li)](y)),
        "choice": {level_key(s): {f: choice[(f, li)].label for f in families} for li, s in enumerate(cfg.levels)},
    }
    examples["best_baseline"] = choice[(ex_family, ex_level)](noisy[(ex_family, ex_level, 0)])[ex_slice]

    # ---- models, through the worker's windowing / overlap-add path
    for name, (model, meta) in models.items():
        t0 = time.perf_counter()
        run = model_denoiser(model, meta)
        results["methods"][name] = {"kind": "model", "gain_db": gains_of(lambda f, li, y: run(y))}
        examples[name] = run(noisy[(ex_family, ex_level, 0)])[ex_slice]
        info = {
            "arch": meta.arch,
            "config": meta.config,
            "objective": meta.training.get("objective", "clean"),
            "window": meta.window,
            "hop": meta.hop,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "train_seconds": meta.training.get("seconds"),
            "train_steps": meta.training.get("steps"),
            "stop_reason": meta.training.get("stop_reason"),
            "training_data": meta.training.get("data"),
            "eval_seconds": round(time.perf_counter() - t0, 2),
        }
        if measure_throughput:
            info["throughput_samples_per_s"] = round(throughput(model, meta.window), 0)
            info["throughput_batch_windows"] = THROUGHPUT_BATCH
            info["torch_threads"] = torch.get_num_threads()
        results["models"][name] = info
        log(f"{name}: evaluated in {info['eval_seconds']:.1f} s")

    for m in results["methods"].values():
        m["summary"] = {lk: {gname: _mean(m["gain_db"][lk][f] for f in fams) for gname, fams in groups.items()}
                        for lk in m["gain_db"]}
    results["input_snr_db_measured"] = {
        level_key(s): _mean(snr_db(test[f][i], noisy[(f, li, i)]) for f in families for i in range(len(test[f])))
        for li, s in enumerate(cfg.levels)
    }
    return results, examples


# --------------------------------------------------------------------------------------- output
def format_table(results: dict) -> str:
    """Mean SNR gain (dB) per method: one column per (level, group); then per family at every noise
    level; then each model's margin over the best tuned baseline."""
    levels = [lv["key"] for lv in results["levels"]]
    groups = [g for g in results["groups"] if g != "all"] + ["all"]
    cols = [(lk, g) for lk in levels for g in groups]
    head = ["method"] + [f"σ={lk} {g}" for lk, g in cols]
    rows = [head]
    for name, m in results["methods"].items():
        rows.append([name] + [f"{m['summary'][lk][g]:+.2f}" for lk, g in cols])
    out = [_grid(rows)]
    for lk in levels:
        snr = next(lv["input_snr_db"] for lv in results["levels"] if lv["key"] == lk)
        fam_rows = [["method"] + list(results["families"])]
        for name, m in results["methods"].items():
            fam_rows.append([name] + [f"{m['gain_db'][lk][f]:+.2f}" for f in results["families"]])
        out.append(f"\nper family at σ={lk} ({snr:g} dB input SNR):\n" + _grid(fam_rows))
    margins = margin_table(results)
    if margins:
        out.append("\nmodel minus best_baseline (dB), group means:\n" + margins)
    if results["models"]:
        mrows = [["model", "arch", "objective", "params", "train s", "samples/s @512"]]
        for name, info in results["models"].items():
            tp = info.get("throughput_samples_per_s")
            mrows.append([name, info["arch"], info["objective"], f"{info['parameters']:,}",
                          f"{info['train_seconds']:.0f}" if info.get("train_seconds") is not None else "-",
                          f"{tp / 1e6:.2f} M" if tp else "-"])
        out.append("\n" + _grid(mrows))
    return "\n".join(out)


def margins(results: dict, method: str, against: str = "best_baseline") -> dict:
    """level → group → mean gain of ``method`` minus that of ``against`` (dB)."""
    a, b = results["methods"][method]["summary"], results["methods"][against]["summary"]
    return {lk: {g: a[lk][g] - b[lk][g] for g in a[lk]} for lk in a}


def margin_table(results: dict) -> str:
    if "best_baseline" not in results["methods"]:
        return ""
    levels = [lv["key"] for lv in results["levels"]]
    groups = [g for g in results["groups"] if g != "all"] + ["all"]
    cols = [(lk, g) for lk in levels for g in groups]
    rows = [["model"] + [f"σ={lk} {g}" for lk, g in cols]]
    for name, m in results["methods"].items():
        if m["kind"] == "model":
            d = margins(results, name)
            rows.append([name] + [f"{d[lk][g]:+.2f}" for lk, g in cols])
    return _grid(rows) if len(rows) > 1 else ""


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: dict, examples: dict, path: Path) -> None:
    """Left: mean gain vs input SNR per method (held-out families when present); right: excerpts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = "heldout" if "heldout" in results["groups"] else "all"
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5))
    x = [lv["input_snr_db"] for lv in results["levels"]]
    for name, m in results["methods"].items():
        y = [m["summary"][lv["key"]][group] for lv in results["levels"]]
        ax.plot(x, y, marker="o", ls="-" if m["kind"] == "model" else "--", label=name)
    ax.set_xlabel("input SNR (dB)")
    ax.set_ylabel(f"mean SNR gain (dB), {group} families")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    t = np.arange(len(examples["clean"]))
    bx.plot(t, examples["noisy"], color="0.75", lw=0.8, label="noisy")
    bx.plot(t, examples["clean"], color="k", lw=1.5, label="clean")
    for name in ("best_baseline", "mlp", "conv", "conv_n2n"):
        if name in examples:
            bx.plot(t, examples[name], lw=1.0, label=name)
    bx.set_title(examples["title"])
    bx.set_xlabel("sample")
    bx.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(results: dict, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
