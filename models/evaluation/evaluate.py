"""Evaluation: SNR gain of each model and each tuned classical baseline, per signal family and noise level.

Signals (``models.evaluation.signal_sets``): the four ``models.signals.families`` families with seeds
never used in training ("seen"), and the held-out families of ``models.signals.heldout`` ("heldout"),
whose generators no training code imports; or the user's files (``data``), treated as clean
references. (The suite's conv model also trains on the generic families of
``models.signals.generic.GENERIC_FAMILIES`` — random steps/ramps, periodic shapes, FM tones,
transients — so its held-out families are unseen *generators*, not unseen shapes.) White Gaussian
noise is added at σ ∈ {0.05, 0.316 (≈10 dB input SNR), 0.5} × the signal's RMS.

Models denoise whole signals through a ``denoiser_factory`` the caller passes in: the pipeline gives
the worker's windowing and overlap-add path around the one forward path (``models.forward``), so this
package knows nothing of the windowing. Baselines run over the whole signal with parameters tuned per
(family, noise level) on a separate validation set.

The gain of one signal is ``snr(clean, output) − snr(clean, noisy)`` in dB; tables report means.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

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
    input_snr_db,
    level_key,
    noisy_copy,
    signal_set,
)
from models.forward import denoise_rows
from models.signals.families import FAMILIES, snr_db
from models.signals.heldout import HELDOUT_FAMILIES

THROUGHPUT_BATCH = 512  # windows per forward pass: the worker's default max_batch

Denoiser = Callable[[np.ndarray], np.ndarray]
# (model, meta) → a function that denoises a whole signal ((frames,) or (frames, channels)).
DenoiserFactory = Callable[[nn.Module, ModelMeta], Denoiser]


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


def _mean(values) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


@dataclass
class _Bench:
    """What every method is scored on: clean test signals, their noisy copies, validation signals."""

    cfg: EvalConfig
    families: list[str]
    test: dict  # family → clean test signals
    val: dict  # family → clean validation signals (baseline tuning)
    groups: dict  # group name → families
    source: str
    noisy: dict = field(default_factory=dict)  # (family, level index, signal index) → noisy copy

    @classmethod
    def build(cls, cfg: EvalConfig, data: dict[str, np.ndarray] | None) -> "_Bench":
        if data is None:
            families = list(cfg.families)
            test = signal_set(families, cfg.signals_per_family, cfg.length, cfg.sample_rate, cfg.seed)
            val = signal_set(families, cfg.val_signals_per_family, cfg.val_length, cfg.sample_rate, VAL_SEED)
            groups = {"seen": [f for f in families if f in FAMILIES],
                      "heldout": [f for f in families if f in HELDOUT_FAMILIES]}
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
        bench = cls(cfg, families, test, val, groups, source)
        bench.noisy = {(f, li, i): noisy_copy(c, s, (cfg.seed, family_index(f, families), li, i))
                       for f in families for li, s in enumerate(cfg.levels) for i, c in enumerate(test[f])}
        return bench

    def gains(self, fn: Callable[[str, int, np.ndarray], np.ndarray]) -> dict:
        """level → family → mean gain (dB) of ``fn(family, level index, noisy)`` over the test signals."""
        def gain(f: str, li: int, i: int, clean: np.ndarray) -> float:
            y = self.noisy[(f, li, i)]
            return baselines.snr_gain_db(clean, y, fn(f, li, y))

        return {level_key(s): {f: _mean(gain(f, li, i, c) for i, c in enumerate(self.test[f])) for f in self.families}
                for li, s in enumerate(self.cfg.levels)}

    def input_snr(self) -> dict:
        """level → mean measured input SNR (dB) of the noisy test signals."""
        return {level_key(s): _mean(snr_db(self.test[f][i], self.noisy[(f, li, i)])
                                    for f in self.families for i in range(len(self.test[f])))
                for li, s in enumerate(self.cfg.levels)}


class _Examples:
    """The figure's excerpts: one test signal (a square or chirp when scored) at the middle level."""

    def __init__(self, bench: _Bench):
        cfg = bench.cfg
        self.family = next((f for f in ("square", "chirp") if f in bench.families), bench.families[0])
        self.level = 1 if len(cfg.levels) > 1 else 0
        self.noisy = bench.noisy[(self.family, self.level, 0)]
        self.slice = slice(0, min(cfg.excerpt, bench.test[self.family][0].shape[0]))
        sigma = cfg.levels[self.level]
        self.out: dict = {
            "clean": bench.test[self.family][0][self.slice],
            "noisy": self.noisy[self.slice],
            "title": f"{self.family}, σ={level_key(sigma)} ({input_snr_db(sigma):.0f} dB input SNR)",
        }

    def add(self, name: str, fn: Denoiser) -> None:
        self.out[name] = fn(self.noisy)[self.slice]


