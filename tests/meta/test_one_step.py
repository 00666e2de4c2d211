"""Reptile with one inner step, flat (``fast.one_step_reptile``, the outer step of a large
learn batch): equal to the reference engine on ragged meta-batches (the daemon's newest
episode carries replayed memory records), for CE and MSE; it runs only where it applies."""

from __future__ import annotations

import pytest
import torch

from tests.meta.helpers import float64_params, random_episodes
from stream_meta.meta import Episode, get_algorithm
from stream_meta.meta.fast import one_step_applies
from stream_meta.model import build_mlp


def _ragged(regression: bool) -> list[Episode]:
    eps = random_episodes(4, in_dim=5, classes=3, support=6, query=3, regression=regression)
    big = random_episodes(1, in_dim=5, classes=3, support=9, query=7, seed=5, regression=regression)[0]
    return [big, *eps]


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_one_inner_step_equals_the_reference_on_a_ragged_batch(loss):
    model = build_mlp([5, 12, 8, 3]).double()
    theta = float64_params(model)
    eps = _ragged(loss == "mse")
    fast = get_algorithm("reptile", loss=loss, backend="fast").meta_gradient(model, theta, {}, eps, steps=1, lr=0.4)
    ref = get_algorithm("reptile", loss=loss, backend="reference").meta_gradient(model, theta, {}, eps, steps=1, lr=0.4)
    assert sorted(fast[0]) == sorted(ref[0])
    for k in ref[0]:
        assert float(ref[0][k].abs().max()) > 1e-6  # a real gradient, not zeros on both sides
        torch.testing.assert_close(fast[0][k], ref[0][k], rtol=1e-10, atol=1e-12)
    for key in ("query_loss", "query_loss_before", "grad_norm"):
        assert fast[2][key] == pytest.approx(ref[2][key], rel=1e-9)
    assert fast[2]["query_loss"] < fast[2]["query_loss_before"]  # one step on the query rows lowers their loss


def test_it_applies_only_to_one_step_reptile_on_a_relu_mlp():
    model = build_mlp([5, 12, 3])
    theta = float64_params(model)
    spec = lambda name, steps: get_algorithm(name).spec(model, theta, steps=steps, lr=0.1)  # noqa: E731
    assert one_step_applies(model, spec("reptile", 1))
    assert not one_step_applies(model, spec("reptile", 2))
    assert not one_step_applies(model, spec("fomaml", 1))
    assert not one_step_applies(torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)),
                                get_algorithm("reptile").spec(model, theta, steps=1, lr=0.1))
