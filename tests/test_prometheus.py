"""deploy/prometheus: the configuration and rules are valid, the rules' unit tests pass, and every
metric (and label) the rules name is one the worker really exports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.monitor.metrics import WorkerMetrics
from tests.promrules import check_rules, exported_metrics, require_tool, rule_exprs, selectors

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "rules.yml"


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "deploy/prometheus/prometheus.yml"],
        ["check", "rules", "deploy/prometheus/rules.yml"],
        ["test", "rules", "deploy/prometheus/rules_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args):
    promtool = require_tool("promtool")
    proc = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"promtool {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )


def worker_exports() -> dict[str, set[str]]:
    """Names from a fresh WorkerMetrics registry; labels also from one with the model info set
    (an Info's label names are its keys, known only once set)."""
    exported = exported_metrics(WorkerMetrics(CollectorRegistry()).registry)
    populated = WorkerMetrics(CollectorRegistry())
    populated.set_model("v1", "mlp", 256, 128)
    for name, labels in exported_metrics(populated.registry).items():
        assert name in exported, f"{name} appears only after use: names must not depend on state"
        exported[name] |= labels
    return exported


def test_exported_names_cover_every_series_type():
    exported = worker_exports()
    for name in (
        "dae_input_messages_total",
        "dae_reconstruction_error_bucket",
        "dae_reconstruction_error_sum",
        "dae_reconstruction_error_count",
        "dae_dead_letter_messages_total",
        "dae_consumer_lag_messages",
        "dae_model_info",
        "dae_last_output_timestamp_seconds",
    ):
        assert name in exported, name
    assert exported["dae_reconstruction_error_bucket"] == {"le", "model_version", "route"}
    assert exported["dae_model_info"] == {"route", "version", "arch", "window", "hop"}
    assert "dae_input_messages" not in exported  # a counter is only exposed with its _total suffix


def test_rules_reference_only_exported_metrics():
    text = RULES.read_text()
    exprs = rule_exprs(text)
    names = {s.metric for _, e in exprs for s in selectors(e)}
    # The scanner really saw the rules: the metrics each alert is about are among its findings.
    assert {
        "up",
        "dae_reconstruction_error_bucket",
        "dae_consumer_lag_messages",
        "dae_dead_letter_messages_total",
        "dae_dead_letter_write_failures_total",
        "dae_last_output_timestamp_seconds",
        "dae_input_samples_total",
    } <= names, names
    assert len(exprs) == text.count("- alert:") + text.count("- record:")
    assert check_rules(text, worker_exports()) == []


def test_rules_have_severity_and_annotations():
    text = RULES.read_text()
    alerts = [name for name, _ in rule_exprs(text) if not name.startswith("dae:")]
    blocks = text.split("- alert: ")[1:]
    assert len(blocks) == len(alerts) >= 6
    for block in blocks:
        name = block.split()[0]
        assert "severity:" in block and "summary:" in block and "description:" in block, name
    for required in (
        "DAESensorReconstructionErrorHigh",
        "DAEWorkerDown",
        "DAEConsumerLagGrowing",
        "DAEDeadLetterRate",
        "DAENoOutput",
        "DAEDeadLetterWriteFailing",
    ):
        assert required in alerts, required
        # Every alert is exercised by the promtool unit tests.
        assert f"alertname: {required}" in (PROM_DIR / "rules_test.yml").read_text(), required


BAD_RULES = """
groups:
  - name: typo
    rules:
      - record: dae:errors:rate5m
        expr: sum by (job) (rate(dae_reconstruction_errors_count[5m]))
      - alert: LagTypo
        expr: |
          max by (topic) (dae_consumer_lag_messages{partiton="0"}) > 10
          and on (topic) dae:errors:rate5m > 0
      - alert: Fine
        expr: 'histogram_quantile(0.9, sum by (le) (rate(dae_reconstruction_error_bucket{model_version="v1"}[5m]))) > 1'
"""


def test_checker_reports_misspelled_metric_and_label():
    problems = check_rules(BAD_RULES, worker_exports())
    assert problems == [
        "dae:errors:rate5m: unknown metric 'dae_reconstruction_errors_count'",
        "LagTypo: dae_consumer_lag_messages has no label 'partiton'",
    ], problems


def test_checker_refuses_a_layout_it_cannot_read():
    with pytest.raises(ValueError):
        rule_exprs("groups:\n  - name: g\n    rules:\n      - {alert: A, expr: up == 0}\n")
