"""Read and write recorded signals (.npy, .wav, .csv) as float32 (frames, channels). No Kafka here.

Formats:
- ``.npy``: shape (n,) or (n, C), any real numeric dtype; object arrays are refused (never unpickled).
- ``.wav``: PCM int16/int32 (24-bit reads as int32) and uint8 are scaled to [-1, 1]; float stays as is.
  The sample rate comes from the header.
- ``.csv``: numeric columns become channels. A header row is detected; ``column`` picks one column by
  name (or by 0-based number). Columns that are mostly non-numeric (e.g. NAB's ``timestamp``) are left
  out, as are numeric columns named like a time axis (``timestamp``, ``time``, ...) when other numeric
  columns exist, so a NAB-style ``timestamp,value`` file yields its value column. Written CSV files
  get a header: the names passed in (``read_signal_columns`` gives the input's), else ``value`` or
  ``ch0,ch1,...``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

SUPPORTED = (".npy", ".wav", ".csv")
# Column names treated as the time axis of a CSV, not as a channel.
TIME_COLUMNS = frozenset({"timestamp", "time", "t", "date", "datetime", "ts", "time_s", "seconds"})
# Data rows looked at to decide whether a CSV column is numeric (majority vote).
_SNIFF_ROWS = 20


class SignalFileError(ValueError):
    """A recording that cannot be read or written as asked; the message names the file and why."""


def _unsupported(path: Path) -> SignalFileError:
    return SignalFileError(
        f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; "
        f"supported: {', '.join(SUPPORTED)}"
    )


def read_signal(
    path: Path, sample_rate: float | None = None, column: str | None = None
) -> tuple[np.ndarray, float | None]:
    """(samples float32 (frames, channels), sample rate or None).

    The rate is the WAV header's, else ``sample_rate``, else None. A WAV whose header disagrees with
    a given ``sample_rate`` is refused (resample it first rather than mislabel it).
    """
    x, rate, _ = read_signal_columns(path, sample_rate, column)
    return x, rate


def read_signal_columns(
    path: Path, sample_rate: float | None = None, column: str | None = None
) -> tuple[np.ndarray, float | None, list[str] | None]:
    """:func:`read_signal` plus the channels' names: a CSV header's names of the columns read, else None."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SUPPORTED:
        raise _unsupported(path)
    if column is not None and ext != ".csv":
        raise SignalFileError(f"{path}: column= only applies to .csv files")
    if sample_rate is not None and not (math.isfinite(sample_rate) and sample_rate > 0):
        raise SignalFileError(f"sample_rate must be a positive finite number, got {sample_rate!r}")
    rate, names = sample_rate, None
    if ext == ".npy":
        x = _read_npy(path)
    elif ext == ".wav":
        header_rate, x = _read_wav(path)
        if sample_rate is not None and abs(float(sample_rate) - header_rate) > 1e-9 * header_rate:
            raise SignalFileError(
                f"{path}: the WAV header says {header_rate:g} Hz but sample_rate={sample_rate:g} was given"
            )
        rate = header_rate
    else:
        x, names = _read_csv(path, column)
    if x.shape[0] == 0:
        raise SignalFileError(f"{path}: no samples")
    bad = ~np.isfinite(x)
    if bad.any():
        frame = int(np.argwhere(bad)[0][0])
        raise SignalFileError(f"{path}: {int(bad.sum())} NaN/Inf sample(s), the first in frame {frame}")
    return x, (float(rate) if rate is not None else None), names


