"""Thin kafka-python wrappers: clients built from settings, connection check, topic creation.

Every client gets the same connection/security options (``KafkaSettings.client_options``), so
SASL/SSL configured once applies to consumer, producer and admin alike.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

# kafka-python backs off reconnecting up to 30 s by default: after a broker outage the worker then
# sat idle for up to that long with the broker back. The Java client's default is 1 s.
RECONNECT_BACKOFF_MAX_MS = 1000


def make_producer(k: KafkaSettings, **extra) -> KafkaProducer:
    opts = dict(
        client_id=f"{k.client_id}-producer",
        acks="all",
        # Idempotent: broker-side de-duplication of the producer's own retries, order kept.
        enable_idempotence=True,
        linger_ms=k.linger_ms,
        batch_size=1 << 20,
        max_request_size=k.max_request_size,
        request_timeout_ms=k.request_timeout_ms,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
    )
    opts.update(extra)
    return KafkaProducer(**k.client_options(), **opts)


def make_consumer(k: KafkaSettings, *topics: str, group_id: str | None = None, **extra) -> KafkaConsumer:
    opts = dict(
        client_id=f"{k.client_id}-consumer",
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=k.max_poll_records,
        session_timeout_ms=k.session_timeout_ms,
        heartbeat_interval_ms=max(500, k.session_timeout_ms // 4),
        request_timeout_ms=max(k.request_timeout_ms, k.session_timeout_ms + 5000),
        fetch_max_bytes=32 << 20,
        max_partition_fetch_bytes=k.max_request_size,
        # A fetch response may carry up to fetch_max_bytes; kafka-python refuses larger frames.
        receive_message_max_bytes=(32 << 20) + (1 << 20),
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
    )
    opts.update(extra)
    return KafkaConsumer(*topics, **k.client_options(), **opts)


def make_admin(k: KafkaSettings) -> KafkaAdminClient:
    return KafkaAdminClient(
        **k.client_options(), client_id=f"{k.client_id}-admin", request_timeout_ms=k.request_timeout_ms
    )


def wait_for_broker(k: KafkaSettings, timeout_s: float = 60.0) -> None:
    """Block until the cluster answers a metadata request; clear error naming the address."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = make_admin(k)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.5)
    raise ConnectionError(
        f"Kafka at {k.bootstrap_servers} did not answer within {timeout_s:.0f} s "
        f"(kafka.bootstrap_servers; start a local one with `dae kafka start`): {last}"
    )


class KafkaAuthError(PermissionError):
    """The broker refused the configured credentials."""


def verify_connection(k: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Connect once to the first bootstrap server with the configured security settings.

    kafka-python reports refused SASL credentials only in its log (and then as a misleading
    version error), so the worker checks up front and stops with a message naming the setting.
    """
    import socket

    from kafka.conn import BrokerConnection

    host, _, port = k.bootstrap_servers.split(",")[0].strip().rpartition(":")
    opts = {key: v for key, v in k.client_options().items() if key != "bootstrap_servers"}
    seen: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    grab = _Grab(level=logging.WARNING)
    conn_log = logging.getLogger("kafka.conn")
    conn_log.addHandler(grab)
    try:
        conn = BrokerConnection(host, int(port), socket.AF_UNSPEC, api_version=(2, 8), **opts)
        ok = conn.connect_blocking(timeout=timeout_s)
        conn.close()
    finally:
        conn_log.removeHandler(grab)
    if ok:
        return
    if any("Authentication" in m or "SaslAuthenticate" in m for m in seen):
        raise KafkaAuthError(
            f"Kafka at {k.bootstrap_servers} refused the credentials of user {k.sasl_username!r} "
            f"({k.security_protocol}/{k.sasl_mechanism}; check kafka.sasl_username / kafka.sasl_password, "
            f"env DAE_KAFKA__SASL_USERNAME / DAE_KAFKA__SASL_PASSWORD)"
        )
    raise ConnectionError(
        f"cannot connect to Kafka at {k.bootstrap_servers} with security_protocol={k.security_protocol}"
        + (f": {seen[-1]}" if seen else "")
    )


def ensure_topics(k: KafkaSettings, topics: list[str] | tuple[str, ...], partitions: int | None = None,
                  configs: dict[str, str] | None = None) -> None:
    """Create the topics that do not exist yet (idempotent, safe against concurrent creators);
    ``configs``: topic configuration of the ones created."""
    admin = make_admin(k)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if not missing:
            return
        # replication_factor -1: the broker's default.replication.factor.
        specs = [NewTopic(t, partitions or k.partitions, -1, topic_configs=configs or {}) for t in missing]
        try:
            admin.create_topics(specs)
        except TopicAlreadyExistsError:
            pass
        # Wait until every partition has a leader, so a consumer joining now sees them all.
        deadline = time.monotonic() + 30
        while True:
            described = {t["topic"]: t for t in admin.describe_topics(missing)}
            if all(
                t in described and described[t]["partitions"]
                and all(p["leader"] >= 0 for p in described[t]["partitions"])
                for t in missing
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {missing} have no leaders after 30 s")
            time.sleep(0.1)
        log.info("created topics %s", missing)
    finally:
        admin.close()

