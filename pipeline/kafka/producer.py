"""The worker's one producer: send a record, remember it until the broker acknowledges it, and
handle a refusal by the record's delivery policy — written once for every kind of output.

- ``FATAL`` (cleaned outputs, alert events): :meth:`check` raises :class:`FatalWorkerError` on
  the main thread; the worker stops without committing (the next owner replays the output).
- ``BLOCKING`` (dead letters): the record stays unacknowledged, which holds its partition's
  commit behind the message (the next owner retries it); logged, the worker keeps running.
- ``ADVISORY`` (drift events): logged; nothing depends on it.

Whatever the policy, a refused record stays unacknowledged, so no commit ever passes the input
it was published for. Acknowledgments and errors arrive on the producer's IO thread; they only
mark the :class:`~pipeline.stream.state.OutputRecord` and call the given hooks.

In exactly-once mode (``transactions`` given) a record sent on behalf of an input partition
(``source``) goes out through that partition's transactional producer, inside its open
transaction; a record without a source (drift events) through the plain producer.
"""

from __future__ import annotations

import enum
import logging
from typing import Callable

from pipeline.kafka.clients import make_producer
from pipeline.kafka.transactions import Transactions
from pipeline.settings import KafkaSettings
from pipeline.stream.state import OutputRecord

log = logging.getLogger(__name__)


class FatalWorkerError(RuntimeError):
    """The worker cannot go on without losing data (a refused output, a missing topic)."""


class Delivery(enum.Enum):
    FATAL = "fatal"
    BLOCKING = "blocking"
    ADVISORY = "advisory"


class TrackedProducer:
    def __init__(self, kafka: KafkaSettings, transactions: Transactions | None = None):
        self._kafka = kafka
        self.transactions = transactions
        self._producer = None
        self._fatal: list[str] = []  # appended on the IO thread, read by check() on the main thread

    def start(self) -> None:
        self._producer = make_producer(self._kafka)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list,
        *,
        record: OutputRecord | None = None,
        delivery: Delivery = Delivery.FATAL,
        what: str = "a record",
        on_ack: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        source=None,
        partition: int | None = None,
    ) -> None:
        """Send one record. ``record`` (if given) is marked acknowledged or failed; ``what`` names
        the record in the failure message; ``on_ack``/``on_error`` run on the producer's IO thread;
        ``source``: the input partition the record is published for; ``partition``: an explicit one."""
        producer = self._producer
        if self.transactions is not None and source is not None:
            producer = self.transactions.producer(source)
            if producer is None:
                raise FatalWorkerError(f"no transaction is open for {source} (publishing {what})")
        future = producer.send(topic, key=key, value=value, headers=headers, partition=partition)
        future.add_callback(self._acked, record, on_ack)
        future.add_errback(self._failed, delivery, f"publishing {what} to {topic} failed", on_error)

    @staticmethod
    def _acked(record: OutputRecord | None, on_ack, _metadata) -> None:
        if record is not None:
            record.acked = True
        if on_ack is not None:
            on_ack()

    def _failed(self, delivery: Delivery, message: str, on_error, exc) -> None:
        # The record stays unacknowledged: whatever the policy, no commit passes it.
        if on_error is not None:
            on_error(exc)
        if delivery is Delivery.FATAL:
            self._fatal.append(f"{message}: {exc}")
        elif delivery is Delivery.BLOCKING:
            log.error("%s (%s): not committing past it", message, exc)
        else:
            log.error("%s: %s", message, exc)

    def check(self) -> None:
        """Raise the first fatal failure (call it on the main thread, before committing)."""
        if self._fatal:
            raise FatalWorkerError(self._fatal[0])

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every record sent so far to be acknowledged or refused."""
        self._producer.flush(timeout=timeout)
        if self.transactions is not None:
            self.transactions.flush_all(timeout)

    def close(self, timeout: float) -> None:
        if self.transactions is not None:
            self.transactions.close_all()
        if self._producer is None:
            return
        try:
            self._producer.close(timeout=timeout)
        except Exception:  # pragma: no cover - best effort on the way out
            log.exception("closing producer")
        self._producer = None
