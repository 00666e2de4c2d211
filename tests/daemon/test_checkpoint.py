import json
import os
import stat

import pytest
import torch

from stream_meta.daemon.checkpoint import FORMAT_VERSION, CheckpointStore
from stream_meta.errors import CheckpointVersionError


def _state(v: float) -> dict:
    return {"w": torch.full((3,), v), "n": int(v), "name": "x"}


def test_save_load_latest_and_keep_last_k(tmp_path):
    store = CheckpointStore(tmp_path / "c", keep=2)
    for i in range(1, 5):
        store.save(_state(i), {("t", 0): i * 10, ("t", 1): i}, {"records_learned": i})
    ck = store.load_latest()
    assert ck.seq == 4 and torch.equal(ck.state["w"], torch.full((3,), 4.0))
    assert ck.offsets == {("t", 0): 40, ("t", 1): 4}
    assert ck.manifest["records_learned"] == 4 and ck.manifest["format_version"] == FORMAT_VERSION
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ckpt-000000003.json", "ckpt-000000003.pt", "ckpt-000000004.json", "ckpt-000000004.pt"]
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o700


def test_corrupt_or_truncated_newest_falls_back_to_previous(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(_state(1), {("t", 0): 1})
    store.save(_state(2), {("t", 0): 2})
    pt = tmp_path / "ckpt-000000002.pt"
    pt.write_bytes(pt.read_bytes()[:-20])  # truncated
    assert store.load_latest().seq == 1
    store.save(_state(3), {("t", 0): 3})
    (tmp_path / "ckpt-000000003.json").write_text("{half")  # torn manifest
    assert store.load_latest().seq == 1


def test_loading_runs_no_code(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(_state(1), {})

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    # A payload holding a pickled object is refused even with a matching checksum.
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save({"format_version": 1, "state": {"x": Evil()}, "offsets": []}, buf)
    (tmp_path / "ckpt-000000002.pt").write_bytes(buf.getvalue())
    man = json.loads((tmp_path / "ckpt-000000001.json").read_text())
    man.update(seq=2, sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    (tmp_path / "ckpt-000000002.json").write_text(json.dumps(man))
    assert store.load_latest().seq == 1  # the unsafe one is skipped, not executed


def test_newer_format_is_refused_with_a_clear_message(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(_state(1), {})
    man = json.loads((tmp_path / "ckpt-000000001.json").read_text())
    man["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "ckpt-000000001.json").write_text(json.dumps(man))
    with pytest.raises(CheckpointVersionError, match="upgrade"):
        store.load_latest()


def test_empty_directory_has_no_checkpoint(tmp_path):
    assert CheckpointStore(tmp_path / "none").load_latest() is None


def test_move_aside_renames_and_never_deletes(tmp_path):
    from stream_meta.daemon.checkpoint import move_aside

    d = tmp_path / "ckpt"
    assert move_aside(d) is None  # nothing there: nothing to do
    CheckpointStore(d).save({"w": 1}, {("t", 0): 5})
    first = move_aside(d)
    assert not d.exists() and first.name.startswith("ckpt.old-")
    assert CheckpointStore(first).load_latest().offsets == {("t", 0): 5}
    CheckpointStore(d).save({"w": 2}, {})
    second = move_aside(d)
    assert second != first and second.exists() and first.exists()  # same second: a new name


def test_a_directory_that_cannot_be_renamed_keeps_its_place_and_moves_its_contents(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from stream_meta.daemon.checkpoint import move_aside

    d = tmp_path / "volume"
    CheckpointStore(d).save({"w": 1}, {("t", 0): 5})
    real_rename = Path.rename

    def rename(self, target):
        if self == d:  # as for a mount point
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    inner = move_aside(d)
    assert inner.parent == d and inner.name.startswith(".old-")
    assert CheckpointStore(d).load_latest() is None  # the store sees an empty directory
    assert CheckpointStore(inner).load_latest().offsets == {("t", 0): 5}
