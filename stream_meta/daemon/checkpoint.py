"""Atomic checkpoints of learner state together with the consumer offsets.

A checkpoint is two files: ``ckpt-<seq>.pt`` (tensors and plain data, written
with ``torch.save`` and read back with ``weights_only=True``, so loading runs no
code) and ``ckpt-<seq>.json``, a manifest with the format version, creation time,
offsets and the SHA-256 of the ``.pt`` file. Both are written to a temporary
file, fsynced and renamed; the manifest goes last, so a checkpoint without a
valid manifest never counts. Loading verifies the digest and falls back to the
previous checkpoint when the newest is corrupt or truncated.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from stream_meta.errors import CheckpointError, CheckpointVersionError

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{9})\.json$")
log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to consume


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    manifest: dict
    state: dict
    offsets: Offsets


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """Keeps the last ``keep`` checkpoints in ``directory`` (created with mode 0700)."""

    def __init__(self, directory: Path | str, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def _seqs(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def save(self, state: dict, offsets: Offsets, info: dict | None = None) -> Path:
        """Writes one checkpoint; returns its manifest path."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        seqs = self._seqs()
        seq = (seqs[-1] + 1) if seqs else 1
        buf = io.BytesIO()
        flat_offsets = [[t, p, o] for (t, p), o in sorted(offsets.items())]
        torch.save({"format_version": FORMAT_VERSION, "state": state, "offsets": flat_offsets}, buf)
        payload = buf.getvalue()
        pt = self.directory / f"ckpt-{seq:09d}.pt"
        _write_atomic(pt, payload)
        manifest = {
            "format_version": FORMAT_VERSION,
            "seq": seq,
            "created": time.time(),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
            "offsets": flat_offsets,
            **(info or {}),
        }
        man = self.directory / f"ckpt-{seq:09d}.json"
        _write_atomic(man, json.dumps(manifest, indent=1).encode())
        _fsync_dir(self.directory)
        for old in seqs[: max(0, len(seqs) + 1 - self.keep)]:
            for suffix in (".json", ".pt"):
                (self.directory / f"ckpt-{old:09d}{suffix}").unlink(missing_ok=True)
        return man

    def load(self, seq: int) -> Checkpoint:
        man_path = self.directory / f"ckpt-{seq:09d}.json"
        try:
            manifest = json.loads(man_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{man_path}: unreadable manifest ({exc})") from None
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointVersionError(
                f"{man_path}: written by checkpoint format {version}, this stream-meta reads up to "
                f"{FORMAT_VERSION}; upgrade stream-meta or point --checkpoint-dir elsewhere"
            )
        pt = self.directory / f"ckpt-{seq:09d}.pt"
        try:
            payload = pt.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{pt}: unreadable ({exc})") from None
        if hashlib.sha256(payload).hexdigest() != manifest.get("sha256"):
            raise CheckpointError(f"{pt}: checksum mismatch (corrupt or truncated)")
        try:
            blob = torch.load(io.BytesIO(payload), weights_only=True)
        except Exception as exc:  # torch raises many types for a bad payload; all mean "unusable"
            raise CheckpointError(f"{pt}: cannot be loaded ({type(exc).__name__}: {exc})") from None
        offsets = {(t, int(p)): int(o) for t, p, o in blob["offsets"]}
        return Checkpoint(seq, manifest, blob["state"], offsets)

    def load_latest(self) -> Checkpoint | None:
        """The newest valid checkpoint, or None if there is none at all.

        A corrupt newest checkpoint is logged and skipped; a checkpoint from a
        newer format version stops the load with :class:`CheckpointError`.
        """
        for seq in reversed(self._seqs()):
            try:
                return self.load(seq)
            except CheckpointVersionError:
                raise
            except CheckpointError as exc:
                log.error("skipping checkpoint %d: %s", seq, exc)
        return None

    def latest_manifest(self) -> dict | None:
        for seq in reversed(self._seqs()):
            try:
                return json.loads((self.directory / f"ckpt-{seq:09d}.json").read_text())
            except (OSError, ValueError):
                continue
        return None
