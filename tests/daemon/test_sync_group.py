"""Scale-out: two file-source daemons (real processes, gloo over loopback) learn one model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_meta.data.datasets import stream
from stream_meta.daemon.records import encode

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_by_task(directory: Path, n: int, members: int = 2, owner=None, repeat=(1, 1)) -> list[tuple[Path, int]]:
    """Non-IID: member ``owner(task index)`` (default: index modulo ``members``) gets the task's
    records, as partitions keyed by task would; member i's file holds its stream ``repeat[i]`` times."""
    owner = owner or (lambda i: i % members)
    paths = [directory / f"member-{i}.jsonl" for i in range(members)]
    counts = [0] * members
    files = [p.open("wb") for p in paths]
    tasks: dict[str, int] = {}
    for _ in range(max(repeat)):
        for rec in stream("digits-rotations", limit=n):
            i = owner(tasks.setdefault(rec["task"], len(tasks)))
            if _ < repeat[i]:
                files[i].write(encode(rec["x"], rec["y"], rec["task"], rec["id"]) + b"\n")
                counts[i] += 1
    for f in files:
        f.close()
    return list(zip(paths, counts))


def _member(rank: int, port: int, src: Path, ckpt: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stream_meta.cli", "run", "--input-file", str(src), "--checkpoint-dir", str(ckpt),
           "--input-dim", "64", "--num-classes", "10", "--deterministic", "--summary-json", str(ckpt / "summary.json"),
           "--checkpoint-every-records", "50", "--sync-every", "5", "--sync-timeout-s", "10", "--metrics-port", "0", *extra]
    ckpt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _STARTED.append(proc)
    return proc


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_members():
    """A failed test leaves no member running (only the processes this test started)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _inspect(ckpt: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "stream_meta.cli", "checkpoint", "inspect", str(ckpt), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.parametrize("rounds", [(), ("--sync-overlap",), ("--sync-momentum", "0.5", "--sync-outer-lr", "1.5")],
                         ids=["blocking", "overlapped", "slowmo"])
def test_two_members_end_with_equal_meta_parameters_and_learn_every_record_once(tmp_path, rounds):
    (a_src, a_n), (b_src, b_n) = _split_by_task(tmp_path, 600)
    port = _free_port()
    procs = [_member(0, port, a_src, tmp_path / "a", "--stop-at-end", *rounds),
             _member(1, port, b_src, tmp_path / "b", "--stop-at-end", *rounds)]
    logs = [_finish(p) for p in procs]
    a, b = _inspect(tmp_path / "a"), _inspect(tmp_path / "b")
    assert a["meta_parameters_sha256"] == b["meta_parameters_sha256"], logs
    assert a["sync_round"] == b["sync_round"] and a["sync_round"] > 1
    assert a["records_learned"] == a_n and b["records_learned"] == b_n  # each record once, none twice
    assert a_n > 0 and b_n > 0


def test_a_killed_member_does_not_stall_the_other_and_rejoins_after_restart(tmp_path):
    # The survivor has the longer stream (7 tasks to 3, three times over), so it is still learning
    # when the victim is back (and if not, it waits for it at the end: --stop-at-end waits for all).
    (a_src, a_n), (b_src, b_n) = _split_by_task(tmp_path, 1500, owner=lambda i: 1 if i in (1, 3, 5) else 0,
                                                repeat=(3, 1))
    port = _free_port()
    survivor = _member(0, port, a_src, tmp_path / "a", "--stop-at-end")
    victim = _member(1, port, b_src, tmp_path / "b", "--max-records", "150")
    assert victim.wait(timeout=240) == 0  # stopped cleanly at 150 records (it left the group); ...
    # ... now restart it as a process we kill -9 mid-stream.
    victim = _member(1, port, b_src, tmp_path / "b")
    _wait_for(lambda: (_inspect_or_none(tmp_path / "b") or {}).get("records_consumed", 0) >= 250, 240)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    learned_at_kill = _learned(tmp_path / "a")
    # The survivor keeps learning alone: its checkpoints keep advancing after the member died.
    _wait_for(lambda: _learned(tmp_path / "a") > learned_at_kill or _learned(tmp_path / "a") == a_n, 240)
    restarted = _member(1, port, b_src, tmp_path / "b", "--stop-at-end")
    restarted_out = _finish(restarted)
    out = _finish(survivor)
    a, b = _inspect(tmp_path / "a"), _inspect(tmp_path / "b")
    assert "sync all-reduce failed" in out  # the death was noticed and logged
    assert "a member left the group" in out  # the clean stop was not a failure
    assert a["records_learned"] == a_n and b["records_learned"] == b_n  # exactly once, across the kill
    logs = "\n".join(line for line in (out + restarted_out).splitlines() if "sync" in line)
    assert a["meta_parameters_sha256"] == b["meta_parameters_sha256"], logs  # rejoined and synced at the end
    assert b["sync_round"] > 1


def _inspect_or_none(ckpt: Path) -> dict | None:
    try:
        return _inspect(ckpt)
    except subprocess.CalledProcessError:
        return None


def _learned(ckpt: Path) -> int:
    return (_inspect_or_none(ckpt) or {}).get("records_learned", 0)


def _wait_for(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.5)
