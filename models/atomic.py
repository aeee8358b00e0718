"""Atomic file writes: readers see the old file or the new one, never a half-written one.

Write to a temp file beside the target, flush and fsync it, ``os.replace`` it over the target, then
(on request) fsync the directory so the rename itself survives a crash. Checkpoints and the
registry's pointer use it; pipeline code may too (it imports nothing of the project).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, sync_dir: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + rename; the temp file is removed
    on failure). ``sync_dir`` also fsyncs the parent directory, making the rename durable."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, sync_dir: bool = False) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), sync_dir=sync_dir)
