"""Two daemons in one consumer group: a member joining and leaving hands partitions
over after a checkpoint, and no record is learned twice or lost across the group."""

from __future__ import annotations

import json
import time

import pytest

from stream_meta.data.datasets import stream
from stream_meta.data.local_broker import create_topics, free_port
from tests.integration.test_faults import _daemon, _produce, _scrape, _status

pytestmark = pytest.mark.integration


def _wait_consumed(port: int, at_least: float, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _scrape(port).get("stream_meta_records_consumed_total", 0) >= at_least:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not {at_least} records consumed in {timeout_s}s")


def _wait_ready(port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _status(port, "/readyz") == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready in {timeout_s}s")


def test_member_joining_and_leaving_hands_over_without_loss_or_duplicates(broker, tmp_path):
    topic = "rebalance.records"
    create_topics(broker.bootstrap, {topic: 2})
    records = list(stream("digits-rotations", limit=1500))
    # A quarter first; the rest once b has joined, so a cannot drain both partitions
    # before b gets one (a daemon learns these 6000 records in well under 30 s).
    _produce(broker.bootstrap, topic, records)
    total = 4 * len(records)
    port_a, port_b = free_port(), free_port()
    a = _daemon(broker.bootstrap, topic, "rebalance", tmp_path / "a", tmp_path / "a.json", port_a,
                "--idle-timeout-s", "40")
    try:
        _wait_consumed(port_a, 300)
        b = _daemon(broker.bootstrap, topic, "rebalance", tmp_path / "b", tmp_path / "b.json", port_b,
                    "--idle-timeout-s", "40")
        _wait_ready(port_b)
        _produce(broker.bootstrap, topic, records * 3)
        _wait_consumed(port_b, 200)  # b owns a partition now: a handed it over
        b.terminate()  # b leaves: its partition goes back to a
        assert b.wait(timeout=60) == 0, b.stderr.read()
        assert a.wait(timeout=300) == 0, a.stderr.read()
    finally:
        a.kill()
    sa = json.loads((tmp_path / "a.json").read_text())
    sb = json.loads((tmp_path / "b.json").read_text())
    assert sb["records_learned"] > 0 and sa["records_learned"] > 0
    assert sa["records_learned"] + sb["records_learned"] == total
    assert sa["records_consumed"] + sb["records_consumed"] == total
