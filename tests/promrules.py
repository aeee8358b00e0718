"""Check that Prometheus rules only reference metrics (and labels) the worker really exports.

``promtool`` validates PromQL syntax and the rules' behaviour on hand-written series, but a rule that
names ``dae_reconstruction_errors_bucket`` or ``{model_verison="v1"}`` is valid PromQL, passes unit
tests written with the same typo, and never fires in production. This module (shared by the
Prometheus tests; it defines no metrics) reads the rules'
expressions, finds every vector selector in them and compares it with what
:class:`pipeline.monitor.metrics.WorkerMetrics` exposes.

No YAML library is needed (the project does not depend on one): :func:`rule_exprs` reads the
``expr:`` entries of a rules file written as in ``deploy/prometheus/rules.yml`` (single-line or
block-scalar expressions) and fails loudly on any other form instead of silently skipping a rule.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

def require_tool(name: str) -> str:
    """Path of a Prometheus binary (promtool, prometheus). Without it the test is skipped, except
    when the environment variable CI is set: CI must install Debian's `prometheus` package."""
    import pytest

    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} not found on PATH: install Debian's `prometheus` package (apt-get install prometheus; .ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg} -- CI is set, so a missing {name} is an error")
    pytest.skip(msg)


# Series Prometheus itself creates for every target or rule; rules may use them freely.
PROMETHEUS_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
}
# Labels every scraped series carries (target labels), whatever the exporter exports.
TARGET_LABELS = {"job", "instance"}

_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2", "start", "end",
}
# Aggregation operators: their modifier may come before the parenthesis (`sum by (job) (x)`).
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


@dataclass(frozen=True)
class Selector:
    metric: str | None  # None: a selector without a name (e.g. {__name__=~"..."})
    labels: tuple[str, ...]  # label names in the matchers


def exported_metrics(registry) -> dict[str, set[str]]:
    """Sample names a registry exposes, with the label names each may carry.

    Names come from each family's type, so labelled metrics without children yet (a fresh
    registry) are covered: counter ``x`` -> ``x_total``/``x_created``, histogram -> ``_bucket``,
    ``_sum``, ``_count``, ``_created``, info -> ``x_info``, gauge -> ``x``. Labels: the metric's
    declared label names (``le`` on buckets); samples already present add theirs (e.g. the keys of
    an Info).
    """
    declared: dict[str, set[str]] = {}
    for collector in getattr(registry, "_collector_to_names", {}):
        # prometheus_client's metrics and the project's own collectors (BatchHistogram) both
        # keep their name and declared label names.
        name, labels = getattr(collector, "_name", None), getattr(collector, "_labelnames", None)
        if name is not None and labels is not None:
            declared[name] = set(labels)

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "stateset": ("",),
        "unknown": ("",),
    }
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        base_labels = declared.get(family.name, set())
        for suffix in suffixes.get(family.type, ("",)):
            labels = set(base_labels)
            if suffix == "_bucket":
                labels.add("le")
            out.setdefault(family.name + suffix, set()).update(labels)
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def rule_exprs(text: str) -> list[tuple[str, str]]:
    """``(rule name, expr)`` for every rule of a rules file (see the module docstring for the forms)."""
    flow = re.search(r"[{,]\s*(alert|record|expr)\s*:", text)
    if flow:
        raise ValueError(f"flow-style rule mapping not supported: {flow.group(0)!r}")
    lines = text.splitlines()
    rules: list[tuple[str, str]] = []
    name = None
    n_rules = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*-?\s*(alert|record):\s*(\S+)\s*$", line)
        if m:
            n_rules += 1
            name = m.group(2)
        m = re.match(r"^(\s*)-?\s*expr:\s*(.*?)\s*$", line)
        if m:
            if name is None:
                raise ValueError(f"line {i + 1}: expr before any alert/record name")
            value = m.group(2)
            if value in ("|", "|-", "|+", ">", ">-", ">+"):
                block, i = [], i + 1
                indent = None
                while i < len(lines):
                    nxt = lines[i]
                    if nxt.strip() == "":
                        block.append("")
                        i += 1
                        continue
                    lead = len(nxt) - len(nxt.lstrip())
                    if indent is None:
                        indent = lead
                    if lead < indent:
                        break
                    block.append(nxt[indent:])
                    i += 1
                rules.append((name, "\n".join(block).strip()))
                name = None
                continue
            if value[:1] in ('"', "'"):
                value = value[1:-1] if value[-1:] == value[:1] else None
            if not value:
                raise ValueError(f"line {i + 1}: unsupported expr form: {line.strip()!r}")
            rules.append((name, value))
            name = None
        i += 1
    if len(rules) != n_rules:
        raise ValueError(f"found {n_rules} rules but {len(rules)} expressions: unsupported layout")
    return rules


