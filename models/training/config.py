"""Training hyper-parameters: :class:`TrainConfig`, its validation, and the recommended recipe
(:func:`best_config`, what ``dae train`` trains when no architecture is named)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from models.archs import ARCHITECTURES, make_config
from models.noise import HUM_MIN_RATE, FieldMix, GaussianNoise, check_field_kinds, parse_field_noise
from models.signals.families import FAMILIES
from models.signals.generic import TRAIN_FAMILIES

# The architecture `dae train` uses when none is named: the best on quality in docs/models.md
# (TrainConfig keeps "mlp" as its default so that existing callers keep their fast seed model).
DEFAULT_ARCH = "conv"
OBJECTIVES = ("clean", "noisier2noise")
LOSSES = ("mse", "nmse", "wmse")
TRAINABLE = tuple(a for a in ARCHITECTURES if a != "noisier2noise")


@dataclass
class TrainConfig:
    sample_rate: float
    window: int = 256
    hop: int | None = None  # default window // 2
    hidden: int = 256  # the seed MLP's width (arch="mlp" only)
    steps: int = 2500
    batch_size: int = 512
    lr: float = 3e-3
    sigma: tuple[float, float] = (0.05, 0.5)
    families: tuple[str, ...] = FAMILIES
    seed: int = 0
    # An explicit wall-clock limit (None: none). Budgets are steps, so that the same seed and settings
    # give the same model however busy the machine is; a run this limit cuts says so in its metadata
    # (training.stop_reason "max_seconds", training.stop_detail) and on the progress bar.
    max_seconds: float | None = None
    val_streams: int = 16  # per family (synthetic data)
    log_every: int = field(default=25, repr=False)
    arch: str = "mlp"  # see DEFAULT_ARCH for what `dae train` uses
    arch_config: dict | None = None  # architecture hyper-parameters beyond the window (non-MLP)
    objective: str = "clean"  # or "noisier2noise" (noisy data only; arrays/files)
    n2n_sigma: float = 0.3  # noisier2noise: added noise std in standardised-window units
    n2n_draws: int = 8  # noisier2noise: fixed inference draws stored with the weights
    val_fraction: float = 0.2  # arrays/files: share of streams held out for validation
    device: str = "cpu"  # cpu | cuda | auto (bf16 autocast on CUDA)
    sigma_log_uniform: bool = False  # draw each window's σ uniformly in log σ over cfg.sigma
    # σ relative to the window's RMS ("window", the seed's q(x̃|x)) or to the RMS of the stream the
    # window comes from ("stream": a constant noise floor, so quiet stretches get noisier).
    noise_reference: str = "window"
    # "mse": mean squared error in the noisy window's standardised units (the seed's loss);
    # "nmse": each window's squared error divided by its noise variance, so every noise level
    # counts alike (an error at σ=0.05 weighs as much, relative to its noise, as one at σ=0.5);
    # "wmse": divided by the noise std instead (half way between the two).
    loss: str = "mse"
    eval_every: int = 100  # steps between validation passes
    # With max_seconds set: anneal the learning rate by whichever is further along, steps or the
    # wall-clock limit, so a run the limit cuts still ends at a low learning rate. Without a limit
    # (or with headroom) the step fraction leads and the run is exactly the step-scheduled one.
    anneal_by_time: bool = False
    # CPU threads for training: None leaves torch's setting alone, an integer fixes it, "auto"
    # re-measures every few hundred steps whether all threads or one thread steps faster and uses
    # the faster. On a shared 2-core machine, OpenMP threads waiting at barriers while another process
    # holds a core made a step 3-6x slower with 2 threads than with 1 (measured here). The thread count
    # changes the conv's floating-point sums (1 vs 2 threads, 60 steps: weights differ by 8e-7 in
    # fp32 and 5e-3 with bf16 steps; the MLP's are identical), so "auto" makes a conv's weights depend
    # on the machine's load: it is never a default.
    cpu_threads: int | str | None = None
    patience: int = 8  # validation passes without a 0.5 % improvement before stopping early
    # bf16 autocast for the training steps on CPU too (CUDA always uses it). On this AVX-512-BF16
    # CPU a conv training step took ~0.6x the fp32 time; weights, validation and the saved model stay fp32.
    cpu_bf16: bool = False
    # Exponential moving average of the weights (0 = off): validation, early stopping and the saved
    # model use the averaged weights, which smooth out the last steps' minibatch noise.
    ema: float = 0.0
    # (lo, hi) Hz: a rate-generic model (synthetic data only). Every training and validation stream is
    # generated at its own rate, drawn log-uniformly over the range (stratified), and batches draw
    # streams uniformly, so a batch holds windows of as many rates as it has windows; the checkpoint
    # serves any rate in the range (ModelMeta.rate_range). ``sample_rate`` must then lie in the range
    # and is only a label (rate_generic_config uses the geometric centre). None: one rate, sample_rate.
    rate_range: tuple[float, float] | None = None
    # Training on field noise: each training (and validation) window is corrupted by one of these noise
    # types (models.noise.FIELD_KINDS: white, hum, pink, brown, impulsive, dropouts), drawn per window,
    # uniformly or by ``field_noise_weights``, at the σ this config's white noise would have
    # (models.noise.FieldMix); the loss still fits the clean window. A string is parsed as
    # ``dae train --field-noise`` ("all", "white:3,hum,..."). () = off: white Gaussian noise only.
    field_noise: tuple[str, ...] = ()
    field_noise_weights: tuple[float, ...] | None = None  # one per kind (None: uniform)
    # A conv's self-ensemble (ConvConfig.self_ensemble) is an inference-time average: training steps run
    # the network once either way. True: validation and early stopping score the ensemble as
    # configured, and the checkpoint holds one pass of the chosen weights (~2.6x cheaper to serve for
    # 0.06-0.23 dB of held-out gain, docs/models.md). No effect on other networks.
    publish_one_pass: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sample_rate) and self.sample_rate > 0):
            raise ValueError(f"TrainConfig.sample_rate must be > 0 Hz, got {self.sample_rate!r}")
        if self.rate_range is not None:
            rr = tuple(self.rate_range)
            if not (len(rr) == 2 and all(isinstance(r, (int, float)) and not isinstance(r, bool)
                                         and math.isfinite(r) for r in rr) and 0 < rr[0] < rr[1]):
                raise ValueError(f"TrainConfig.rate_range must be (lo, hi) Hz with 0 < lo < hi, got {self.rate_range!r}")
            self.rate_range = (float(rr[0]), float(rr[1]))
            if not (rr[0] <= self.sample_rate <= rr[1]):
                raise ValueError(f"TrainConfig.sample_rate {self.sample_rate:g} must lie in rate_range {rr}")
        if self.window < 8:
            raise ValueError(f"TrainConfig.window must be >= 8, got {self.window}")
        if self.hop is None:
            self.hop = self.window // 2
        if not (1 <= self.hop <= self.window):
            raise ValueError(f"TrainConfig.hop must be in [1, window={self.window}], got {self.hop}")
        for name in ("steps", "batch_size", "val_streams", "n2n_draws", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        bad = [f for f in self.families if f not in TRAIN_FAMILIES]
        if bad or not self.families:
            raise ValueError(f"TrainConfig.families: unknown {bad or 'empty'}; valid: {', '.join(TRAIN_FAMILIES)}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"TrainConfig.max_seconds must be > 0 or None, got {self.max_seconds}")
        GaussianNoise(self.sigma, self.sigma_log_uniform, self.noise_reference)  # validates, naming what is wrong
        ct = self.cpu_threads
        if not (ct is None or ct == "auto" or (isinstance(ct, int) and not isinstance(ct, bool) and ct >= 1)):
            raise ValueError(f"TrainConfig.cpu_threads must be None, 'auto' or a positive integer, got {ct!r}")
        if not (0.0 <= self.ema < 1.0):
            raise ValueError(f"TrainConfig.ema must be in [0, 1), got {self.ema}")
        if self.loss not in LOSSES:
            raise ValueError(f"TrainConfig.loss: unknown {self.loss!r}; valid: {', '.join(LOSSES)}")
        self.sigma = tuple(float(s) for s in self.sigma)
        self.families = tuple(self.families)
        if self.arch not in TRAINABLE:
            raise ValueError(f"TrainConfig.arch: unknown {self.arch!r}; valid: {', '.join(TRAINABLE)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"TrainConfig.objective: unknown {self.objective!r}; valid: {', '.join(OBJECTIVES)}")
        if not (0.0 < self.n2n_sigma < 10.0):
            raise ValueError(f"TrainConfig.n2n_sigma must be in (0, 10), got {self.n2n_sigma}")
        if not (0.0 < self.val_fraction < 1.0):
            raise ValueError(f"TrainConfig.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"TrainConfig.device must be cpu, cuda or auto, got {self.device!r}")
        if self.arch_config is not None:
            self.arch_config = dict(self.arch_config)
        self._check_field_noise()
        self.model_spec()  # fail now, naming the bad key, not after generating data

    def _check_field_noise(self) -> None:
        fn, fw = self.field_noise, self.field_noise_weights
        if isinstance(fn, str):
            if fw is not None:
                raise ValueError("TrainConfig.field_noise: give weights in the string (e.g. 'white:3,hum') or as "
                                 "field_noise_weights with a tuple of kinds, not both")
            try:
                fn, fw = parse_field_noise(fn)
            except ValueError as exc:
                raise ValueError(f"TrainConfig.{exc}") from None
        if fn is None or len(fn) == 0:
            if fw is not None:
                raise ValueError("TrainConfig.field_noise_weights needs field_noise (the kinds they weigh)")
            self.field_noise, self.field_noise_weights = (), None
            return
        try:
            self.field_noise, self.field_noise_weights = check_field_kinds(fn, fw)
        except ValueError as exc:
            raise ValueError(f"TrainConfig.{exc}") from None
        if self.objective != "clean":
            raise ValueError(f"TrainConfig.field_noise needs the clean objective (noisier2noise adds its own "
                             f"noise to noisy data), got objective={self.objective!r}")
        if "hum" in self.field_noise:
            if self.rate_range is not None:
                raise ValueError("TrainConfig.field_noise: hum is defined in Hz and a rate-generic batch mixes "
                                 "rates; leave hum out of field_noise or train one rate (no rate_range)")
            if not self.sample_rate > HUM_MIN_RATE:
                raise ValueError(f"TrainConfig.field_noise: hum needs sample_rate above {HUM_MIN_RATE:g} Hz (a "
                                 f"60 Hz hum below Nyquist), got {self.sample_rate:g} Hz; leave hum out")

    def corruption(self) -> GaussianNoise | FieldMix:
        """The training corruption: white Gaussian noise, or with ``field_noise`` the per-window mixture."""
        if not self.field_noise:
            return GaussianNoise(self.sigma, self.sigma_log_uniform, self.noise_reference)
        return FieldMix(self.field_noise, self.sigma, self.sigma_log_uniform, self.noise_reference,
                        self.sample_rate if "hum" in self.field_noise else None, self.field_noise_weights)

    def model_spec(self) -> tuple[str, dict]:
        """(arch, config) of the network that training fits (the inner net for noisier2noise)."""
        if self.arch == "mlp":
            cfg = {"window": self.window, "hidden": self.hidden, **(self.arch_config or {})}
        else:
            cfg = {**(self.arch_config or {}), "window": self.window}
        make_config(self.arch, cfg)  # validates without touching any RNG
        return self.arch, cfg


# The recommended configuration: what `dae train` trains when no architecture is named, and the
# evaluation suite's `conv` model (docs/models.md has the measurements behind each choice).
# Channels (16, 16, 32) since 2026-12-06 (docs/models.md, "The narrower default conv"): held-out gain
# within 0.15 dB of (16, 32, 64) trained the same time, at half the forward pass's cost.
CONV_BEST: dict = {"channels": [16, 16, 32], "kernel": 9, "skip": True, "residual": True, "self_ensemble": 2}
BEST_TRAINING: dict = dict(
    arch=DEFAULT_ARCH,
    families=TRAIN_FAMILIES,  # the four models.signals.families families + the generic ones
    batch_size=32,  # small batches, many steps: the best quality per CPU second measured here
    lr=4e-3,  # measured at equal wall time: 4e-3 ≥ 2e-3 (held-out +8.73 vs +8.71 dB at 10 dB)
    # A step budget, so a busy machine takes longer instead of training a worse model: about the
    # time (16, 32, 64)'s former 10,700 steps took (the former 270 s budget, docs/models.md).
    steps=21_400,
    anneal_by_time=True,  # only with an explicit --max-seconds: a cut run still ends at a low learning rate
    cpu_threads=1,  # reproducible (the thread count changes a conv's sums) and fastest on a shared CPU
    cpu_bf16=True,  # ~1.3-1.7x the steps per second of fp32 on this CPU, same quality at equal steps
    sigma=(0.03, 0.6),
    sigma_log_uniform=True,  # as many low-noise windows as high-noise ones
    noise_reference="stream",  # a constant noise floor: silences get noise too
    loss="wmse",  # errors relative to the noise std: low-noise windows count without dominating
    val_streams=8,  # per family: 9 families x 8 streams x 32 windows
    eval_every=500,
    patience=12,
    publish_one_pass=True,  # the self-ensemble selects the weights; one pass serves them
)


def best_config(sample_rate: float, **overrides) -> TrainConfig:
    """The recommended TrainConfig for ``DEFAULT_ARCH`` (what `dae train` without --arch should use)."""
    kw = {**BEST_TRAINING, "arch_config": dict(CONV_BEST), **overrides}
    return TrainConfig(sample_rate=sample_rate, **kw)


# The default range of `dae train --rate-generic`: slow sensors (50 Hz) to wide-band audio (20 kHz).
DEFAULT_RATE_RANGE = (50.0, 20_000.0)


def rate_generic_config(rate_range: tuple[float, float] = DEFAULT_RATE_RANGE, *, recipe: bool = True,
                        **overrides) -> TrainConfig:
    """A rate-generic TrainConfig: the recommended recipe (``recipe``; else TrainConfig's defaults)
    trained across ``rate_range``; ``sample_rate`` is the range's geometric centre (a label only)."""
    lo, hi = (float(r) for r in rate_range)
    centre = math.sqrt(lo * hi) if 0 < lo < hi else lo  # an invalid range is refused by TrainConfig
    if recipe:
        return best_config(centre, rate_range=(lo, hi), **overrides)
    return TrainConfig(sample_rate=centre, rate_range=(lo, hi), **overrides)
