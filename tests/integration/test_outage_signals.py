"""A broker outage shows in the daemon's own signals: a source error and a log line when the
broker stops answering, another line when it is back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from stream_meta.data.datasets import stream
from stream_meta.data.local_broker import LocalBroker, create_topics, free_port
from tests.integration.test_faults import _produce, _scrape

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _until(check, timeout_s: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def test_outage_and_recovery_are_logged_and_counted(tmp_path):
    with LocalBroker(log_path=tmp_path / "broker.log") as broker:
        topic = "outage.signals"
        create_topics(broker.bootstrap, {topic: 1})
        records = list(stream("digits-rotations", limit=200))
        _produce(broker.bootstrap, topic, records[:100], partitions=1)
        port = free_port()
        err = tmp_path / "daemon.err"
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_meta.cli.main", "run", "--bootstrap", broker.bootstrap, "--topic", topic,
             "--group", "outage", "--input-dim", "64", "--num-classes", "10", "--checkpoint-dir",
             str(tmp_path / "ckpt"), "--summary-json", str(tmp_path / "s.json"), "--metrics-port", str(port),
             "--session-timeout-ms", "6000", "--request-timeout-ms", "8000"],
            stdout=subprocess.DEVNULL, stderr=open(err, "w"),
        )
        try:
            assert _until(lambda: _scrape(port).get("stream_meta_records_consumed_total") == 100)
            time.sleep(2)  # up and steady: no outage so far
            assert _scrape(port)["stream_meta_source_errors_total"] == 0
            broker.pause()
            assert _until(lambda: _scrape(port)["stream_meta_source_errors_total"] >= 1), \
                "a frozen broker must count as a source error"
            assert err.read_text().count("source stopped answering") == 1
            assert "source answering again" not in err.read_text()
            broker.resume()
            _produce(broker.bootstrap, topic, records[100:], partitions=1)
            assert _until(lambda: _scrape(port).get("stream_meta_records_consumed_total") == 200)
            assert _until(lambda: "source answering again" in err.read_text())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()
    log = err.read_text()
    assert log.count("source stopped answering") == 1 and log.count("source answering again") == 1
    assert log.index("source stopped answering") < log.index("source answering again")
    assert json.loads((tmp_path / "s.json").read_text())["records_learned"] == 200
