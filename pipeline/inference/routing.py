"""Model routing: which engine serves a stream (docs/routing.md).

Routes (``model.routes``, validated in :mod:`pipeline.settings`) are tried in order; the first
whose id glob and rates match a stream names its route, and a stream no route matches belongs to
the ``default`` route, the registry's plain current version. A route serves its own registry
pointer; until that pointer names a version its streams are served by the default route's model.
A stream whose rate its route's model does not serve falls back to the default route's model (a
rate-generic one serves any rate in its range) unless ``model.strict_rates``; a rate nobody serves
is reported to the caller, which dead-letters the message as ``rate_mismatch``.

Pure bookkeeping over engines (no Kafka, no registry I/O): the worker's model watcher hands in
new engines per route (:meth:`ModelSet.install`) between two batches.
"""

from __future__ import annotations

from typing import Iterable

from pipeline.settings import DEFAULT_ROUTE, Route

# Distinct (stream id, rate) pairs whose matched route is remembered; the cache is dropped when
# full (a match is a few fnmatch calls: cheap, but once per message). No routes: no cache.
_MATCH_CACHE_MAX = 16384


def route_geometry(route: str, engine, window: int, hop: int | None) -> tuple[int, int | None]:
    """(window, hop) a route's windows are cut at: the default route's are the worker's (``window.window``
    and ``window.hop`` may override its model's), another route's are its own model's."""
    return (window, hop) if route == DEFAULT_ROUTE else (engine.window, engine.hop)


class ModelSet:
    """The engines a worker serves, by route (the default route's is always there)."""

    def __init__(self, default, routes: Iterable[Route] = (), engines: dict | None = None, *,
                 strict_rates: bool = False):
        self.routes: tuple[Route, ...] = tuple(routes)
        self.strict_rates = strict_rates
        self.engines = {DEFAULT_ROUTE: default}
        for name, eng in (engines or {}).items():
            self.install(eng if eng.route == name else _relabel(eng, name))
        self._matched: dict[tuple[str, float], str] = {}

    @classmethod
    def single(cls, engine) -> "ModelSet":
        return cls(engine)

    @property
    def default(self):
        return self.engines[DEFAULT_ROUTE]

    def names(self) -> list[str]:
        """Every route this worker serves, the default first."""
        return [DEFAULT_ROUTE, *(r.name for r in self.routes)]

    def route_spec(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)

    def match(self, stream: str, rate: float) -> str:
        """The route a stream belongs to (first match wins; the default route when none matches)."""
        if not self.routes:
            return DEFAULT_ROUTE
        key = (stream, rate)
        name = self._matched.get(key)
        if name is None:
            name = next((r.name for r in self.routes if r.matches(stream, rate)), DEFAULT_ROUTE)
            if len(self._matched) >= _MATCH_CACHE_MAX:
                self._matched.clear()
            self._matched[key] = name
        return name

    def engine(self, route: str):
        """The engine serving ``route`` now: its own, or the default route's until it has one."""
        return self.engines.get(route) or self.engines[DEFAULT_ROUTE]

    def resolve(self, stream: str, rate: float) -> tuple[str, object, str | None]:
        """(serving route, its engine, None) for this stream, or (route, None, why) when no engine may
        serve its rate. The serving route is the stream's own when its engine serves the stream, else
        the default route."""
        route = self.match(stream, rate)
        own = self.engines.get(route)
        eng = own or self.engines[DEFAULT_ROUTE]
        if eng.serves_rate(rate):
            return (route if own is not None else DEFAULT_ROUTE), eng, None
        fallback = self.engines[DEFAULT_ROUTE]
        if eng is not fallback and not self.strict_rates and fallback.serves_rate(rate):
            return DEFAULT_ROUTE, fallback, None
        where = f"route {route}, model {eng.version} serves {_rates(eng)}"
        if eng is not fallback and not self.strict_rates:
            where += f"; the default route's model {fallback.version} serves {_rates(fallback)}"
        elif eng is not fallback:
            where += "; model.strict_rates: no fallback"
        return route, None, f"sample rate {rate:g} Hz is not served by model {eng.version} ({where})"

    def install(self, engine) -> None:
        """Serve ``engine`` for its route from the next batch on."""
        self.engines[engine.route] = engine


def _rates(engine) -> str:
    text = getattr(engine, "rates_text", None)
    return text() if text is not None else ", ".join(f"{r:g}" for r in engine.meta.sample_rates) + " Hz"


def _relabel(engine, route: str):
    engine.route = route
    return engine
