"""SASL/SCRAM: the worker authenticates with credentials from the environment, and refuses to
start with wrong ones, with a message naming the settings. Uses the project's local broker with
its SCRAM listener (deploy/kafka/kafka.sh, DAE_KAFKA_SASL=scram) on its own port."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from pipeline.tools import kafka_local
from pipeline.tools.capture import capture
from pipeline.settings import Settings
from pipeline.tools.simulate import simulate
from tests.test_cli_errors import check_one_line
from tests.workers import worker_env

pytestmark = pytest.mark.kafka
PORT = int(os.environ.get("DAE_TEST_SASL_PORT", "29192"))


@pytest.fixture(scope="module")
def scram_broker():
    if os.environ.get("DAE_TEST_BOOTSTRAP"):
        pytest.skip("an external broker is configured; the SCRAM test needs the project's local broker")
    env = {**os.environ, "DAE_KAFKA_SASL": "scram", "DAE_KAFKA_SASL_USER": "dae", "DAE_KAFKA_SASL_PASSWORD": "s3cret"}
    started = subprocess.run(["bash", str(kafka_local.SCRIPT), "status", str(PORT)], env=env).returncode != 0
    if started:
        subprocess.run(["bash", str(kafka_local.SCRIPT), "clean", str(PORT)], env=env, check=False)
    out = subprocess.run(["bash", str(kafka_local.SCRIPT), "start", str(PORT)], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    yield out
    if started and not os.environ.get("DAE_TEST_KEEP_KAFKA"):
        subprocess.run(["bash", str(kafka_local.SCRIPT), "clean", str(PORT)], env=env, check=False)


def _settings(bootstrap, password, model_registry):
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka=dict(bootstrap_servers=bootstrap, raw_topics=(f"s-{tag}.raw",), clean_topic=f"s-{tag}.clean",
                   dead_letter_topic=f"s-{tag}.dead", alerts_topic=f"s-{tag}.alerts", group_id=f"g-{tag}",
                   security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                   sasl_username="dae", sasl_password=password),
        model={"registry": model_registry}, metrics={"enabled": False},
    )


def _run_worker(s, password, seconds):
    env = worker_env(s)
    env.update({"DAE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT", "DAE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
                "DAE_KAFKA__SASL_USERNAME": "dae", "DAE_KAFKA__SASL_PASSWORD": password})
    return subprocess.run([sys.executable, "-m", "pipeline.cli.app", "worker", "--max-seconds", str(seconds)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)


def test_worker_authenticates_with_scram_credentials_from_the_environment(scram_broker, model_registry):
    s = _settings(scram_broker, "s3cret", model_registry)
    sim = simulate(s.kafka, streams=2, sample_rate=1000.0, seconds=2.0, seed=1)
    res = _run_worker(s, "s3cret", 12)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "s3cret" not in res.stdout  # the secret is never logged
    rep = capture(s.kafka, idle_s=3.0, max_seconds=30)
    for sid, clean in sim.clean.items():
        assert rep.gaps[sid] == [] and rep.streams[sid].shape[0] == len(clean)


def test_worker_refuses_to_start_with_wrong_credentials(scram_broker, model_registry):
    s = _settings(scram_broker, "s3cret", model_registry)
    res = _run_worker(s, "not-the-password", 12)
    assert res.returncode == 2, res.stdout[-2000:]
    assert "refused the credentials of user 'dae'" in res.stdout
    assert "DAE_KAFKA__SASL_PASSWORD" in res.stdout
    assert "not-the-password" not in res.stdout


def test_refused_credentials_are_one_line_naming_the_settings(scram_broker):
    """A CLI command against the SCRAM listener with a wrong password: one line naming the settings."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    env = {"DAE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT", "DAE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
           "DAE_KAFKA__SASL_USERNAME": "dae", "DAE_KAFKA__SASL_PASSWORD": "not-the-password"}
    res = CliRunner().invoke(app, ["capture", "--bootstrap", scram_broker], env=env)
    check_one_line(res, "refused the credentials of user 'dae'", "DAE_KAFKA__SASL_PASSWORD")
