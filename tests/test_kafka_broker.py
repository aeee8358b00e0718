"""Broker selection for the integration tests (tests/kafka_broker.py): the order, and the fallback
to the local broker when a Docker daemon answers but the container cannot start."""

from __future__ import annotations

import contextlib

import pytest

from tests.kafka_broker import docker_answers, pick_broker


@contextlib.contextmanager
def _fake_local():
    yield "local-broker:1"


def _never(*_a):
    raise AssertionError("must not be called")


def test_a_broker_named_in_the_environment_wins():
    with pick_broker({"DAE_TEST_BOOTSTRAP": "b:9"}, docker_check=_never, container=_never,
                     fallback=_never) as (bootstrap, how):
        assert (bootstrap, how) == ("b:9", "env")


def test_no_docker_daemon_means_the_local_broker():
    with pick_broker({}, docker_check=lambda: "no Docker daemon answers (DockerException)",
                     container=_never, fallback=_fake_local) as got:
        assert got == ("local-broker:1", "local")


def test_a_container_that_cannot_start_falls_back_with_one_line():
    said = []

    @contextlib.contextmanager
    def cannot_pull(image):
        raise RuntimeError(f"404 Client Error: pull access denied for {image}\nmore detail")
        yield  # pragma: no cover

    with pick_broker({"DAE_TEST_KAFKA_IMAGE": "x/kafka:1"}, docker_check=lambda: None,
                     container=cannot_pull, fallback=_fake_local, say=said.append) as got:
        assert got == ("local-broker:1", "local")
    assert len(said) == 1 and "\n" not in said[0]
    assert "x/kafka:1" in said[0] and "pull access denied" in said[0] and "local broker" in said[0]


def test_a_container_that_starts_is_used_and_stopped():
    events = []

    @contextlib.contextmanager
    def starts(image):
        events.append(("start", image))
        yield "container:1"
        events.append(("stop", image))

    with pick_broker({}, docker_check=lambda: None, container=starts, fallback=_never) as got:
        assert got == ("container:1", "testcontainers")
    assert events == [("start", "apache/kafka:4.1.1"), ("stop", "apache/kafka:4.1.1")]


@pytest.mark.kafka
def test_real_daemon_that_cannot_pull_falls_back_to_the_local_broker():
    """With a real Docker daemon and an image no registry serves, the real container start fails
    and the real local broker answers instead."""
    why = docker_answers()
    if why is not None:
        pytest.skip(f"needs a Docker daemon: {why}")
    from kafka import KafkaAdminClient

    said = []
    with pick_broker({"DAE_TEST_KAFKA_IMAGE": "dae-test/no-such-kafka-image:0"}, say=said.append) as (bootstrap, how):
        assert how == "local"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            assert admin.describe_cluster()["brokers"]
        finally:
            admin.close()
    assert len(said) == 1 and "dae-test/no-such-kafka-image:0" in said[0]


@pytest.mark.kafka
def test_a_local_broker_the_tests_started_leaves_no_data_behind(tmp_path, monkeypatch):
    """Each suite's topics went on piling up in the broker's data directory, run after run."""
    from pipeline.tools import kafka_local
    from tests.kafka_broker import TEST_PORT, local_broker

    if not kafka_local.jars_cached():
        pytest.skip("the local broker's jars are not resolved here (deploy/kafka)")
    port = TEST_PORT + 7
    if kafka_local.status(port) is not None:
        pytest.skip(f"a broker already runs on port {port}")
    data = tmp_path / "kafka-data"
    monkeypatch.setenv("DAE_KAFKA_DATA", str(data))
    monkeypatch.delenv("DAE_TEST_KEEP_KAFKA", raising=False)
    with local_broker(port) as bootstrap:
        assert bootstrap.endswith(f":{port}") and data.is_dir()
    assert kafka_local.status(port) is None
    assert not data.exists()
