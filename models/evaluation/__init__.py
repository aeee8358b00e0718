"""Evaluating denoisers against tuned classical baselines (import from here).

- ``evaluate``: :func:`evaluate`, :class:`EvalConfig`; models denoise through an injected
  ``denoiser_factory`` (:data:`DenoiserFactory`) so this package never imports the pipeline.
- ``signal_sets``: the families, noise levels and reproducible signal sets.
- ``suite``: the standard model suite (:data:`SUITE`, :func:`train_suite`).
- ``report``: tables, figure, JSON.
- ``baselines``: the classical filters and their tuning.
- ``noise_eval``: gain per field-noise type at 10 dB against the fitting baseline, tuned on validation
  and per signal, with each model's µs/window (:func:`evaluate_noises`, ``dae evaluate --noise``).
"""

from models.evaluation.evaluate import THROUGHPUT_BATCH, DenoiserFactory, EvalConfig, evaluate, throughput
from models.evaluation.noise_eval import NOISE_TYPES, NoiseEvalConfig, evaluate_noises, format_noise_table, \
    parse_noises
from models.evaluation.report import format_table, margin_table, margins, plot, write_json
from models.evaluation.signal_sets import (
    ALL_FAMILIES,
    EVAL_SEED,
    FAMILY_GROUPS,
    LEVELS,
    family_index,
    input_snr_db,
    level_key,
    make_signal,
    noisy_copy,
    parse_families,
    signal_set,
)
from models.evaluation.suite import SUITE, n2n_training_data, suite_config, train_suite

__all__ = [
    "ALL_FAMILIES",
    "EVAL_SEED",
    "FAMILY_GROUPS",
    "LEVELS",
    "NOISE_TYPES",
    "NoiseEvalConfig",
    "SUITE",
    "THROUGHPUT_BATCH",
    "DenoiserFactory",
    "EvalConfig",
    "evaluate",
    "evaluate_noises",
    "family_index",
    "format_noise_table",
    "format_table",
    "input_snr_db",
    "level_key",
    "make_signal",
    "margin_table",
    "margins",
    "n2n_training_data",
    "noisy_copy",
    "parse_families",
    "parse_noises",
    "plot",
    "signal_set",
    "suite_config",
    "throughput",
    "train_suite",
    "write_json",
]
