"""Poison records against a real broker: records of 0 B to 16 MiB among good ones never stop
the stream; dead letters that cannot be written follow --dlq-failure-policy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kafka import KafkaProducer

from stream_meta.daemon.deadletters import HEADROOM_BYTES
from stream_meta.data.datasets import stream
from stream_meta.data.local_broker import create_topics
from stream_meta.daemon.records import encode
from tests.integration.conftest import consume_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1 << 20


def _wrong_length(size: int) -> bytes:
    """Valid JSON of exactly ``size`` bytes whose x has the wrong length (JSON allows the padding)."""
    body = b'{"x": [1, 2, 3]}'
    return body + b" " * (size - len(body))


# (size, key, reason the daemon gives); all sent to partition 1 of the source topic.
POISON = [
    (0, None, "not_json"),
    (MiB - 1, None, "x_wrong_length"),
    (MiB + 1, None, "too_large"),
    (2 * MiB, b"poison-key", "too_large"),
    (16 * MiB, None, "too_large"),
]


def _run(bootstrap, topic, dlq, ckpt, summary, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_meta.cli.main", "run", "--bootstrap", bootstrap, "--topic", topic,
         "--group", "poison", "--dlq-topic", dlq, "--input-dim", "64", "--num-classes", "10",
         "--checkpoint-dir", str(ckpt), "--summary-json", str(summary), "--metrics-port", "0",
         "--checkpoint-every-records", "40", "--stop-at-end", *extra],
        capture_output=True, text=True, timeout=300,
    )


def test_records_from_0_bytes_to_16_mib_never_stop_the_stream(broker, tmp_path):
    topic, dlq = "poison.records", "poison.records.dlq"
    create_topics(broker.bootstrap, {topic: 2, dlq: 1})
    good = list(stream("digits-rotations", limit=300))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=32 * MiB)
    values = {}
    for i, rec in enumerate(good):
        producer.send(topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]), partition=i % 2)
        if i % 50 == 25 and len(values) < len(POISON):
            size, key, _ = POISON[len(values)]
            values[size] = b"" if size == 0 else _wrong_length(size)
            producer.send(topic, values[size], key=key, partition=1)
    producer.flush()
    producer.close()
    assert len(values) == len(POISON)

    first = _run(broker.bootstrap, topic, dlq, tmp_path / "ckpt", tmp_path / "s.json")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["records_learned"] == len(good)
    assert summary["records_rejected"] == len(POISON)
    assert summary["rejected_by_reason"]["too_large"] == 3

    letters = consume_all(broker.bootstrap, dlq, len(POISON))
    assert len(letters) == len(POISON)
    offsets = [int(dict(m.headers)["source.offset"]) for m in letters]
    assert offsets == sorted(offsets)  # one source partition's dead letters stay in its order
    for m, (size, key, reason) in zip(letters, POISON):
        headers = dict(m.headers)
        assert headers["stream_meta.reason"].decode() == reason
        assert headers["source.partition"] == b"1"
        assert m.key == (key if key is not None else b"1")  # source key, else the source partition
        limit = MiB - HEADROOM_BYTES - len(m.key)
        if size > limit:
            assert headers["stream_meta.truncated"] == str(size).encode()
            assert m.value == values[size][:limit]
        else:
            assert "stream_meta.truncated" not in headers and m.value == values[size]

    # A restart learns nothing twice and dead-letters nothing again.
    again = _run(broker.bootstrap, topic, dlq, tmp_path / "ckpt", tmp_path / "s.json")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["records_learned"] == len(good)
    assert summary["records_consumed"] == len(good) + len(POISON)
    assert len(consume_all(broker.bootstrap, dlq, len(POISON) + 1, timeout_s=5)) == len(POISON)


def test_unwritable_dead_letter_topic_follows_the_policy(broker, tmp_path):
    topic = "poison.policy"
    create_topics(broker.bootstrap, {topic: 1})
    good = list(stream("digits-rotations", limit=60))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i, rec in enumerate(good):
        producer.send(topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]))
        if i == 30:
            producer.send(topic, b"{nope")
    producer.flush()
    producer.close()
    bad_dlq = "no such topic!"  # an illegal name: the client refuses it, as a broker refuses an ACL'd topic

    strict = _run(broker.bootstrap, topic, bad_dlq, tmp_path / "strict", tmp_path / "strict.json",
                  "--dlq-failure-policy", "fail")
    assert strict.returncode == 2
    last = strict.stderr.strip().splitlines()[-1]
    assert last.startswith("stream-meta: error: dead-letter topic no such topic! cannot be written"), last
    assert not (tmp_path / "strict.json").exists()

    lenient = _run(broker.bootstrap, topic, bad_dlq, tmp_path / "lenient", tmp_path / "lenient.json")
    assert lenient.returncode == 0, lenient.stderr[-3000:]
    assert "dead-letter topic no such topic! cannot be written" in lenient.stderr
    assert f"dead letter of {topic}[0]@31 not written to {bad_dlq} (refused)" in lenient.stderr
    summary = json.loads((tmp_path / "lenient.json").read_text())
    assert summary["records_learned"] == len(good) and summary["records_rejected"] == 1
