"""``stream-meta run`` end to end against a real broker over TCP, as a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from kafka import KafkaProducer

from stream_meta.data.datasets import stream
from stream_meta.data.local_broker import create_topics, free_port
from stream_meta.daemon.records import encode
from tests.integration.conftest import consume_all

pytestmark = pytest.mark.integration

BAD = {
    "not_utf8": b"\xff\xfe\xfd",
    "not_json": b"{nope",
    "not_object": b"[1, 2]",
    "missing_x": b'{"y": 1}',
    "x_not_list": b'{"x": 5}',
    "x_wrong_length": b'{"x": [1, 2, 3]}',
    "x_not_number": b'{"x": [' + b"0," * 63 + b'"a"]}',
    "x_nested": b'{"x": [' + b"0," * 63 + b"[1]]}",
    "x_not_finite": b'{"x": [' + b"0," * 63 + b"NaN]}",
    "y_out_of_range": encode([0.0] * 64, 10),
    "y_not_integer": b'{"x": [' + b"0," * 63 + b'0], "y": 1.5}',
    "task_not_string": b'{"x": [' + b"0," * 63 + b'0], "y": 1, "task": 3}',
    "too_large": b'{"x": [' + b"0.000000001," * 1000 + b"0]}",
}


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+0-9.eEinfNa]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_run_learns_every_good_record_and_dead_letters_every_bad_one(broker, tmp_path):
    topic, dlq, preds = "it.records", "it.records.dlq", "it.predictions"
    create_topics(broker.bootstrap, {topic: 2, dlq: 1, preds: 1})
    good = list(stream("digits-rotations", limit=400))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    sent_bad = []
    for i, rec in enumerate(good):
        producer.send(topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]), partition=i % 2)
        if i % 30 == 0 and len(sent_bad) < len(BAD):
            reason, raw = list(BAD.items())[len(sent_bad)]
            producer.send(topic, raw, partition=i % 2)
            sent_bad.append(reason)
    unlabelled = [encode(rec["x"], None, rec["task"], f"u{i}") for i, rec in enumerate(good[:10])]
    for raw in unlabelled:
        producer.send(topic, raw, partition=0)
    producer.flush()
    total = len(good) + len(sent_bad) + len(unlabelled)
    assert len(sent_bad) == len(BAD)

    port = free_port()
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_meta.cli.main", "run", "--bootstrap", broker.bootstrap, "--topic", topic,
         "--group", "it-group", "--input-dim", "64", "--num-classes", "10", "--dlq-topic", dlq,
         "--predictions-topic", preds, "--metrics-port", str(port), "--checkpoint-dir", str(tmp_path / "ckpt"),
         "--summary-json", str(summary_path), "--idle-timeout-s", "6", "--max-message-bytes", "4096",
         "--session-timeout-ms", "6000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline, metrics = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            try:
                metrics = _metrics(port)
            except OSError:
                metrics = {}
            if metrics.get("stream_meta_records_consumed_total") == total:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.3)
        ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert ready == 200 and health == 200

    summary = json.loads(summary_path.read_text())
    assert summary["records_consumed"] == total
    assert summary["records_learned"] == len(good)
    assert summary["records_rejected"] == len(BAD)
    assert summary["rejected_by_reason"] == {r: 1 for r in BAD}
    assert summary["predictions_emitted"] == len(good) + len(unlabelled)
    assert summary["tasks_seen"] == len({r["task"] for r in good})
    assert summary["meta_updates"] > 0
    assert summary["prequential_accuracy"] > 0.3  # ten classes: chance is 0.1
    assert sum(summary["records_by_task_position"].values()) == len(good)
    assert "prequential accuracy" in out  # the table printed at exit

    # /metrics agrees with the summary
    assert metrics["stream_meta_records_consumed_total"] == total
    assert metrics["stream_meta_records_learned_total"] == len(good)
    assert metrics["stream_meta_predictions_total"] == summary["predictions_emitted"]
    for reason in BAD:
        assert metrics[f'stream_meta_records_rejected_total{{reason="{reason}"}}'] == 1
    assert metrics["stream_meta_meta_updates_total"] == summary["meta_updates"]
    assert metrics["stream_meta_consumer_lag_records"] == 0
    assert metrics["stream_meta_step_seconds_count"] == len(good) + len(unlabelled)

    # every bad message is in the dead-letter topic, byte for byte, with its reason
    dead = consume_all(broker.bootstrap, dlq, len(BAD))
    assert len(dead) == len(BAD)
    by_reason = {dict(m.headers)["stream_meta.reason"].decode(): m for m in dead}
    assert set(by_reason) == set(BAD)
    for reason, m in by_reason.items():
        headers = dict(m.headers)
        assert m.value == BAD[reason]
        assert headers["source.topic"] == topic.encode()
        assert int(headers["source.partition"]) in (0, 1) and int(headers["source.offset"]) >= 0

    predictions = consume_all(broker.bootstrap, preds, summary["predictions_emitted"])
    assert len(predictions) == summary["predictions_emitted"]
    ids = {json.loads(m.value)["id"] for m in predictions}
    assert {f"u{i}" for i in range(10)} <= ids

    # offsets were committed only with a checkpoint: a second run has nothing left to learn
    again = subprocess.run(
        [sys.executable, "-m", "stream_meta.cli.main", "run", "--bootstrap", broker.bootstrap, "--topic", topic,
         "--group", "it-group", "--input-dim", "64", "--num-classes", "10", "--dlq-topic", dlq,
         "--metrics-port", "0", "--checkpoint-dir", str(tmp_path / "ckpt"), "--summary-json", str(summary_path),
         "--idle-timeout-s", "4", "--session-timeout-ms", "6000"],
        capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0, again.stderr
    resumed = json.loads(summary_path.read_text())
    assert resumed["records_consumed"] == total and resumed["records_learned"] == len(good)
