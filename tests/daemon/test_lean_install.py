"""The daemon needs only its core dependencies: the [data]/[bench] extras stay out of it.

Each check runs in a fresh interpreter, because this test process has already imported
scikit-learn and friends through other tests.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from stream_meta.daemon.records import encode

ROOT = Path(__file__).resolve().parents[2]
# Import names of what the extras hold: none may be loaded by the daemon's path.
EXTRAS = ("avalanche", "matplotlib", "sklearn", "scipy", "torchvision")

# Every module of the daemon's path, found on disk so a new module is covered too.
DAEMON_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for folder in ("stream_meta/daemon", "stream_meta/learn", "stream_meta/meta", "connectors")
    for p in (ROOT / folder).glob("*.py")
) + ["stream_meta.cli.main", "stream_meta.cli.run", "stream_meta.cli.status", "stream_meta.cli.checkpoint_inspect"]

# Imports every daemon module, runs `stream-meta run` on a file in-process, then lists
# what of EXTRAS got imported. `blocked` names are made unimportable first.
_PROBE = """
import importlib, json, sys
modules, argv, extras, blocked = json.loads(sys.argv[1])
for name in blocked:
    sys.modules[name] = None  # `import name` now raises ImportError, find_spec says missing
for name in modules:
    importlib.import_module(name)
from stream_meta.cli.main import main
rc = main(argv)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in extras and sys.modules[m] is not None)
print(json.dumps({"rc": rc, "loaded": loaded}))
"""


def _probe(modules: list[str], argv: list[str], blocked: tuple[str, ...] = ()) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([modules, argv, EXTRAS, blocked])],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _records(path: Path, n: int) -> None:
    rng = random.Random(0)
    with open(path, "wb") as f:
        for i in range(n):
            f.write(encode([rng.random() for _ in range(8)], i % 3, f"t{i // 20}", str(i)) + b"\n")


def test_the_daemon_imports_and_runs_without_the_extras(tmp_path):
    assert len(DAEMON_MODULES) > 20 and "stream_meta.daemon.service" in DAEMON_MODULES
    src = tmp_path / "in.jsonl"
    _records(src, 60)
    summary = tmp_path / "s.json"
    argv = ["run", "--input-file", str(src), "--input-dim", "8", "--num-classes", "3", "--stop-at-end",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-port", "0", "--summary-json", str(summary)]
    result, _ = _probe(DAEMON_MODULES, argv)
    assert result == {"rc": 0, "loaded": []}
    assert json.loads(summary.read_text())["records_learned"] == 60


def test_a_data_set_that_needs_the_data_extra_says_how_to_install_it(tmp_path):
    """Without scikit-learn/scipy, produce and demo fail at once with the pip command."""
    produce = ["produce", "--bootstrap", "127.0.0.1:9", "--topic", "t", "--dataset", "digits-rotations"]
    result, err = _probe([], produce, blocked=("sklearn", "scipy"))
    assert result["rc"] == 2
    assert "'digits-rotations' needs scikit-learn and scipy: pip install 'stream-meta[data]'" in err
    result, err = _probe([], ["demo", "--dataset", "digits-split"], blocked=("sklearn",))
    assert result["rc"] == 2 and "'digits-split' needs scikit-learn: pip install" in err
    assert "broker" not in err.lower()  # failed before starting the local broker
