"""Broker selection for integration tests, in this order:

1. ``DAE_TEST_BOOTSTRAP`` (or ``DAE_KAFKA__BOOTSTRAP_SERVERS``) names a running broker;
2. testcontainers' Kafka, when a Docker daemon answers;
3. the project's own local KRaft broker (deploy/kafka/kafka.sh), started on a test port.

Never a mock: tests marked ``kafka`` talk to a real broker.
"""

from __future__ import annotations

import os
import uuid

import pytest

TEST_PORT = int(os.environ.get("DAE_TEST_KAFKA_PORT", "29092"))


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap():
    named = os.environ.get("DAE_TEST_BOOTSTRAP") or os.environ.get("DAE_KAFKA__BOOTSTRAP_SERVERS")
    if named:
        yield named
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from pipeline.tools import kafka_local

    started_here = kafka_local.status(TEST_PORT) is None
    bootstrap = kafka_local.start(TEST_PORT)
    yield bootstrap
    if started_here and not os.environ.get("DAE_TEST_KEEP_KAFKA"):
        kafka_local.stop(TEST_PORT)


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
    from models.training.train import TrainConfig, train_synthetic

    root = tmp_path_factory.mktemp("registry")
    model, meta = train_synthetic(TrainConfig(sample_rate=1000.0, seed=1), progress=False)
    ModelRegistry(root).publish(model, meta, promote=True)
    return root
