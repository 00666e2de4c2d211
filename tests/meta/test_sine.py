"""The sine-wave few-shot regression of the MAML paper (Finn et al., 2017, section 5.1).

Tasks: y = A sin(x - phase), A in [0.1, 5], phase in [0, pi], x in [-5, 5]; 10 shots;
MLP 1-40-40-1 (ReLU). MAML (second order, one inner step of 0.01) against a model
pretrained jointly on all tasks with the same budget (iterations, tasks per iteration,
optimiser, initialisation); both are fine-tuned at test time with 1 and 10 steps of 0.01.
"""

from __future__ import annotations

import math

import pytest
import torch

from stream_meta.meta import Episode, get_algorithm, loss, meta_step
from stream_meta.model import build_mlp

SHOTS, INNER_LR, ITERATIONS, META_BATCH, OUTER_LR = 10, 0.01, 1200, 10, 1e-2


def sample_tasks(g: torch.Generator, n: int, query: int) -> tuple[torch.Tensor, torch.Tensor]:
    amp = torch.rand(n, 1, 1, generator=g) * 4.9 + 0.1
    phase = torch.rand(n, 1, 1, generator=g) * math.pi
    x = torch.rand(n, SHOTS + query, 1, generator=g) * 10 - 5
    return x, amp * torch.sin(x - phase)


def episodes(g: torch.Generator, n: int, query: int = SHOTS) -> list[Episode]:
    x, y = sample_tasks(g, n, query)
    return [Episode(f"sine{i}", x[i, :SHOTS], y[i, :SHOTS], x[i, SHOTS:], y[i, SHOTS:]) for i in range(n)]


@pytest.mark.slow
def test_maml_beats_joint_pretraining_on_sine_regression():
    torch.manual_seed(0)  # PyTorch's default nn.Linear initialisation, as in the paper's setting
    model = build_mlp([1, 40, 40, 1])
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    alg = get_algorithm("maml", loss="mse")

    meta = {k: v.clone().requires_grad_() for k, v in init.items()}
    opt = torch.optim.Adam(meta.values(), lr=OUTER_LR)
    g = torch.Generator().manual_seed(1)
    for _ in range(ITERATIONS):
        stats = meta_step(alg, model, meta, {}, episodes(g, META_BATCH), opt, steps=1, lr=INNER_LR)
        assert not stats["nonfinite"]

    joint = {k: v.clone().requires_grad_() for k, v in init.items()}
    opt = torch.optim.Adam(joint.values(), lr=OUTER_LR)
    g = torch.Generator().manual_seed(2)
    for _ in range(ITERATIONS):
        x, y = sample_tasks(g, META_BATCH, SHOTS)  # the same 20 points per task MAML sees
        opt.zero_grad()
        loss(model, joint, x.reshape(-1, 1), y.reshape(-1, 1), "mse").backward()
        opt.step()

    test = episodes(torch.Generator().manual_seed(3), 200, query=50)
    for steps in (1, 10):
        mse = {}
        for label, params in (("maml", meta), ("joint", joint)):
            total = 0.0
            for ep in test:
                fast = alg.adapt(model, params, {}, ep.support_x, ep.support_y, steps=steps, lr=INNER_LR)
                total += loss(model, fast, ep.query_x, ep.query_y, "mse").item()
            mse[label] = total / len(test)
        assert mse["maml"] < 0.5 * mse["joint"], f"{steps} step(s): {mse}"