def read_training_files(paths: Sequence[Path], sample_rate: float | None = None) -> tuple[list[np.ndarray], float | None]:
    """Signals (each (frames, channels)) from .npy/.wav/.csv files or folders of them (sorted), and
    their common sample rate (None when no file says and ``sample_rate`` is None)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED))
        else:
            files.append(p)
    if not files:
        raise SignalFileError(f"no .npy/.wav/.csv files in {', '.join(map(str, paths))}")
    signals, rates = [], set()
    for f in files:
        x, r = read_signal(f, sample_rate=sample_rate)
        signals.append(x)
        if r is not None:
            rates.add(float(r))
    if len(rates) > 1:
        raise SignalFileError(f"training files have different sample rates {sorted(rates)}; train one model per rate")
    return signals, (rates.pop() if rates else sample_rate)


def _as_frames(path: Path, arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise SignalFileError(f"{path}: expected shape (frames,) or (frames, channels), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle: refused on purpose
        raise SignalFileError(f"{path}: cannot load without pickle (object arrays are refused): {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise SignalFileError(f"{path}: expected a single array (.npy), got {type(arr).__name__}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == np.bool_):
        raise SignalFileError(f"{path}: dtype {arr.dtype} is not a real numeric type")
    return _as_frames(path, arr)


def _read_wav(path: Path) -> tuple[float, np.ndarray]:
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except ValueError as exc:  # scipy's "not a WAV file", truncated headers, ...
        raise SignalFileError(f"{path}: not a readable WAV file: {exc}") from exc
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.signedinteger):
        # Full scale is 2^(bits-1): int16 → /32768, int32 (and 24-bit, left-justified) → /2^31.
        x = data.astype(np.float64) / float(-np.iinfo(data.dtype).min)
    elif np.issubdtype(data.dtype, np.floating):
        x = data
    else:
        raise SignalFileError(f"{path}: unsupported WAV sample type {data.dtype}")
    return float(rate), _as_frames(path, np.asarray(x))


def _parse(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv(path: Path, column: str | None) -> tuple[np.ndarray, list[str] | None]:
    """(samples, the header's names of the columns read, or None without a header)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise SignalFileError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from exc
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delim = "," if "," in first else (";" if ";" in first else ("\t" if "\t" in first else ","))
    rows = [(n, [c.strip() for c in r]) for n, r in enumerate(csv.reader(text.splitlines(), delimiter=delim), 1)
            if any(c.strip() for c in r)]
    if not rows:
        raise SignalFileError(f"{path}: empty CSV file")

    # Header: the first row has a non-numeric cell where the next row is numeric, or is all text.
    head = rows[0][1]
    has_header = all(_parse(c) is None for c in head)
    if not has_header and len(rows) > 1:
        nxt = rows[1][1]
        has_header = any(_parse(c) is None and j < len(nxt) and _parse(nxt[j]) is not None
                         for j, c in enumerate(head))
    names = head if has_header else [str(j) for j in range(len(head))]
    data = rows[1:] if has_header else rows
    if not data:
        raise SignalFileError(f"{path}: no data rows after the header")
    width = len(names)
    for line, r in data:
        if len(r) != width:
            raise SignalFileError(f"{path}, line {line}: {len(r)} cells, the {'header' if has_header else 'first row'} "
                             f"has {width}")

    def label(j: int) -> str:
        return f"column {j + 1} ({names[j]!r})" if has_header else f"column {j + 1}"

    if column is not None:
        if column in names:
            cols = [names.index(column)]
        elif not has_header and column.isdigit() and int(column) < width:
            cols = [int(column)]
        else:
            raise SignalFileError(f"{path}: no column {column!r}; columns: {', '.join(names)}")
    else:
        sniff = data[:_SNIFF_ROWS]
        # Numeric: more of its first cells parse than do not (empty cells do not vote).
        cols = [j for j in range(width)
                if sum(_parse(r[j]) is not None for _, r in sniff) * 2 > sum(bool(r[j]) for _, r in sniff)]
        if not cols:
            raise SignalFileError(f"{path}: no numeric column (columns: {', '.join(names)})")
        if has_header:
            values = [j for j in cols if names[j].strip().lower() not in TIME_COLUMNS]
            cols = values or cols

    out = np.empty((len(data), len(cols)), dtype=np.float64)
    for i, (line, r) in enumerate(data):
        for k, j in enumerate(cols):
            v = _parse(r[j])
            if v is None:
                raise SignalFileError(f"{path}, line {line}, {label(j)}: not a number: {r[j][:40]!r}")
            out[i, k] = v
    return out.astype(np.float32), ([names[j] for j in cols] if has_header else None)


def write_signal(path: Path, samples: np.ndarray, sample_rate: float | None = None,
                 names: Sequence[str] | None = None) -> None:
    """Write float32 samples ((frames,) or (frames, channels)) as .npy, float32 .wav or .csv.

    ``sample_rate`` is required for .wav (an integer number of Hz); .npy and .csv do not store it.
    ``names``: the CSV header, one name per channel (other formats have no column names).
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SUPPORTED:
        raise _unsupported(path)
    x = _as_frames(path, np.asarray(samples))
    if ext == ".npy":
        np.save(path, x)
    elif ext == ".wav":
        from scipy.io import wavfile

        if sample_rate is None or not float(sample_rate).is_integer() or sample_rate <= 0:
            raise SignalFileError(f"{path}: a WAV file needs a positive whole sample rate, got {sample_rate!r}")
        wavfile.write(path, int(sample_rate), x[:, 0] if x.shape[1] == 1 else x)
    else:
        if names is not None and len(names) != x.shape[1]:
            raise SignalFileError(f"{path}: {len(names)} column name(s) for {x.shape[1]} channel(s)")
        if names is None:
            names = ["value"] if x.shape[1] == 1 else [f"ch{j}" for j in range(x.shape[1])]
        header = ",".join(_csv_cell(n) for n in names)
        # 9 significant digits round-trip float32 exactly.
        np.savetxt(path, x, fmt="%.9g", delimiter=",", header=header, comments="")


def _csv_cell(name: str) -> str:
    """A header cell, quoted when it holds a delimiter or a quote."""
    return f'"{name.replace(chr(34), 2 * chr(34))}"' if any(c in name for c in ',;\t"') else name
