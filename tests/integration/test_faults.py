"""Crashes, broker outages and a broker that comes back empty, with real processes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from kafka import KafkaProducer

from stream_meta.data.datasets import stream
from stream_meta.data.local_broker import LocalBroker, create_topics, free_port
from stream_meta.daemon.records import encode

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, topic: str, records: list[dict], partitions: int = 2) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    for i, rec in enumerate(records):
        producer.send(topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]), partition=i % partitions)
    producer.flush()
    producer.close()


def _daemon(bootstrap, topic, group, ckpt, summary, port=0, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stream_meta.cli.main", "run", "--bootstrap", bootstrap, "--topic", topic,
         "--group", group, "--input-dim", "64", "--num-classes", "10", "--checkpoint-dir", str(ckpt),
         "--summary-json", str(summary), "--metrics-port", str(port), "--session-timeout-ms", "6000",
         "--deterministic", "--checkpoint-every-records", "40", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    return {k: float(v) for k, _, v in (line.rpartition(" ") for line in text.splitlines() if line and line[0] != "#")}


def _status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3).status
    except urllib.error.HTTPError as exc:
        return exc.code


def _digest(ckpt) -> str:
    out = subprocess.run([sys.executable, "-m", "stream_meta.cli.main", "checkpoint", "inspect", str(ckpt), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["meta_parameters_sha256"]


def _kill_9_cycles(bootstrap, topic, ckpt, summary, extra, cycles=6, seed=11) -> int:
    """Starts the daemon, lets it learn a little, SIGKILLs it; ``cycles`` times. Returns the kills."""
    rng, kills = random.Random(seed), 0
    for _ in range(cycles):
        port = free_port()
        proc = _daemon(bootstrap, topic, crashy_group(topic), ckpt, summary, port, "--stop-at-end", *extra)
        try:
            deadline, start = time.monotonic() + 120, None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    consumed = _scrape(port).get("stream_meta_records_consumed_total", 0)
                except OSError:
                    consumed = None
                if consumed is not None:
                    start = consumed if start is None else start
                    if consumed > start:
                        break
                time.sleep(0.05)
            if proc.poll() is not None:
                break  # finished before it could be killed
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            # Also when the test fails or times out here: a daemon left running stays a member of
            # its consumer group and stalls the rebalances of whatever joins that group later.
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
    return kills


def crashy_group(topic: str) -> str:
    """The killed daemons' consumer group: one per topic, so the tests sharing a broker never
    join each other's groups (a member killed during a rebalance can hold a group's next join)."""
    return f"crashy.{topic}"


@pytest.mark.parametrize("learn_batch", [1, 16])
def test_kill_9_many_times_learns_every_record_exactly_once(broker, tmp_path, learn_batch):
    # One partition: across partitions the interleaving of records depends on fetch
    # timing, so only a single partition's order makes bit-identical replays possible.
    # Learn batches are aligned to offsets and checkpoints fall between them, so a restored
    # daemon cuts the rest of the stream as the uninterrupted one did.
    topic = f"faults.kill9.b{learn_batch}"
    create_topics(broker.bootstrap, {topic: 1})
    records = list(stream("digits-rotations", limit=900))
    _produce(broker.bootstrap, topic, records, partitions=1)
    batching = ("--learn-batch", str(learn_batch), "--max-batch-wait-ms", "600000")

    # the reference: one uninterrupted run in its own group
    ref = _daemon(broker.bootstrap, topic, f"ref.{topic}", tmp_path / "ref", tmp_path / "ref.json", 0, "--stop-at-end",
                  *batching)
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    reference = json.loads((tmp_path / "ref.json").read_text())
    assert reference["records_learned"] == len(records)

    ckpt, summary = tmp_path / "crashy", tmp_path / "crashy.json"
    kills = _kill_9_cycles(broker.bootstrap, topic, ckpt, summary, batching, seed=7)
    final = _daemon(broker.bootstrap, topic, crashy_group(topic), ckpt, summary, 0, "--stop-at-end", *batching)
    try:
        assert final.wait(timeout=300) == 0, final.stderr.read()
    finally:
        final.kill()
    result = json.loads(summary.read_text())
    assert kills >= 3
    assert result["records_consumed"] == len(records)
    assert result["records_learned"] == len(records)  # none lost, none learned twice
    assert result["meta_updates"] == reference["meta_updates"]
    assert _digest(ckpt) == _digest(tmp_path / "ref")  # bit-identical to the uninterrupted run
    print(f"kill -9 cycles: {kills}, learned {result['records_learned']}/{len(records)}, digests equal")


def test_broker_outage_then_recovery_keeps_learning_without_loss(tmp_path):
    with LocalBroker(log_path=tmp_path / "broker.log") as broker:
        topic = "faults.pause"
        create_topics(broker.bootstrap, {topic: 1})
        records = list(stream("digits-rotations", limit=600))
        _produce(broker.bootstrap, topic, records[:300], partitions=1)
        port = free_port()
        proc = _daemon(broker.bootstrap, topic, "pause", tmp_path / "ckpt", tmp_path / "s.json", port,
                       "--request-timeout-ms", "8000", "--idle-timeout-s", "20")
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if _scrape(port).get("stream_meta_records_consumed_total") == 300 and _status(port, "/readyz") == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            assert _status(port, "/readyz") == 200
            broker.pause()
            time.sleep(12)  # longer than the session (6 s) and request (8 s) timeouts
            assert proc.poll() is None, "the daemon must stay up while the broker is gone"
            assert _status(port, "/readyz") == 503
            assert _status(port, "/healthz") == 200
            cpu_before = _scrape(port)["process_cpu_seconds_total"]
            time.sleep(3)
            assert _scrape(port)["process_cpu_seconds_total"] - cpu_before < 1.5  # no busy spin
            broker.resume()
            _produce(broker.bootstrap, topic, records[300:], partitions=1)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                _scrape(port).get("stream_meta_records_consumed_total") == 600 and _status(port, "/readyz") == 200
            ):
                time.sleep(0.3)
            assert _scrape(port)["stream_meta_records_consumed_total"] == 600
            assert _status(port, "/readyz") == 200
            assert proc.wait(timeout=120) == 0, proc.stderr.read()
        finally:
            proc.kill()
        result = json.loads((tmp_path / "s.json").read_text())
        assert result["records_consumed"] == result["records_learned"] == 600


def test_broker_back_empty_is_detected_and_handled_by_policy(tmp_path):
    port = free_port()
    records = list(stream("digits-rotations", limit=300))
    topic = "faults.empty"
    with LocalBroker(port=port) as broker:
        create_topics(broker.bootstrap, {topic: 1})
        _produce(broker.bootstrap, topic, records[:200], partitions=1)
        first = _daemon(broker.bootstrap, topic, "g", tmp_path / "ckpt", tmp_path / "s.json", 0, "--stop-at-end")
        assert first.wait(timeout=120) == 0, first.stderr.read()
    with LocalBroker(port=port) as broker:  # same address, all data gone
        create_topics(broker.bootstrap, {topic: 1})
        _produce(broker.bootstrap, topic, records[200:], partitions=1)
        strict = _daemon(broker.bootstrap, topic, "g", tmp_path / "ckpt", tmp_path / "s.json", 0,
                         "--stop-at-end", "--offset-reset-policy", "fail")
        assert strict.wait(timeout=120) != 0
        err = strict.stderr.read()
        assert "below the checkpointed next offset 200" in err and "offset_reset_policy=fail" in err
        lenient = _daemon(broker.bootstrap, topic, "g", tmp_path / "ckpt", tmp_path / "s.json", 0, "--stop-at-end")
        assert lenient.wait(timeout=120) == 0
        assert "offset_reset_policy=earliest" in lenient.stderr.read()
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["records_learned"] == 300  # the 100 new records learned, nothing before them twice
