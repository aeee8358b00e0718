"""`dae retrain`: train a candidate on recent raw data, compare it with the serving model on the
same held-out slice, promote it only if it is not worse.

One run:
1. read the last N seconds (or samples) of the raw topic without a consumer group
   (``pipeline.retrain.recent_data.read_topic_report``: ``offsets_for_times``, never touches the worker's offsets);
2. split every stream in time: the first 80 % trains, the last 20 % is held out;
3. leave out training windows the current model scores as anomalous *within the recent data*
   (reconstruction error above median + ``anomaly_mads`` x MAD of the errors on that data), so
   faults are not learned as normal — a threshold from the current model's own calibration would
   throw away everything after a genuine shift, which is exactly when retraining is needed;
4. train a noisy-target model (live data has no clean target) and distil it into one pass of its
   network (``models.training.distill``: the noisy-target model runs its network once per fixed
   draw, 8 times per window), the candidate;
5. score candidate, noisy-target teacher and current model on the held-out slice: SNR gain with the
   training corruption (the held-out noisy signal is the reference, Gaussian noise at
   ``eval_sigma`` x RMS is added, each model cleans it through the worker's overlap-add path) and
   the median reconstruction error; measure candidate and current model's forward cost side by side
   (``models.cost``: FLOPs and µs per window);
6. publish the candidate (immutable, with the figures and the decision in its metadata) and promote
   it only if its gain is at least the current one's minus ``margin_db`` and its cost at most
   ``retrain.max_cost_ratio`` times the current one's (:func:`decide`); append the decision and its
   reason to ``<registry>/retrain-log.jsonl``.

Per route (docs/routing.md, docs/retrain.md "Per route"): ``route`` names a ``model.routes`` entry
(None: the default route). The run learns only from the streams that route serves, by the worker's
own first-match rule (``pipeline.inference.routing.ModelSet.match``: a stream of the default route
is one no configured route matches), compares with that route's current version and promotes only
that route's pointer. One training run at a time per registry and host (:func:`training_lock`).

Exit codes for schedulers: 0 promoted, 10 rejected (not an error), 1 failed.
"""

from __future__ import annotations

# Just over 400 lines: one run's steps, the route selection and the training lock stay in one module
# so the order of a run (read, split, train, distil, score, decide, log) is read top to bottom.

import dataclasses
import fcntl
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.settings import DEFAULT_ROUTE, Settings

log = logging.getLogger(__name__)

EXIT_PROMOTED, EXIT_REJECTED, EXIT_FAILED = 0, 10, 1
# The candidate's training budget in steps (batch 512): about what the former 240 s limit allowed
# on a quiet core. A step budget, so the candidate does not depend on how busy the machine is.
CANDIDATE_STEPS = 400


@dataclass
class RetrainResult:
    outcome: str  # promoted | rejected | failed
    current: str | None
    candidate: str | None = None
    figures: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None  # why it was promoted or rejected (decide())
    route: str = DEFAULT_ROUTE  # the model route it retrained (docs/routing.md)

    @property
    def exit_code(self) -> int:
        return {"promoted": EXIT_PROMOTED, "rejected": EXIT_REJECTED}.get(self.outcome, EXIT_FAILED)

    def summary(self) -> str:
        if self.outcome == "failed":
            return f"retrain failed (route {self.route}) after {self.seconds:.0f} s: {self.error}"
        f = self.figures
        return (f"retrain {self.outcome} (route {self.route}): candidate {self.candidate} vs current {self.current}: SNR gain "
                f"{f.get('candidate_gain_db', float('nan')):+.2f} dB vs {f.get('current_gain_db', float('nan')):+.2f} dB "
                f"on {self.data.get('streams', 0)} stream(s), {self.data.get('train_samples', 0)} training samples "
                f"({self.data.get('excluded_windows', 0)} anomalous windows left out), {self.seconds:.0f} s"
                + (f": {self.reason}" if self.reason else ""))


