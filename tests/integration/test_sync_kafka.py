"""Two members of one consumer group that also form one sync group, through a real broker:
partitions keyed by task (non-IID), sync rounds over Kafka, kill -9 of one member: its
partition moves to the other, which keeps learning, and every record is learned once."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaProducer

from stream_meta.cli.checkpoint_inspect import describe_checkpoint
from stream_meta.daemon.records import encode
from stream_meta.data.datasets import stream
from stream_meta.data.local_broker import create_topics, free_port
from tests.integration.test_faults import _daemon, _scrape

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _produce_by_task(bootstrap: str, topic: str, records: list[dict]) -> None:
    """Task i goes to partition i % 2, as a producer keyed by task would spread them."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    tasks: dict[str, int] = {}
    for rec in records:
        p = tasks.setdefault(rec["task"], len(tasks)) % 2
        producer.send(topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]), key=rec["task"].encode(), partition=p)
    producer.flush()
    producer.close()


def _metric(port: int, name: str) -> float:
    try:
        return _scrape(port).get(name, 0.0)
    except OSError:
        return 0.0


def _wait(cond, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.3)


def test_a_group_syncs_over_kafka_and_a_killed_members_partition_moves_without_loss(broker, tmp_path, monkeypatch):
    topic = "scaleout.records"
    create_topics(broker.bootstrap, {topic: 2})
    records = list(stream("digits-rotations", limit=1500))
    _produce_by_task(broker.bootstrap, topic, records)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    ports = free_port(), free_port()
    sync = ("--sync-every", "5", "--sync-timeout-s", "5", "--idle-timeout-s", "20", "--max-poll-records", "50")
    members = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        members.append(_daemon(broker.bootstrap, topic, "scaleout", tmp_path / f"m{rank}", tmp_path / f"m{rank}.json",
                               ports[rank], *sync))
    a, b = members
    try:
        # Both learn and average through the sync group while Kafka splits the partitions.
        _wait(lambda: _metric(ports[1], "stream_meta_sync_rounds_total") >= 2
              and _metric(ports[1], "stream_meta_records_learned_total") >= 100)
        assert _metric(ports[0], "stream_meta_sync_rounds_total") >= 1
        b.kill()  # SIGKILL
        b.wait()
        assert a.wait(timeout=300) == 0, a.stderr.read()
        log = a.stderr.read()
    finally:
        for p in members:
            if p.poll() is None:
                p.kill()
    sa = json.loads((tmp_path / "m0.json").read_text())
    learned_b = describe_checkpoint(tmp_path / "m1")["records_learned"]  # what b checkpointed before it died
    assert learned_b > 0 and sa["records_learned"] > 0
    # b's partition moved to a from b's checkpointed offsets: nothing lost, nothing learned twice
    assert sa["records_learned"] + learned_b == len(records)
    assert "sync all-reduce failed" in log or "sync rendezvous failed" in log  # the death was noticed, logged
