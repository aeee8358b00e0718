import pytest
from pydantic import ValidationError

from pipeline.settings import Settings, load_settings


def test_env_with_prefix_and_nesting(monkeypatch):
    monkeypatch.setenv("DAE_KAFKA__BOOTSTRAP_SERVERS", "h1:9092,h2:9092")
    monkeypatch.setenv("DAE_KAFKA__RAW_TOPICS", '["a", "b"]')
    monkeypatch.setenv("DAE_BATCH__MAX_BATCH", "64")
    s = Settings()
    assert s.kafka.bootstrap_servers == "h1:9092,h2:9092"
    assert s.kafka.raw_topics == ("a", "b")
    assert s.batch.max_batch == 64
    assert s.kafka.client_options()["bootstrap_servers"] == ["h1:9092", "h2:9092"]


def test_flags_override_env_and_none_keeps_env(monkeypatch):
    monkeypatch.setenv("DAE_BATCH__MAX_DELAY_MS", "7")
    s = load_settings(batch={"max_batch": 16, "max_delay_ms": None})
    assert s.batch.max_batch == 16 and s.batch.max_delay_ms == 7


def test_dotenv_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DAE_WORKER__COMMIT_INTERVAL_S=2.5\n")
    assert Settings().worker.commit_interval_s == 2.5


@pytest.mark.parametrize(
    "env,value,field",
    [
        ("DAE_BATCH__MAX_BATCH", "0", "batch.max_batch"),
        ("DAE_METRICS__PORT", "70000", "metrics.port"),
        ("DAE_MODEL__DEVICE", "tpu", "model.device"),
        ("DAE_KAFKA__SECURITY_PROTOCOL", "SASL", "kafka.security_protocol"),
    ],
)
def test_invalid_value_names_the_setting(monkeypatch, env, value, field):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    locs = [".".join(map(str, e["loc"])) for e in err.value.errors()]
    assert field in locs


def test_unknown_setting_is_refused():
    with pytest.raises(ValidationError, match="batch.max_bach|max_bach"):
        Settings(batch={"max_bach": 3})


def test_hop_longer_than_window_is_refused():
    with pytest.raises(ValidationError, match="must not exceed"):
        Settings(window={"window": 64, "hop": 65})


def test_password_never_in_repr(monkeypatch):
    monkeypatch.setenv("DAE_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("DAE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256")
    s = Settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert s.kafka.client_options()["sasl_plain_password"] == "hunter2"


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValidationError):
        s.batch.max_batch = 3
