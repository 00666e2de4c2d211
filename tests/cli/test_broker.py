"""``stream-meta broker``: the bundled test broker in the foreground, a real client over TCP, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stream_meta.data.local_broker import create_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_broker_serves_kafka_clients_and_stops_on_ctrl_c():
    from kafka import KafkaConsumer, KafkaProducer

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "stream_meta.cli", "broker", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("bootstrap 127.0.0.1:"), first
        bootstrap = first.split()[1]
        create_topics(bootstrap, {"hello": 1})
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send("hello", b"world").get(timeout=30)
        producer.close()
        consumer = KafkaConsumer("hello", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                 enable_auto_commit=False, consumer_timeout_ms=20000)
        try:
            assert next(iter(consumer)).value == b"world"
        finally:
            consumer.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Ctrl-C stops it" in err


def test_broker_on_a_taken_port_is_a_one_line_error():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        result = subprocess.run([sys.executable, "-m", "stream_meta.cli", "broker", "--port", str(port)],
                                capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"port {port}" in result.stderr and "--port" in result.stderr and "Traceback" not in result.stderr
