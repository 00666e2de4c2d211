"""Wire format v1: one UTF-8 JSON object per message.

``{"x": [float, ...], "y": int (optional), "task": str (optional), "id": str (optional)}``

``x`` holds exactly ``input_dim`` finite numbers, ``y`` is an integer in
``[0, num_classes)``; a record without ``y`` is only predicted. A record without
``task`` belongs to :data:`DEFAULT_TASK`.

>>> d = Decoder(input_dim=2, num_classes=3)
>>> d.decode(b'{"x": [0.5, 1], "y": 2, "task": "a"}')
Record(x=(0.5, 1.0), y=2, task='a', id=None)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from stream_meta.errors import RecordError

DEFAULT_TASK = "default"
MAX_TASK_ID_CHARS = 256
FLOAT32_MAX = 3.4028234663852886e38

# Every reason a record can be rejected for; pre-initialised as metric labels.
REASONS: tuple[str, ...] = (
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_x",
    "x_not_list",
    "x_wrong_length",
    "x_not_number",
    "x_nested",
    "x_not_finite",
    "y_not_integer",
    "y_out_of_range",
    "task_not_string",
    "id_not_string",
)


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded, valid record."""

    x: tuple[float, ...]
    y: int | None
    task: str
    id: str | None

    @property
    def labelled(self) -> bool:
        return self.y is not None


def _reject_constant(token: str) -> float:
    # json accepts NaN/Infinity literals by default; the wire format does not.
    raise RecordError("x_not_finite", f"non-finite literal {token}")


@dataclass(frozen=True)
class Decoder:
    """Validates raw message bytes against wire format v1.

    Raises :class:`RecordError` with one of :data:`REASONS`; never anything else.
    """

    input_dim: int
    num_classes: int
    max_bytes: int = 1 << 20

    def decode(self, raw: bytes) -> Record:
        if raw is None:
            raise RecordError("not_json", "empty message (tombstone)")
        if len(raw) > self.max_bytes:
            raise RecordError("too_large", f"{len(raw)} bytes > limit {self.max_bytes}")
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError("not_utf8", str(exc)) from None
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except RecordError:
            raise
        except (ValueError, RecursionError) as exc:
            raise RecordError("not_json", str(exc)[:200]) from None
        if not isinstance(obj, dict):
            raise RecordError("not_object", f"top level is {type(obj).__name__}")
        return Record(
            x=self._x(obj),
            y=self._y(obj),
            task=self._task(obj),
            id=self._id(obj),
        )

    def _x(self, obj: dict) -> tuple[float, ...]:
        if "x" not in obj:
            raise RecordError("missing_x", "no 'x' field")
        x = obj["x"]
        if not isinstance(x, list):
            raise RecordError("x_not_list", f"'x' is {type(x).__name__}")
        if len(x) != self.input_dim:
            raise RecordError("x_wrong_length", f"len(x)={len(x)}, expected {self.input_dim}")
        out = []
        for i, v in enumerate(x):
            if isinstance(v, (list, dict)):
                raise RecordError("x_nested", f"x[{i}] is a nested {type(v).__name__}")
            # bool is an int subclass in Python but not a number on the wire.
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RecordError("x_not_number", f"x[{i}] is {type(v).__name__}")
            try:
                f = float(v)
            except OverflowError:
                raise RecordError("x_not_finite", f"x[{i}] overflows a float") from None
            if not math.isfinite(f):
                raise RecordError("x_not_finite", f"x[{i}]={v}")
            if abs(f) > FLOAT32_MAX:  # learned in float32: it would become infinity there
                raise RecordError("x_not_finite", f"x[{i}]={v} overflows float32")
            out.append(f)
        return tuple(out)

    def _y(self, obj: dict) -> int | None:
        if "y" not in obj or obj["y"] is None:
            return None
        y = obj["y"]
        if isinstance(y, float) and y.is_integer():
            y = int(y)
        if isinstance(y, bool) or not isinstance(y, int):
            raise RecordError("y_not_integer", f"'y' is {y!r:.40}")
        if not 0 <= y < self.num_classes:
            raise RecordError("y_out_of_range", f"y={y} not in [0, {self.num_classes})")
        return y

    @staticmethod
    def _task(obj: dict) -> str:
        task = obj.get("task")
        if task is None:
            return DEFAULT_TASK
        if not isinstance(task, str):
            raise RecordError("task_not_string", f"'task' is {type(task).__name__}")
        if not task or len(task) > MAX_TASK_ID_CHARS:
            raise RecordError("task_not_string", f"task id length {len(task)} not in [1, {MAX_TASK_ID_CHARS}]")
        return task

    @staticmethod
    def _id(obj: dict) -> str | None:
        rid = obj.get("id")
        if rid is None or isinstance(rid, str):
            return rid
        raise RecordError("id_not_string", f"'id' is {type(rid).__name__}")


def encode(x, y: int | None = None, task: str | None = None, id: str | None = None) -> bytes:
    """Encode one record in wire format v1 (the inverse of :meth:`Decoder.decode`)."""
    obj: dict = {"x": [float(v) for v in x]}
    if y is not None:
        obj["y"] = int(y)
    if task is not None:
        obj["task"] = task
    if id is not None:
        obj["id"] = id
    return json.dumps(obj, separators=(",", ":")).encode()
