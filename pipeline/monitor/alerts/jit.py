"""The alert engine's compiled kernels: ``@kernel`` is numba's ``njit(cache=True)`` with the cache kept in a
directory named by a hash of this package's sources.

Why. numba's cache checks only the stamp of the file that defines a kernel, so a kernel that calls one
from another file (quietpass's from seqstep, steppass's from runpass) would load its old machine code
after that other file changed, and run the old arithmetic. Keyed by every source file of the package,
a change anywhere in it compiles afresh (a few seconds, once).

Where: under ``NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dae-numba`` (``~/.cache/dae-numba``);
``alerts-<hash>``; the newest :data:`KEEP` such directories are kept, older ones removed.

Wherever the package lies. numba's own locators file a kernel's cache under a hash of its source
file's directory, so a second checkout, a fresh clone (every CI run) or a container whose
``/opt/app`` differs from the image's compiled every kernel again (58 s on a 2-core machine).
:class:`PackageCacheLocator` files them under ``alerts-<hash>`` alone, stamped with that hash: the
same sources find the same machine code at any path. (numba's index also keys each entry on numba's
version and the CPU's name and features, so another machine or numba compiles afresh.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from numba import njit
from numba.core import config
from numba.core.caching import _CacheLocator

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


def _cache_dir(root: Path | None = None, sources: Path = Path(__file__).parent, digest: str | None = None) -> str:
    """``root/alerts-<digest>`` (``digest``: the hash of ``sources``, computed if not given), made and
    touched; older such directories beyond :data:`KEEP` removed."""
    root = _root() if root is None else root
    here = root / f"alerts-{digest or _sources_hash(sources)}"
    try:
        here.mkdir(parents=True, exist_ok=True)
        os.utime(here)
        old = sorted((p for p in root.glob("alerts-*") if p.is_dir() and p != here), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - (KEEP - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    except OSError:  # not writable: numba caches where it can (or not at all) and warns
        pass
    return str(here)


HERE = Path(__file__).resolve().parent
SOURCES_HASH = _sources_hash(HERE)
CACHE_DIR = _cache_dir(digest=SOURCES_HASH)  # the directory and the locator's stamp: one hash


class PackageCacheLocator(_CacheLocator):
    """numba's cache locator for this package's kernels: :data:`CACHE_DIR` itself (no subdirectory
    from the source's path), stamped with :data:`SOURCES_HASH`; a kernel is told apart by its module,
    name and first line, as numba does. None for any other file, or where the directory is not
    writable: numba's next locator takes over."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno

    def get_cache_path(self) -> str:
        return CACHE_DIR

    def get_source_stamp(self) -> str:
        return SOURCES_HASH

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve().parent != HERE:
            return None
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


# numba 0.62 and later: a list of locator classes (dotted paths) in place of its own; numba's
# defaults follow ours, for a kernel ours refuses.
_LOCATORS = ",".join([f"{__name__}.PackageCacheLocator", "UserProvidedCacheLocator", "InTreeCacheLocator",
                      "UserWideCacheLocator", "IPythonCacheLocator", "ZipCacheLocator"])


def kernel(fn=None, **options):
    """``njit(cache=True, **options)``, cached in :data:`CACHE_DIR`; as ``@kernel`` or ``@kernel(...)``."""
    if fn is None:
        return lambda f: kernel(f, **options)
    # numba picks the cache's place when the kernel is declared
    before = config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES
    config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES = CACHE_DIR, _LOCATORS
    try:
        return njit(cache=True, **options)(fn)
    finally:
        config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES = before
