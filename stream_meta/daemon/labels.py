"""Label messages: the label of a record that was sent earlier without one.

v1: a JSON object with ``id`` and ``y`` and no ``x``: ``{"id": "r-1", "y": 3}``.
v2: an empty value with headers ``id`` and ``y`` (the content-type header is optional).

A message that is not shaped like a label (it has ``x``, or a non-empty binary value)
decodes to ``None`` and goes the record path; one that is shaped like a label but
invalid raises :class:`RecordError` with one of :data:`LABEL_REASONS`. On a labels-only
topic ``require=True`` turns "not a label" into the reason ``not_a_label``.

>>> d = LabelDecoder(num_classes=4)
>>> d.decode(b'{"id": "r-1", "y": 3}')
Label(id='r-1', y=3)
>>> d.decode(b'', [("id", b"r-2"), ("y", b"0")])
Label(id='r-2', y=0)
>>> d.decode(b'{"x": [1, 2], "y": 1}') is None
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from stream_meta.errors import RecordError

# Every reason a label message can be rejected for (decoding), then joining (PendingStore).
LABEL_REASONS: tuple[str, ...] = (
    "not_a_label",
    "label_not_json",
    "label_id_missing",
    "label_y_not_integer",
    "label_y_out_of_range",
    "label_unknown_id",
    "label_expired",
    "label_duplicate",
)
MAX_ID_CHARS = 256

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Label:
    """One decoded label message."""

    id: str
    y: int


@dataclass(frozen=True)
class LabelDecoder:
    """Recognises and validates label messages (v1 JSON, v2 headers-only)."""

    num_classes: int
    max_bytes: int = 1 << 16

    def _shaped(self, value: bytes | None, headers: Headers) -> bool:
        """Headers-only with id or y, or a JSON object of label size (no parsing)."""
        if not value:
            return any(k.lower() in ("id", "y") for k, _ in headers)
        return len(value) <= self.max_bytes and value.lstrip()[:1] == b"{"

    def is_label(self, value: bytes | None, headers: Headers = ()) -> bool:
        """Shaped like a label and carrying an id (``{"y": 1}`` alone is a record missing ``x``)."""
        if not self._shaped(value, headers):
            return False
        if not value:
            return any(k.lower() == "id" for k, _ in headers)
        if b'"id"' not in value:
            return False
        try:  # a rejected message only (rare): parse it, so '"y": "x"' is not read as carrying x
            obj = json.loads(bytes(value).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return True  # shaped like a label with an id: dead-lettered as label_not_json
        return isinstance(obj, dict) and "id" in obj and "x" not in obj

    def decode(self, value: bytes | None, headers: Headers = (), *, require: bool = False) -> Label | None:
        if not self._shaped(value, headers):
            if require:
                raise RecordError("not_a_label", "a label message has id and y and no x")
            return None
        if not value:
            h = {k.lower(): v for k, v in headers}
            return Label(self._id(_text(h.get("id"))), self._y(_text(h.get("y")), header=True))
        try:
            obj = json.loads(bytes(value).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RecordError("label_not_json", str(exc)[:200]) from None
        if not isinstance(obj, dict) or "x" in obj:
            if require:
                raise RecordError("not_a_label", "a label message is a JSON object with id and y and no x")
            return None
        return Label(self._id(obj.get("id")), self._y(obj.get("y")))

    @staticmethod
    def _id(rid: object) -> str:
        if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_ID_CHARS:
            raise RecordError("label_id_missing", f"label id must be a string of 1..{MAX_ID_CHARS} chars, got {rid!r:.40}")
        return rid

    def _y(self, y: object, header: bool = False) -> int:
        if header and isinstance(y, str):
            text = y.strip()
            y = int(text) if text.isdigit() or (text[:1] == "-" and text[1:].isdigit()) else y
        if isinstance(y, float) and y.is_integer():
            y = int(y)
        if isinstance(y, bool) or not isinstance(y, int):
            raise RecordError("label_y_not_integer", f"'y' is {y!r:.40}")
        if not 0 <= y < self.num_classes:
            raise RecordError("label_y_out_of_range", f"y={y} not in [0, {self.num_classes})")
        return y


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", errors="replace")


def encode_label(id: str, y: int) -> bytes:
    """A v1 label message (the inverse of :meth:`LabelDecoder.decode`)."""
    return json.dumps({"id": id, "y": int(y)}, separators=(",", ":")).encode()
