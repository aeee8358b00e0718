"""Wire format of raw and cleaned chunks (public contract: see README "Wire format").

key    : stream id, UTF-8 (1..255 bytes)
value  : little-endian float32 samples, interleaved by channel (frame-major), no framing bytes
headers: ASCII decimal text, names below, with a strict grammar (no sign, blanks, underscores,
         leading zeros or exponents in integers; see INT_GRAMMAR and RATE_GRAMMAR). Output
         chunks add ``dae.model``.

Decoding never copies the payload: the samples are a read-only ``np.frombuffer`` view of the
message value, reshaped to (frames, channels).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1
SAMPLE_DTYPE = np.dtype("<f4")

H_FORMAT = "dae.format"
H_INDEX = "dae.index"
H_RATE = "dae.rate"
H_CHANNELS = "dae.channels"
H_MODEL = "dae.model"
H_ROUTE = "dae.route"  # output only: the model route that cleaned the chunk (docs/routing.md)
REQUIRED_HEADERS = (H_FORMAT, H_INDEX, H_RATE, H_CHANNELS)

MAX_CHANNELS = 64
INT64_MAX = 2**63 - 1

# Integer headers: plain decimal digits, no sign, no leading zero, at most 19 digits (int64).
# Python's int() also takes " 12", "+12", "1_000" and "12\n": a producer bug that must not rewind a stream.
INT_GRAMMAR = re.compile(rb"(0|[1-9][0-9]{0,18})")
# The rate: a positive decimal with an optional fraction and exponent ("1000", "0.2", "44100.5",
# "1e-05", "1.5e+20": what encode_headers writes); no sign, blanks, "inf" or "nan".
RATE_GRAMMAR = re.compile(rb"(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?")
# Longest rate text accepted (repr of a float is at most 24 characters).
RATE_MAX_BYTES = 32


class DecodeError(ValueError):
    """A permanent problem with one message; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Chunk:
    stream: str
    index: int  # sample index (frame index) of the first frame in the stream
    rate: float  # samples per second per channel
    samples: np.ndarray  # (frames, channels) float32, possibly a read-only view of the message
    model: str | None = None
    route: str | None = None  # output chunks: the model route that cleaned it

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def end(self) -> int:
        return self.index + self.frames


def encode_headers(index: int, rate: float, channels: int, model: str | None = None,
                   route: str | None = None) -> list:
    headers = [
        (H_FORMAT, str(FORMAT_VERSION).encode()),
        (H_INDEX, str(int(index)).encode()),
        (H_RATE, _fmt_rate(rate).encode()),
        (H_CHANNELS, str(int(channels)).encode()),
    ]
    if model is not None:
        headers.append((H_MODEL, model.encode()))
    if route is not None:
        headers.append((H_ROUTE, route.encode()))
    return headers


def _fmt_rate(rate: float) -> str:
    return str(int(rate)) if float(rate).is_integer() else repr(float(rate))


def encode_chunk(
    stream: str, index: int, rate: float, samples: np.ndarray, model: str | None = None, route: str | None = None
) -> tuple[bytes, bytes, list]:
    """(key, value, headers) for one chunk; ``samples`` is (frames,) or (frames, channels)."""
    arr = np.asarray(samples)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"samples must be (frames,) or (frames, channels), got shape {arr.shape}")
    value = np.ascontiguousarray(arr, dtype=SAMPLE_DTYPE).tobytes()
    return stream.encode("utf-8"), value, encode_headers(index, rate, arr.shape[1], model, route)


def _header_map(headers) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, value in headers or ():
        if name in out:
            raise DecodeError("invalid_header", f"header {name!r} appears more than once")
        out[name] = value if value is not None else b""
    return out


def _int_header(h: dict[str, bytes], name: str) -> int:
    raw = h[name]
    if INT_GRAMMAR.fullmatch(raw) is None:
        raise DecodeError("invalid_header", f"header {name} must be a decimal integer "
                                            f"(digits only, no sign or leading zero), got {raw[:32]!r}")
    return int(raw)


def _rate_header(h: dict[str, bytes]) -> float:
    raw = h[H_RATE]
    if len(raw) > RATE_MAX_BYTES or RATE_GRAMMAR.fullmatch(raw) is None:
        raise DecodeError("invalid_header", f"{H_RATE} must be a decimal number such as 1000 or 0.2 "
                                            f"(no sign, blanks, inf or nan), got {raw[:32]!r}")
    return float(raw)


def decode_chunk(
    key: bytes | None,
    value: bytes | None,
    headers,
    *,
    max_frames: int | None = None,
    check_finite: bool = True,
) -> Chunk:
    """Validate and decode one message without copying its payload. Raises DecodeError."""
    if not key:
        raise DecodeError("invalid_key", "message has no key (the key is the stream id)")
    try:
        stream = key.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("invalid_key", f"key is not UTF-8: {key[:32]!r}")
    if len(key) > 255:
        raise DecodeError("invalid_key", f"stream id is {len(key)} bytes, the limit is 255")

    h = _header_map(headers)
    missing = [n for n in REQUIRED_HEADERS if n not in h]
    if missing:
        raise DecodeError("missing_header", f"missing header(s): {', '.join(missing)}")
    version = _int_header(h, H_FORMAT)
    if version != FORMAT_VERSION:
        raise DecodeError("unsupported_format", f"format version {version}, this worker reads {FORMAT_VERSION}")
    index = _int_header(h, H_INDEX)
    if not 0 <= index <= INT64_MAX:
        raise DecodeError("invalid_header", f"{H_INDEX} must be in [0, 2^63-1], got {index}")
    channels = _int_header(h, H_CHANNELS)
    if not 1 <= channels <= MAX_CHANNELS:
        raise DecodeError("invalid_header", f"{H_CHANNELS} must be in [1, {MAX_CHANNELS}], got {channels}")
    rate = _rate_header(h)
    if not (math.isfinite(rate) and rate > 0):
        raise DecodeError("invalid_header", f"{H_RATE} must be a positive finite number, got {rate}")

    if value is None:
        raise DecodeError("bad_length", "message has no value (tombstone)")
    frame_bytes = SAMPLE_DTYPE.itemsize * channels
    if len(value) == 0 or len(value) % frame_bytes:
        raise DecodeError(
            "bad_length",
            f"value is {len(value)} bytes, not a positive whole number of {channels}-channel "
            f"float32 frames ({frame_bytes} bytes each)",
        )
    frames = len(value) // frame_bytes
    if max_frames is not None and frames > max_frames:
        raise DecodeError("too_large", f"chunk has {frames} frames, the limit is {max_frames}")
    if index + frames > INT64_MAX:  # every sample index of the chunk must be an int64
        raise DecodeError("invalid_header", f"{H_INDEX} {index} + {frames} frames exceeds 2^63-1")
    samples = np.frombuffer(value, dtype=SAMPLE_DTYPE).reshape(frames, channels)
    if check_finite and not np.isfinite(samples).all():
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise DecodeError("non_finite", f"{bad} NaN/Inf sample(s) in the chunk")
    model, route = h.get(H_MODEL), h.get(H_ROUTE)
    return Chunk(stream, index, rate, samples, model.decode("utf-8", "replace") if model else None,
                 route.decode("utf-8", "replace") if route else None)
