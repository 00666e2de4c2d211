"""Start-up against a broker that is not there, timeouts reaching the clients, and a followed
input file that waits without spinning."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from connectors.kafka import KafkaSink, KafkaSource, client_options
from stream_meta.daemon.config import load_config
from stream_meta.daemon.records import encode
from stream_meta.data.datasets import stream
from stream_meta.data.local_broker import free_port

pytestmark = pytest.mark.integration


def test_unreachable_broker_is_retried_then_exits_2_with_the_cause(tmp_path):
    port = free_port()  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "stream_meta.cli.main", "run", "--bootstrap", f"127.0.0.1:{port}",
         "--connect-timeout-s", "3", "--metrics-port", "0", "--checkpoint-dir", str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "not reachable" in proc.stderr and "retrying in" in proc.stderr  # retried, with backoff
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"stream-meta: error: cannot connect to Kafka at 127.0.0.1:{port} within 3s "
                           "(--connect-timeout-s)"), last
    assert "Traceback" not in proc.stderr


def test_request_timeout_reaches_both_clients(broker):
    cfg = load_config({}, env={}, overrides={"bootstrap": broker.bootstrap, "request_timeout_ms": 23456})
    options = client_options(cfg)
    sink = KafkaSink(bootstrap=cfg.bootstrap, client_options=options, max_request_size=3 << 20)
    source = KafkaSource(bootstrap=cfg.bootstrap, topic="startup.timeouts", group="t", client_options=options)
    try:
        assert sink._producer.config["request_timeout_ms"] == 23456
        assert sink._producer.config["max_request_size"] == 3 << 20
        assert sink._producer.config["max_block_ms"] == 10000  # a send never blocks a minute on metadata
        assert source._consumer.config["request_timeout_ms"] == 23456
    finally:
        sink.close()
        source.close()


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (USER_HZ = 100)


def _consumed(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("stream_meta_records_consumed_total "))


def _wait_consumed(proc, port: int, n: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _consumed(port) == n:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the daemon did not reach {n} consumed records")


@pytest.mark.slow
def test_input_file_is_followed_like_tail_f_without_spinning(tmp_path):
    lines = [encode(r["x"], r["y"], r["task"], r["id"]) + b"\n" for r in stream("digits-rotations", limit=150)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(lines[:100]))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_meta.cli.main", "run", "--input-file", str(src), "--input-dim", "64",
         "--num-classes", "10", "--metrics-port", str(port), "--checkpoint-dir", str(tmp_path / "ckpt"),
         "--summary-json", str(tmp_path / "s.json"), "--torch-threads", "1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err.log", "w"),
    )
    try:
        _wait_consumed(proc, port, 100)
        time.sleep(1)  # let the first checkpoint and gauges settle
        before = _cpu_seconds(proc.pid)
        time.sleep(5)
        idle_cpu = (_cpu_seconds(proc.pid) - before) / 5
        print(f"idle CPU share at end of file: {100 * idle_cpu:.2f}%")
        assert idle_cpu < 0.02
        assert proc.poll() is None  # at the end of the file it waits, it does not stop
        with open(src, "ab") as f:
            f.write(b"".join(lines[100:149]))
            f.write(lines[149][:40])  # a line half written: not a record yet
            f.flush()
            _wait_consumed(proc, port, 149)
            time.sleep(1)
            f.write(lines[149][40:])
        _wait_consumed(proc, port, 150)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["records_learned"] == 150 and summary["records_rejected"] == 0
