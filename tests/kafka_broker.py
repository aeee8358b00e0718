"""Which real Kafka broker the integration tests use, in this order:

1. ``DAE_TEST_BOOTSTRAP`` (or ``DAE_KAFKA__BOOTSTRAP_SERVERS``) names a running broker;
2. a Kafka container started with testcontainers, when a Docker daemon answers and the container
   starts (image ``DAE_TEST_KAFKA_IMAGE``, default the official ``apache/kafka`` in KRaft mode);
3. the project's own local KRaft broker (``deploy/kafka/kafka.sh``) on ``DAE_TEST_KAFKA_PORT``.

A container that cannot start (no image, no registry, no ryuk) is not an error: one line says why,
and the local broker takes over. Never a mock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Callable, Iterator

log = logging.getLogger("tests.kafka")

DEFAULT_IMAGE = "apache/kafka:4.1.1"
TEST_PORT = int(os.environ.get("DAE_TEST_KAFKA_PORT", "29092"))


def docker_answers() -> str | None:
    """None when a Docker daemon answers a ping, else why not (one line)."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return None
    except Exception as exc:  # no daemon, no socket, no permission: all mean "not this way"
        return f"no Docker daemon answers ({type(exc).__name__})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def kafka_container(image: str = DEFAULT_IMAGE) -> Iterator[str]:
    """A single-node KRaft broker in a container; yields its bootstrap address.

    The host port is chosen first so that the broker can advertise it (clients connect to the
    address the broker advertises, not to the one they bootstrapped from)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    port = _free_port()
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_PARTITIONS": "4",
        # As deploy/kafka: 8 MiB messages (the worker's max_request_size).
        "KAFKA_MESSAGE_MAX_BYTES": str(8 * 1024 * 1024),
    }
    container = (
        DockerContainer(image)
        .with_envs(**env)
        .with_bind_ports(9092, port)
        .waiting_for(LogMessageWaitStrategy("Kafka Server started"))
    )
    with container:
        yield f"127.0.0.1:{port}"


@contextlib.contextmanager
def local_broker(port: int = TEST_PORT) -> Iterator[str]:
    """The project's local broker (deploy/kafka); stopped afterwards when started here, unless
    ``DAE_TEST_KEEP_KAFKA`` is set, and its data deleted (the suite's topics: ~50 MB a run, which
    piled up run after run on a machine that runs CI again and again)."""
    from pipeline.tools import kafka_local

    started_here = kafka_local.status(port) is None
    bootstrap = kafka_local.start(port)
    try:
        yield bootstrap
    finally:
        if started_here and not os.environ.get("DAE_TEST_KEEP_KAFKA"):
            kafka_local.clean(port)


@contextlib.contextmanager
def pick_broker(
    env: dict | None = None,
    *,
    docker_check: Callable[[], str | None] = docker_answers,
    container: Callable[[str], contextlib.AbstractContextManager[str]] = kafka_container,
    fallback: Callable[[], contextlib.AbstractContextManager[str]] = local_broker,
    say: Callable[[str], None] = log.warning,
) -> Iterator[tuple[str, str]]:
    """Yields ``(bootstrap, how)`` with ``how`` one of ``env``, ``testcontainers``, ``local``."""
    env = os.environ if env is None else env
    named = env.get("DAE_TEST_BOOTSTRAP") or env.get("DAE_KAFKA__BOOTSTRAP_SERVERS")
    if named:
        yield named, "env"
        return
    why = docker_check()
    if why is None:
        image = env.get("DAE_TEST_KAFKA_IMAGE", DEFAULT_IMAGE)
        with contextlib.ExitStack() as stack:
            try:
                bootstrap = stack.enter_context(container(image))
            except Exception as exc:  # any failure to start: image, registry, ryuk, timeout
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                say(f"Kafka container {image} did not start ({type(exc).__name__}: {first}); "
                    "using the local broker from deploy/kafka instead")
            else:
                yield bootstrap, "testcontainers"
                return
    with fallback() as bootstrap:
        yield bootstrap, "local"
