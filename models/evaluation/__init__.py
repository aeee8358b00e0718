"""Evaluating denoisers against tuned classical baselines (import from here).

- ``evaluate``: :func:`evaluate`, :class:`EvalConfig`; models denoise through an injected
  ``denoiser_factory`` (:data:`DenoiserFactory`) so this package never imports the pipeline.
- ``signal_sets``: the families, noise levels and reproducible signal sets.
- ``suite``: the standard model suite (:data:`SUITE`, :func:`train_suite`).
- ``report``: tables, figure, JSON.
- ``baselines``: the classical filters and their tuning.
"""

from models.evaluation.evaluate import THROUGHPUT_BATCH, DenoiserFactory, EvalConfig, evaluate, throughput
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
    "SUITE",
    "THROUGHPUT_BATCH",
    "DenoiserFactory",
    "EvalConfig",
    "evaluate",
    "family_index",
    "format_table",
    "input_snr_db",
    "level_key",
    "make_signal",
    "margin_table",
    "margins",
    "n2n_training_data",
    "noisy_copy",
    "parse_families",
    "plot",
    "signal_set",
    "suite_config",
    "throughput",
    "train_suite",
    "write_json",
]
