"""Shared fixtures. The integration tests' broker is picked by ``tests/kafka_broker.py``: a broker
named in the environment, else testcontainers' Kafka when a Docker daemon answers and the container
starts, else the project's local KRaft broker (deploy/kafka). Never a mock.
"""

from __future__ import annotations

import sys
import uuid

import pytest
from hypothesis import HealthCheck, settings

from tests.kafka_broker import pick_broker

# Property tests are judged on their examples, never on how fast the machine produced them: on a
# busy machine hypothesis' own timing checks failed a correct test (too_slow, at load ~9).
settings.register_profile("dae", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dae")

# Session fixtures doing one-time work (the broker's start, with its jars resolved on a fresh
# machine; the seed model's training) run inside the first test that asks for them, and
# pytest-timeout counts that work against this one test: on a busy machine it alone would time out
# while every later test is fast. The first test (in run order) needing each one gets this
# allowance on top of its own limit. Slow, not stuck: a hang still ends at the limit.
SETUP_ALLOWANCE_S = {"kafka_bootstrap": 600, "model_registry": 900}


def pytest_collection_modifyitems(config, items):
    pending = dict(SETUP_ALLOWANCE_S)
    for item in items:
        extra = sum(pending.pop(name) for name in list(pending) if name in getattr(item, "fixturenames", ()))
        if extra:
            marker = item.get_closest_marker("timeout")
            base = float(marker.args[0]) if marker and marker.args else float(config.getini("timeout") or 300)
            item.add_marker(pytest.mark.timeout(base + extra), append=False)


# A failed test that ran worker processes shows what they logged: the lines at WARNING and above
# and the last lines of each log under its tmp_path (a CI run keeps nothing else).
LOG_TAIL_LINES = 6
LOG_NOTABLE_LINES = 12


def _log_digest(path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    notable = [i for i, ln in enumerate(lines) if any(f" {lvl} " in ln for lvl in ("WARNING", "ERROR", "CRITICAL"))]
    keep = sorted(set(notable[-LOG_NOTABLE_LINES:]) | set(range(max(0, len(lines) - LOG_TAIL_LINES), len(lines))))
    out, last = [], -1
    for i in keep:
        if i > last + 1:
            out.append(f"[... {i - last - 1} lines]")
        out.append(lines[i])
        last = i
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if rep.when != "call" or not rep.failed or tmp is None:
        return
    for path in sorted(tmp.glob("**/*.log")):
        try:
            rep.sections.append((f"log {path.relative_to(tmp)}", _log_digest(path)))
        except OSError as exc:
            rep.sections.append((f"log {path.name}", f"unreadable: {exc}"))


@pytest.fixture(scope="session")
def kafka_bootstrap():
    def say(line: str) -> None:  # past pytest's capture: a user should see which broker and why
        print(f"\n[kafka] {line}", file=sys.__stderr__, flush=True)

    with pick_broker(say=say) as (bootstrap, how):
        say(f"integration tests use the broker at {bootstrap} ({how})")
        yield bootstrap


@pytest.fixture
def topics(kafka_bootstrap):
    """Fresh topic names per test, so tests never see each other's data."""
    tag = uuid.uuid4().hex[:8]
    return {
        "raw": f"t-{tag}.raw",
        "clean": f"t-{tag}.clean",
        "alerts": f"t-{tag}.alerts",
        "dead": f"t-{tag}.dead",
        "group": f"g-{tag}",
    }


@pytest.fixture
def make_settings(kafka_bootstrap, topics, tmp_path):
    """Settings factory bound to the test broker and this test's topics."""
    from pipeline.settings import Settings

    def factory(**sections):
        kafka = dict(
            bootstrap_servers=kafka_bootstrap,
            raw_topics=(topics["raw"],),
            clean_topic=topics["clean"],
            alerts_topic=topics["alerts"],
            dead_letter_topic=topics["dead"],
            group_id=topics["group"],
        )
        kafka.update(sections.pop("kafka", {}))
        sections.setdefault("metrics", {"enabled": False})
        sections.setdefault("model", {"registry": tmp_path / "registry"})
        return Settings(kafka=kafka, **sections)

    return factory


@pytest.fixture(scope="session")
def model_registry(tmp_path_factory):
    """A registry holding one seed-MLP model for 1 kHz, trained once per test session."""
    from models.registry import ModelRegistry
    from models.training import TrainConfig, train_synthetic

    root = tmp_path_factory.mktemp("registry")
    # The full 2,500 steps whatever the load (the 50 s default cap cut it short on a busy machine,
    # and a half-trained model failed the SNR assertions downstream).
    # One thread: the MLP's weights are the same as with two, and a 2-thread step next to CPU hogs
    # was many times slower (OpenMP threads waiting on each other): 2,500 steps took over 300 s.
    model, meta = train_synthetic(TrainConfig(sample_rate=1000.0, seed=1, max_seconds=3600.0, cpu_threads=1),
                                  progress=False)
    ModelRegistry(root).publish(model, meta, promote=True)
    return root
