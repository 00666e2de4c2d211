"""A real Prometheus on deploy/prometheus/prometheus.scaleout.yml (targets swapped for this
test's processes) scraping two real members of one sync group: the dashboard's
"Is the group in step?" row has data for both members."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream_meta.daemon.records import encode
from stream_meta.data.datasets import stream
from stream_meta.data.local_broker import free_port
from tests.deploy.conftest import DEPLOY, Stack, _sample, _scrape, _wait, tool
from tests.deploy.promql import SCALEOUT, dashboard_exprs, exported, metric_names, scaleout_families

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _config(tmp: Path, ports: list[int]) -> Path:
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.scaleout.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in cfg["rule_files"]]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "stream-meta"]
    assert len(job["static_configs"][0]["targets"]) == len(ports)  # one target per member, as deployed
    job["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in ports]}]
    cfg["scrape_configs"] = [job]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_sync_panels_show_both_members_of_a_group(tmp_path):
    ports, prom_port, master = [free_port(), free_port()], free_port(), free_port()
    records = list(stream("digits-rotations", limit=300))
    procs: list[subprocess.Popen] = []
    try:
        prom_log = tmp_path / "prometheus.log"
        procs.append(subprocess.Popen(
            [tool("prometheus"), f"--config.file={_config(tmp_path, ports)}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
             "--log.level=warn"],
            stdout=open(prom_log, "wb"), stderr=subprocess.STDOUT))
        for rank, port in enumerate(ports):
            src = tmp_path / f"member-{rank}.jsonl"
            src.write_bytes(b"".join(encode(r["x"], r["y"], r["task"], r["id"]) + b"\n" for r in records[rank::2]))
            env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(master), "OMP_NUM_THREADS": "1"}
            # No --stop-at-end: the members follow their files and keep syncing on time (--sync-every-s).
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "stream_meta.cli", "run", "--input-file", str(src), "--input-dim", "64",
                 "--num-classes", "10", "--checkpoint-dir", str(tmp_path / f"ckpt-{rank}"), "--metrics-port", str(port),
                 "--sync-every", "5", "--sync-every-s", "0.5", "--sync-timeout-s", "10"],
                env=env, stdout=open(tmp_path / f"member-{rank}.log", "wb"), stderr=subprocess.STDOUT))
        for rank, port in enumerate(ports):
            _wait(f"member {rank} learned its file and synced",
                  lambda: (t := _scrape(port)) and _sample(t, "stream_meta_records_learned_total") == len(records) // 2
                  and _sample(t, "stream_meta_sync_members") == 2,
                  120, procs[rank + 1], tmp_path / f"member-{rank}.log")
        scrape = _scrape(ports[0])
        assert set(scaleout_families()) <= set(exported(scrape))  # a member exports every sync family
        stack = Stack(ports[0], f"http://127.0.0.1:{prom_port}", "", 0, 0, 0, scrape)
        _wait("prometheus to scrape both members' rounds",
              lambda: len(stack.query("increase(stream_meta_sync_rounds_total[1m]) > 0")) == 2, 60, procs[0], prom_log)
        dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "stream-meta.json").read_text())
        sync_exprs = [(t, e) for t, e in dashboard_exprs(dashboard) if metric_names(e) & SCALEOUT]
        used = {m for _, e in sync_exprs for m in metric_names(e)}
        assert not [f for f, samples in scaleout_families().items() if not samples & used]  # a panel for each
        empty = [(t, e) for t, e in sync_exprs
                 if not stack.query(e.replace("$instance", ".*").replace("$__rate_interval", "1m"))]
        assert not empty, f"sync panels with no data: {empty}"
        members = stack.query("stream_meta_sync_members")
        assert sorted(float(s["value"][1]) for s in members) == [2.0, 2.0]  # both scraped, both in the group
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
