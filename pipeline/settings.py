"""One settings model for every process (worker, simulate, capture, train, bench, demo).

Sources, highest first: constructor arguments (CLI flags), environment (``DAE_`` prefix, ``__`` for
nesting, e.g. ``DAE_KAFKA__BOOTSTRAP_SERVERS``), a ``.env`` file, then the defaults below.
An invalid value stops the start with pydantic's message, which names the setting.
"""
# Just over 400 lines: every setting of the service in one model (the brief), each with its comment.

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


_FROZEN = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(BaseModel):
    model_config = _FROZEN

    bootstrap_servers: str = "127.0.0.1:19092"
    raw_topics: tuple[str, ...] = ("dae.raw",)
    clean_topic: str = "dae.clean"
    alerts_topic: str = "dae.alerts"
    dead_letter_topic: str = "dae.deadletter"
    group_id: str = "dae-worker"
    # Static membership: a worker restarted with the same id gets its partitions back at once, with
    # no rebalance and no wait for its session to expire (one id per replica, e.g. a pod name).
    group_instance_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    # Compacted topic holding each stream's resume entry (README "Delivery"); None: "<group_id>.state".
    state_topic: str | None = None
    client_id: str = "dae"
    # Partitions for topics this project creates (raw/clean/alerts/dead-letter) when absent.
    partitions: int = Field(4, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Records per poll: big enough to fill a micro-batch from many streams in one call.
    max_poll_records: int = Field(500, ge=1)
    # Producer batching: a few ms of linger turns per-chunk sends into few large requests.
    linger_ms: int = Field(5, ge=0)
    # Must stay below the broker's message.max.bytes (deploy/kafka sets 8 MiB).
    max_request_size: int = Field(8 * 1024 * 1024, ge=1024)
    # A worker that stops polling for this long is considered dead by the group coordinator.
    session_timeout_ms: int = Field(10_000, ge=1000)
    request_timeout_ms: int = Field(30_000, ge=1000)

    def client_options(self) -> dict:
        """Options shared by every kafka-python client (consumer, producer, admin)."""
        opts: dict = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                opts[name] = str(value)
        return opts


class WindowSettings(BaseModel):
    model_config = _FROZEN

    # Window length W and hop H in samples. None: take them from the loaded model's checkpoint.
    window: int | None = Field(None, ge=8)
    hop: int | None = Field(None, ge=1)
    # Largest chunk accepted, in frames (samples per channel); larger chunks are dead-lettered.
    max_chunk_frames: int = Field(1 << 20, ge=1)
    # A stream silent for this long has its tail released (padded final window) and state dropped.
    idle_flush_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _hop_fits(self) -> "WindowSettings":
        if self.window is not None and self.hop is not None and self.hop > self.window:
            raise ValueError(f"window.hop ({self.hop}) must not exceed window.window ({self.window})")
        return self


class BatchSettings(BaseModel):
    model_config = _FROZEN

    # A batch closes at max_batch windows or max_delay_ms after its first window, whichever first.
    max_batch: int = Field(512, ge=1)
    max_delay_ms: float = Field(20.0, ge=0)


# The route every stream falls back to: the registry's plain current pointer (CURRENT.json).
DEFAULT_ROUTE = "default"
_ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _same_rate(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, b)


class Route(BaseModel):
    """Streams served by one registry route: an id glob (``fnmatch``, case-sensitive) and/or sample
    rates. Routes are tried in order; the first that matches wins; a stream no route matches is
    served by the ``default`` route (the registry's current version)."""

    model_config = _FROZEN

    name: str
    streams: str | None = None  # glob on the stream id, e.g. "ecg-*"
    rates: tuple[float, ...] | None = None  # Hz; None: any rate

    @model_validator(mode="after")
    def _valid(self) -> "Route":
        if not _ROUTE_NAME.match(self.name):
            raise ValueError(f"route name {self.name!r}: use 1-63 of a-z, 0-9, '_' or '-', starting with a letter or digit")
        if self.name == DEFAULT_ROUTE:
            raise ValueError(f"route name {DEFAULT_ROUTE!r} is reserved for the fallback (the registry's current version)")
        if self.streams is None and self.rates is None:
            raise ValueError(f"route {self.name!r} matches every stream: give `streams` (a glob) and/or `rates`")
        if self.streams is not None and not self.streams:
            raise ValueError(f"route {self.name!r}: `streams` is an empty glob")
        if self.rates is not None:
            if not self.rates or not all(math.isfinite(r) and r > 0 for r in self.rates):
                raise ValueError(f"route {self.name!r}: `rates` must be a non-empty list of positive rates, got {list(self.rates)}")
        return self

    def matches(self, stream: str, rate: float) -> bool:
        if self.rates is not None and not any(_same_rate(rate, r) for r in self.rates):
            return False
        return self.streams is None or fnmatch.fnmatchcase(stream, self.streams)

    def shadows(self, later: "Route") -> bool:
        """Every stream ``later`` matches is matched by this route (so ``later`` is unreachable).
        Glob containment is judged on the pattern text (this glob matches ``later``'s glob read as
        a literal id): exact for the patterns routes use (prefixes, suffixes, ``*``, ``?``)."""
        if self.rates is not None and (later.rates is None or
                                       not all(any(_same_rate(r, q) for q in self.rates) for r in later.rates)):
            return False
        if self.streams is None:
            return True
        return later.streams is not None and fnmatch.fnmatchcase(later.streams, self.streams)


def check_routes(routes: tuple[Route, ...]) -> None:
    """Names unique, no route unreachable behind an earlier one (first match wins)."""
    seen: dict[str, int] = {}
    for i, r in enumerate(routes):
        if r.name in seen:
            raise ValueError(f"routes[{i}] and routes[{seen[r.name]}] are both named {r.name!r}")
        seen[r.name] = i
        for j, earlier in enumerate(routes[:i]):
            if earlier.shadows(r):
                raise ValueError(
                    f"route {r.name!r} (routes[{i}]) is unreachable: every stream it matches is matched first by "
                    f"route {earlier.name!r} (routes[{j}]); put the narrower route first"
                )


class ModelSettings(BaseModel):
    model_config = _FROZEN

    # Registry directory (versions/ + atomic CURRENT pointer) shared by worker and retraining.
    registry: Path = Path(".dae/registry")
    # Serve this version (or checkpoint directory) instead of the registry's current one.
    version: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 only applies on CUDA; the CPU always runs float32.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # How often the worker checks the registry's current pointer for a new version (0: never).
    # Ignored when `version` pins one.
    watch_interval_s: float = Field(2.0, ge=0)
    # Model routing (docs/routing.md), e.g. DAE_MODEL__ROUTES='[{"name": "ecg", "streams": "ecg-*",
    # "rates": [360]}]'. Each route serves its registry pointer (`dae models promote V --route NAME`);
    # a route without a version yet, and every stream no route matches, is served by the default route.
    routes: tuple[Route, ...] = ()
    # A stream whose rate its route's model does not serve: False (default) tries the default route's
    # model (e.g. a rate-generic one), True dead-letters it as rate_mismatch at once.
    strict_rates: bool = False

    @model_validator(mode="after")
    def _routes(self) -> "ModelSettings":
        check_routes(self.routes)
        if self.routes and self.version is not None:
            raise ValueError("model.version pins one model for every stream; it cannot be combined with model.routes")
        return self


class MetricsSettings(BaseModel):
    model_config = _FROZEN

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class WorkerSettings(BaseModel):
    model_config = _FROZEN

    # Commit at most this often (s); commits also happen on revoke and shutdown.
    commit_interval_s: float = Field(1.0, gt=0)
    # SIGTERM: finish the in-flight batch, flush and commit within this many seconds.
    shutdown_timeout_s: float = Field(10.0, gt=0)
    # Forward pass in a second thread, overlapping Kafka I/O; off: it stalled on the GIL (docs/bench.md).
    inference_thread: bool = False
    # at_least_once: outputs may repeat after a crash, always with the same values; exactly_once:
    # outputs, alert events, dead letters and offsets in one transaction per input partition, for
    # readers with isolation_level=read_committed (README "Delivery").
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # Longest poll when no batch is waiting (a waiting batch shortens it to its deadline); it
    # bounds how late an idle flush or a commit can be.
    poll_timeout_ms: int = Field(100, ge=1)


# The alert engine's window features (pipeline/monitor/alerts/terms.py computes them); named here
# because settings choose among them.
ALERT_FEATURES = ("residual", "error", "noise", "scale", "level", "peak", "clip", "freq", "floor")
# Per-window terms that may vote (``error`` only gates the residual; ``freq`` only votes slow).
VOTING = ("residual", "noise", "scale", "level", "peak", "clip")
# Terms with a sequential test (CUSUM), and the spike matched test.
SEQUENTIAL = ("score", "level", "scale", "noise", "spike", "runs", "freq", "floor")
# ``floor`` has a CUSUM only (a robust noise floor of the raw window, for impulsive signals).
ALERT_SLOWABLE = tuple(f for f in ALERT_FEATURES if f not in ("error", "floor"))
SLOWABLE = ALERT_SLOWABLE


class AlertSettings(BaseModel):
    """Alerting on reconstruction error (mounted as ``Settings.alerts``, env ``DAE_ALERTS__...``)."""

    model_config = _FROZEN

    # Compute scores and emit alert events at all.
    enabled: bool = True
    # A window is "hot" when its score (largest robust |z| over the terms) reaches this.
    raise_threshold: float = Field(6.0, gt=0)
    # Hysteresis: an active alert continues while windows score at or above this (< raise_threshold).
    resolve_threshold: float = Field(3.0, gt=0)
    # Raise after k hot windows among the last n. 2 of 3: every sample lies in two windows at hop
    # W/2, so a one-sample spike still raises, while one-window flukes (x7 fewer measured) do not.
    k: int = Field(2, ge=1)
    n: int = Field(3, ge=1)
    # Consecutive windows below resolve_threshold that resolve an alert.
    resolve_windows: int = Field(4, ge=1)
    # Windows after a resolve during which no new alert is raised on that stream.
    cooldown_windows: int = Field(8, ge=0)
    # Running statistics over the last this many admitted windows per stream and term.
    stats_windows: int = Field(512, ge=8)
    # After warm-up, recompute the statistics every this many admitted windows (cost vs. lag).
    refresh_every: int = Field(16, ge=1)
    # Admitted windows before a stream may raise (32 windows = 4 s at 1 kHz, hop 128): younger
    # statistics raised most of the measured false alarms.
    min_windows: int = Field(32, ge=2)
    # Admitted windows until the stream's statistics are trusted alone.
    warmup_windows: int = Field(64, ge=2)
    # During an alert admit every this-many-th window anyway, so a lasting new regime is learnt (0: never).
    alert_admit_every: int = Field(4, ge=0)
    # Tail probability whose quantile the raise threshold must clear (per side, per term).
    tail_quantile: float = Field(0.01, gt=0, lt=0.5)
    # How many sigmas beyond that quantile the raise threshold must lie at least.
    tail_margin: float = Field(3.0, ge=0)
    # The same for residual and noise, the terms that carry the model's misfit (heavier tails).
    model_tail_margin: float = Field(4.0, ge=0)
    # Smallest sigmas (log units unless noted): a noise-free stream would otherwise alarm on rounding.
    residual_floor: float = Field(0.1, gt=0)
    error_floor: float = Field(0.1, gt=0)
    noise_floor: float = Field(0.1, gt=0)
    scale_floor: float = Field(0.05, gt=0)
    # Level is in units of the stream's median scale: shifts below ~1/10 of it are not worth an alert.
    level_floor: float = Field(0.1, gt=0)
    peak_floor: float = Field(0.05, gt=0)
    # Share of samples at the window's extremes (0.01 = 2.6 of 256).
    clip_floor: float = Field(0.01, gt=0)
    freq_floor: float = Field(0.05, gt=0)
    floor_floor: float = Field(0.05, gt=0)
    # Per-window terms that vote (those needing windows/outputs only when the caller passes them).
    terms: tuple[str, ...] = VOTING
    # Features whose mean over the last slow_windows windows also votes, with statistics of its own.
    slow_terms: tuple[str, ...] = ("level", "freq")
    # 64 windows = 8 s at 1 kHz, hop 128: lasting shifts (a level step on a drifting sensor, a faster
    # process) too small for any single window.
    slow_windows: int = Field(64, ge=2)
    # Scores are capped here (a flat window has log scale = -inf; JSON has no infinity).
    max_score: float = Field(1000.0, gt=0)
    # Sequential tests (pipeline.monitor.alerts.sequential, docs/alerts.md): CUSUMs on the z of level,
    # scale and freq (both ways) and noise (upwards, gated by the error as the residual is); "spike", the
    # matched test for isolated spikes; "runs", the sign-run tests of scale (below its median) and noise
    # (above it) for bursty signals (pipeline.monitor.alerts.signruns); "score": a stream's
    # raise_threshold raised to its quiet scores' extreme-value quantile, so the window score keeps
    # false_alarms_per_hour on signals unlike the training data (held-out families: 0.08 false alarms
    # per clean stream-hour with it, 10.3 without; its cost on the training families: level-shift
    # recall 0.97 -> 0.81 on the standard set); "floor": a CUSUM (upwards) on the raw window's robust
    # noise floor (the median of its newer half's |second differences|), which knocks and clicks do
    # not move as they move the residual's noise term (docs/alerts.md). Empty: off. The defaults are
    # the sensor profile of docs/alerts.md since 2026-12-05; the profile before (without "score" and
    # "floor", isolated_z 0) catches more on signals like the training families.
    sequential: tuple[str, ...] = ("level", "scale", "noise", "freq", "spike", "runs", "score", "floor")
    # With "score": the model of the quiet scores' upper tail (pipeline.monitor.alerts.tail): "pot",
    # peaks over threshold with declustering, or "gumbel", a Gumbel law fitted to their mean and std;
    # and, for "pot", the quantile of the quiet scores above which the tail is modelled.
    score_tail: Literal["pot", "gumbel"] = "pot"
    score_tail_quantile: float = Field(0.98, gt=0.5, lt=1.0)
    # False alarms per clean stream-hour the window score and the sequential tests may raise
    # together: their thresholds follow from it and each one's false-alarm model (even shares).
    false_alarms_per_hour: float = Field(0.2, gt=0)
    # CUSUM reference value: half the shift (in long-run sigmas of the term's z) detected fastest.
    cusum_k: float = Field(0.5, gt=0)
    # One window adds at most this many long-run sigmas to a CUSUM (a single wild window is the
    # window score's business; a CUSUM sums lasting evidence): with k 0.5 it takes >= 12 windows
    # (1.5 s at 1 kHz, hop 128) of the strongest evidence to raise, so shorter dips (a multi-tone
    # signal's beating) do not (docs/alerts.md).
    cusum_clip: float = Field(1.5, gt=0)
    # Windows of a term's z (after the stream's warm-up) that estimate its mean and long-run
    # variance before its CUSUM runs; the estimates then follow an exponential memory of
    # sequential_memory quiet windows.
    sequential_warmup: int = Field(128, ge=8)
    sequential_memory: int = Field(1024, ge=16)
    # The estimates (and the score's calibrated threshold) move once per block of this many windows of
    # a stream, counted from its first window: so the decisions do not depend on how the worker's
    # micro-batches cut the stream (they grow when it falls behind).
    sequential_block: int = Field(64, ge=1, le=4096)
    # The record outlier test (pipeline.monitor.alerts.outliers): each new raw sample against an
    # exponential mean and std of the stream's last ~outlier_memory samples (after min_windows
    # windows' worth); a window whose new samples reach the stream's threshold raises (detector
    # "outlier"). The threshold: the stream's own quiet history's extreme-value quantile at the test's
    # share of false_alarms_per_hour, never below outlier_z. 0 (default): off. Turn it on (7: NAB's
    # windowed Gaussian baseline, its optimised |z| ~ 7.2) for slow metrics whose anomalies are
    # jumps to new levels: it scores NAB 42.9; on the 1 kHz sensor sets it found nothing more and
    # cost ~11 % of the worker's throughput (docs/alerts.md).
    outlier_z: float = Field(0.0, ge=0)
    outlier_memory: int = Field(65_536, ge=2)
    # The isolated-sample test (pipeline.monitor.alerts.isolated): each new raw sample against the
    # mean and spread of its 4 neighbours on either side; a window with a sample that leaves both
    # sides at once beyond the stream's threshold raises (detector "isolated"). The threshold: the
    # stream's own quiet history's extreme-value quantile at the test's share of
    # false_alarms_per_hour, never below isolated_z. 0: off. docs/alerts.md.
    isolated_z: float = Field(5.0, ge=0)
    # A stream's alert state is dropped after this many seconds without a window (it restarts with warm-up).
    state_ttl_s: float = Field(300.0, gt=0)
    # Streams tracked per worker at most (~24 KB each once warmed up); beyond, the least recently seen is dropped.
    max_streams: int = Field(100_000, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "AlertSettings":
        if self.resolve_threshold >= self.raise_threshold:
            raise ValueError(f"resolve_threshold ({self.resolve_threshold}) must be below raise_threshold "
                             f"({self.raise_threshold})")
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        if self.warmup_windows < self.min_windows:
            raise ValueError(f"warmup_windows ({self.warmup_windows}) must be >= min_windows ({self.min_windows})")
        if self.warmup_windows > self.stats_windows:
            raise ValueError(f"warmup_windows ({self.warmup_windows}) must be <= stats_windows ({self.stats_windows})")
        if any(t not in VOTING for t in self.terms) or "residual" not in self.terms:
            raise ValueError(f"terms must include 'residual' and be among {VOTING}, got {self.terms}")
        if any(t not in SEQUENTIAL for t in self.sequential):
            raise ValueError(f"sequential must be among {SEQUENTIAL}, got {self.sequential}")
        if any(t not in SLOWABLE for t in self.slow_terms):
            raise ValueError(f"slow_terms must be among {SLOWABLE}, got {self.slow_terms}")
        return self


class DriftSettings(BaseModel):
    """Drift trigger (mounted as ``Settings.drift``, env ``DAE_DRIFT__...``)."""

    model_config = _FROZEN

    enabled: bool = True
    # The median is taken over the errors of the last this many seconds.
    window_s: float = Field(3600.0, gt=0)
    # Time buckets of the sliding window (the window slides by this much).
    bucket_s: float = Field(60.0, gt=0)
    # Drift when the median moves beyond ratio x (or below 1/ratio x) the reference.
    ratio: float = Field(3.0, gt=1)
    # Windows whose errors form the reference (the first ones the model serves).
    reference_windows: int = Field(10_000, ge=1)
    # No decision with fewer windows than this in the sliding window.
    min_windows: int = Field(1_000, ge=1)
    # At most one drift event per model and this many seconds.
    cooldown_s: float = Field(3600.0, ge=0)


class RetrainSettings(BaseModel):
    """`dae retrain` (mounted as ``Settings.retrain``, env ``DAE_RETRAIN__...``)."""

    model_config = _FROZEN

    # A candidate whose forward cost per window (FLOPs, or µs measured beside the serving model) is
    # more than this many times the serving model's is refused: every worker would fall behind.
    max_cost_ratio: float = Field(2.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DAE_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    window: WindowSettings = WindowSettings()
    batch: BatchSettings = BatchSettings()
    model: ModelSettings = ModelSettings()
    metrics: MetricsSettings = MetricsSettings()
    worker: WorkerSettings = WorkerSettings()
    # Anomaly alerts per stream (pipeline/monitor/alerts/) and drift of the error distribution (pipeline/monitor/drift.py).
    alerts: AlertSettings = AlertSettings()
    drift: DriftSettings = DriftSettings()
    retrain: RetrainSettings = RetrainSettings()


def load_settings(**overrides) -> Settings:
    """Settings from env/.env with nested ``overrides`` (e.g. from CLI flags) on top.

    ``overrides`` maps top-level sections to dicts of fields; ``None`` values are ignored so that
    unset CLI flags do not shadow the environment.
    """
    base = Settings()
    if not overrides:
        return base
    merged = base.model_dump()
    for section, fields in overrides.items():
        if fields is None:
            continue
        if isinstance(fields, dict):
            merged.setdefault(section, {}).update({k: v for k, v in fields.items() if v is not None})
        else:
            merged[section] = fields
    # Re-validate the merged dict (unwrap secrets so they survive the round-trip).
    pw = base.kafka.sasl_password
    if pw is not None and merged["kafka"].get("sasl_password") is pw:
        merged["kafka"]["sasl_password"] = pw.get_secret_value()
    return Settings.model_validate(merged)
