"""stream-meta: an online meta-learner that learns from a live stream, test-then-train."""

__version__ = "0.1.0"