def evaluate(
    models: dict[str, tuple[nn.Module, ModelMeta]],
    cfg: EvalConfig | None = None,
    data: dict[str, np.ndarray] | None = None,
    *,
    denoiser_factory: DenoiserFactory,
    log: Callable[[str], None] = print,
    measure_throughput: bool = True,
) -> tuple[dict, dict]:
    """Run every model (through ``denoiser_factory``) and tuned baseline; returns (results as a
    JSON-ready dict, example excerpts)."""
    cfg = cfg or EvalConfig()
    with torch.no_grad():
        bench = _Bench.build(cfg, data)
        examples = _Examples(bench)
        results: dict = {
            "source": bench.source,
            "levels": [{"key": level_key(s), "sigma": s, "input_snr_db": round(input_snr_db(s), 2)}
                       for s in cfg.levels],
            "families": bench.families,
            "groups": bench.groups,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "methods": {},
            "models": {},
            "baseline_params": {},
        }
        _score_baselines(bench, results, examples, log)
        for name, (model, meta) in models.items():
            _score_model(bench, name, model, meta, denoiser_factory, results, examples, measure_throughput)
            log(f"{name}: evaluated in {results['models'][name]['eval_seconds']:.1f} s")
    for m in results["methods"].values():
        m["summary"] = {lk: {gname: _mean(m["gain_db"][lk][f] for f in fams) for gname, fams in bench.groups.items()}
                        for lk in m["gain_db"]}
    results["input_snr_db_measured"] = bench.input_snr()
    return results, examples.out


def _score_baselines(bench: _Bench, results: dict, examples: _Examples, log: Callable[[str], None]) -> None:
    """Each filter tuned per (family, level) on the validation signals, and the best of them per
    (family, level), chosen on the validation set (not on the test signals)."""
    cfg, families = bench.cfg, bench.families
    t0 = time.perf_counter()
    tuned: dict = {}
    for li, s in enumerate(cfg.levels):
        for f in families:
            vn = [noisy_copy(c, s, (VAL_SEED, family_index(f, families), li, i)) for i, c in enumerate(bench.val[f])]
            tuned[(f, li)] = baselines.tune_all(bench.val[f], vn)
    log(f"baselines tuned in {time.perf_counter() - t0:.1f} s")
    for name in baselines.FILTERS:
        g = bench.gains(lambda f, li, y, name=name: tuned[(f, li)][name](y))
        results["methods"][name] = {"kind": "baseline", "gain_db": g}
        results["baseline_params"][name] = {level_key(s): {f: tuned[(f, li)][name].params for f in families}
                                            for li, s in enumerate(cfg.levels)}
    choice = {(f, li): max(tuned[(f, li)].values(), key=lambda t: t.val_gain_db)
              for f in families for li in range(len(cfg.levels))}
    results["methods"]["best_baseline"] = {
        "kind": "baseline", "gain_db": bench.gains(lambda f, li, y: choice[(f, li)](y)),
        "choice": {level_key(s): {f: choice[(f, li)].label for f in families} for li, s in enumerate(cfg.levels)},
    }
    examples.add("best_baseline", choice[(examples.family, examples.level)])


def _score_model(bench: _Bench, name: str, model: nn.Module, meta: ModelMeta, denoiser_factory: DenoiserFactory,
                 results: dict, examples: _Examples, measure_throughput: bool) -> None:
    t0 = time.perf_counter()
    run = denoiser_factory(model, meta)
    results["methods"][name] = {"kind": "model", "gain_db": bench.gains(lambda f, li, y: run(y))}
    examples.add(name, run)
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
