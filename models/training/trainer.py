"""The training loop as an object. :class:`Trainer` owns one run: the network, its optimiser and
learning-rate schedule, the fixed validation inputs and the loop's collaborators (weight EMA, CPU
thread tuner, progress bar). :meth:`~Trainer.step` takes one optimisation step, :meth:`~Trainer.validate`
scores the weights that would be saved, :meth:`~Trainer.fit` steps until the step budget, early
stopping or an explicit wall-clock limit, and :meth:`~Trainer.finalise` restores the best weights and
writes the checkpoint's metadata.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch
from torch import nn

from models.archs import NORMALISATION, build_model, model_config, one_pass
from models.checkpoint import ModelMeta
from models.cost import measure_cost
from models.training.config import TrainConfig
from models.training.losses import LOSS_POWER, noisier2noise_loss, training_loss
from models.training.parts import LRSchedule, ProgressBar, ThreadTuner, WeightEMA, resolve_device
from models.training.sampler import WindowSampler
from models.training.validation import (
    EVAL_INPUT_SNR_DB,
    ValidationInputs,
    ValidationSet,
    error_quantiles,
    snr_gain_by_family,
)

# Share of the wall-clock budget the loop may use: the rest is for the final validation, metrics
# and error quantiles.
_LOOP_SHARE = 0.96
# A validation pass counts as progress (resets the patience) only when it beats the best by 0.5 %.
_IMPROVEMENT = 0.995


def warm_start(net: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s weights into ``net`` (the inner nets of noisier2noise wrappers), refusing a
    different architecture or shape with a message that says which."""
    src = getattr(source, "inner", source)
    src_cfg, dst_cfg = getattr(src, "config", None), getattr(net, "config", None)
    if type(src) is not type(net) or src_cfg != dst_cfg:
        raise ValueError(f"cannot warm-start a {type(net).__name__}({dst_cfg}) from a "
                         f"{type(src).__name__}({src_cfg}): architecture or hyper-parameters differ")
    net.load_state_dict(src.state_dict(), strict=True)


