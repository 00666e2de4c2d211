"""Fixtures for the meta-learning core tests: tiny models (one torch thread: tests/conftest.py)."""

from __future__ import annotations

import pytest
from torch import nn

from stream_meta.model import build_mlp


@pytest.fixture
def relu_mlp() -> nn.Module:
    return build_mlp([5, 7, 6, 3]).double()


@pytest.fixture
def tanh_mlp() -> nn.Module:
    # Smooth, so central finite differences are accurate everywhere.
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
