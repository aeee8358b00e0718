"""A real Prometheus server scrapes a real worker on the real broker; the reconstruction-error
metrics are read back through Prometheus' HTTP query API, and the deploy/prometheus rules load and
evaluate without errors against the live series."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline.tools.simulate import simulate
from tests.promrules import require_tool
from tests.workers import wait_for, worker_thread

pytestmark = pytest.mark.kafka

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules.yml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def query(base: str, promql: str) -> list[dict]:
    body = http_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert body["status"] == "success", body
    return body["data"]["result"]


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def prometheus_config(metrics_port: int) -> str:
    return f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {json.dumps(str(RULES))}
scrape_configs:
  - job_name: dae-worker
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
"""


def test_prometheus_scrapes_reconstruction_error(make_settings, model_registry, tmp_path):
    prometheus_bin = require_tool("prometheus")
    metrics_port = free_port()
    s = make_settings(
        model={"registry": model_registry},
        metrics={"enabled": True, "host": "127.0.0.1", "port": metrics_port},
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(metrics_port))
    log_path = tmp_path / "prometheus.log"
    prom_port = free_port()
    base = f"http://127.0.0.1:{prom_port}"

    with worker_thread(s) as worker, open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )

        def log_tail() -> str:
            return log_path.read_text(errors="replace")[-3000:]

        try:
            def prometheus_ready():
                assert proc.poll() is None, f"prometheus exited {proc.returncode}:\n{log_tail()}"
                return ready(base)

            wait_for(prometheus_ready, timeout=20, what="prometheus /-/ready")
            # One scrape before any data, and the worker owns its partitions: the data then arrives
            # over several scrapes, so rate() sees the counters move.
            wait_for(lambda: [r for r in query(base, 'up{job="dae-worker"}') if r["value"][1] == "1"],
                     timeout=15, what="a successful scrape of the worker")
            wait_for(lambda: len(worker.partitions) > 0, timeout=30, what="partition assignment")

            t0 = time.monotonic()
            simulate(s.kafka, streams=4, sample_rate=1000.0, seconds=4.0, chunk=(64, 256), realtime=True, seed=11)
            print(f"published in {time.monotonic() - t0:.1f} s")

            counts = wait_for(
                lambda: [r for r in query(base, 'dae_reconstruction_error_count{job="dae-worker"}')
                         if float(r["value"][1]) > 0],
                timeout=20, what="dae_reconstruction_error_count > 0 in prometheus",
            )
            assert {r["metric"]["model_version"] for r in counts} == {"v1"}, counts
            assert all("stream" not in label for r in counts for label in r["metric"]), counts

            def p90():
                res = query(base, "histogram_quantile(0.9, sum by (le) (rate(dae_reconstruction_error_bucket[30s])))")
                return res and math.isfinite(float(res[0]["value"][1])) and float(res[0]["value"][1])

            value = wait_for(p90, timeout=15, what="a finite p90 of the reconstruction error")
            assert 0 < value < 10, value
            print(f"p90 reconstruction error over 30 s: {value:.4f}")

            # The deployed rules load, and evaluate against the live series without errors; the
            # recording rule yields the same kind of number.
            def rules_healthy():
                groups = http_json(f"{base}/api/v1/rules")["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
                return rules and not bad and rules

            rules = wait_for(rules_healthy, timeout=10, what="all rules evaluated with health ok")
            assert {"DAESensorReconstructionErrorHigh", "DAEWorkerDown", "DAENoOutput"} <= {r["name"] for r in rules}
            recorded = wait_for(
                lambda: [r for r in query(base, "dae:reconstruction_error:p99_5m")
                         if math.isfinite(float(r["value"][1]))],
                timeout=10, what="the recorded p99",
            )
            assert recorded[0]["metric"] == {"__name__": "dae:reconstruction_error:p99_5m",
                                             "job": "dae-worker", "model_version": "v1"}, recorded
            firing = query(base, 'ALERTS{alertstate="firing"}')
            assert firing == [], firing
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
