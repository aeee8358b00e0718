"""Checkpoints: ``model.safetensors`` (weights) + ``model.json`` (everything needed to rebuild).

Weights are only ever read as safetensors — never ``torch.load``/pickle, which can execute code.
The JSON records the architecture and its config (so the model rebuilds from the files alone), the
window/hop and sample rates it serves (a list of rates, and for a rate-generic model the range
``rate_range`` of rates it was trained across; :meth:`ModelMeta.serves_rate` decides), its normalisation and training corruption, training summary,
validation metrics, reconstruction-error quantiles (for alert thresholds), the forward cost measured
when it was trained (``cost``: FLOPs and µs per window, ``models.cost``) and the sha256 of the
weights file, checked on every load so a tampered or half-written file is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from models.archs import ARCHITECTURES, build_model, model_config
from models.atomic import atomic_write_bytes, atomic_write_text

WEIGHTS = "model.safetensors"
META = "model.json"
FORMAT_VERSION = 1
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint directory that must not be loaded; the message names the problem."""


@dataclass
class ModelMeta:
    arch: str
    config: dict
    window: int
    hop: int
    sample_rates: list[float]
    normalisation: str
    corruption: dict
    training: dict
    metrics: dict
    error_quantiles: dict[str, float]
    created: str
    sha256: str
    version: str | None = None
    format_version: int = FORMAT_VERSION
    cost: dict | None = None  # models.cost.measure_cost on the machine that trained it; None in older files
    # [lo, hi] Hz: a rate-generic model, trained across every rate in the range (`dae train
    # --rate-generic`); it serves any rate in it. Its sample_rates are then [lo, hi], the range's ends,
    # so code that checks listed rates (a hot-swap candidate must serve the serving model's listed
    # rates) covers the whole interval. None: a model for its listed rates only (and older files).
    rate_range: list[float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        if not isinstance(d, dict):
            raise CheckpointError(f"{META} must hold a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise CheckpointError(f"{META} is missing fields: {', '.join(missing)}")
        # Unknown keys are ignored: a newer writer may add fields within the same format_version.
        meta = cls(**{k: v for k, v in d.items() if k in names})
        meta._check_types()
        return meta

    def _check_types(self) -> None:
        def bad(name: str, want: str) -> CheckpointError:
            return CheckpointError(f"{META}: field {name!r} must be {want}, got {getattr(self, name)!r}")

        for name in ("window", "hop", "format_version"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise bad(name, "an integer")
        for name in ("arch", "normalisation", "created", "sha256"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, "a string")
        for name in ("config", "corruption", "training", "metrics", "error_quantiles"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "an object")
        if not isinstance(self.sample_rates, list) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in self.sample_rates
        ):
            raise bad("sample_rates", "a list of numbers")
        if self.version is not None and not isinstance(self.version, str):
            raise bad("version", "a string or null")
        if self.cost is not None and not isinstance(self.cost, dict):
            raise bad("cost", "an object or null")
        if self.rate_range is not None:
            rr = self.rate_range
            if not (isinstance(rr, list) and len(rr) == 2 and all(_is_number(r) for r in rr)
                    and all(math.isfinite(r) for r in rr) and 0 < rr[0] < rr[1]):
                raise bad("rate_range", "null or [lo, hi] with 0 < lo < hi (Hz)")

    def serves_rate(self, rate: float) -> bool:
        """True for a listed rate (relative tolerance 1e-6, absolute below 1 Hz) or, for a
        rate-generic model, any rate within ``rate_range`` (ends included, same tolerance)."""
        rate = float(rate)
        tol = RATE_TOLERANCE * max(1.0, rate)
        if any(abs(float(r) - rate) <= tol for r in self.sample_rates):
            return True
        if self.rate_range is not None:
            lo, hi = (float(r) for r in self.rate_range)
            return lo - tol <= rate <= hi + tol
        return False

    def rates_label(self) -> str:
        """The rates it serves for messages: "1000 Hz", "100, 360 Hz", "50-20000 Hz (rate-generic)"."""
        if self.rate_range is not None:
            lo, hi = self.rate_range
            return f"{lo:g}-{hi:g} Hz (rate-generic)"
        return ", ".join(f"{r:g}" for r in self.sample_rates) + " Hz"


# A rate "is" a listed rate within this relative tolerance (absolute below 1 Hz): the inference
# engine's rule since v1, so a header's decimal rendering of a float rate still matches.
RATE_TOLERANCE = 1e-6


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _normalised(meta: ModelMeta) -> ModelMeta:
    """The meta exactly as it reads back from JSON (tuples → lists, ints stay ints)."""
    return ModelMeta.from_dict(json.loads(json.dumps(meta.to_dict(), allow_nan=False)))


def save_checkpoint(directory: Path, model: nn.Module, meta: ModelMeta) -> ModelMeta:
    """Write weights then JSON (the JSON, carrying the weights' sha256, commits the checkpoint)."""
    directory = Path(directory)
    if meta.arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {meta.arch!r}; known: {', '.join(ARCHITECTURES)}")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    blob = st_save(tensors, metadata={"format": "pt", "arch": meta.arch})
    digest = hashlib.sha256(blob).hexdigest()
    out = _normalised(replace(meta, sha256=digest, format_version=FORMAT_VERSION))
    atomic_write_bytes(directory / WEIGHTS, blob)
    text = json.dumps(out.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_text(directory / META, text, sync_dir=True)
    return out


def _refuse_pickle(path: Path, data: bytes) -> None:
    """Refuse pickle (b"\\x80" + protocol) and zip/torch.save ("PK") files posing as weights."""
    # safetensors starts with a u64 little-endian header length whose low byte may itself be 0x80,
    # so a structurally valid safetensors prefix wins; a pickle read that way gives an absurd length.
    if len(data) >= 10:
        (header_len,) = struct.unpack("<Q", data[:8])
        if header_len <= len(data) - 8 and data[8:9] == b"{":
            return
    if data[:1] == b"\x80" or data[:2] == b"PK":
        raise CheckpointError(
            f"{path} is a pickle/zip (torch.save) file, not safetensors; refusing to load it "
            "(unpickling can run arbitrary code)"
        )


def _read_meta(directory: Path) -> ModelMeta:
    path = directory / META
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    meta = ModelMeta.from_dict(raw)
    if meta.format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported format_version {meta.format_version!r} (this code reads <= {FORMAT_VERSION})"
        )
    return meta


def read_meta(directory: Path) -> ModelMeta:
    """The checkpoint's metadata only (no weights read, no hash check)."""
    directory = Path(directory)
    if not (directory / META).is_file():
        raise CheckpointError(f"checkpoint {directory} has no {META}")
    return _read_meta(directory)


def load_checkpoint(directory: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Load and verify a checkpoint; returns ``(model in eval mode on device, meta)``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    wpath, mpath = directory / WEIGHTS, directory / META
    if not wpath.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"checkpoint {directory} has pickle-format weights ({', '.join(pickles)}) and no {WEIGHTS}; "
                "only safetensors weights are loaded"
            )
        raise CheckpointError(f"checkpoint {directory} has no {WEIGHTS}")
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {META}")
    meta = _read_meta(directory)

    # Read once, then hash and parse the same bytes: no window for the file to change in between.
    data = wpath.read_bytes()
    _refuse_pickle(wpath, data)
    got = hashlib.sha256(data).hexdigest()
    if got != meta.sha256:
        raise CheckpointError(
            f"weights sha256 mismatch: expected {meta.sha256}, got {got} — file tampered or half-written "
            f"({wpath})"
        )
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt headers/offsets
        raise CheckpointError(f"{wpath} could not be parsed as safetensors: {e}") from None

    if meta.arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{mpath}: unknown architecture {meta.arch!r}; known: {', '.join(ARCHITECTURES)}"
        )
    try:
        model = build_model(meta.arch, meta.config)
    except ValueError as e:
        raise CheckpointError(f"{mpath}: {e}") from None
    cfg_window = meta.config.get("window") if isinstance(meta.config, dict) else None
    if cfg_window is not None and cfg_window != meta.window:
        raise CheckpointError(f"{mpath}: window {meta.window} disagrees with config window {cfg_window}")
    if not (isinstance(meta.hop, int) and 1 <= meta.hop <= meta.window):
        raise CheckpointError(f"{mpath}: hop must be an integer in [1, window={meta.window}], got {meta.hop!r}")

    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{wpath} does not match architecture {meta.arch!r} {meta.config}: "
            f"missing tensors {missing}, unexpected tensors {unexpected}"
        )
    bad = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(f"{wpath} shape mismatch for {meta.arch!r} {meta.config}: " + "; ".join(bad))
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), meta


def meta_for(model: nn.Module, arch: str, **kw) -> ModelMeta:
    """Convenience: a ModelMeta whose ``config`` is taken from the model (sha256 filled on save)."""
    kw.setdefault("sha256", "")
    return ModelMeta(arch=arch, config=model_config(model), **kw)


__all__ = [
    "CheckpointError",
    "ModelMeta",
    "load_checkpoint",
    "meta_for",
    "read_meta",
    "save_checkpoint",
    "WEIGHTS",
    "META",
]
