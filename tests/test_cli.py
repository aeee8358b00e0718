import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app

runner = CliRunner()


def test_invalid_setting_from_environment_names_the_setting(monkeypatch):
    monkeypatch.setenv("DAE_BATCH__MAX_BATCH", "-3")
    res = runner.invoke(app, ["worker"])
    assert res.exit_code == 2
    assert "batch.max_batch" in res.output and "DAE_BATCH__MAX_BATCH" in res.output


def test_invalid_flag_value_names_the_setting():
    res = runner.invoke(app, ["worker", "--device", "tpu"])
    assert res.exit_code == 2 and "model.device" in res.output


def test_worker_without_a_model_says_how_to_get_one(tmp_path):
    res = runner.invoke(app, ["worker", "--registry", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "dae train --sample-rate" in res.output


@pytest.mark.kafka
def test_kafka_start_is_idempotent_and_status_reports_it(kafka_bootstrap):
    from pipeline.tools import kafka_local
    from tests.kafka_broker import TEST_PORT

    if kafka_local.status(TEST_PORT) is None:
        pytest.skip("the test broker is not the project's local one")
    import os

    data = os.environ.get("DAE_KAFKA_DATA") or f"{os.environ.get('TMPDIR', '/tmp')}/dae-kafka-{TEST_PORT}"
    pid_file = f"{data}/kafka.pid"
    before = open(pid_file).read()
    res = runner.invoke(app, ["kafka", "start", "--port", str(TEST_PORT)])
    assert res.exit_code == 0 and res.output.strip() == f"127.0.0.1:{TEST_PORT}"
    assert open(pid_file).read() == before  # reused, not restarted
    res = runner.invoke(app, ["kafka", "status", "--port", str(TEST_PORT)])
    assert res.exit_code == 0 and res.output.strip() == f"127.0.0.1:{TEST_PORT}"