def recorded_names(text: str) -> set[str]:
    return set(re.findall(r"^\s*-?\s*record:\s*(\S+)\s*$", text, flags=re.M))


def selectors(expr: str) -> list[Selector]:
    """Vector selectors of a PromQL expression: metric names and the label names they match on.

    A small scanner, not a parser: it skips strings, comments, range/subquery brackets, numbers and
    durations, and the label lists of ``by``/``without``/``on``/``ignoring``/``group_*``; an
    identifier followed by ``(`` is a function or aggregation, any other non-keyword identifier a
    metric name.
    """
    out: list[Selector] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":  # comment to end of line
            j = expr.find("\n", i)
            i = n if j < 0 else j
            continue
        m = _STRING.match(expr, i)
        if m:
            i = m.end()
            continue
        if c == "[":
            j = expr.index("]", i)
            i = j + 1
            continue
        if c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = re.compile(r"[0-9A-Za-z_.]+(?:[eE][+-]?\d+)?").match(expr, i)
            i = m.end()
            continue
        if c == "{":
            labels, i, name = _matchers(expr, i)
            out.append(Selector(name, tuple(labels)))
            continue
        m = _IDENT.match(expr, i)
        if m:
            word = m.group(0)
            j = m.end()
            k = j
            while k < n and expr[k].isspace():
                k += 1
            follows_paren = k < n and expr[k] == "("
            low = word.lower()
            if low in _GROUPING:
                if follows_paren:  # skip the label list
                    i = expr.index(")", k) + 1
                else:
                    i = j
                continue
            if follows_paren:  # a function or aggregation
                i = j
                continue
            if low in _KEYWORDS or low in _AGGREGATIONS:
                i = j
                continue
            # A metric name; its matchers (if any) follow.
            if k < n and expr[k] == "{":
                labels, i, _ = _matchers(expr, k)
            else:
                labels, i = [], j
            out.append(Selector(word, tuple(labels)))
            continue
        i += 1
    return out


def _matchers(expr: str, i: int) -> tuple[list[str], int, str | None]:
    """Parse ``{a="x", b=~"y"}`` at ``expr[i] == '{'``: (label names, index after '}', __name__)."""
    assert expr[i] == "{"
    i += 1
    labels: list[str] = []
    name = None
    while True:
        while i < len(expr) and expr[i] in " \t\n,":
            i += 1
        if expr[i] == "}":
            return labels, i + 1, name
        m = _LABEL.match(expr, i)
        if not m:
            raise ValueError(f"cannot read label matcher at {expr[i:i + 30]!r}")
        s = _STRING.match(expr, m.end())
        if not s:
            raise ValueError(f"label {m.group(1)} has no quoted value at {expr[m.end():m.end() + 30]!r}")
        if m.group(1) == "__name__":
            if m.group(2) == "=":
                name = s.group(0)[1:-1]
        else:
            labels.append(m.group(1))
        i = s.end()


def check_rules(text: str, exported: dict[str, set[str]]) -> list[str]:
    """Problems with the metric and label names a rules file references (empty: all known)."""
    recorded = recorded_names(text)
    problems: list[str] = []
    for rule, expr in rule_exprs(text):
        for sel in selectors(expr):
            if sel.metric is None:
                continue
            if sel.metric in recorded:
                continue  # labels of recorded series depend on their expression
            if sel.metric in PROMETHEUS_SERIES:
                known_labels = TARGET_LABELS | {"alertname", "alertstate", "severity"}
                if sel.metric not in ("ALERTS", "ALERTS_FOR_STATE"):
                    known_labels = TARGET_LABELS
            elif sel.metric in exported:
                known_labels = exported[sel.metric] | TARGET_LABELS
            else:
                problems.append(f"{rule}: unknown metric {sel.metric!r}")
                continue
            for label in sel.labels:
                if label not in known_labels:
                    problems.append(f"{rule}: {sel.metric} has no label {label!r}")
    return problems
