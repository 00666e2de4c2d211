"""Operator mistakes: the real CLI, as a subprocess, exits 2 with one line on stderr and no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream_meta.daemon.checkpoint import FORMAT_VERSION, CheckpointStore
from stream_meta.daemon.http import HealthServer
from stream_meta.daemon.metrics import Metrics
from stream_meta.daemon.records import encode

pytestmark = pytest.mark.integration  # each test starts the CLI as a process

SETTINGS = {"input_dim": 4, "num_classes": 2, "hidden": [8], "algorithm": "fomaml", "net_hidden": None,
            "net_modulate": False}
FLAGS = ["--input-dim", "4", "--num-classes", "2", "--hidden", "8", "--algorithm", "fomaml"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env = {k: v for k, v in env.items() if not k.startswith("STREAM_META_")}
    return subprocess.run([sys.executable, "-m", "stream_meta.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stream-meta: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def records(path: Path, n: int = 30) -> Path:
    with open(path, "wb") as f:
        for i in range(n):
            f.write(encode([0.1 * (i % 3), 0.2, 0.3, 0.4], i % 2, f"t{i // 10}", str(i)) + b"\n")
    return path


def run_file(tmp_path: Path, ckpt: Path, *extra: str) -> subprocess.CompletedProcess:
    src = tmp_path / "in.jsonl"
    if not src.exists():
        records(src)
    return cli("run", "--input-file", str(src), "--stop-at-end", "--metrics-port", "0",
               "--checkpoint-dir", str(ckpt), *extra)


@pytest.mark.parametrize("flag, value, needle", [
    ("--input-dim", "5", "input_dim 4 (now 5)"),
    ("--num-classes", "3", "num_classes 2 (now 3)"),
    ("--hidden", "16,16", "hidden 8 (now 16,16)"),
    ("--algorithm", "reptile", "algorithm fomaml (now reptile)"),
])
def test_a_checkpoint_written_with_other_settings_is_refused(tmp_path, flag, value, needle):
    ckpt = tmp_path / "ckpt"
    CheckpointStore(ckpt, fingerprint=SETTINGS).save({}, {})
    flags = list(FLAGS)
    flags[flags.index(flag) + 1] = value
    assert_one_line_error(run_file(tmp_path, ckpt, *flags), needle, "--fresh", str(ckpt))


def test_a_checkpoint_of_a_newer_format_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    CheckpointStore(ckpt, fingerprint=SETTINGS).save({}, {})
    manifest = ckpt / "ckpt-000000001.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": FORMAT_VERSION + 1}))
    assert_one_line_error(run_file(tmp_path, ckpt, *FLAGS), "format", "--fresh")


@pytest.mark.slow
def test_fresh_moves_the_old_directory_aside_and_starts_over(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = run_file(tmp_path, ckpt, *FLAGS)
    assert first.returncode == 0, first.stderr
    before = sorted(p.name for p in ckpt.iterdir())
    other = [*FLAGS[:-1], "reptile"]
    assert run_file(tmp_path, ckpt, *other).returncode == 2
    fresh = run_file(tmp_path, ckpt, *other, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    (aside,) = tmp_path.glob("ckpt.old-*")
    assert sorted(p.name for p in aside.iterdir()) == before  # kept whole, never deleted
    assert CheckpointStore(ckpt).latest_manifest()["config"]["algorithm"] == "reptile"
    assert "moved" in fresh.stderr and str(aside) in fresh.stderr
    assert run_file(tmp_path, ckpt, *other).returncode == 0  # the new directory fits now


@pytest.mark.slow
def test_an_old_checkpoint_without_fingerprint_is_used_when_it_fits_and_refused_when_not(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert run_file(tmp_path, ckpt, *FLAGS).returncode == 0
    for manifest in ckpt.glob("ckpt-*.json"):  # as stream-meta wrote them before fingerprints
        data = json.loads(manifest.read_text())
        del data["config"]
        manifest.write_text(json.dumps(data))
    result = run_file(tmp_path, ckpt, "--input-dim", "7", "--num-classes", "2", "--hidden", "8")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the start-up log: the state had to be read
    assert last.startswith("stream-meta: error: ") and "does not fit" in last and "--fresh" in last
    ok = run_file(tmp_path, ckpt, *FLAGS)
    assert ok.returncode == 0, ok.stderr
    assert CheckpointStore(ckpt).latest_manifest()["config"] == SETTINGS  # fingerprinted from now on


def test_metrics_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_file(tmp_path, tmp_path / "ckpt", *FLAGS, "--metrics-port", str(port))
    assert_one_line_error(result, f"metrics port {port}", "in use", "--metrics-port")


def test_unresolvable_metrics_host(tmp_path):
    result = run_file(tmp_path, tmp_path / "ckpt", *FLAGS, "--metrics-host", "no-such-host.invalid")
    assert_one_line_error(result, "no-such-host.invalid", "does not resolve", "--metrics-host")


def test_missing_input_file(tmp_path):
    result = cli("run", "--input-file", str(tmp_path / "nope.jsonl"), "--metrics-port", "0",
                 "--checkpoint-dir", str(tmp_path / "ckpt"), *FLAGS)
    assert_one_line_error(result, "--input-file", "nope.jsonl", "no such file")


def test_checkpoint_directory_not_creatable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_file(tmp_path, blocker / "ckpt", *FLAGS)
    assert_one_line_error(result, "checkpoint directory", str(blocker / "ckpt"), "--checkpoint-dir")


def test_status_into_a_closed_pipe_exits_cleanly():
    registry = CollectorRegistry()
    Metrics(registry).set_build("fomaml", 10)
    server = HealthServer(registry, "127.0.0.1", 0, lambda: True, lambda: True).start()
    try:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.Popen([sys.executable, "-m", "stream_meta.cli", "status", "--json", "--metrics-url",
                                 f"127.0.0.1:{server.port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stdout.close()  # the reader is gone before a byte is written, as `| head` after its lines
        _, err = proc.communicate(timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 0, err
    assert err.decode() == ""  # no traceback, no "Exception ignored" at exit


def test_status_json_is_strict_json_with_null_for_nan():
    registry = CollectorRegistry()
    Metrics(registry).set_build("fomaml", 10)
    server = HealthServer(registry, "127.0.0.1", 0, lambda: True, lambda: True).start()
    try:
        result = cli("status", "--json", "--metrics-url", f"127.0.0.1:{server.port}")
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert summary["accuracy"]["window"] is None and summary["learning"]["adaptation_gain"] is None


@pytest.mark.slow
def test_progress_off_a_terminal_is_plain_lines(tmp_path):
    result = run_file(tmp_path, tmp_path / "ckpt", *FLAGS, "--progress")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("  consumed ")]
    assert progress and progress[-1].split()[1] == "30"  # the final line has every record
