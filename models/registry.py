"""Model registry on a shared filesystem: immutable versions plus an atomically replaced pointer.

Layout::

    root/versions/v1/{model.safetensors,model.json}
    root/versions/v2/...
    root/CURRENT.json      {"current": "v2", "history": ["v1", "v2"], "rolled_back": []}
    root/routes/ecg.json   the same, for the route "ecg" (model routing: docs/routing.md)

Versions are shared; each route has its own pointer (like MLflow's aliases). The default route
(``route=None`` or ``"default"``) is ``CURRENT.json``, so a registry without routes reads as before.

Reliability rules:
- A version appears all at once: it is written into ``root/.tmp-<uuid>`` and renamed to
  ``versions/<v>``. ``rename`` of a directory onto an existing non-empty one fails, so two concurrent
  publishers can never both get ``v3``: the loser retries with ``v4``.
- ``CURRENT.json`` is replaced with write-temp / fsync / ``os.replace`` / fsync-dir, so a reader sees
  the old or the new pointer, never a missing or partial one — workers poll it without locks.
- Pointer updates (promote / rollback) are read-modify-write, so writers serialise on an ``flock``.
- Published files are made read-only; versions are never rewritten.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from torch import nn

from models.atomic import atomic_write_text, fsync_dir
from models.checkpoint import META, ModelMeta, load_checkpoint, read_meta, save_checkpoint

_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")
_ROUTE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # as pipeline.settings.Route names
CURRENT = "CURRENT.json"
ROUTES = "routes"
DEFAULT_ROUTE = "default"
_MAX_PUBLISH_TRIES = 1000  # a version number is only skipped when someone else took it


class RegistryError(RuntimeError):
    """Registry misuse or inconsistent registry state; the message says what."""


def _version_number(version: str) -> int:
    m = _VERSION_RE.match(version) if isinstance(version, str) else None
    if not m:
        raise RegistryError(f"invalid version name {version!r}: expected 'v' followed by a number, e.g. 'v3'")
    return int(m.group(1))


class ModelRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # ----------------------------------------------------------------------------- reading
    def path(self, version: str) -> Path:
        _version_number(version)  # validates the name (no path traversal)
        return self.versions_dir / version

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(names, key=_version_number)

    def _pointer_path(self, route: str | None) -> Path:
        if route is None or route == DEFAULT_ROUTE:
            return self.root / CURRENT
        if not isinstance(route, str) or not _ROUTE_RE.match(route):
            raise RegistryError(f"invalid route name {route!r}: use 1-63 of a-z, 0-9, '_' or '-'")
        return self.root / ROUTES / f"{route}.json"

    def routes(self) -> list[str]:
        """Routes with a pointer, the default route first when it has one."""
        names = [DEFAULT_ROUTE] if (self.root / CURRENT).is_file() else []
        d = self.root / ROUTES
        if d.is_dir():
            names += sorted(p.stem for p in d.glob("*.json") if _ROUTE_RE.match(p.stem) and p.stem != DEFAULT_ROUTE)
        return names

    def _read_pointer(self, route: str | None = None) -> dict | None:
        path = self._pointer_path(route)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:  # cannot happen through this class (atomic replace)
            raise RegistryError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(d, dict) or not isinstance(d.get("history"), list):
            raise RegistryError(f"{path} must be an object with 'current' and 'history', got {d!r}")
        return d

    def current(self, route: str | None = None) -> str | None:
        d = self._read_pointer(route)
        return None if d is None else d.get("current")

    def history(self, route: str | None = None) -> list[str]:
        d = self._read_pointer(route)
        return [] if d is None else list(d["history"])

    def meta(self, version: str) -> ModelMeta:
        p = self.path(version)
        if not p.is_dir():
            raise RegistryError(f"version {version} is not published in {self.root} (have: {self.versions()})")
        return read_meta(p)

    def load(self, version: str | None = None, device="cpu", *, route: str | None = None) -> tuple[nn.Module, ModelMeta]:
        """Load ``version`` (default: the route's current one), verifying its weights' sha256."""
        if version is None:
            version = self.current(route)
            if version is None:
                where = "" if route in (None, DEFAULT_ROUTE) else f" for route {route!r}"
                raise RegistryError(f"registry {self.root} has no current version{where} (publish and promote one)")
        p = self.path(version)
        if not p.is_dir():
            raise RegistryError(f"version {version} is not published in {self.root} (have: {self.versions()})")
        model, meta = load_checkpoint(p, device=device)
        if meta.version is not None and meta.version != version:
            raise RegistryError(f"{p / META} says version {meta.version!r} but lives in versions/{version}")
        return model, replace(meta, version=version)

    # ----------------------------------------------------------------------------- writing
    def publish(self, model: nn.Module, meta: ModelMeta, promote: bool = False, *, route: str | None = None) -> str:
        """Store ``model`` as the next free version (immutable); optionally make it the route's current."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            existing = self.versions()
            n = _version_number(existing[-1]) + 1 if existing else 1
            for _ in range(_MAX_PUBLISH_TRIES):
                version = f"v{n}"
                target = self.versions_dir / version
                if target.exists():
                    n += 1
                    continue
                # The weights do not depend on the version, only model.json does; rewriting it is cheap.
                save_checkpoint(tmp, model, replace(meta, version=version))
                _make_read_only(tmp)
                try:
                    os.rename(tmp, target)
                except OSError as e:
                    if e.errno in (errno.EEXIST, errno.ENOTEMPTY):  # lost the race for this number
                        _make_writable(tmp)
                        n += 1
                        continue
                    raise
                fsync_dir(self.versions_dir)
                break
            else:
                raise RegistryError(f"could not allocate a version in {self.versions_dir} after many tries")
        finally:
            if tmp.exists():
                _make_writable(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
        if promote:
            self.promote(version, route=route)
        return version

    def promote(self, version: str, *, route: str | None = None) -> None:
        """Make ``version`` the route's current (appended to its history). Readers see the switch atomically."""
        p = self.path(version)
        if not (p / META).is_file():
            raise RegistryError(f"cannot promote {version}: not published in {self.root} (have: {self.versions()})")
        with self._lock():
            d = self._read_pointer(route) or {"current": None, "history": []}
            if d.get("current") == version:
                return
            d["current"] = version
            d["history"] = list(d["history"]) + [version]
            self._write_pointer(d, route)

    def rollback(self, *, route: str | None = None) -> str:
        """Re-point the route to the previous entry in its history; the abandoned version is noted in
        ``rolled_back``."""
        with self._lock():
            d = self._read_pointer(route)
            hist = [] if d is None else list(d["history"])
            if len(hist) < 2:
                where = "" if route in (None, DEFAULT_ROUTE) else f" route {route!r}"
                raise RegistryError(
                    f"nothing to roll back to in {self.root}{where}: history is {hist} (needs a previous version)"
                )
            dropped = hist.pop()
            d["current"] = hist[-1]
            d["history"] = hist
            d["rolled_back"] = list(d.get("rolled_back", [])) + [dropped]
            self._write_pointer(d, route)
            return hist[-1]

    # ----------------------------------------------------------------------------- helpers
    @contextmanager
    def _lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _write_pointer(self, d: dict, route: str | None = None) -> None:
        path = self._pointer_path(route)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(d, indent=2) + "\n", sync_dir=True)


def _make_read_only(directory: Path) -> None:
    for p in directory.iterdir():
        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _make_writable(directory: Path) -> None:
    for p in directory.iterdir():
        p.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
