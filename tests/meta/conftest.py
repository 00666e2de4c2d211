"""Fixtures for the meta-learning core tests: one torch thread, tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stream_meta.model import build_mlp


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (two are ~100x slower when another process is busy on a
    2-core machine), restored afterwards for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def relu_mlp() -> nn.Module:
    return build_mlp([5, 7, 6, 3]).double()


@pytest.fixture
def tanh_mlp() -> nn.Module:
    # Smooth, so central finite differences are accurate everywhere.
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
