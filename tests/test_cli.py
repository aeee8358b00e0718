"""The `dae` command's behaviour beyond errors (tests/test_cli_errors.py) and help
(tests/test_cli_help.py): settings from flags and the environment, the registry commands, denoise
keeping CSV column names, train's summary, capture's waiting, the local broker commands."""

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app

runner = CliRunner()


def tiny_checkpoint(tmp_path, name="ck", rate=1000.0):
    """A small untrained conv checkpoint directory serving ``rate`` Hz."""
    import torch

    from models.archs import build_model
    from models.checkpoint import meta_for, save_checkpoint

    torch.manual_seed(0)
    model = build_model("conv", {"window": 64, "channels": [4, 8]}).eval()
    meta = meta_for(model, "conv", window=64, hop=32, sample_rates=[rate], normalisation="window_standardize",
                    corruption={}, training={"seconds": 1.0, "objective": "clean"}, metrics={},
                    error_quantiles={}, created="2024-01-01T00:00:00+00:00")
    save_checkpoint(tmp_path / name, model, meta)
    return tmp_path / name


def test_invalid_setting_from_environment_names_the_setting(monkeypatch):
    monkeypatch.setenv("DAE_BATCH__MAX_BATCH", "-3")
    res = runner.invoke(app, ["worker"])
    assert res.exit_code == 2
    assert "batch.max_batch" in res.stderr and "DAE_BATCH__MAX_BATCH" in res.stderr


def test_invalid_flag_value_names_the_setting():
    res = runner.invoke(app, ["worker", "--device", "tpu"])
    assert res.exit_code == 2 and "model.device" in res.stderr


