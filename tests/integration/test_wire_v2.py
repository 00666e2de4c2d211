"""Wire format v2 (binary float32) beside v1 JSON on one topic, learned in batches, through a real broker."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from kafka import KafkaProducer

from stream_meta.daemon.wire import CONTENT_TYPE, F32_CONTENT_TYPE
from stream_meta.data.local_broker import create_topics
from tests.integration.conftest import consume_all

pytestmark = pytest.mark.integration

F32 = (CONTENT_TYPE, F32_CONTENT_TYPE)
BAD_V2 = {
    "x_wrong_length": (np.zeros(63, "<f4").tobytes(), [F32, ("y", b"1")]),
    "x_not_finite": (np.array([np.nan] * 64, "<f4").tobytes(), [F32, ("y", b"1")]),
    "y_not_integer": (np.zeros(64, "<f4").tobytes(), [F32, ("y", b"one")]),
    "y_out_of_range": (np.zeros(64, "<f4").tobytes(), [F32, ("y", b"10")]),
}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_meta.cli", *args], capture_output=True, text=True, timeout=300)


def test_v2_and_v1_records_are_learned_and_bad_v2_ones_dead_lettered(broker, tmp_path):
    topic = "it.v2"
    create_topics(broker.bootstrap, {topic: 1, f"{topic}.dlq": 1})
    for fmt, limit in (("f32", 300), ("json", 150)):
        out = _run("produce", "--bootstrap", broker.bootstrap, "--topic", topic, "--dataset", "digits-rotations",
                   "--limit", str(limit), "--format", fmt)
        assert out.returncode == 0, out.stderr
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for value, headers in BAD_V2.values():
        producer.send(topic, value, headers=headers)
    producer.flush()
    producer.close()

    summary_path = tmp_path / "summary.json"
    run = _run("run", "--bootstrap", broker.bootstrap, "--topic", topic, "--group", "v2", "--input-dim", "64",
               "--num-classes", "10", "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-port", "0",
               "--summary-json", str(summary_path), "--stop-at-end", "--learn-batch", "16",
               "--session-timeout-ms", "6000")
    assert run.returncode == 0, run.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["records_consumed"] == 450 + len(BAD_V2)
    assert summary["records_learned"] == 450
    assert summary["rejected_by_reason"] == {reason: 1 for reason in BAD_V2}
    assert summary["prequential_accuracy"] > 0.3
    dead = consume_all(broker.bootstrap, f"{topic}.dlq", len(BAD_V2))
    assert sorted(dict(m.headers)["stream_meta.reason"].decode() for m in dead) == sorted(BAD_V2)
    assert {m.value for m in dead} == {value for value, _ in BAD_V2.values()}  # original bytes