def decide(figures: dict, cost: dict, margin_db: float, max_cost_ratio: float) -> tuple[bool, str]:
    """(promote?, why): not worse than the current model by more than ``margin_db``, and a forward
    cost (FLOPs per window and measured time per window, the larger ratio) within ``max_cost_ratio``
    times the current model's."""
    reasons = []
    cand, cur = figures["candidate_gain_db"], figures["current_gain_db"]
    if not cand >= cur - margin_db:  # NaN fails too
        reasons.append(f"SNR gain {cand:+.2f} dB is below the current model's {cur:+.2f} dB minus the "
                       f"margin {margin_db:g} dB")
    ratio = max(cost["flops_ratio"], cost["time_ratio"])
    if not ratio <= max_cost_ratio:
        reasons.append(f"forward cost {ratio:.1f}x the current model's (FLOPs {cost['flops_ratio']:.2f}x, "
                       f"time {cost['time_ratio']:.2f}x) exceeds retrain.max_cost_ratio {max_cost_ratio:g}")
    if reasons:
        return False, "; ".join(reasons)
    return True, (f"SNR gain {cand:+.2f} dB vs {cur:+.2f} dB, forward cost {ratio:.2f}x the current model's "
                  f"(limit {max_cost_ratio:g}x)")


class RouteError(ValueError):
    """A route that ``model.routes`` does not name, or one without a current version."""


def route_name(route: str | None) -> str:
    return DEFAULT_ROUTE if route in (None, DEFAULT_ROUTE) else route


def check_route(s: Settings, route: str | None, registry=None) -> str:
    """The route's name if a retrain of it can start: configured (or the default route) and, when
    ``registry`` (a ModelRegistry) is given, with a current version; RouteError saying what to do."""
    name = route_name(route)
    configured = [r.name for r in s.model.routes]
    if name != DEFAULT_ROUTE and name not in configured:
        raise RouteError(f"route {name!r} is not in model.routes (DAE_MODEL__ROUTES); configured: "
                         f"{', '.join(configured) or 'none'} (and {DEFAULT_ROUTE!r}, the streams no route matches)")
    if registry is not None and registry.current(None if name == DEFAULT_ROUTE else name) is None:
        how = "dae models promote V" + ("" if name == DEFAULT_ROUTE else f" --route {name}")
        raise RouteError(f"route {name!r} has no current version in registry {registry.root} to compare a "
                         f"candidate with: promote one first ({how})")
    return name


def route_streams(s: Settings, route: str | None, rates: dict[str, float]) -> list[str]:
    """The stream ids of ``rates`` (stream id -> sample rate) that ``route`` serves, by the worker's
    rule (``ModelSet.match``: routes in order, first match wins, no match: the default route)."""
    from pipeline.inference.routing import ModelSet

    name = route_name(route)
    match = ModelSet(None, s.model.routes).match  # engines play no part in matching
    return [sid for sid, rate in rates.items() if match(sid, rate) == name]


# One training run at a time on this host: a run takes the host's CPU for minutes, and two at once
# (a scheduler's routes, or a scheduler and a CronJob) would each take twice as long and starve the
# workers. flock on a file in the registry serialises processes; the thread lock the threads of
# this process (flock is per open file, so the same process opening it twice would also wait); a
# thread already holding it re-enters (the scheduler holds it around retrain_once, which takes it).
_TRAINING_LOCK = ".retrain.lock"
_thread_lock = threading.Lock()
_holder = threading.local()


