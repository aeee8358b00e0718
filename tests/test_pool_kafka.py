"""`dae worker --processes 2` on the real broker: two group members from one command share the
partitions; SIGTERM stops both cleanly (exit 0) and every sample is published once."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest

from pipeline.kafka.clients import make_admin
from pipeline.tools.capture import capture
from pipeline.tools.simulate import simulate
from tests.workers import wait_for, worker_env

pytestmark = pytest.mark.kafka


def _assigned(member) -> int:
    """Partitions in a member's assignment (kafka-python returns it encoded)."""
    from kafka.coordinator.protocol import ConsumerProtocolMemberAssignment_v0

    raw = member.member_assignment
    if not raw:
        return 0
    a = raw if not isinstance(raw, bytes) else ConsumerProtocolMemberAssignment_v0.decode(raw)
    return len(a.partitions())


def _members(k) -> list:
    admin = make_admin(k)
    try:
        (group,) = admin.describe_consumer_groups([k.group_id])
        return list(group.members)
    finally:
        admin.close()


@pytest.mark.timeout(900)  # the group join is a liveness wait of up to 300 s beside CPU hogs
def test_two_processes_share_the_group_and_stop_cleanly(make_settings, model_registry, tmp_path):
    registry = tmp_path / "registry"
    shutil.copytree(model_registry, registry)
    s = make_settings(model={"registry": registry})
    log_path = tmp_path / "pool.log"
    pool = subprocess.Popen([sys.executable, "-m", "pipeline.cli.app", "worker", "--processes", "2"],
                            env=worker_env(s), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    try:
        # Two members, the topic's 4 partitions split between them.
        wait_for(lambda: sorted(map(_assigned, _members(s.kafka))) == [2, 2], 300, 0.5, "two members, 2+2 partitions")
        sim = simulate(s.kafka, streams=8, sample_rate=1000.0, seconds=4.0, snr_db=10.0, chunk=(100, 400), seed=5)
        time.sleep(3.0)
    finally:
        pool.send_signal(signal.SIGTERM)
        rc = pool.wait(60)
    log = log_path.read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert log.count("worker stopped cleanly") == 2, log[-3000:]
    rep = capture(s.kafka, idle_s=5.0, max_seconds=60, expected={k: len(v) for k, v in sim.clean.items()})
    for sid, clean in sim.clean.items():
        assert rep.gaps[sid] == [] and rep.duplicates.get(sid, 0) == 0, sid
        assert rep.streams[sid].shape[0] == len(clean)
