"""Decoding a poll's messages at once: wire format v1 (JSON) and v2 (binary float32).

:class:`records.Decoder` stays the reference for one v1 message. :class:`BatchDecoder`
decodes many: v1 through msgspec's typed JSON decoder (types checked in C) with the
finiteness and label checks done on numpy arrays, v2 by reading the value as
little-endian float32. A message the fast path does not accept is handed to the
reference decoder, so every rejection carries exactly the reason it always had.

Wire format v2 is chosen per message by the header
``content-type: application/vnd.stream-meta.f32``: the value is ``input_dim``
little-endian float32 values; optional headers ``y`` (ASCII decimal integer),
``task`` and ``id`` (UTF-8).

>>> import numpy as np
>>> d = BatchDecoder(input_dim=2, num_classes=3)
>>> batch = d.decode([b'{"x": [0.5, 1], "y": 2}', encode_f32(np.array([1, 2]), y=1, task="b")[0]],
...                  [(), encode_f32(np.array([1, 2]), y=1, task="b")[1]])
>>> batch.x.tolist(), batch.y.tolist(), batch.tasks
([[0.5, 1.0], [1.0, 2.0]], [2, 1], ['default', 'b'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np

from stream_meta.daemon.records import DEFAULT_TASK, MAX_TASK_ID_CHARS, Decoder
from stream_meta.errors import RecordError

CONTENT_TYPE = "content-type"
F32_CONTENT_TYPE = b"application/vnd.stream-meta.f32"
UNLABELLED = -1  # in DecodedBatch.y

Headers = Sequence[tuple[str, bytes]]


class _V1(msgspec.Struct):
    x: list[float]
    y: int | None = None
    task: str | None = None
    id: str | None = None


@dataclass
class DecodedBatch:
    """The valid messages of a poll, in order: ``index[i]`` is row ``i``'s position in the
    input; ``y[i]`` is :data:`UNLABELLED` for a record to be predicted only."""

    x: np.ndarray  # [n, input_dim] float32
    y: np.ndarray  # [n] int64
    tasks: list[str]
    ids: list[str | None]
    index: list[int]
    rejected: list[tuple[int, RecordError]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.index)


def is_f32(headers: Headers) -> bool:
    return any(k.lower() == CONTENT_TYPE and v == F32_CONTENT_TYPE for k, v in headers)


@dataclass(frozen=True)
class BatchDecoder:
    """Validates a poll's raw values (and headers) against wire formats v1 and v2."""

    input_dim: int
    num_classes: int
    max_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "_reference", Decoder(self.input_dim, self.num_classes, self.max_bytes))
        object.__setattr__(self, "_json", msgspec.json.Decoder(_V1))

    def decode(self, values: Sequence[bytes | None], headers: Sequence[Headers] | None = None) -> DecodedBatch:
        rows: list[np.ndarray | list[float]] = []
        ys: list[int] = []
        tasks: list[str] = []
        ids: list[str | None] = []
        index: list[int] = []
        rejected: list[tuple[int, RecordError]] = []
        for i, value in enumerate(values):
            try:
                if headers is not None and is_f32(headers[i]):
                    x, y, task, rid = self._v2(value, headers[i])
                else:
                    x, y, task, rid = self._v1(value)
            except RecordError as exc:
                rejected.append((i, exc))
                continue
            rows.append(x)
            ys.append(UNLABELLED if y is None else y)
            tasks.append(task)
            ids.append(rid)
            index.append(i)
        with np.errstate(over="ignore"):  # beyond float32's range becomes infinity, rejected below
            x = np.array(rows, dtype=np.float32).reshape(len(rows), self.input_dim)
        y = np.array(ys, dtype=np.int64)
        bad = ~np.isfinite(x).all(axis=1)  # NaN, infinity, or beyond float32's range
        if bad.any():  # rare: reject those rows, keep the rest
            keep = ~bad
            for row in np.flatnonzero(bad):
                j = int(np.flatnonzero(~np.isfinite(x[row]))[0])
                rejected.append((index[row], RecordError("x_not_finite", f"x[{j}] is not a finite float32")))
            x, y = x[keep], y[keep]
            tasks = [t for t, k in zip(tasks, keep) if k]
            ids = [r for r, k in zip(ids, keep) if k]
            index = [j for j, k in zip(index, keep) if k]
            rejected.sort(key=lambda r: r[0])
        return DecodedBatch(x, y, tasks, ids, index, rejected)

    # -- v1 ------------------------------------------------------------------------
    def _v1(self, value: bytes | None) -> tuple[list[float], int | None, str, str | None]:
        if value is None or len(value) > self.max_bytes:
            self._reference.decode(value)  # raises with the exact reason
        try:
            value.decode("utf-8")  # msgspec skips unknown fields without checking their bytes
        except UnicodeDecodeError as exc:
            raise RecordError("not_utf8", str(exc)) from None
        try:
            obj = self._json.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            rec = self._reference.decode(value)  # raises, or accepts what msgspec is stricter about
            return list(rec.x), rec.y, rec.task, rec.id
        if len(obj.x) != self.input_dim:
            raise RecordError("x_wrong_length", f"len(x)={len(obj.x)}, expected {self.input_dim}")
        return obj.x, self._label(obj.y), _task(obj.task), obj.id

    def _label(self, y: int | None) -> int | None:
        if y is not None and not 0 <= y < self.num_classes:
            raise RecordError("y_out_of_range", f"y={y} not in [0, {self.num_classes})")
        return y

    # -- v2 ------------------------------------------------------------------------
    def _v2(self, value: bytes | None, headers: Headers) -> tuple[np.ndarray, int | None, str, str | None]:
        value = b"" if value is None else value
        if len(value) > self.max_bytes:
            raise RecordError("too_large", f"{len(value)} bytes > limit {self.max_bytes}")
        if len(value) != 4 * self.input_dim:
            raise RecordError("x_wrong_length", f"{len(value)} bytes, expected 4 x {self.input_dim}")
        h = {k.lower(): v for k, v in headers}
        y = None
        if h.get("y") not in (None, b""):
            text = h["y"].decode("ascii", errors="replace").strip()
            if not (text.isdigit() or (text.startswith("-") and text[1:].isdigit())):
                raise RecordError("y_not_integer", f"header y={text!r:.40}")
            y = self._label(int(text))
        task = _header_text(h, "task", "task_not_string")
        rid = _header_text(h, "id", "id_not_string")
        return np.frombuffer(value, dtype="<f4"), y, _task(task), rid


def _task(task: str | None) -> str:
    if task is None:
        return DEFAULT_TASK
    if not task or len(task) > MAX_TASK_ID_CHARS:
        raise RecordError("task_not_string", f"task id length {len(task)} not in [1, {MAX_TASK_ID_CHARS}]")
    return task


def _header_text(h: dict[str, bytes], name: str, reason: str) -> str | None:
    raw = h.get(name)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(reason, f"header {name} is not UTF-8: {exc}") from None


def encode_f32(x, y: int | None = None, task: str | None = None, id: str | None = None) -> tuple[bytes, list[tuple[str, bytes]]]:
    """One record in wire format v2: (value, headers)."""
    headers = [(CONTENT_TYPE, F32_CONTENT_TYPE)]
    if y is not None:
        headers.append(("y", str(int(y)).encode()))
    if task is not None:
        headers.append(("task", task.encode()))
    if id is not None:
        headers.append(("id", id.encode()))
    return np.asarray(x, dtype="<f4").tobytes(), headers
