"""One exception root for the package."""

from __future__ import annotations


class StreamMetaError(Exception):
    """Root of every error stream-meta raises on purpose."""


class ConfigError(StreamMetaError):
    """The configuration is invalid; the message says which setting and why."""


class MissingDependencyError(StreamMetaError):
    """An optional package (an extra such as ``[data]``) is needed and not installed."""


class RecordError(StreamMetaError):
    """A record from the stream is invalid.

    ``reason`` is a short, bounded code (a Prometheus label value and a dead-letter
    header); ``detail`` is a human-readable explanation.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CheckpointError(StreamMetaError):
    """A checkpoint cannot be written or read."""


class CheckpointVersionError(CheckpointError):
    """A checkpoint was written by a newer format version than this code reads."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint directory was written with settings that do not fit this run's."""