def build_network(cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """(model to save, net to fit), seeded by ``cfg.seed``: one module, or for noisier2noise the
    ``Noisier2NoiseDAE`` wrapper and its inner net."""
    arch, inner_cfg = cfg.model_spec()
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's global RNG
        torch.manual_seed(cfg.seed)
        if cfg.objective == "noisier2noise":
            wrapper = build_model("noisier2noise", {
                "window": cfg.window, "inner_arch": arch, "inner": inner_cfg,
                "sigma": cfg.n2n_sigma, "draws": cfg.n2n_draws, "seed": cfg.seed,
            })
            return wrapper, wrapper.inner
        net = build_model(arch, inner_cfg)
        return net, net


@dataclass
class _Best:
    """The best validation pass so far and the patience count."""

    loss: float = math.inf
    step: int = 0
    state: dict | None = None  # the scored weights at that pass
    stale: int = 0  # passes since the last 0.5 % improvement


class Trainer:
    """One training run on ``sampler``'s windows, validated on ``val``.

    ``s_batches`` seeds the batch draws; ``data`` describes the data for the metadata; ``t0`` is when
    the run started (data generation counts against an explicit ``cfg.max_seconds``); ``init_from`` warm-starts
    the net from a model of the same network.
    """

    def __init__(self, cfg: TrainConfig, sampler: WindowSampler, val: ValidationSet,
                 s_batches: np.random.SeedSequence, data: dict, *, t0: float | None = None,
                 init_from: nn.Module | None = None):
        self.cfg, self.sampler, self.val, self.data = cfg, sampler, val, data
        self.t0 = time.perf_counter() if t0 is None else t0
        self.device = dev = resolve_device(cfg.device)
        self.autocast = dev.type == "cuda"  # bf16 for everything on CUDA
        self.step_autocast = self.autocast or (dev.type == "cpu" and cfg.cpu_bf16)
        self.n2n = cfg.objective == "noisier2noise"
        self.stream_ref = cfg.noise_reference == "stream"
        self.power = False if self.n2n else LOSS_POWER[cfg.loss]
        self.corruption = cfg.corruption()  # GaussianNoise, or FieldMix with cfg.field_noise
        self.batch_rng = np.random.default_rng(s_batches)
        self.noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed)
        self.eval_gen = torch.Generator().manual_seed(cfg.seed + 1)  # validation noise, then the metrics'
        self.model, self.net = build_network(cfg)
        if init_from is not None:
            warm_start(self.net, init_from)
        self.model.to(dev)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.schedule = LRSchedule(cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.schedule)
        if self.n2n:
            self.inputs = ValidationInputs.noisy_target(val, cfg.n2n_sigma, self.eval_gen, dev)
        else:
            self.inputs = ValidationInputs.clean_target(val, self.corruption, self.eval_gen, self.stream_ref, dev)
        self.ema = WeightEMA(self.net, cfg.ema) if cfg.ema > 0 else None
        # The weights validation and the checkpoint use.
        self.scored = self.ema.net if self.ema is not None else self.net
        self.best = _Best()
        self.steps_done, self.seen, self.stop_reason, self.loop_seconds = 0, 0, "steps", 0.0
        self.tuner: ThreadTuner | None = None

    def run(self, progress: bool = True) -> tuple[nn.Module, ModelMeta]:
        """:meth:`fit` then :meth:`finalise`."""
        self.fit(progress)
        return self.finalise()

    def step(self, step: int) -> torch.Tensor:
        """One optimisation step (``step`` counts from 1) on a fresh random batch; the batch loss."""
        cfg, dev = self.cfg, self.device
        batch, idx = self.sampler.sample(self.batch_rng, cfg.batch_size)
        batch = batch.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.step_autocast):
            if self.n2n:
                loss = noisier2noise_loss(self.net, batch, cfg.n2n_sigma, self.noise_gen)
            else:
                ref = self.sampler.ref_rms(idx).to(dev) if self.stream_ref else None
                loss = training_loss(self.net, batch, self.corruption, self.noise_gen, ref, normalise=self.power)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(step)
        return loss

    def validate(self) -> float:
        """The loss of the scored weights on the fixed validation inputs."""
        self.net.eval()
        v = self.inputs.loss(self.scored, self.power, self.autocast)
        self.net.train()
        return v

    def _record(self, step: int, v: float) -> bool:
        """Book a validation pass; True when the patience is spent."""
        b = self.best
        b.stale = 0 if v < b.loss * _IMPROVEMENT else b.stale + 1
        if v < b.loss:
            b.loss, b.step = v, step
            b.state = {k: t.detach().clone() for k, t in self.scored.state_dict().items()}
        return b.stale >= self.cfg.patience

    def fit(self, progress: bool = True) -> None:
        """Step until ``cfg.steps``, early stopping or the explicit ``cfg.max_seconds`` (since ``t0``)."""
        cfg = self.cfg
        bar = ProgressBar(progress, cfg.steps)
        self.tuner = tuner = ThreadTuner(cfg.cpu_threads, self.device)
        t_loop, running = time.perf_counter(), None
        if cfg.max_seconds is not None:
            self.schedule.start(t_loop, max(1e-3, _LOOP_SHARE * cfg.max_seconds - (t_loop - self.t0)))
        try:
            self.net.train()
            for step in range(1, cfg.steps + 1):
                self.steps_done = step
                tuner.before(step)
                loss = self.step(step)
                tuner.after()
                self.seen += cfg.batch_size
                lv = float(loss.detach())
                running = lv if running is None else 0.95 * running + 0.05 * lv
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    v = self.validate()
                    stop = self._record(step, v)
                    bar.update(step, val=v)
                    if stop:
                        self.stop_reason = "early_stopping"
                        break
                if step % cfg.log_every == 0:
                    rate = self.seen * cfg.window / max(time.perf_counter() - t_loop, 1e-9)
                    bar.update(step, loss=running, rate=rate)
                if cfg.max_seconds is not None and time.perf_counter() - self.t0 > cfg.max_seconds and step < cfg.steps:
                    self.stop_reason = "max_seconds"
                    break
        finally:
            bar.close(self.stop_detail())
            tuner.restore()
        self.loop_seconds = time.perf_counter() - t_loop

    def stop_detail(self) -> str:
        """One line on how the run ended, e.g. "stopped at step 158 of 2,500: --max-seconds reached"."""
        done, planned = self.steps_done, self.cfg.steps
        if self.stop_reason == "max_seconds":
            return f"stopped at step {done:,} of {planned:,}: --max-seconds reached ({self.cfg.max_seconds:g} s)"
        if self.stop_reason == "early_stopping":
            return (f"stopped at step {done:,} of {planned:,}: early stopping (no 0.5 % validation improvement "
                    f"in {self.cfg.patience} passes)")
        return f"finished {done:,} of {planned:,} steps"

    def finalise(self) -> tuple[nn.Module, ModelMeta]:
        """Keep the best validated weights (the last ones if they are better), move the model to the
        CPU and measure it (quality, error quantiles, forward cost); returns ``(model in eval mode, meta)``."""
        b = self.best
        last = self.validate()
        if last < b.loss or b.state is None:
            b.loss, b.step = last, self.steps_done
            if self.ema is not None:
                self.net.load_state_dict(self.ema.net.state_dict())
        else:
            self.net.load_state_dict(b.state)
        model, val_loss, chosen_by = self.model, b.loss, None
        single = one_pass(model) if self.cfg.publish_one_pass and not self.n2n else model
        if single is not model:
            # Chosen by the ensemble's validation loss; published (and measured below) as one pass.
            model = single.to(self.device)
            with torch.no_grad():
                val_loss = self.inputs.loss(model, self.power, self.autocast)
            chosen_by = {"self_ensemble": self.model.config.self_ensemble, "val_loss_ensemble": b.loss}
        model = model.cpu().eval()
        metrics = {"val_loss": val_loss, "val_loss_identity": self.inputs.identity_loss(),
                   "objective": self.cfg.objective}
        if not self.n2n:  # the clean truth is known: report the SNR gain at 10 dB input SNR
            gains = snr_gain_by_family(model, self.val.windows, self.val.family, self.val.families, self.eval_gen,
                                       ref_rms=self.val.ref_rms if self.stream_ref else None)
            metrics.update({
                "input_snr_db": EVAL_INPUT_SNR_DB,
                "snr_gain_db": float(np.nanmean(list(gains.values()))),
                "snr_gain_db_by_family": gains,
            })
        # Alert baseline: errors on validation windows as the data gives them (clean for the clean
        # objective; the recordings themselves, noisy, for noisier2noise).
        quantiles = error_quantiles(model, self.val.windows)
        meta = self._meta(model, metrics, quantiles, chosen_by)
        meta.cost = measure_cost(model, self.cfg.window)
        return model, meta

    def _meta(self, model: nn.Module, metrics: dict, quantiles: dict, chosen_by: dict | None) -> ModelMeta:
        cfg = self.cfg
        seconds = time.perf_counter() - self.t0
        corr = self.corruption.to_dict() if not self.n2n else {
            "type": "noisier2noise", "sigma": cfg.n2n_sigma, "draws": cfg.n2n_draws, "relative_to": "window_std",
        }
        training = {
            "data": self.data,
            "objective": cfg.objective,
            "steps": self.steps_done,
            "best_step": self.best.step,
            "stop_reason": self.stop_reason,
            "stop_detail": self.stop_detail(),
            "seconds": round(seconds, 3),
            "train_samples_per_s": round(self.seen * cfg.window / max(self.loop_seconds, 1e-9), 1),
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "max_steps": cfg.steps,
            "max_seconds": cfg.max_seconds,
            "device": self.device.type,
            "loss": "mse" if self.n2n else cfg.loss,
            "anneal_by_time": cfg.anneal_by_time,
            "bf16_autocast": bool(self.step_autocast),
            "ema": cfg.ema,
            "cpu_threads": self.tuner.summary() if self.tuner is not None else None,
        }
        if chosen_by is not None:  # selected with the self-ensemble, published as one pass
            training["published_one_pass"] = chosen_by
        if cfg.field_noise:  # the corruption (metadata "corruption") says how; this says what
            training["field_noise"] = {"kinds": list(cfg.field_noise),
                                       "weights": list(cfg.field_noise_weights) if cfg.field_noise_weights else None}
        return ModelMeta(
            arch="noisier2noise" if self.n2n else cfg.arch,
            config=model_config(model),
            window=cfg.window,
            hop=int(cfg.hop),
            # Rate-generic: the range's ends as the listed rates (a hot-swap candidate must serve them,
            # which for a range means covering it); otherwise the one rate trained for.
            sample_rates=list(cfg.rate_range) if cfg.rate_range is not None else [float(cfg.sample_rate)],
            rate_range=list(cfg.rate_range) if cfg.rate_range is not None else None,
            normalisation=NORMALISATION,
            corruption=corr,
            training=training,
            metrics=metrics,
            error_quantiles=quantiles,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            sha256="",
        )
