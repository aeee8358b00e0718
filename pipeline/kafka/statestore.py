"""The worker's resume entries in a compacted state topic, the way Kafka Streams keeps changelogs.

One record per (raw topic, stream): key ``<raw topic>/<stream id>`` (a topic name has no ``/``),
value a small JSON :class:`~pipeline.stream.state.Resume` plus the raw partition, or a tombstone
when no replay can need the entry any more. Raw partition ``p`` writes to state partition
``p % n``; a new owner of ``p`` reads that partition to its end on assignment and keeps the
entries of ``p``. Compaction keeps the latest entry per key, so what is read stays about one
record per stream, whatever their number or the length of their ids (the commit metadata, which
this replaces, is limited to 4 KiB per partition by default).

When the entries are written relative to the offsets that rely on them is the commit manager's
business (:mod:`pipeline.kafka.commits`).
"""

from __future__ import annotations

import json
import logging
import time

from kafka import TopicPartition

from pipeline.kafka.clients import ensure_topics, make_consumer
from pipeline.settings import KafkaSettings
from pipeline.stream.state import Resume

log = logging.getLogger(__name__)

STATE_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    # Roll segments every minute so the cleaner can compact them: what a new owner reads on
    # assignment stays near one record per stream rather than every update since the last roll.
    "segment.ms": "60000",
    "min.cleanable.dirty.ratio": "0.1",
}
# Longest wait for the state topic's partitions after creating it.
CREATE_TIMEOUT_S = 60.0
# While loading takes longer than this (the broker away), say so every this many seconds.
LOAD_NOTICE_S = 30.0


def state_topic(k: KafkaSettings) -> str:
    return k.state_topic or f"{k.group_id}.state"


def encode_entry(tp: TopicPartition, stream: str, entry: Resume | None) -> tuple[bytes, bytes | None]:
    key = f"{tp.topic}/{stream}".encode("utf-8")
    if entry is None:
        return key, None
    d: dict = {"p": tp.partition, "o": entry.offset}
    if entry.anchor is not None:
        d["a"], d["e"] = entry.anchor, entry.emit_from
    if entry.flushes:
        d["f"] = list(entry.flushes)
    if entry.needed:
        d["n"] = 1
    return key, json.dumps(d, separators=(",", ":")).encode()


def decode_entry(key: bytes, value: bytes | None) -> tuple[str, str, int | None, Resume | None]:
    """(raw topic, stream, raw partition, entry); partition and entry are None for a tombstone."""
    topic, _, stream = key.decode("utf-8").partition("/")
    if value is None:
        return topic, stream, None, None
    d = json.loads(value)
    entry = Resume(int(d["o"]), d.get("a"), d.get("e"), tuple(d.get("f", ())), bool(d.get("n", 0)))
    return topic, stream, int(d["p"]), entry


class StateStore:
    def __init__(self, k: KafkaSettings, *, read_committed: bool):
        self.topic = state_topic(k)
        self._k = k
        self._read_committed = read_committed
        self._reader = None
        self.partitions = 0

    def ensure(self, raw_partitions: int) -> None:
        """Create the state topic (compacted, one partition per raw partition) if it is missing."""
        ensure_topics(self._k, [self.topic], partitions=raw_partitions, configs=STATE_TOPIC_CONFIG)
        self._reader = make_consumer(
            self._k, allow_auto_create_topics=False,
            isolation_level="read_committed" if self._read_committed else "read_uncommitted",
        )
        deadline = time.monotonic() + CREATE_TIMEOUT_S
        while not (parts := self._reader.partitions_for_topic(self.topic)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"state topic {self.topic} has no partitions")
            time.sleep(0.1)
        self.partitions = len(parts)

    def partition_of(self, tp: TopicPartition) -> int:
        return tp.partition % self.partitions

    def record(self, tp: TopicPartition, stream: str, entry: Resume | None) -> tuple[int, bytes, bytes | None]:
        """(state partition, key, value) of one entry (None: a tombstone)."""
        return (self.partition_of(tp), *encode_entry(tp, stream, entry))

    def load(self, tp: TopicPartition) -> dict[str, Resume]:
        """The latest entry of every stream of raw partition ``tp`` (blocking; main thread)."""
        stp = TopicPartition(self.topic, self.partition_of(tp))
        r = self._reader
        r.assign([stp])
        r.seek_to_beginning(stp)
        end = r.end_offsets([stp])[stp]  # read_committed: the last stable offset
        entries: dict[str, Resume] = {}
        notice = time.monotonic() + LOAD_NOTICE_S
        n = 0
        while r.position(stp) < end:
            if time.monotonic() > notice:
                notice = time.monotonic() + LOAD_NOTICE_S
                log.warning("still reading %s[%d] (offset %d of %d)", stp.topic, stp.partition, r.position(stp), end)
            for msgs in r.poll(timeout_ms=200).values():
                for m in msgs:
                    n += 1
                    topic, stream, partition, entry = decode_entry(m.key, m.value)
                    if topic != tp.topic:
                        continue
                    if entry is None:
                        entries.pop(stream, None)
                    elif partition == tp.partition:
                        entries[stream] = entry
        log.info("%s[%d]: %d resume entries (%d records read from %s)", tp.topic, tp.partition, len(entries), n,
                 stp.topic)
        return entries

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