@contextmanager
def training_lock(registry_root):
    """Held while one retraining run trains; waits (logged) while another run holds it."""
    if getattr(_holder, "depth", 0):
        _holder.depth += 1
        try:
            yield
        finally:
            _holder.depth -= 1
        return
    path = Path(registry_root) / _TRAINING_LOCK
    if not _thread_lock.acquire(blocking=False):
        log.info("another retraining run of this process is training: waiting for it to finish")
        _thread_lock.acquire()
    try:
        if not path.parent.is_dir():  # no registry yet, so nothing to train against: the run fails at once
            _holder.depth = 1
            try:
                yield
            finally:
                _holder.depth = 0
            return
        with open(path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another retraining run holds %s: waiting for it to finish", path)
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            _holder.depth = 1
            try:
                yield
            finally:
                _holder.depth = 0
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        _thread_lock.release()


def _gain_db(engine, held_out: list[np.ndarray], sigma: float, seed: int) -> tuple[float, float]:
    """(mean SNR gain in dB, median reconstruction error) of ``engine`` on the held-out slices."""
    from models.signals.families import snr_db
    from pipeline.stream.denoiser import denoise_signal

    rng = np.random.default_rng(seed)
    gains, errors = [], []
    for y in held_out:
        z = (y + sigma * np.sqrt(np.mean(y**2)) * rng.standard_normal(y.shape)).astype(np.float32)
        cleaned = denoise_signal(engine, z)
        gains.append(snr_db(y, cleaned) - snr_db(y, z))
        n = (len(y) // engine.window) * engine.window
        if n:
            errors.append(engine.infer(y[:n].reshape(-1, 1, engine.window)).errors)
    err = float(np.median(np.concatenate(errors))) if errors else float("nan")
    return float(np.mean(gains)), err


def _outlier_limit(engine, signals: list[np.ndarray], mads: float) -> float:
    W = engine.window
    errs = [engine.infer(x[: (len(x) // W) * W].reshape(-1, 1, W)).errors for x in signals if len(x) >= W]
    e = np.concatenate(errs)
    med = float(np.median(e))
    mad = float(np.median(np.abs(e - med))) or 1e-12
    return med + mads * 1.4826 * mad


def _drop_anomalous(engine, x: np.ndarray, limit: float) -> tuple[list[np.ndarray], int]:
    """Split ``x`` around windows whose reconstruction error exceeds ``limit``."""
    W = engine.window
    n = (len(x) // W) * W
    if n == 0:
        return [x], 0
    errors = engine.infer(x[:n].reshape(-1, 1, W)).errors
    bad = errors > limit
    pieces, start = [], 0
    for i in np.flatnonzero(bad):
        if i * W - start >= W:
            pieces.append(x[start : i * W])
        start = (i + 1) * W
    if len(x) - start >= W:
        pieces.append(x[start:])
    return pieces, int(bad.sum())


def retrain_once(
    s: Settings,
    *,
    route: str | None = None,  # a model.routes name; None: the default route
    topic: str | None = None,
    last_seconds: float | None = 3600.0,
    last_samples: int | None = None,
    arch: str | None = None,
    warm_start: bool = True,
    steps: int | None = None,  # None: CANDIDATE_STEPS
    max_seconds: float | None = None,
    margin_db: float = 0.0,
    eval_sigma: float = 0.3,
    anomaly_mads: float = 8.0,
    seed: int = 0,
    distil_config=None,  # models.training.distill.DistilConfig; None: its defaults with this seed
    progress: bool = False,
) -> RetrainResult:
    from models.registry import ModelRegistry

    t0 = time.monotonic()
    reg = ModelRegistry(s.model.registry)
    name = route_name(route)
    pointer = None if name == DEFAULT_ROUTE else name  # the registry's spelling of the default route
    result = RetrainResult("failed", None, route=name)
    try:
        check_route(s, name, reg)
        result.current = reg.current(pointer)
        with training_lock(s.model.registry):
            _retrain(s, reg, result, pointer, topic=topic, last_seconds=last_seconds, last_samples=last_samples,
                     arch=arch, warm_start=warm_start, steps=steps, max_seconds=max_seconds, margin_db=margin_db,
                     eval_sigma=eval_sigma, anomaly_mads=anomaly_mads, seed=seed, distil_config=distil_config,
                     progress=progress)
    except Exception as exc:  # reported through the exit code and the summary line
        if not isinstance(exc, RouteError):
            log.exception("retrain failed")
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - t0
    _log_decision(Path(s.model.registry), result)
    return result


def _retrain(s: Settings, reg, result: RetrainResult, pointer: str | None, *, topic, last_seconds, last_samples, arch,
             warm_start, steps, max_seconds, margin_db, eval_sigma, anomaly_mads, seed, distil_config,
             progress) -> None:
    """The run itself (under the training lock); fills ``result`` or raises."""
    from models.cost import compare_cost
    from models.training import train_arrays
    from models.training.distill import DistilConfig, distil
    from pipeline.inference.engine import InferenceEngine
    import torch

    current, name = result.current, result.route
    # One CPU thread for the whole run: a conv's weights depend on the thread count
    # (models.training.config), a retrain shares the host with workers, and with the other core
    # busy a 2-thread forward pass here was up to 20x slower than a 1-thread one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = InferenceEngine.from_source(s.model.registry, current, device=s.model.device)
        if engine.meta.rate_range is not None:  # it has no one rate to read recent data at
            how = "" if pointer is None else f", then dae models promote V --route {name}"
            raise RuntimeError(f"the current model {current} of route {name!r} is rate-generic "
                               f"({engine.meta.rates_label()}): dae retrain retrains a model for one sample rate "
                               "from that rate's recent data; promote a model for the streams' rate first "
                               f"(dae train --sample-rate HZ{how})")
        topic = topic or s.kafka.raw_topics[0]
        streams, selection = _recent_streams(s, engine, topic, last_seconds, last_samples, name)
        train, held_out, excluded = _split(engine, streams, anomaly_mads)
        cfg, warm = _candidate_config(engine, arch, warm_start, seed, steps, max_seconds)
        teacher, teacher_meta = train_arrays(cfg, train, progress=progress, source=f"kafka:{topic}",
                                             init_from=engine.model if warm else None,
                                             init_version=current if warm else None)
        model, meta = distil(teacher, teacher_meta, train, distil_config or DistilConfig(seed=seed), progress)
        cand_gain, cand_err = _gain_db(InferenceEngine(model, meta, device=s.model.device, version="candidate"),
                                       held_out, eval_sigma, seed)
        teacher_gain, _ = _gain_db(InferenceEngine(teacher, teacher_meta, device=s.model.device, version="teacher"),
                                   held_out, eval_sigma, seed)
        cur_gain, cur_err = _gain_db(engine, held_out, eval_sigma, seed)
        cost = compare_cost(model, reg.load(current, device="cpu")[0], engine.window)
        result.figures = {"candidate_gain_db": cand_gain, "current_gain_db": cur_gain,
                          "teacher_gain_db": teacher_gain,  # the noisy-target model before distillation
                          "candidate_median_error": cand_err, "current_median_error": cur_err,
                          "margin_db": margin_db, "eval_sigma": eval_sigma, "cost": cost,
                          "max_cost_ratio": s.retrain.max_cost_ratio}
        result.data = {"topic": topic, "route": name, "warm_start_from": current if warm else None,
                       "streams": len(streams), **selection,
                       "train_samples": int(sum(len(p) for p in train)),
                       "held_out_samples": int(sum(len(h) for h in held_out)), "excluded_windows": excluded,
                       "span_seconds": max(len(x) for x in streams.values()) / float(engine.meta.sample_rates[0]),
                       "last_seconds": last_seconds, "last_samples": last_samples}
        promote, result.reason = decide(result.figures, cost, margin_db, s.retrain.max_cost_ratio)
        meta.training["retrain"] = {"replaces": current, "decision": "promoted" if promote else "rejected",
                                    "reason": result.reason, **result.figures, **result.data}
        result.candidate = reg.publish(model, dataclasses.replace(meta, version=None), promote=promote,
                                       route=pointer)
        result.outcome = "promoted" if promote else "rejected"
    finally:
        torch.set_num_threads(threads)


# Stream ids listed in a run's data (the log line and the candidate's metadata): enough to check
# which streams a run learnt from, bounded for topics with thousands of streams.
_MAX_LISTED = 100


def _recent_streams(s: Settings, engine, topic: str, last_seconds, last_samples,
                    route: str = DEFAULT_ROUTE) -> tuple[dict[str, np.ndarray], dict]:
    """(one 1-D signal per (stream, channel) of the topic's recent data that belongs to ``route``,
    at the serving model's rate, each at least five windows long; what was selected and left out)."""
    from pipeline.retrain.recent_data import read_topic_report

    rate = float(engine.meta.sample_rates[0])
    rep = read_topic_report(s.kafka, topic, last_seconds=last_seconds, last_samples=last_samples)
    mine = route_streams(s, route, rep.rates)
    at_rate = [sid for sid in mine if abs(rep.rates[sid] - rate) <= 1e-9 * rate]
    streams = {}
    for sid in at_rate:
        x = rep.streams[sid]
        for c in range(x.shape[1]):  # each channel is one training signal
            if x.shape[0] >= 5 * engine.window:
                streams[sid if x.shape[1] == 1 else f"{sid}[{c}]"] = x[:, c]
    ids = sorted({sid for sid in at_rate if rep.streams[sid].shape[0] >= 5 * engine.window})
    selection = {"stream_ids": ids[:_MAX_LISTED], "other_route_streams": len(rep.streams) - len(mine),
                 "other_rate_streams": len(mine) - len(at_rate), "short_streams": len(at_rate) - len(ids)}
    if not streams:
        raise RuntimeError(f"no stream of route {route!r} at {rate:g} Hz with at least {5 * engine.window} samples "
                           f"in {topic} ({len(rep.streams)} stream(s) read, {len(mine)} of this route, "
                           f"{len(at_rate)} of them at {rate:g} Hz)")
    return streams, selection


def _split(engine, streams: dict[str, np.ndarray], anomaly_mads: float):
    """(training pieces without anomalous windows, held-out tails, number of windows left out)."""
    limit = _outlier_limit(engine, [x[: int(len(x) * 0.8)] for x in streams.values()], anomaly_mads)
    train, held_out, excluded = [], [], 0
    for x in streams.values():
        cut = int(len(x) * 0.8)
        pieces, n_bad = _drop_anomalous(engine, x[:cut], limit)
        train += pieces
        excluded += n_bad
        held_out.append(x[cut:])
    return train, held_out, excluded


def _candidate_config(engine, arch: str | None, warm_start: bool, seed: int, steps: int | None,
                      max_seconds: float | None):
    """(the noisy-target TrainConfig, whether it starts from the serving model's weights)."""
    from models.training import DEFAULT_ARCH, TrainConfig

    n2n = engine.meta.arch == "noisier2noise"
    base_arch = engine.meta.config.get("inner_arch") if n2n else engine.meta.arch
    base_cfg = dict(engine.meta.config.get("inner") or {}) if n2n else dict(engine.meta.config)
    # The candidate is the recommended network (models.training.DEFAULT_ARCH, its default layout) unless
    # --arch names another; it starts from the serving model's weights when that has the same network.
    arch = arch or DEFAULT_ARCH
    warm = warm_start and arch == base_arch
    extra = {"hidden": base_cfg.get("hidden", 256), "arch_config": {k: v for k, v in base_cfg.items()
             if k not in ("window", "hidden")}} if warm else {}
    cfg = TrainConfig(sample_rate=float(engine.meta.sample_rates[0]), window=engine.window, hop=engine.hop,
                      arch=arch, objective="noisier2noise", seed=seed, steps=steps or CANDIDATE_STEPS,
                      max_seconds=max_seconds, cpu_threads=1, **extra)
    return cfg, warm


def _log_decision(root: Path, r: RetrainResult) -> None:
    root.mkdir(parents=True, exist_ok=True)
    line = {"time": time.time(), "route": r.route, "outcome": r.outcome, "reason": r.reason, "current": r.current,
            "candidate": r.candidate, "figures": r.figures, "data": r.data, "seconds": r.seconds, "error": r.error}
    with open(root / "retrain-log.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def parse_duration(text: str) -> float:
    """'90s', '15m', '6h', '1d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise ValueError(f"duration {text!r}: use a number with s, m, h or d (e.g. 6h)") from None
