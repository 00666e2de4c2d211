"""Atomic checkpoints of learner state together with the consumer offsets.

A checkpoint is two files: ``ckpt-<seq>.pt`` (tensors and plain data, written
with ``torch.save`` and read back with ``weights_only=True``, so loading runs no
code) and ``ckpt-<seq>.json``, a manifest with the format version, creation time,
offsets and the SHA-256 of the ``.pt`` file. Both are written to a temporary
file, fsynced and renamed; the manifest goes last, so a checkpoint without a
valid manifest never counts. Loading verifies the digest and falls back to the
previous checkpoint when the newest is corrupt or truncated.

A store given a ``fingerprint`` (the settings that fix the state's shapes and
meaning: input_dim, num_classes, hidden, algorithm) writes it into each manifest
as ``config`` and refuses, with :class:`CheckpointMismatchError`, a directory
written with other values. Manifests without ``config`` (older stream-meta) are
accepted; the learner's own load then catches state that does not fit.
"""

from __future__ import annotations

import errno
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

from stream_meta.errors import CheckpointError, CheckpointMismatchError, CheckpointVersionError

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


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
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


def move_aside(directory: Path | str) -> Path | None:
    """Renames ``directory`` to ``DIR.old-<UTC time>`` (never deletes it); None if it is absent.

    A directory that cannot be renamed because it is a mount point (a Kubernetes volume)
    keeps its place and its contents move into ``DIR/.old-<UTC time>`` instead, where the
    store no longer sees them.
    """
    directory = Path(directory).absolute()
    if not directory.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = _unused(directory.with_name(f"{directory.name}.old-{stamp}"))
    try:
        directory.rename(target)
        return target
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM):
            raise CheckpointError(f"cannot move {directory} aside to {target}: {exc.strerror or exc}") from None
    inner = _unused(directory / f".old-{stamp}")
    try:
        inner.mkdir(mode=0o700)
        for entry in directory.iterdir():
            if entry != inner and not entry.name.startswith(".old-"):
                entry.rename(inner / entry.name)
    except OSError as exc:
        raise CheckpointError(f"cannot move the contents of {directory} aside to {inner}: {exc.strerror or exc}") from None
    return inner


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... if taken (two --fresh starts within one second)."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


class CheckpointStore:
    """Keeps the last ``keep`` checkpoints in ``directory`` (created with mode 0700)."""

    def __init__(self, directory: Path | str, keep: int = 3, fingerprint: dict | None = None) -> None:
        self.directory = Path(directory)
        self.keep = keep
        # Round-tripped through JSON so tuples compare equal to the lists a manifest holds.
        self.fingerprint = json.loads(json.dumps(fingerprint)) if fingerprint is not None else None

    def prepare(self) -> None:
        """Creates the directory (mode 0700) now, so a bad path fails at start-up, not at the first checkpoint."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = self.directory / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CheckpointError(
                f"cannot use checkpoint directory {self.directory}: {exc.strerror or exc}; "
                "point --checkpoint-dir at a writable directory"
            ) from None

    def check_fingerprint(self, manifest: dict, where: Path | None = None) -> None:
        """Raises :class:`CheckpointMismatchError` when ``manifest`` was written with other settings."""
        stored = manifest.get("config")
        if self.fingerprint is None or not isinstance(stored, dict):
            return
        diffs = [
            f"{k} {_show(stored.get(k))} (now {_show(v)})" for k, v in self.fingerprint.items() if k in stored and stored[k] != v
        ]
        if diffs:
            raise CheckpointMismatchError(
                f"checkpoint directory {where or self.directory} was written with other settings: "
                f"{', '.join(diffs)}; run with those settings, another --checkpoint-dir, or --fresh "
                "(moves the directory aside and starts over)"
            )

    def verify(self) -> None:
        """Checks the newest manifest (format, fingerprint) before anything is built on it."""
        for seq in reversed(self._seqs()):
            path = self.directory / f"ckpt-{seq:09d}.json"
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # unreadable: load_latest() logs it and falls back
            self._check_manifest(manifest, path)
            return

    def _check_manifest(self, manifest: dict, path: Path) -> None:
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointVersionError(
                f"{path}: written by checkpoint format {version}, this stream-meta reads up to "
                f"{FORMAT_VERSION}; upgrade stream-meta, point --checkpoint-dir elsewhere or start over with --fresh"
            )
        self.check_fingerprint(manifest)

    def _seqs(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def save(self, state: dict, offsets: Offsets, info: dict | None = None) -> Path:
        """Writes one checkpoint; returns its manifest path."""
        self.prepare()
        os.chmod(self.directory, 0o700)
        seqs = self._seqs()
        seq = (seqs[-1] + 1) if seqs else 1
        buf = io.BytesIO()
        flat_offsets = [[t, p, o] for (t, p), o in sorted(offsets.items())]
        torch.save({"format_version": FORMAT_VERSION, "state": state, "offsets": flat_offsets}, buf)
        payload = buf.getbuffer()  # a view, not a copy: a large state is held twice, not three times
        pt = self.directory / f"ckpt-{seq:09d}.pt"
        _write_atomic(pt, payload)
        manifest = {
            "format_version": FORMAT_VERSION,
            "seq": seq,
            "created": time.time(),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
            "offsets": flat_offsets,
            **({"config": self.fingerprint} if self.fingerprint is not None else {}),
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
        self._check_manifest(manifest, man_path)
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
            except (CheckpointVersionError, CheckpointMismatchError):
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


def _show(v: object) -> str:
    """``[100, 100]`` -> ``100,100`` (the flag's spelling); None -> ``unset``."""
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return "unset" if v is None else str(v)
