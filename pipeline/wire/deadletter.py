"""Dead-letter records (public contract: see README "Wire format"): a message that is not valid is
forwarded unchanged — key, value and its own headers — plus the headers below naming why and where
it came from. Reasons are the ``DecodeError.reason`` codes of :mod:`pipeline.wire.codec`, plus
:data:`PROCESSING_ERROR`.
"""

from __future__ import annotations

import time

DLQ_REASON = "dae.dlq.reason"
DLQ_DETAIL = "dae.dlq.detail"
DLQ_TOPIC = "dae.dlq.topic"
DLQ_PARTITION = "dae.dlq.partition"
DLQ_OFFSET = "dae.dlq.offset"
DLQ_TIME = "dae.dlq.time"

# A message that decoded but raised while the worker handled it (a bug): the detail names the
# exception's type and message; the worker carries on with the other messages and streams.
PROCESSING_ERROR = "processing_error"

# The detail is a human-readable message; bound it so a dead letter stays near its original size.
DETAIL_MAX_BYTES = 1000


def dead_letter_headers(headers, reason: str, detail: str, topic: str, partition: int, offset: int,
                        now_ms: int | None = None) -> list:
    """The original headers plus the reason and the source coordinates."""
    now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    extra = [
        (DLQ_REASON, reason.encode()),
        (DLQ_DETAIL, detail.encode("utf-8", "replace")[:DETAIL_MAX_BYTES]),
        (DLQ_TOPIC, topic.encode()),
        (DLQ_PARTITION, str(partition).encode()),
        (DLQ_OFFSET, str(offset).encode()),
        (DLQ_TIME, str(now_ms).encode()),
    ]
    return list(headers or []) + extra
