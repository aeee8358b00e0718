"""Training denoising autoencoders: the public API (import from here, not from the submodules).

- ``config``: :class:`TrainConfig`, :func:`best_config` (the recommended recipe), :data:`DEFAULT_ARCH`,
  :func:`rate_generic_config` (the recipe across a range of sample rates).
- ``api``: :func:`train_synthetic` (the synthetic generator), :func:`train_arrays` (recorded signals).
- ``trainer``: :class:`Trainer` (step / validate / fit / finalise), :func:`warm_start`.
- ``losses``, ``sampler``, ``validation``, ``parts``: objectives, data, metrics, loop collaborators.

The training signal generators live in ``models.signals`` (``families``, ``generic``).
"""

from models.training.api import train_arrays, train_synthetic
from models.training.config import (
    BEST_TRAINING,
    CONV_BEST,
    DEFAULT_ARCH,
    DEFAULT_RATE_RANGE,
    LOSSES,
    OBJECTIVES,
    TrainConfig,
    best_config,
    rate_generic_config,
)
from models.training.losses import noisier2noise_inputs, noisier2noise_loss, training_loss
from models.training.parts import WeightEMA
from models.training.sampler import WindowSampler, as_streams, log_uniform_rates, split_streams, stream_plan
from models.training.trainer import Trainer, warm_start
from models.training.validation import EVAL_INPUT_SNR_DB, QUANTILES, snr_gain_by_family

__all__ = [
    "BEST_TRAINING",
    "CONV_BEST",
    "DEFAULT_ARCH",
    "DEFAULT_RATE_RANGE",
    "EVAL_INPUT_SNR_DB",
    "LOSSES",
    "OBJECTIVES",
    "QUANTILES",
    "TrainConfig",
    "Trainer",
    "WeightEMA",
    "WindowSampler",
    "as_streams",
    "best_config",
    "log_uniform_rates",
    "rate_generic_config",
    "noisier2noise_inputs",
    "noisier2noise_loss",
    "snr_gain_by_family",
    "split_streams",
    "stream_plan",
    "train_arrays",
    "train_synthetic",
    "training_loss",
    "warm_start",
]
