"""JSON-lines files as a source and a sink: one wire-format message per line.

Used for batch runs and to benchmark the engine without a broker. The file is
one partition; a record's offset is its 0-based line number. With ``follow``
the source reads like ``tail -f``: at the end of the file a poll waits its
timeout for more lines, and a last line without its newline is still being
written, so it is read once complete.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from connectors.base import Offsets, RawRecord, SendFailure

FOLLOW_CHECK_S = 0.1  # how often a waiting poll looks for new lines


class JsonlSource:
    """Reads ``path`` line by line, starting after the offset in ``start_offsets``."""

    def __init__(
        self, path: Path | str, start_offsets: Offsets | None = None, max_records: int = 500, follow: bool = False
    ) -> None:
        self.path = Path(path)
        self.topic = f"file:{self.path.name}"
        self.max_records = max_records
        self.follow = follow
        self._file = open(self.path, "rb")
        self._next = 0
        start = (start_offsets or {}).get((self.topic, 0), 0)
        while self._next < start and self._file.readline():
            self._next += 1
        self._eof = False

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[RawRecord]:
        deadline = time.monotonic() + timeout_s
        limit = self.max_records if max_records is None else min(max_records, self.max_records)
        out = self._read(limit)
        # Following: sleep (not spin) until lines arrive or the timeout is spent.
        while self.follow and not out and time.monotonic() < deadline:
            time.sleep(min(FOLLOW_CHECK_S, max(0.0, deadline - time.monotonic())))
            out = self._read(limit)
        return out

    def _read(self, limit: int) -> list[RawRecord]:
        out = []
        while len(out) < limit:
            start = self._file.tell()
            line = self._file.readline()
            if self.follow and line and not line.endswith(b"\n"):
                self._file.seek(start)  # a line still being written: read it whole later
                line = b""
            if not line:
                self._eof = True
                break
            out.append(RawRecord(self.topic, 0, self._next, line.rstrip(b"\r\n")))
            self._next += 1
        return out

    def commit(self, offsets: Offsets) -> None:
        pass  # the checkpoint holds the offset; a file has no broker to tell

    def lag(self) -> int | None:
        return None

    def lag_by_partition(self) -> dict[int, int]:
        return {}

    def partition_lags(self) -> dict[tuple[str, int], int | None]:
        return {(self.topic, 0): 0 if self._eof else None}

    def pause_only(self, partitions: set[tuple[str, int]]) -> None:
        pass  # one file, read a poll at a time: nothing piles up

    def backlog_done(self) -> bool:
        return self._eof

    def connected(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()


class JsonlSink:
    """Appends one JSON object per sent message: topic, value (text), headers."""

    def __init__(self, path: Path | str) -> None:
        self._file = open(path, "ab")

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = (),
        tag: Any = None,
    ) -> None:
        entry = {
            "topic": topic,
            "key": None if key is None else key.decode("utf-8", errors="replace"),
            "value": value.decode("utf-8", errors="replace"),
            "headers": {k: v.decode("utf-8", errors="replace") for k, v in headers},
        }
        self._file.write(json.dumps(entry).encode() + b"\n")

    def flush(self) -> list[SendFailure]:
        self._file.flush()  # a write error raises: a full disk is not a refused message
        os.fsync(self._file.fileno())
        return []

    def check_topics(self, topics: Sequence[str]) -> dict[str, str]:
        return {}  # every "topic" is this one file

    def close(self) -> None:
        self._file.close()