@pytest.mark.kafka
def test_worker_without_a_model_says_how_to_get_one(kafka_bootstrap, tmp_path):
    res = runner.invoke(app, ["worker", "--bootstrap", kafka_bootstrap, "--registry", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "dae train --sample-rate" in res.stderr, res.output


def test_denoise_without_a_model_says_how_to_get_one_for_the_input_rate(tmp_path):
    from pipeline.tools.fileio import write_signal

    write_signal(tmp_path / "in.wav", np.zeros(500, np.float32), 16000)
    res = runner.invoke(app, ["denoise", str(tmp_path / "in.wav"), str(tmp_path / "out.wav"),
                              "--registry", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "`dae train --sample-rate 16000`" in res.stderr, res.output


def test_denoise_csv_keeps_the_column_names(tmp_path):
    ckpt = tiny_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{i},{a:.6f},{b:.6f}" for i, (a, b) in enumerate(rng.standard_normal((300, 2))))
    (tmp_path / "in.csv").write_text("timestamp,pump inlet,pump outlet\n" + rows + "\n")
    res = runner.invoke(app, ["denoise", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--model", str(ckpt)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == "pump inlet,pump outlet"
    res = runner.invoke(app, ["denoise", str(tmp_path / "in.csv"), str(tmp_path / "one.csv"), "--model", str(ckpt),
                              "--column", "pump outlet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "one.csv").read_text().splitlines()[0] == "pump outlet"


def test_models_list_show_promote_rollback(tmp_path):
    from models.checkpoint import load_checkpoint
    from models.registry import ModelRegistry

    model, meta = load_checkpoint(tiny_checkpoint(tmp_path))
    reg_dir = str(tmp_path / "reg")
    res = runner.invoke(app, ["models", "list", "--registry", reg_dir])
    assert res.exit_code == 0 and "dae train --sample-rate" in res.output
    reg = ModelRegistry(tmp_path / "reg")
    reg.publish(model, meta, promote=True)
    reg.publish(model, meta, promote=True)
    res = runner.invoke(app, ["models", "list", "--registry", reg_dir])
    assert res.exit_code == 0 and "* v2" in res.output and "  v1" in res.output
    res = runner.invoke(app, ["models", "show", "current", "--registry", reg_dir])
    assert res.exit_code == 0 and '"version": "v2"' in res.output
    res = runner.invoke(app, ["models", "rollback", "--registry", reg_dir])
    assert res.exit_code == 0 and res.output.strip() == "current: v1"
    res = runner.invoke(app, ["models", "promote", "v9", "--registry", reg_dir])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "v9" in res.stderr


class _Stop(Exception):
    """Raised by the stand-in for training: `dae train` got as far as its TrainConfig."""


@pytest.fixture
def train_configs(monkeypatch):
    """The TrainConfigs `dae train` builds, in call order; training itself is replaced by raising _Stop."""
    import models.training as mt

    seen = []

    def fake(cfg, progress=True):
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(mt, "train_synthetic", fake)
    return seen


def test_train_passes_max_seconds_only_when_given(train_configs, tmp_path):
    import models.training as mt

    seen = train_configs
    for extra in ([], ["--max-seconds", "7"]):
        res = runner.invoke(app, ["train", "--sample-rate", "1000", "--arch", "mlp", "--registry", str(tmp_path),
                                  *extra])
        assert isinstance(res.exception, _Stop), res.output
    assert seen[0].max_seconds == mt.TrainConfig(sample_rate=1000.0).max_seconds
    assert seen[1].max_seconds == 7.0


def test_train_channels_narrow_the_recipes_conv_and_refuse_what_has_no_widths(train_configs, tmp_path):
    import models.training as mt

    seen = train_configs
    for extra in (["--sample-rate", "1000"], ["--rate-generic"]):
        res = runner.invoke(app, ["train", *extra, "--channels", "8,16,32", "--registry", str(tmp_path)])
        assert isinstance(res.exception, _Stop), res.output
    recipe = mt.best_config(1000.0)
    for cfg in seen:  # the recipe with the widths replaced, nothing else
        assert cfg.model_spec()[1] == {**recipe.model_spec()[1], "channels": [8, 16, 32]}
        assert (cfg.steps, cfg.loss, cfg.lr) == (recipe.steps, recipe.loss, recipe.lr)
    assert seen[1].rate_range is not None
    for args, words in ((["--channels", "8,x"], ("--channels", "'8,x'", "8,16,32")),
                        (["--channels", "8,0,32"], ("--channels", "positive")),
                        (["--channels", "8,16,32", "--arch", "mlp"], ("--channels", "--arch mlp")),
                        (["--channels", ",".join(["4"] * 10), "--window", "64"], ("levels", "window"))):
        res = runner.invoke(app, ["train", "--sample-rate", "1000", *args, "--registry", str(tmp_path)])
        assert res.exit_code == 2 and not isinstance(res.exception, _Stop), res.output
        assert all(w in res.stderr for w in words), res.stderr
    assert len(seen) == 2


@pytest.mark.kafka
def test_capture_names_topic_and_broker_and_stops_when_nothing_arrives(make_settings, tmp_path):
    import time

    s = make_settings()
    t0 = time.monotonic()
    res = runner.invoke(app, ["capture", "--bootstrap", s.kafka.bootstrap_servers, "--topic", s.kafka.clean_topic,
                              "--idle-s", "1", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert time.monotonic() - t0 < 30
    first = res.stderr.splitlines()[0]
    assert s.kafka.clean_topic in first and s.kafka.bootstrap_servers in first
    assert "captured 0 messages" in res.stdout
    assert "no message on" in res.stderr and "--wait" in res.stderr


@pytest.mark.kafka
def test_capture_reports_the_files_it_wrote(make_settings, tmp_path):
    from pipeline.tools.simulate import replay

    s = make_settings()
    x = np.arange(300, dtype=np.float32)
    replay(s.kafka, x, stream_id="rec", sample_rate=100.0, chunk=100, topic=s.kafka.clean_topic)
    res = runner.invoke(app, ["capture", "--bootstrap", s.kafka.bootstrap_servers, "--topic", s.kafka.clean_topic,
                              "--idle-s", "2", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert f"wrote 1 file(s) to {tmp_path / 'out'}" in res.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "rec.npy")[:, 0], x)


@pytest.mark.kafka
def test_kafka_start_is_idempotent_and_status_reports_it(kafka_bootstrap):
    from pipeline.tools import kafka_local
    from tests.kafka_broker import TEST_PORT

    if kafka_local.status(TEST_PORT) is None:
        pytest.skip("the test broker is not the project's local one")
    data = os.environ.get("DAE_KAFKA_DATA") or f"{os.environ.get('TMPDIR', '/tmp')}/dae-kafka-{TEST_PORT}"
    pid_file = f"{data}/kafka.pid"
    before = open(pid_file).read()
    res = runner.invoke(app, ["kafka", "start", "--port", str(TEST_PORT)])
    assert res.exit_code == 0 and res.stdout.strip() == f"127.0.0.1:{TEST_PORT}"
    assert open(pid_file).read() == before  # reused, not restarted
    res = runner.invoke(app, ["kafka", "status", "--port", str(TEST_PORT)])
    assert res.exit_code == 0 and res.stdout.strip() == f"127.0.0.1:{TEST_PORT}"


def test_kafka_status_without_a_broker_exits_3_with_the_start_command():
    res = runner.invoke(app, ["kafka", "status", "--port", "1"])
    assert res.exit_code == 3 and "dae kafka start --port 1" in res.stderr


@pytest.mark.kafka
def test_kafka_start_says_when_it_resolves_the_jars_first(kafka_bootstrap, monkeypatch, tmp_path):
    """On the tests' running local broker: `dae kafka start` reuses it (kafka.sh resolves jars only for a
    broker it starts), and says beforehand that a first start resolves the jars, only while the jar
    cache (here an empty DAE_KAFKA_HOME) is not marked complete."""
    from pipeline.tools import kafka_local
    from tests.kafka_broker import TEST_PORT

    if kafka_local.status(TEST_PORT) != kafka_bootstrap:
        pytest.skip("the tests use a broker that deploy/kafka did not start")
    monkeypatch.setenv("DAE_KAFKA_HOME", str(tmp_path))
    res = runner.invoke(app, ["kafka", "start", "--port", str(TEST_PORT)])
    assert res.exit_code == 0 and res.stdout.strip() == kafka_bootstrap
    assert "resolving Kafka's jars" in res.stderr and str(tmp_path) in res.stderr
    (tmp_path / ".complete").touch()
    res = runner.invoke(app, ["kafka", "start", "--port", str(TEST_PORT)])
    assert res.exit_code == 0 and res.stderr == ""


@pytest.mark.kafka
def test_demo_reuses_the_broker_and_reports_stages_and_latency(kafka_bootstrap, tmp_path):
    from models.checkpoint import load_checkpoint
    from models.registry import ModelRegistry

    model, meta = load_checkpoint(tiny_checkpoint(tmp_path))  # untrained: the flow, not the gain, is tested
    ModelRegistry(tmp_path / "reg").publish(model, meta, promote=True)
    res = runner.invoke(app, ["demo", "--bootstrap", kafka_bootstrap, "--registry", str(tmp_path / "reg"),
                              "--streams", "2", "--seconds", "2", "--out", str(tmp_path / "demo")],
                        env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert f"reusing the Kafka broker already running at {kafka_bootstrap}" in out
    for stage in ("broker", "model", "worker start", "simulate", "capture"):
        assert f"{stage} " in out.split("stages:")[1]
    assert "p99" in out and "window.idle_flush_s = 2 s" in out
    assert "dae kafka stop" not in out  # it started nothing, so there is nothing to stop
    assert sorted(p.name for p in (tmp_path / "demo" / "captured").iterdir()) == ["sim-000.npy", "sim-001.npy"]
