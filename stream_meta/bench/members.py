"""Member daemons for the scale-out benchmarks: a stream split per member, one real
``stream-meta run`` process per member (a torch.distributed group over loopback when syncing)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from stream_meta.daemon.records import encode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def member_of(n: int, task_index: int, members: int, partition: str) -> int:
    """Which member gets the ``n``-th record (of the ``task_index``-th task): round-robin for
    ``iid``, whole tasks for ``noniid`` (as a topic keyed by task spreads them)."""
    return (n if partition == "iid" else task_index) % members


def write_split(directory: Path, dataset: str, members: int, partition: str, records: int | None,
                n_tasks: int | None = None) -> list[Path]:
    """One JSON-lines file per member."""
    from stream_meta.data.datasets import stream

    paths = [directory / f"member-{i}.jsonl" for i in range(members)]
    files = [p.open("wb") for p in paths]
    tasks: dict[str, int] = {}
    for n, rec in enumerate(stream(dataset, limit=records, n_tasks=n_tasks)):
        t = tasks.setdefault(rec["task"], len(tasks))
        files[member_of(n, t, members, partition)].write(encode(rec["x"], rec["y"], rec["task"], rec["id"]) + b"\n")
    for f in files:
        f.close()
    return paths


def run_members(sources: list[Path] | list[list[str]], out: Path, sync: bool, sync_every: int,
                flags: list[str]) -> list[dict]:
    """Start one daemon per source (a file, or source flags such as ``--bootstrap ... --topic ...``),
    a group when ``sync``; wait for all; their summaries."""
    port, procs = free_port(), []
    for rank, src in enumerate(sources):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if sync and len(sources) > 1:
            env.update(WORLD_SIZE=str(len(sources)), RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        else:
            env.pop("WORLD_SIZE", None)
        ckpt = out / f"member-{rank}"
        source = ["--input-file", str(src)] if isinstance(src, Path) else src
        cmd = [sys.executable, "-m", "stream_meta.cli", "run", *source, "--checkpoint-dir", str(ckpt),
               "--stop-at-end", "--metrics-port", "0", "--summary-json", str(ckpt / "summary.json"),
               "--sync-every", str(sync_every), "--log-level", "WARNING", *flags]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"member exited {p.returncode}: {err[-2000:]}")
    return [json.loads((out / f"member-{r}" / "summary.json").read_text()) for r in range(len(sources))]
