"""The alert engine's compiled kernels: ``@kernel`` is numba's ``njit(cache=True)`` with the cache kept in a
directory named by a hash of this package's sources.

Why. numba's cache checks only the stamp of the file that defines a kernel, so a kernel that calls one
from another file (quietpass's from seqstep, steppass's from runpass) would load its old machine code
after that other file changed, and run the old arithmetic. Keyed by every source file of the package,
a change anywhere in it compiles afresh (a few seconds, once).

Where: under ``NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dae-numba`` (``~/.cache/dae-numba``);
``alerts-<hash>``; the newest :data:`KEEP` such directories are kept, older ones removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from numba import njit
from numba.core import config

KEEP = 4  # cache directories of earlier sources kept (switching between branches)


def _sources_hash(folder: Path = Path(__file__).parent) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _root() -> Path:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dae-numba"


def _cache_dir(root: Path | None = None, sources: Path = Path(__file__).parent) -> str:
    root = _root() if root is None else root
    here = root / f"alerts-{_sources_hash(sources)}"
    try:
        here.mkdir(parents=True, exist_ok=True)
        os.utime(here)
        old = sorted((p for p in root.glob("alerts-*") if p.is_dir() and p != here), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - (KEEP - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    except OSError:  # not writable: numba caches where it can (or not at all) and warns
        pass
    return str(here)


CACHE_DIR = _cache_dir()


def kernel(fn=None, **options):
    """``njit(cache=True, **options)``, cached in :data:`CACHE_DIR`; as ``@kernel`` or ``@kernel(...)``."""
    if fn is None:
        return lambda f: kernel(f, **options)
    before = config.CACHE_DIR
    config.CACHE_DIR = CACHE_DIR  # numba picks the cache's place when the kernel is declared
    try:
        return njit(cache=True, **options)(fn)
    finally:
        config.CACHE_DIR = before
