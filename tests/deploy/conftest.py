"""A live stack for the deploy tests: real broker -> real daemon (subprocess) <- real Prometheus.

One stack per session: a paced multi-task stream flows through the broker while
Prometheus (Debian's ``prometheus``, started on the deploy config with the target
swapped for this daemon) scrapes every second and evaluates the deploy alert rules.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from kafka import KafkaProducer

from stream_meta.data.datasets import stream
from stream_meta.data.local_broker import create_topics, free_port
from stream_meta.daemon.records import encode
from tests.integration.conftest import broker  # noqa: F401  (the real-broker fixture)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTALL_HINT = (
    "Prometheus is required by tests/deploy and must not be skipped: "
    "`apt-get install -y --no-install-recommends prometheus` (Debian/Ubuntu; `make test` does it), "
    "or put Prometheus 2.x's prometheus and promtool on PATH."
)
GOOD_RECORDS = 600
BAD_RECORDS = [b"not json", b'{"x": [1, 2]}', b'{"x": "nope", "y": 1}']


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found. {INSTALL_HINT}", pytrace=False)
    return path


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Stack:
    daemon_port: int
    prometheus_url: str
    topic: str
    consumed: int
    learned: int
    rejected: int
    scrape: str = ""                       # the daemon's /metrics once the stream was consumed
    daemon_log: Path = field(default=Path())

    @property
    def daemon_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon_port}"

    def query(self, promql: str, **params) -> list[dict]:
        """An instant (or, with start/end/step, range) query; fails the test on an API error."""
        path = "query_range" if "step" in params else "query"
        url = f"{self.prometheus_url}/api/v1/{path}?" + urllib.parse.urlencode({"query": promql, **params})
        status, body = http_get(url)
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", f"{promql}: {reply}"
        return reply["data"]["result"]

    def value(self, promql: str) -> float:
        result = self.query(promql)
        assert len(result) == 1, f"{promql}: expected one series, got {result}"
        return float(result[0]["value"][1])


def _prometheus_config(tmp: Path, daemon_port: int) -> Path:
    """deploy/prometheus/prometheus.yml with this daemon as target and 1 s intervals."""
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in cfg["rule_files"]]
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "stream-meta"]
    assert len(jobs) == 1, "deploy/prometheus/prometheus.yml must have one job named stream-meta"
    jobs[0]["static_configs"] = [{"targets": [f"127.0.0.1:{daemon_port}"]}]
    cfg["scrape_configs"] = jobs
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _wait(what: str, check, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{log.read_text()[-3000:] if log else ''}")


def _scrape(port: int) -> str:
    return http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)[1].decode()


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _publish_paced(bootstrap: str, topic: str, stop: threading.Event) -> None:
    """600 labelled records (4 rotation tasks) + a few bad ones, 50 every 0.4 s over both partitions."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for i, rec in enumerate(stream("digits-rotations", limit=GOOD_RECORDS)):
            producer.send(topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]), partition=i % 2)
            if i % 200 == 100:
                producer.send(topic, BAD_RECORDS[i // 200], partition=0)
            if i % 50 == 49:
                producer.flush()
                if stop.wait(0.4):
                    return
        producer.flush()
    finally:
        producer.close()


@pytest.fixture(scope="session")
def live_stack(broker, tmp_path_factory):  # noqa: F811
    prometheus = tool("prometheus")
    tmp = tmp_path_factory.mktemp("deploy-stack")
    topic = "deploy.records"
    create_topics(broker.bootstrap, {topic: 2, f"{topic}.dlq": 1})

    daemon_port, prom_port = free_port(), free_port()
    prom_log = tmp / "prometheus.log"
    prom = subprocess.Popen(
        [prometheus, f"--config.file={_prometheus_config(tmp, daemon_port)}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=open(prom_log, "wb"), stderr=subprocess.STDOUT,
    )
    daemon_log = tmp / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "stream_meta.cli.main", "run", "--bootstrap", broker.bootstrap, "--topic", topic,
         "--group", "deploy-group", "--input-dim", "64", "--num-classes", "10", "--metrics-port", str(daemon_port),
         "--checkpoint-dir", str(tmp / "ckpt"), "--checkpoint-every-s", "2", "--session-timeout-ms", "6000"],
        stdout=open(daemon_log, "wb"), stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    producer = threading.Thread(target=_publish_paced, args=(broker.bootstrap, topic, stop), daemon=True)
    prom_url = f"http://127.0.0.1:{prom_port}"
    try:
        _wait("prometheus /-/ready", lambda: http_get(f"{prom_url}/-/ready")[0] == 200, 30, prom, prom_log)
        _wait("daemon ready (partitions assigned)", lambda: _sample(_scrape(daemon_port), "stream_meta_ready") == 1,
              90, daemon, daemon_log)
        producer.start()
        total = GOOD_RECORDS + len(BAD_RECORDS)
        scrape = _wait(
            f"{total} records consumed",
            lambda: (t := _scrape(daemon_port)) and _sample(t, "stream_meta_records_consumed_total") == total and t,
            120, daemon, daemon_log,
        )
        stack = Stack(daemon_port, prom_url, topic, total, GOOD_RECORDS, len(BAD_RECORDS), scrape, daemon_log)
        _wait("prometheus to scrape the final counts",
              lambda: stack.query(f"stream_meta_records_learned_total == {GOOD_RECORDS}"), 20, prom, prom_log)
        time.sleep(2)  # a few more scrapes and rule evaluations at the final state
        yield stack
    finally:
        stop.set()
        daemon.send_signal(signal.SIGTERM)  # graceful: final checkpoint, then exit 0
        try:
            code = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = "killed after 30 s"
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
        producer.join(5)
    assert code == 0, f"daemon did not stop cleanly ({code}):\n{daemon_log.read_text()[-3000:]}"
